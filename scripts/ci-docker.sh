#!/usr/bin/env bash
# Make a Docker engine answer on this machine and build the sandbox base image. Idempotent.
#
# - engine already answers: nothing to start;
# - else (root only): apt-get install docker.io if dockerd is missing, start dockerd in the
#   background (log: /tmp/dockerd.log), wait for the socket (DOCKER_WAIT_S, default 60 s);
# - then build (or find) the base image: pulled if a registry answers, else debootstrap.
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
WAIT_S="${DOCKER_WAIT_S:-60}"
SOCK=/var/run/docker.sock

engine_answers() {
    "$PYTHON" -c "from sandboxes import docker_available as ok; raise SystemExit(0 if ok() else 1)"
}

if engine_answers; then
    echo "ci-docker: engine already answers"
else
    if [ "$(id -u)" != 0 ]; then
        echo "ci-docker: no Docker engine answers and not root: cannot start one" >&2
        exit 1
    fi
    if ! command -v dockerd >/dev/null; then
        echo "ci-docker: installing docker.io"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q
        apt-get install -y -q --no-install-recommends docker.io iptables
    fi
    if ! command -v debootstrap >/dev/null; then
        apt-get install -y -q --no-install-recommends debootstrap || true
    fi
    if ! pgrep -x dockerd >/dev/null; then
        echo "ci-docker: starting dockerd (log: /tmp/dockerd.log)"
        nohup dockerd >/tmp/dockerd.log 2>&1 &
    fi
    waited=0
    until [ -S "$SOCK" ] && engine_answers; do
        if [ "$waited" -ge "$WAIT_S" ]; then
            echo "ci-docker: dockerd did not answer on $SOCK within ${WAIT_S}s; last log lines:" >&2
            tail -n 20 /tmp/dockerd.log >&2 || true
            exit 1
        fi
        sleep 1
        waited=$((waited + 1))
    done
    echo "ci-docker: engine answers after ${waited}s"
fi

"$PYTHON" -c "
import logging, time
logging.basicConfig(level=logging.INFO, format='ci-docker: %(message)s')
from sandboxes.images import ensure_base_image
started = time.monotonic()
print('ci-docker: base image', ensure_base_image(), f'({time.monotonic() - started:.1f}s)')
"
