#!/usr/bin/env bash
# The browser test's system packages: Debian's chromium (driven over its DevTools protocol,
# so no chromedriver). Its Python side (voila, websocket-client) is in pyproject's dev extra.
# .ci/run calls this before `make test`; without chromium the test skips and says why.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
    echo "chromium present: $(chromium --version 2>/dev/null || true)"
    exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "cannot install chromium here (needs root and apt-get): the browser test will be skipped"
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq chromium >/dev/null
echo "installed $(chromium --version 2>/dev/null || echo chromium)"
