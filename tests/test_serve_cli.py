"""`fleet serve` as a person runs it: a subprocess with its own local Ray, a token in
FLEET_API_TOKEN, a session created over HTTP and its events streamed to the end (with curl
when there is one, as the issue's "done when" says), then a clean stop on SIGTERM."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import script
from tests.test_serve_app import sse_events
from tests.test_serve_http import free_port

pytestmark = pytest.mark.ray

TOKEN = "cli-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
STEPS = script(
    ("write_file", {"path": "a.txt", "content": "a"}),
    ("shell", {"command": "cat a.txt"}),
    ("finish", {"summary": "done"}),
)


def ray_processes_of(pid: int) -> list[str]:
    """Ray's own processes (raylet, GCS) of the local Ray that process ``pid`` started: their
    command lines name a session directory ending in that pid."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "/session_" in args and f"_{pid}/" in args:
            found.append(args[:120])
    return found


def stream(base: str, path: str) -> list[dict[str, str]]:
    """Read an SSE stream to its end: curl when installed, else httpx."""
    curl = shutil.which("curl")
    if curl:
        cmd = [curl, "-sSN", "--max-time", "120", "-H", f"Authorization: Bearer {TOKEN}"]
        done = subprocess.run([*cmd, base + path], capture_output=True, text=True, timeout=150)
        assert done.returncode == 0, done.stderr
        return sse_events(iter(done.stdout.splitlines()))
    with httpx.stream("GET", base + path, headers=AUTH, timeout=120) as r:
        return sse_events(r.iter_lines())


NO_DOCKER = "unix:///nonexistent/docker.sock"
"""A DOCKER_HOST where no engine answers."""


def serve_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "FLEET_SANDBOX"}
    return {
        **env,
        "FLEET_API_TOKEN": TOKEN,
        "RAY_ADDRESS": "local",  # its own Ray, never another one running on this machine
        "PYTHONUNBUFFERED": "1",
        **extra,
    }


def serve_cmd(port: int, tmp_path: Path, *args: str) -> list[str]:
    cmd = [sys.executable, "-m", "fleet.cli", "serve", "--port", str(port), "--workers", "1"]
    return [*cmd, "--events", str(tmp_path / "events"), "--name", f"cli-{os.getpid()}", *args]


def test_serve_refuses_local_sandboxes_it_was_not_asked_for(tmp_path: Path) -> None:
    """auto with no Docker engine would run client tasks on the host: refused, exit 2."""
    for sandbox in (["--sandbox", "auto"], []):  # the default is auto
        done = subprocess.run(
            serve_cmd(free_port(), tmp_path, *sandbox),
            env=serve_env(DOCKER_HOST=NO_DOCKER),
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert done.returncode == 2, done.stdout + done.stderr
        errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        assert errors == [
            "error: refusing to serve with local sandboxes: no Docker engine answered on the "
            "head, so client tasks would run as host processes, not isolated; start Docker, or "
            "pass --sandbox local (or FLEET_SANDBOX=local) to accept that"
        ], done.stderr
        assert "Traceback" not in done.stderr and "API and dashboard" not in done.stdout


def test_serve_takes_local_sandboxes_from_fleet_sandbox(tmp_path: Path) -> None:
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    env = serve_env(DOCKER_HOST=NO_DOCKER, FLEET_SANDBOX="local")
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen(
            serve_cmd(free_port(), tmp_path), stdout=stdout, stderr=stderr, env=env
        )
    try:
        deadline = time.monotonic() + 180
        while "API and dashboard on" not in out.read_text():
            assert proc.poll() is None, err.read_text()[-3000:]
            assert time.monotonic() < deadline, out.read_text()
            time.sleep(0.2)
        assert out.read_text().startswith("sandbox: local (asked for:")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


def test_fleet_serve_creates_a_session_streams_it_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = serve_env(DOCKER_HOST=NO_DOCKER)  # local, asked for by name: served all the same
    cmd = [sys.executable, "-m", "fleet.cli", "serve", "--port", str(port), "--replicas", "1"]
    cmd += ["--workers", "1", "--sandbox", "local", "--events", str(tmp_path / "events")]
    cmd += ["--name", f"cli-{os.getpid()}"]
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen(cmd, stdout=stdout, stderr=stderr, env=env)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, f"fleet serve exited {proc.returncode}: {err.read_text()}"
            assert time.monotonic() < deadline, "fleet serve never answered /healthz"
            try:  # before the app is deployed, Serve's proxy answers 404 or 503
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        while f"API and dashboard on http://127.0.0.1:{port}/" not in out.read_text():
            assert time.monotonic() < deadline, out.read_text()
            time.sleep(0.2)
        first = out.read_text().splitlines()[0]
        assert first.startswith("sandbox: local (asked for: commands run as host processes")

        with httpx.Client(base_url=base, headers=AUTH, timeout=60) as client:
            assert client.get("/v1/fleet/status", headers={"Authorization": ""}).status_code == 401
            body = {
                "id": "cli-1",
                "prompt": "write a.txt",
                "gate": "test -s a.txt",
                "script": STEPS,
            }
            created = client.post("/v1/sessions", json=body)
            assert created.status_code == 201, created.text
            events = stream(base, "/v1/sessions/cli-1/events/stream")
            assert events[-1]["event"] == "session.end"
            assert json.loads(events[-1]["data"]) == {"status": "succeeded"}
            seqs = [int(e["id"]) for e in events[:-1]]
            assert seqs == list(range(len(seqs))) and len(seqs) >= 5
            assert [e["event"] for e in events[:-1]][-1] == "task.succeeded"
            history = client.get("/v1/sessions/cli-1/events").json()["data"]
            assert [e["seq"] for e in history] == seqs
            # The fleet-wide stream through Serve's proxy, token in the query (EventSource).
            url = f"/v1/events/stream?after=-1&token={TOKEN}"
            with client.stream("GET", url, headers={"Authorization": ""}) as r:
                seen: list[str] = []
                for line in r.iter_lines():
                    seen.append(line)
                    if '"type":"task.succeeded"' in line:
                        break
            fleet_events = sse_events(iter([*seen, ""]))
            assert fleet_events[0]["event"] == "stream.open"
            mine = [json.loads(e["data"]) for e in fleet_events[1:]]
            assert [e["seq"] for e in mine if e["task_id"] == "cli-1"] == seqs

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0, err.read_text()[-3000:]
        assert "stopping" in out.read_text()
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{base}/healthz", timeout=2)
        deadline = time.monotonic() + 20
        while ray_processes_of(proc.pid):  # its Ray went with it
            assert time.monotonic() < deadline, ray_processes_of(proc.pid)
            time.sleep(0.5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
