"""The API on a real ``serve.run`` (local Ray), over real HTTP: streams, reconnects, dashboard."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from serve.app import ServeSettings
from tests.conftest import script
from tests.test_serve_app import sse_events

pytestmark = pytest.mark.ray

TOKEN = "http-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
STEPS = script(
    *[("shell", {"command": f"sleep 0.3; echo step{i}"}) for i in range(5)],
    ("finish", {"summary": "five steps"}),
)
SLOW = script(("shell", {"command": "sleep 30"}), ("finish", {"summary": "slept"}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(ray_session: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fleet plus the API deployed with serve.run; yields the base URL."""
    from ray import serve

    from fleet import Fleet
    from serve.deployment import run

    fleet = Fleet.start(
        name=f"serve-http-{time.monotonic_ns() % 10**8}",
        events_dir=str(tmp_path_factory.mktemp("http-events")),
        sandbox="local",
        workers=2,
        flush_interval_s=0.2,
        namespace="agent-fleet-tests",
    )
    port = free_port()
    run(fleet.settings.name, fleet.settings.namespace, ServeSettings(token=TOKEN), port=port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        fleet.shutdown()


def test_real_http_session_stream_and_reconnect(served: str) -> None:
    with httpx.Client(base_url=served, headers=AUTH, timeout=60) as client:
        assert client.get("/healthz", headers={"Authorization": ""}).json() == {"ok": True}
        assert client.get("/v1/fleet/status", headers={"Authorization": ""}).status_code == 401
        assert (
            client.get("/v1/fleet/status", headers={"Authorization": "Bearer x"}).status_code == 403
        )
        created = client.post("/v1/sessions", json={"prompt": "steps", "script": STEPS})
        assert created.status_code == 201, created.text
        sid = created.json()["id"]
        url = f"/v1/sessions/{sid}/events/stream"

        # Read a few live events, drop the connection, resume with Last-Event-ID.
        first: list[dict[str, str]] = []
        with client.stream("GET", url) as r:
            assert r.status_code == 200
            lines: list[str] = []
            for line in r.iter_lines():
                lines.append(line)
                first = sse_events(iter(lines))
                if len(first) >= 4:
                    break
        last_id = first[-1]["id"]
        with client.stream("GET", url, headers={"Last-Event-ID": last_id}) as r:
            rest = sse_events(r.iter_lines())
        assert rest[-1]["event"] == "session.end"
        assert rest[-1]["data"] == '{"status": "succeeded"}'
        seqs = [int(e["id"]) for e in first + rest[:-1]]
        history = client.get(f"/v1/sessions/{sid}/events", params={"limit": 500}).json()["data"]
        assert seqs == [e["seq"] for e in history] == list(range(len(history)))  # no gap, no dup
        assert [e["event"] for e in first + rest[:-1]] == [e["type"] for e in history]

        # A second full read of the ended stream gives the same events.
        with client.stream("GET", url) as r:
            again = sse_events(r.iter_lines())
        assert [e["id"] for e in again[:-1]] == [str(s) for s in seqs]


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
    "--window-size=1280,900",
    "--virtual-time-budget=6000",
]


def run_chromium(binary: str, tmp: Path, args: list[str]) -> subprocess.CompletedProcess[str]:
    profile = tmp / f"profile-{len(list(tmp.iterdir()))}"
    cmd = [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90, check=False)


def test_dashboard_in_headless_chromium_shows_a_running_batch(served: str, tmp_path: Path) -> None:
    binary = chromium()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (scripts/ci-chromium.sh installs it)")
        pytest.skip("chromium is not installed")
    with httpx.Client(base_url=served, headers=AUTH, timeout=60) as client:
        done = [{"id": f"dash-ok{i}", "prompt": "x", "script": STEPS[-2:]} for i in range(3)]
        out = client.post("/v1/tasks", json=done, params={"batch": "dash0"}).json()
        deadline = time.monotonic() + 60
        while client.get("/v1/fleet/status").json()["counts"]["succeeded"] < 3:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        tasks = [{"id": f"dash-{i}", "prompt": "wait", "script": SLOW} for i in range(5)]
        out = client.post("/v1/tasks", json=tasks, params={"batch": "dash"}).json()
        assert len(out["accepted"]) == 5
        while len(client.get("/v1/fleet/status").json()["running"]) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        try:
            page = f"{served}/?token={TOKEN}"
            shot = tmp_path / "dashboard.png"
            print("screenshot:", shot)
            result = run_chromium(binary, tmp_path, [f"--screenshot={shot}", page])
            assert shot.exists(), result.stderr[-2000:]
            png = shot.read_bytes()
            assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 20_000
            dom = run_chromium(binary, tmp_path, ["--dump-dom", page]).stdout
            status = client.get("/v1/fleet/status").json()
            for item in status["running"]:
                assert item["task_id"] in dom
            for task_id in status["queued"]:
                assert task_id in dom
            assert "dash-ok0" in dom  # recent outcomes
            assert '<span id="error"></span>' in dom  # no fetch failed
            assert "<rect" in dom  # the durations chart was drawn
        finally:
            for task in tasks:
                client.post(f"/v1/tasks/{task['id']}/cancel")
