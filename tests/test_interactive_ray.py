"""Interactive tasks on a real local Ray: a turn ends idle (no worker busy, no container), a
message resumes it on another worker with the same files, close runs the gate; idle ones
expire; an idle task survives a supervisor killed with SIGKILL. The docker test checks that
no container is left while it is idle."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest
import ray

from core.events import EventType
from core.specs import TaskState
from sandboxes import docker_available
from tests.conftest import script, wait_state

pytestmark = pytest.mark.ray

CHAT = script(
    ("write_file", {"path": "notes.txt", "content": "one\n"}),
    ("finish", {"summary": "wrote notes.txt"}),
    ("shell", {"command": "cat notes.txt"}),
    ("write_file", {"path": "more.txt", "content": "two\n"}),
    ("finish", {"summary": "read notes.txt"}),
)
GATE = "grep -qx one notes.txt && grep -qx two more.txt"


def chat(task_id: str = "chat") -> dict[str, Any]:
    return {
        "id": task_id,
        "prompt": "take notes",
        "interactive": True,
        "gate": GATE,
        "script": CHAT,
    }


def wait_idle(fleet: Any, task_id: str, turns: int, timeout_s: float = 60) -> Any:
    """Until the task is idle after its ``turns``-th turn."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        record = fleet.get(task_id)
        if record.state == TaskState.idle:
            kinds = [e.type for e in fleet.events(task_id)]
            if kinds.count(EventType.session_idle) >= turns:
                return record
        time.sleep(0.1)
    record, status = fleet.get(task_id), fleet.status()
    raise AssertionError(f"{task_id} not idle after turn {turns}: {record}; fleet: {status}")


def nothing_runs(fleet: Any) -> bool:
    status = fleet.status()
    return status["running"] == [] and status["counts"]["running"] == 0


def second_turn_and_close(fleet: Any, task_id: str, first_worker: str | None) -> list[Any]:
    """Message, second turn (checks it saw turn 1's file), close; the task's events."""
    assert fleet.send(task_id, "now read your notes back")
    wait_idle(fleet, task_id, 2)
    assert fleet.close(task_id)
    record = fleet.wait([task_id], timeout_s=60)[0]
    assert record.state == TaskState.succeeded, record.reason
    events = fleet.events(task_id)
    read = [e for e in events if e.type == EventType.agent_tool_result and e.tool == "shell"]
    assert read[0].payload["stdout"] == "one\n"  # the next turn has the same files
    started = [e for e in events if e.type == EventType.session_started]
    assert [e.payload["resumed"] for e in started] == [False, True, True]
    if first_worker is not None:
        assert started[1].worker != first_worker
    kinds = [e.type for e in events]
    assert kinds.count(EventType.gate_passed) == 1  # only at the close
    assert kinds.index(EventType.task_closed) < kinds.index(EventType.gate_passed)
    diff = fleet.diff(task_id)
    assert "+one" in diff and "+two" in diff  # against the start, across the turns
    return events


def test_a_conversation_resumes_on_another_worker_and_is_gated_at_close(fleet_factory):
    fleet = fleet_factory(workers=2)
    fleet.submit([chat()])
    idle = wait_idle(fleet, "chat", 1)
    assert idle.summary == "wrote notes.txt" and nothing_runs(fleet)
    assert [e.type for e in fleet.events("chat")].count(EventType.gate_passed) == 0
    # The worker that ran turn 1 is gone: turn 2 runs elsewhere, from the saved workspace.
    first = idle.worker
    os.kill(ray.get(fleet.supervisor.worker_pid.remote(first)), signal.SIGKILL)
    second_turn_and_close(fleet, "chat", first)
    refused = fleet.send("chat", "anything else?")
    assert not refused and "ended" in refused.reason


def test_an_idle_task_expires_and_keeps_its_results(fleet_factory):
    fleet = fleet_factory(workers=1, idle_timeout_s=1.0, watch_interval_s=0.2)
    fleet.submit([chat("old")])
    record = fleet.wait(["old"], timeout_s=60)[0]  # expired is terminal
    assert record.state == TaskState.expired
    assert "idle_timeout_s 1" in record.reason
    refused = fleet.send("old", "hello?")
    assert not refused and "it takes no more messages" in refused.reason
    assert fleet.file("old", "notes.txt") == b"one\n"
    kinds = [e.type for e in fleet.events("old")]
    assert kinds[-2:] == [EventType.session_idle, EventType.task_expired]


def test_an_idle_task_survives_a_supervisor_restart(fleet_factory):
    fleet = fleet_factory(workers=1)
    fleet.submit([chat()])
    wait_idle(fleet, "chat", 1)
    os.kill(ray.get(fleet.supervisor.pid.remote()), signal.SIGKILL)
    deadline = time.time() + 60
    while True:  # the restarted supervisor replays its log; calls fail until it is back
        try:
            record = fleet.get("chat")
            break
        except ray.exceptions.RayActorError:
            assert time.time() < deadline
            time.sleep(0.5)
    assert record.state == TaskState.idle and record.idle_since is not None
    events = second_turn_and_close(fleet, "chat", None)
    assert [e.type for e in events].count(EventType.task_retried) == 2  # message, close


@pytest.mark.docker
@pytest.mark.skipif(not docker_available(), reason="no Docker engine answers")
def test_an_idle_docker_session_holds_no_container(fleet_factory):
    from tests.test_recovery import fleet_containers

    fleet = fleet_factory(workers=2, sandbox="docker", warm_pool=0)
    fleet.submit([chat()])
    wait_idle(fleet, "chat", 1)
    assert nothing_runs(fleet)
    deadline = time.time() + 10
    while fleet_containers(fleet.settings.name):  # the session's container is removed
        assert time.time() < deadline, fleet_containers(fleet.settings.name)
        time.sleep(0.2)
    second_turn_and_close(fleet, "chat", None)
    wait_state(fleet, "chat", TaskState.succeeded)
