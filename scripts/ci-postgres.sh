#!/usr/bin/env bash
# Install Debian's PostgreSQL server binaries for the SQL source tests. Idempotent.
# Installs the package only: no cluster is created or started here (each test session runs
# its own server in a temporary directory, see tests/postgres.py).
# Not root and no PostgreSQL: exit 1 (the tests then skip, except under CI=true where they fail).
set -euo pipefail

find_initdb() {
    command -v initdb 2>/dev/null || ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1
}

found=$(find_initdb || true)
if [ -n "$found" ]; then
    echo "ci-postgres: $("$found" --version)"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "ci-postgres: PostgreSQL is missing and not root: cannot install it" >&2
    exit 1
fi
# Debian's package would create and start a system-wide cluster ("main"); the tests need
# none, so ask postgresql-common not to (its documented switch), keeping our file on install.
if [ ! -e /etc/postgresql-common/createcluster.conf ]; then
    mkdir -p /etc/postgresql-common
    echo "create_main_cluster = false" >/etc/postgresql-common/createcluster.conf
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold postgresql
found=$(find_initdb)
echo "ci-postgres: installed $("$found" --version)"
