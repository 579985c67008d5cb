#!/usr/bin/env bash
# Make sure an `etcd` binary is on this machine, installing Debian's etcd-server when it is not.
#
#   scripts/ensure-etcd.sh            install if missing; print the path of the binary
#   scripts/ensure-etcd.sh --start    also start a PRIVATE etcd on a free loopback port and print
#                                     "PID CLIENT_URL DATA_DIR" (the caller stops it and removes
#                                     the data dir; the tests' fixture does exactly this).
#                                     It runs with short raft timings (10 ms heartbeat, 100 ms
#                                     election), which lowers etcd's lease floor to 1 s.
#
# Idempotent and fast when etcd is already installed (one `command -v`). Only Debian's apt is
# used; apt-get runs as root (or through `sudo -n`, which never prompts), `apt-get update` only
# when the install needs it, and every apt step is bounded (10 s network timeouts, no retries, a
# hard limit per step): without a network the script fails with apt's message, typically within
# a minute and always within five, instead of hanging the test run.
set -euo pipefail

find_etcd() {
    command -v etcd 2>/dev/null || true
}

# Short network timeouts and no retries: a fresh machine online needs one try; an offline one
# must fail soon. The dpkg lock is waited for, in case another apt runs (e.g. a parallel test).
APT_OPTS=(-y -q --no-install-recommends -o Acquire::Retries=0 -o Acquire::http::Timeout=10
    -o Acquire::https::Timeout=10 -o DPkg::Lock::Timeout=60)

ETCD=$(find_etcd)
if [ -z "$ETCD" ]; then
    echo "ensure-etcd: installing etcd-server from Debian's packages" >&2
    export DEBIAN_FRONTEND=noninteractive
    SUDO=()
    [ "$(id -u)" -ne 0 ] && SUDO=(sudo -n)
    # SECONDS APT-GET-ARGS...: apt-get, killed if it takes longer than that.
    apt_get() { "${SUDO[@]}" timeout -k 5 "$1" apt-get "${@:2}"; }
    if ! apt_get 120 install "${APT_OPTS[@]}" etcd-server >/dev/null 2>&1; then
        apt_get 60 update -q -o Acquire::Retries=0 -o Acquire::http::Timeout=10 \
            -o Acquire::https::Timeout=10 >/dev/null ||
            echo "ensure-etcd: apt-get update failed (offline?)" >&2
        apt_get 120 install "${APT_OPTS[@]}" etcd-server >/dev/null ||
            { echo "ensure-etcd: could not install etcd-server with apt-get" >&2; exit 1; }
    fi
    # The package starts a system etcd on 2379 where its init system lets it; the tests never
    # use it (they start their own), so stop it to leave the default port free.
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet etcd 2>/dev/null; then
        "${SUDO[@]}" systemctl stop etcd || true
    elif [ -x /etc/init.d/etcd ] && /etc/init.d/etcd status >/dev/null 2>&1; then
        "${SUDO[@]}" /etc/init.d/etcd stop >/dev/null 2>&1 || true
    fi
    ETCD=$(find_etcd)
    [ -n "$ETCD" ] || { echo "ensure-etcd: etcd still missing after install" >&2; exit 1; }
fi

if [ "${1:-}" != "--start" ]; then
    echo "$ETCD"
    exit 0
fi

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

CLIENT=$(free_port)
PEER=$(free_port)
DATA=$(mktemp -d -t interlink-etcd.XXXXXX)
URL="http://127.0.0.1:$CLIENT"
"$ETCD" --name interlink-test --data-dir "$DATA" \
    --listen-client-urls "$URL" --advertise-client-urls "$URL" \
    --listen-peer-urls "http://127.0.0.1:$PEER" --initial-advertise-peer-urls "http://127.0.0.1:$PEER" \
    --initial-cluster "interlink-test=http://127.0.0.1:$PEER" \
    --heartbeat-interval 10 --election-timeout 100 \
    --log-level error >"$DATA/etcd.log" 2>&1 &
PID=$!
for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$CLIENT") 2>/dev/null; then
        echo "$PID $URL $DATA"
        exit 0
    fi
    kill -0 "$PID" 2>/dev/null || break
    sleep 0.1
done
echo "ensure-etcd: etcd did not come up on $URL; log:" >&2
cat "$DATA/etcd.log" >&2 || true
kill "$PID" 2>/dev/null || true
exit 1
