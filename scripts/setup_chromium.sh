#!/usr/bin/env bash
# Installs Debian's chromium for the report test that opens report.html in a real headless browser
# (tests/llmlib/report/test_report_html.py). Called by `make test_servers`; a no-op when chromium is there.
#
# Usage: bash scripts/setup_chromium.sh   (as root, or with sudo available, on Debian/Ubuntu)
set -euo pipefail

if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
    command -v sudo >/dev/null 2>&1 || { echo "setup_chromium: error: not root and no sudo; install chromium yourself" >&2; exit 1; }
    SUDO="sudo"
fi
echo "setup_chromium: installing chromium (apt-get)" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
command -v chromium >/dev/null 2>&1 || { echo "setup_chromium: error: chromium still not found after apt-get" >&2; exit 1; }
