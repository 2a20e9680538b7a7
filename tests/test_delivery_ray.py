"""Tasks on git repositories on a real Ray fleet (local sandboxes, a bare repository under
tmp_path as the remote): the result of a task that passed is on its branch, once, even when
the supervisor is killed after its push and before it logged the delivery."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import ray

from core.events import EventType
from core.specs import TaskState
from tests.conftest import script
from tests.test_delivery import bare_remote

pytestmark = pytest.mark.ray


def sh(*args: str, cwd: Path) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


def task(bare: Path, task_id: str) -> dict:
    return {
        "id": task_id,
        "prompt": "say hello",
        "repo": {"url": str(bare), "ref": "main"},
        "script": script(
            ("write_file", {"path": "hello.txt", "content": "hello\n"}),
            ("finish", {"summary": "Wrote hello.txt"}),
        ),
        "gate": "grep -q hello hello.txt",
    }


def test_a_task_on_a_repository_ends_on_its_branch(fleet_factory, tmp_path: Path) -> None:
    bare = bare_remote(tmp_path)
    fleet = fleet_factory(workers=1, git_author_name="Fleet Bot")
    fleet.submit([task(bare, "g1")])
    record = fleet.wait(["g1"], timeout_s=60)[0]
    assert record.state == TaskState.succeeded, record.reason
    tip = sh("rev-parse", "fleet/g1", cwd=bare)
    assert (record.branch, record.commit) == ("fleet/g1", tip)
    assert sh("log", "-1", "--format=%an|%s", "fleet/g1", cwd=bare) == "Fleet Bot|Wrote hello.txt"
    assert sh("show", "fleet/g1:hello.txt", cwd=bare) == "hello"
    delivered = [e for e in fleet.events("g1") if e.type == EventType.task_delivered]
    assert [e.payload["commit"] for e in delivered] == [tip]


def test_supervisor_killed_while_it_pushes_delivers_once(fleet_factory, tmp_path: Path) -> None:
    bare = bare_remote(tmp_path)
    marker = tmp_path / "first-push"
    hook = bare / "hooks" / "post-receive"
    # The first push lands, then waits 4 s in the remote's hook: the supervisor dies after the
    # push and before it logged the delivery.
    hook.write_text(f"#!/bin/sh\nif [ ! -e {marker} ]; then touch {marker}; sleep 4; fi\n")
    hook.chmod(0o755)
    fleet = fleet_factory(workers=1)
    fleet.submit([task(bare, "g2")])
    deadline = time.time() + 60
    while not marker.exists():
        assert time.time() < deadline, "the push never started"
        time.sleep(0.05)
    os.kill(ray.get(fleet.supervisor.pid.remote()), signal.SIGKILL)
    pushed = sh("rev-parse", "fleet/g2", cwd=bare)
    time.sleep(5)  # the supervisor restarts
    record, deadline = None, time.time() + 150  # a restart is slow on a loaded machine
    while record is None or record.state != TaskState.succeeded:
        assert time.time() < deadline, f"g2 never succeeded: {record}"
        time.sleep(0.2)
        with contextlib.suppress(ray.exceptions.RayError):  # restarting
            record = fleet.get("g2")
    tip = sh("rev-parse", "fleet/g2", cwd=bare)
    assert tip == pushed and record.commit == tip  # the rerun did not push over it
    assert sh("rev-list", "--count", "main..fleet/g2", cwd=bare) == "1"
    events = fleet.events("g2")
    delivered = [e.payload for e in events if e.type == EventType.task_delivered]
    assert [(d["commit"], d["adopted"]) for d in delivered] == [(tip, True)]
    assert sum(e.type == EventType.task_succeeded for e in events) == 1
