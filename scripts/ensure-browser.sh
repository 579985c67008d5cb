#!/usr/bin/env bash
# The browser the dashboard tests drive: Debian's Chromium (Playwright drives it through
# executable_path; Playwright's own browser download is never used). Installed when missing.
set -u
if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" != "0" ]; then
    echo "ensure-browser: Chromium is missing; install it with: sudo apt-get install -y chromium" >&2
    exit 1
fi
echo "ensure-browser: installing chromium (Debian package)"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null && apt-get install -y -qq chromium >/dev/null || {
    echo "ensure-browser: apt-get install chromium failed" >&2
    exit 1
}
command -v chromium >/dev/null 2>&1
