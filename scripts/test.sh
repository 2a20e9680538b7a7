#!/usr/bin/env bash
# Install the project with its test dependencies, start what the tests need, run them.
# This is the README's test command; .ci/run calls it.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install -q -e '.[test]'

# Docker tests need an engine. In CI (CI=true) one must come up; elsewhere it is optional
# and the docker tests are skipped when none can be started.
if [ -f scripts/ci-docker.sh ]; then
    if [ "${CI:-}" = "true" ]; then
        bash scripts/ci-docker.sh
    else
        bash scripts/ci-docker.sh || echo "warning: no Docker engine; docker tests will be skipped"
    fi
fi

# The dashboard test needs a headless browser.
if [ "${CI:-}" = "true" ]; then
    bash scripts/ci-chromium.sh
else
    bash scripts/ci-chromium.sh || echo "warning: no chromium; the browser test will be skipped"
fi

# The cluster launcher test needs an SSH server on loopback.
if [ "${CI:-}" = "true" ]; then
    bash scripts/ci-sshd.sh
else
    bash scripts/ci-sshd.sh || echo "warning: no loopback sshd; the cluster launcher test will be skipped"
fi

# The SQL source tests start their own PostgreSQL server; the binaries must be installed.
if [ "${CI:-}" = "true" ]; then
    bash scripts/ci-postgres.sh
else
    bash scripts/ci-postgres.sh || echo "warning: no PostgreSQL; the PostgreSQL source tests will be skipped"
fi

ruff check .
lint-imports  # the layers in pyproject.toml: fleet > sources > serve > actors > harness > sandboxes > core
python3 -m pytest -q "$@"
