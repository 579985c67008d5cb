#!/usr/bin/env bash
# Install Debian packages the project needs, the same careful way everywhere.
#
#   scripts/apt-install.sh [--dry-run] PACKAGE...
#
# As root: one bounded `apt-get install` (10 s network timeouts, no retries, a hard limit per
# step); when it fails, `apt-get update` and one more try, so a fresh machine's empty package
# lists cost nothing when they are not needed. Not root: the one line to run as root is printed
# and the script fails. --dry-run only says what it would run.
set -u

dry_run=0
if [ "${1:-}" = --dry-run ]; then
    dry_run=1
    shift
fi
[ $# -gt 0 ] || { echo "usage: $0 [--dry-run] PACKAGE..." >&2; exit 2; }

line="apt-get install -y --no-install-recommends $*"
if [ "$(id -u)" -ne 0 ]; then
    echo "apt-install: missing $*; install them as root with:"
    echo "    $line"
    exit 1
fi
if [ $dry_run -eq 1 ]; then
    echo "apt-install: missing $*; would run: $line"
    exit 0
fi

echo "apt-install: installing $* from Debian's packages"
export DEBIAN_FRONTEND=noninteractive
NET=(-o Acquire::Retries=0 -o Acquire::http::Timeout=10 -o Acquire::https::Timeout=10)
# SECONDS APT-GET-ARGS...: apt-get, killed if it takes longer than that.
apt_get() { timeout -k 5 "$1" apt-get "${@:2}"; }
install() { apt_get 600 install -y -q --no-install-recommends "${NET[@]}" -o DPkg::Lock::Timeout=60 "$@"; }
if ! install "$@" >/dev/null 2>&1; then
    apt_get 120 update -q "${NET[@]}" >/dev/null || echo "apt-install: apt-get update failed (offline?)"
    install "$@" >/dev/null || { echo "apt-install: could not install $* with apt-get"; exit 1; }
fi
