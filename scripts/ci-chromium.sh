#!/usr/bin/env bash
# Install Debian's chromium for the dashboard's headless-browser test. Idempotent.
# Not root and no chromium: exit 1 (the test then skips, except under CI=true where it fails).
set -euo pipefail

if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then
    echo "ci-chromium: $(chromium --version 2>/dev/null || chromium-browser --version)"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "ci-chromium: chromium is missing and not root: cannot install it" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core
echo "ci-chromium: installed $(chromium --version)"
