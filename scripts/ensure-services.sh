#!/usr/bin/env bash
# Start any loopback service the tests talk to that is not already answering.
# The commands are the machine's own start commands; each is tried only when its port is closed.
set -u

up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() {
    local port=$1 name=$2
    for _ in $(seq 1 60); do
        up "$port" && return 0
        sleep 0.5
    done
    echo "ensure-services: $name did not come up on 127.0.0.1:$port" >&2
    return 1
}

start() {
    local port=$1 name=$2
    shift 2
    up "$port" && return 0
    echo "ensure-services: starting $name"
    "$@" >/dev/null 2>&1 || true
    wait_for "$port" "$name"
}

status=0
start 5432 postgresql bash -c 'pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start' || status=1
start 6379 redis redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" \
    --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log || status=1
start 5672 rabbitmq rabbitmq-server -detached || status=1
start 4222 nats start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
    -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log || status=1
exit $status
