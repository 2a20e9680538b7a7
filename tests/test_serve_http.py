"""The API on a real ``serve.run`` (local Ray), over real HTTP: streams, reconnects, dashboard."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

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
DONE = script(("finish", {"summary": "done"}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(ray_session: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fleet plus the API deployed with serve.run; yields the base URL."""
    from ray import serve

    from fleet import Fleet
    from serve.deployment import start

    fleet = Fleet.start(
        name=f"serve-http-{time.monotonic_ns() % 10**8}",
        events_dir=str(tmp_path_factory.mktemp("http-events")),
        sandbox="local",
        workers=2,
        flush_interval_s=0.2,
        approval_wait_s=1.0,  # a call waiting on a person parks: it holds no worker
        namespace="agent-fleet-tests",
    )
    port = free_port()
    start(fleet.settings.name, fleet.settings.namespace, ServeSettings(token=TOKEN), port=port)
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
    "--window-size=1280,1000",
]


class Browser:
    """Headless Chromium driven over the DevTools protocol (a websocket; no extra package)."""

    def __init__(self, binary: str, profile: Path, url: str) -> None:
        cmd = [binary, *CHROMIUM_FLAGS, "--remote-debugging-port=0", f"--user-data-dir={profile}"]
        self.proc = subprocess.Popen(
            [*cmd, url], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.calls = 0
        try:
            port_file = profile / "DevToolsActivePort"
            deadline = time.monotonic() + 60
            while not (port_file.exists() and port_file.read_text().strip()):
                assert self.proc.poll() is None and time.monotonic() < deadline, "no DevTools"
                time.sleep(0.1)
            port = port_file.read_text().split()[0]
            targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
            page = next(t for t in targets if t["type"] == "page")
            self.ws = connect(page["webSocketDebuggerUrl"], max_size=None)
        except BaseException:
            self.close()
            raise

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.calls += 1
        self.ws.send(json.dumps({"id": self.calls, "method": method, "params": params}))
        while True:
            reply = json.loads(self.ws.recv(timeout=60))
            if reply.get("id") == self.calls:
                assert "error" not in reply, reply
                return reply["result"]

    def js(self, expression: str) -> Any:
        """Evaluate in the page; the value (JSON-able) or None."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    def wait(self, expression: str, timeout_s: float, what: str) -> float:
        """Poll until ``expression`` is truthy; returns the seconds it took."""
        t0 = time.monotonic()
        while not self.js(expression):
            if time.monotonic() - t0 > timeout_s:
                page = self.js("document.querySelector('main').innerText")
                error = self.js("document.getElementById('error').textContent")
                raise AssertionError(f"{what}: not within {timeout_s}s; error {error!r}; {page}")
            time.sleep(0.05)
        return time.monotonic() - t0

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ws.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def row_of(task_id: str) -> str:
    """JS: the blocked-table row of a task, as HTML ('' if absent)."""
    return (
        "[...document.querySelectorAll('#blocked tr')].map((r) => r.outerHTML)"
        f".find((h) => h.includes('>{task_id}<')) || ''"
    )


def test_dashboard_in_headless_chromium_updates_live(served: str, tmp_path: Path) -> None:
    binary = chromium()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (scripts/ci-chromium.sh installs it)")
        pytest.skip("chromium is not installed")
    with httpx.Client(base_url=served, headers=AUTH, timeout=60) as client:

        def state(task_id: str) -> str:
            return client.get(f"/v1/sessions/{task_id}").json()["status"]

        def wait_for(check: Any, what: str, timeout_s: float = 60) -> None:
            deadline = time.monotonic() + timeout_s
            while not check():
                assert time.monotonic() < deadline, what
                time.sleep(0.2)

        done = [{"id": f"dash-ok{i}", "prompt": "x", "script": STEPS[-2:]} for i in range(3)]
        client.post("/v1/tasks", json=done, params={"batch": "dash0"})
        review = {"id": "dash-review", "prompt": "x", "require_approval": True, "script": DONE}
        client.post("/v1/tasks", json=[review])
        asker = {"name": "asker", "approvals": {"shell": "always_ask"}}
        client.post(
            "/v1/sessions",
            json={"id": "dash-ask", "prompt": "x", "agent": asker, "script": STEPS[-2:]},
        )
        wait_for(lambda: client.get("/v1/fleet/status").json()["counts"]["succeeded"] >= 3, "ok")
        wait_for(lambda: state("dash-review") == "awaiting_review", "review")
        wait_for(lambda: state("dash-ask") == "awaiting_approval", "approval")
        tasks = [{"id": f"dash-{i}", "prompt": "wait", "script": SLOW} for i in range(5)]
        out = client.post("/v1/tasks", json=tasks, params={"batch": "dash"}).json()
        assert len(out["accepted"]) == 5
        wait_for(lambda: len(client.get("/v1/fleet/status").json()["running"]) >= 2, "running")
        new = {"id": "dash-live", "prompt": "x", "script": SLOW}
        browser = Browser(binary, tmp_path / "profile", f"{served}/?token={TOKEN}")
        try:
            # Loaded: the stream is open and every part is drawn.
            browser.wait("window.fleetLive && fleetLive.state === 'open'", 30, "stream open")
            browser.wait("!!document.querySelector('#chart rect')", 30, "durations chart")
            browser.wait(f"({row_of('dash-review')}).includes('Approve')", 30, "blocked list")
            dom = browser.js("document.documentElement.outerHTML")
            status = client.get("/v1/fleet/status").json()
            for item in status["running"]:
                assert item["task_id"] in dom
            for task_id in status["queued"]:
                assert task_id in dom
            assert "dash-ok0" in dom  # recent outcomes
            assert '<span id="error"></span>' in dom  # no fetch failed
            # Waiting on people: a result to review, a tool call to allow, each with its buttons.
            review_row, ask_row = browser.js(f"[{row_of('dash-review')}, {row_of('dash-ask')}]")
            assert 'data-act="approve"' in review_row and 'data-act="reject"' in review_row
            assert 'data-act="allow"' in ask_row and 'data-act="deny"' in ask_row

            # From now on only the stream can update the page: stop its fallback polls.
            assert browser.js("fleetLive.polls.forEach(clearInterval) || fleetLive.polls.length")
            seen = browser.js("fleetLive.events")
            assert client.post("/v1/tasks", json=[new]).json()["accepted"] == ["dash-live"]
            took = browser.wait(
                "document.getElementById('queue').textContent.includes('dash-live')",
                10,
                "a new task shown live",
            )
            print(f"new task on the page after {took:.2f} s")
            assert browser.js("fleetLive.events") > seen
            assert "dash-live" in browser.js("document.getElementById('events').textContent")
            assert browser.js("document.getElementById('live').dataset.state") == "open"
            shot = tmp_path / "dashboard.png"
            png = base64.b64decode(browser.call("Page.captureScreenshot")["data"])
            shot.write_bytes(png)
            print("screenshot:", shot)
            assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 20_000

            # Approve from the page: the review route is called and the row goes away.
            browser.js(
                "document.querySelector('#blocked button[data-act=approve]"
                "[data-id=dash-review]').click()"
            )
            wait_for(lambda: state("dash-review") == "succeeded", "approved", 15)
            browser.wait(f"!({row_of('dash-review')})", 10, "the approved task leaves the list")
        finally:
            browser.close()
            for task in [*tasks, new, {"id": "dash-ask"}]:
                client.post(f"/v1/tasks/{task['id']}/cancel")
