#!/usr/bin/env bash
# The browser the dashboard tests drive: Debian's Chromium (Playwright drives it through
# executable_path; Playwright's own browser download is never used). Installed when missing,
# by scripts/apt-install.sh (as root; otherwise it prints the apt-get line to run).
set -u
command -v chromium >/dev/null 2>&1 && exit 0
here=.
[[ "${BASH_SOURCE[0]}" == */* ]] && here=${BASH_SOURCE[0]%/*}
"$BASH" "$here/apt-install.sh" chromium || exit 1
command -v chromium >/dev/null 2>&1
