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
