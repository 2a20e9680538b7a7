"""A task's page on the dashboard, in headless Chromium over real HTTP (``serve.run`` on a
local Ray): a finished task's prompt, transcript and coloured diff, its files; steering a
running task from the page; task ids on the dashboard link to their pages, with prompts."""

from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import script
from tests.test_serve_http import AUTH, SLOW, TOKEN, Browser, chromium, served

pytestmark = pytest.mark.ray
__all__ = ["served"]  # the module's fleet and API (a fixture)

MAKE = script(
    ("write_file", {"path": "notes.txt", "content": "first line\nsecond line\n"}),
    ("shell", {"command": "echo changed > seed.txt"}),
    ("finish", {"summary": "wrote notes"}),
)


class RecordingBrowser(Browser):
    """A Browser that keeps the page's console errors, uncaught exceptions and failed
    loads (DevTools events arriving between replies)."""

    def __init__(self, binary: str, profile: Path) -> None:
        self.problems: list[dict[str, Any]] = []
        super().__init__(binary, profile, "about:blank")
        self.call("Runtime.enable")
        self.call("Log.enable")

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.calls += 1
        self.ws.send(json.dumps({"id": self.calls, "method": method, "params": params}))
        while True:
            reply = json.loads(self.ws.recv(timeout=60))
            if reply.get("id") == self.calls:
                assert "error" not in reply, reply
                return reply["result"]
            self.keep(reply)

    def keep(self, message: dict[str, Any]) -> None:
        kind, params = message.get("method"), message.get("params", {})
        if kind == "Runtime.exceptionThrown":
            self.problems.append(params["exceptionDetails"])
        elif kind == "Runtime.consoleAPICalled" and params.get("type") == "error":
            self.problems.append(params)
        elif kind == "Log.entryAdded" and params["entry"].get("level") == "error":
            self.problems.append(params["entry"])

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        time.sleep(0.3)


def test_a_tasks_page_shows_its_work_and_steers_it(served: str, tmp_path: Path) -> None:
    binary = chromium()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (scripts/ci-chromium.sh installs it)")
        pytest.skip("chromium is not installed")
    with httpx.Client(base_url=served, headers=AUTH, timeout=60) as client:
        done = {
            "id": "page-done",
            "prompt": "Write notes <b>now</b> please",
            "files": {"seed.txt": "original\n"},
            "script": MAKE,
        }
        assert client.post("/v1/sessions", json=done).status_code == 201
        deadline = time.monotonic() + 60
        while client.get("/v1/sessions/page-done").json()["status"] != "succeeded":
            assert time.monotonic() < deadline, "page-done did not succeed"
            time.sleep(0.2)
        running = {"id": "page-run", "prompt": "wait a while", "script": SLOW}
        assert client.post("/v1/sessions", json=running).status_code == 201
        while client.get("/v1/sessions/page-run").json()["status"] != "running":
            assert time.monotonic() < deadline, "page-run did not start"
            time.sleep(0.2)

        browser = RecordingBrowser(binary, tmp_path / "profile")
        try:
            # The dashboard: ids link to the task's page, prompts are shown beside them.
            browser.open(f"{served}/?token={TOKEN}")
            link = "document.querySelector('a[href=\"/sessions/page-done\"]')"
            browser.wait(f"!!{link}", 30, "a link to the task's page")
            prompts = browser.js(
                "[...document.querySelectorAll('.prompt')].map((p) => p.textContent)"
            )
            assert "Write notes <b>now</b> please" in prompts  # as text, not markup
            assert "wait a while" in prompts

            # A finished task: its prompt, transcript and diff.
            browser.js(f"{link}.click()")
            browser.wait("window.fleetSession && fleetSession.state === 'ended'", 30, "stream")
            assert browser.js("location.pathname") == "/sessions/page-done"
            assert browser.js("document.getElementById('prompt').textContent") == done["prompt"]
            types = browser.js("[...document.querySelectorAll('tr.ev')].map((r) => r.dataset.type)")
            assert types[0] == "task.submitted" and types[-1] == "task.succeeded"
            assert {"agent.tool_use", "agent.tool_result", "session.ended"} <= set(types)
            browser.wait("!!document.querySelector('#diff .add')", 15, "the diff")
            added = browser.js(
                "[...document.querySelectorAll('#diff .add')].map((d) => d.textContent)"
            )
            removed = browser.js(
                "[...document.querySelectorAll('#diff .del')].map((d) => d.textContent)"
            )
            assert "+first line" in added and "+changed" in added and "-original" in removed
            assert "succeeded" in browser.js("document.getElementById('state').textContent")
            # Its files: listed; one clicked is shown.
            browser.wait(
                "!!document.querySelector('#files a[data-path=\"notes.txt\"]')", 15, "files"
            )
            browser.js("document.querySelector('#files a[data-path=\"notes.txt\"]').click()")
            browser.wait(
                "document.getElementById('file').textContent.includes('second line')", 10, "file"
            )
            shot = tmp_path / "session-page.png"
            png = base64.b64decode(browser.call("Page.captureScreenshot")["data"])
            shot.write_bytes(png)
            print("screenshot:", shot)
            assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 20_000

            # A running task: steer it from its page; the message arrives in the transcript.
            browser.open(f"{served}/sessions/page-run")
            browser.wait(
                "fleetSession.state === 'open' && fleetSession.events.length > 2", 30, "live"
            )
            browser.js("document.getElementById('steer-text').value = 'please hurry'")
            browser.js("document.getElementById('steer-send').click()")
            browser.wait(
                "[...document.querySelectorAll('tr.ev[data-type=\"user.message\"]')]"
                ".some((r) => r.textContent.includes('please hurry'))",
                15,
                "the steering message in the transcript",
            )
            browser.wait("document.getElementById('steer-text').value === ''", 10, "sent")
            assert browser.js("document.getElementById('error').textContent") == ""
            assert browser.problems == [], browser.problems
        finally:
            browser.close()
            client.post("/v1/sessions/page-run/archive")  # cancels it
