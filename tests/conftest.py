"""Shared fixtures. Ray tests share one local Ray per session (starting it costs seconds)."""

from __future__ import annotations

import contextlib
import http.server
import os
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest


def pytest_sessionstart(session: pytest.Session) -> None:
    """In CI the Docker tests must run, not skip: .ci/run starts an engine."""
    if os.environ.get("CI") == "true":
        from sandboxes import docker_available

        if not docker_available():
            raise pytest.UsageError("CI=true, yet no Docker engine answers (scripts/ci-docker.sh)")


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_worker_niceness", "0")  # as a Ray the fleet starts (fleet/api.py)
    ray.init(namespace="agent-fleet-tests", include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def fleet_factory(ray_session: None, tmp_path):  # type: ignore[no-untyped-def]
    """Start fleets with unique names on the shared Ray; shut them all down after the test."""
    from fleet import Fleet

    started = []

    def start(**overrides):  # type: ignore[no-untyped-def]
        settings = {
            "name": f"t{uuid.uuid4().hex[:8]}",
            "events_dir": str(tmp_path / "events"),
            "sandbox": "local",
            "workers": 2,
            "flush_interval_s": 0.2,
            "retry_backoff_s": 0.0,
            "namespace": "agent-fleet-tests",
        }
        settings.update(overrides)
        config = settings.pop("config", None)
        fleet = Fleet.start(config=config, **settings)
        started.append(fleet)
        return fleet

    yield start
    for fleet in started:
        with contextlib.suppress(Exception):
            fleet.shutdown()


def script(*steps: tuple[str, dict]) -> list[dict]:
    return [{"tool": tool, "args": args} for tool, args in steps]


def wait_state(fleet, task_id, state, timeout=30):  # type: ignore[no-untyped-def]
    """Poll until the task reaches ``state`` (fails the test after ``timeout`` seconds)."""
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        record = fleet.get(task_id)
        if record is not None and record.state == state:
            return record
        time.sleep(0.05)
    raise AssertionError(f"{task_id} never reached {state}: {fleet.get(task_id)}")


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"hello from host"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def host_server() -> Iterator[int]:
    """An HTTP server on every host address (containers probe whether they can reach it)."""
    server = http.server.ThreadingHTTPServer(("0.0.0.0", 0), _Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


OUTSIDE_SERVER = """
import http.server, sys
class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"hello from outside"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.HTTPServer((sys.argv[1], 8080), Hello)
print("ready", flush=True)
server.serve_forever()
"""


@pytest.fixture
def outside_server() -> Iterator[str]:
    """An HTTP server on port 8080 of another machine, as containers see one: a network
    namespace routed from the host (so traffic to it is forwarded, not input to the host).
    Yields its address. Needs root and ``ip``."""
    import random
    import shutil
    import subprocess
    import sys

    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("an outside server needs root and ip (network namespaces)")
    tag = uuid.uuid4().hex[:6]
    ns, host_if, ns_if = f"fleet-out-{tag}", f"fo{tag}h", f"fo{tag}n"
    net = f"198.18.{random.randint(0, 255)}"
    setup = [
        ["ip", "netns", "add", ns],
        ["ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if],
        ["ip", "link", "set", ns_if, "netns", ns],
        ["ip", "addr", "add", f"{net}.1/30", "dev", host_if],
        ["ip", "link", "set", host_if, "up"],
        ["ip", "-n", ns, "addr", "add", f"{net}.2/30", "dev", ns_if],
        ["ip", "-n", ns, "link", "set", ns_if, "up"],
        ["ip", "-n", ns, "link", "set", "lo", "up"],
        ["ip", "-n", ns, "route", "add", "default", "via", f"{net}.1"],
    ]
    server = None
    try:
        for cmd in setup:
            subprocess.run(cmd, check=True, capture_output=True)
        server = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-c", OUTSIDE_SERVER, f"{net}.2"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        yield f"{net}.2"
    finally:
        if server is not None:
            server.kill()
            server.wait()
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """A PostgreSQL server of this test session (tests/postgres.py), as a DSN. Skipped when
    PostgreSQL is not installed, except under CI=true (scripts/ci-postgres.sh installs it)."""
    from tests.postgres import PostgresServer, pg_bin_dir

    bin_dir = pg_bin_dir()
    if bin_dir is None:
        message = "PostgreSQL (initdb, pg_ctl) is not installed: run scripts/ci-postgres.sh"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    server = PostgresServer.start(bin_dir)
    try:
        yield server.dsn
    finally:
        server.stop()
