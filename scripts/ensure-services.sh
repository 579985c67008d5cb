#!/usr/bin/env bash
# Install (from Debian's packages) and start every loopback service the tests talk to:
# PostgreSQL 5432 (database "test", trusted on loopback), Redis 6379, RabbitMQ 5672, NATS with
# JetStream 4222.
#
#   scripts/ensure-services.sh            install what is missing, start what is not answering
#   scripts/ensure-services.sh --dry-run  only say what it would install and start
#
# A server counts as installed when its command is on PATH (PostgreSQL: pg_ctlcluster and a
# cluster under /etc/postgresql). Missing ones are installed by scripts/apt-install.sh with one
# `apt-get install` when run as root; otherwise that one line is printed and the script fails,
# since the tests cannot run without the servers. Each service is started with the machine's own
# start command, only when its port is closed.
set -u

DRY_RUN=0
case "${1:-}" in
    --dry-run) DRY_RUN=1 ;;
    "") ;;
    *) echo "usage: $0 [--dry-run]" >&2; exit 2 ;;
esac

say() { echo "ensure-services: $*"; }
here=.
[[ "${BASH_SOURCE[0]}" == */* ]] && here=${BASH_SOURCE[0]%/*}

# --- install -------------------------------------------------------------------------------------

missing=()
{ command -v pg_ctlcluster && compgen -G "/etc/postgresql/*/main"; } >/dev/null 2>&1 ||
    missing+=(postgresql)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v rabbitmq-server >/dev/null 2>&1 || missing+=(rabbitmq-server)
command -v nats-server >/dev/null 2>&1 || missing+=(nats-server)

fresh_postgres=0
if [ ${#missing[@]} -gt 0 ]; then
    flags=()
    [ $DRY_RUN -eq 1 ] && flags=(--dry-run)
    "$BASH" "$here/apt-install.sh" "${flags[@]}" "${missing[@]}" || exit 1
    [ $DRY_RUN -eq 0 ] && [[ " ${missing[*]} " == *" postgresql "* ]] && fresh_postgres=1
elif [ $DRY_RUN -eq 1 ]; then
    say "postgresql, redis-server, rabbitmq-server, nats-server are installed"
fi

# --- start ---------------------------------------------------------------------------------------

up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() {
    local port=$1 name=$2
    for _ in $(seq 1 60); do
        up "$port" && return 0
        sleep 0.5
    done
    say "$name did not come up on 127.0.0.1:$port"
    return 1
}

start() {
    local port=$1 name=$2
    shift 2
    up "$port" && return 0
    if [ $DRY_RUN -eq 1 ]; then
        say "would start $name (nothing answers on 127.0.0.1:$port)"
        return 0
    fi
    say "starting $name"
    "$@" >/dev/null 2>&1 || true
    wait_for "$port" "$name"
}

# A PostgreSQL this script just installed gets what the tests expect: loopback connections
# trusted, as on a developer machine, ahead of Debian's password rules.
if [ $fresh_postgres -eq 1 ]; then
    for hba in /etc/postgresql/*/main/pg_hba.conf; do
        sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
    done
fi

status=0
start 5432 postgresql bash -c 'pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start' || status=1
start 6379 redis redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" \
    --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log || status=1
start 5672 rabbitmq rabbitmq-server -detached || status=1
[ $DRY_RUN -eq 1 ] || mkdir -p /var/lib/nats-server 2>/dev/null
start 4222 nats start-stop-daemon --start --oknodo --background --exec "$(command -v nats-server)" \
    -- -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log || status=1

# The tests' database, created once (as the postgres superuser, through the local socket).
if [ $DRY_RUN -eq 0 ] && [ "$(id -u)" -eq 0 ] && up 5432; then
    if ! su postgres -c "psql -tAc \"SELECT 1 FROM pg_database WHERE datname = 'test'\"" 2>/dev/null |
        grep -q 1; then
        say "creating database test"
        su postgres -c "createdb test" || status=1
    fi
fi
exit $status
