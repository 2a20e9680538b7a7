"""The harness inside the fleet, on a real local Ray: approvals that park and resume on another
worker, denials, handoffs between agents, skills, follow-ups, interrupt and steering."""

import os
import signal
import time

import pytest
import ray

from core.events import EventType
from core.specs import FleetConfig, TaskState
from tests.conftest import wait_state

pytestmark = pytest.mark.ray


def step(tool, **args):
    return {"tool": tool, "args": args}


ASKING = FleetConfig.model_validate(
    {"agents": {"careful": {"approvals": {"shell": {"ask_if": {"command": "rm "}}}}}}
)


def test_approval_parks_the_session_and_it_resumes_on_another_worker(fleet_factory):
    fleet = fleet_factory(workers=2, config=ASKING, approval_wait_s=0.3)
    script = [
        step("write_file", path="junk.txt", content="x"),
        step("shell", command="rm junk.txt && echo removed"),
        step("finish", summary="cleaned"),
    ]
    fleet.submit(
        [
            {
                "id": "a",
                "prompt": "clean up",
                "agent": "careful",
                "script": script,
                "gate": "test ! -e junk.txt",
            }
        ]
    )
    parked = wait_state(fleet, "a", TaskState.awaiting_approval)
    assert parked.pending_approval["tool"] == "shell"
    assert fleet.status()["blocked"][0]["call_id"] == parked.pending_approval["call_id"]
    # The worker that ran it is gone: the session must resume elsewhere, from its snapshot.
    first_worker = parked.worker
    os.kill(ray.get(fleet.supervisor.worker_pid.remote(first_worker)), signal.SIGKILL)
    assert fleet.approve("a", parked.pending_approval["call_id"], allow=True)
    record = fleet.wait(["a"], timeout_s=60)[0]
    assert record.state == TaskState.succeeded, record.reason
    events = fleet.events("a")
    types = [e.type for e in events]
    assert types.count(EventType.approval_requested) == 1
    assert EventType.task_parked in types
    decided = [e.payload for e in events if e.type == EventType.approval_decided]
    assert [d["by"] for d in decided] == ["user"]  # logged once, where the person decided
    started = [e for e in events if e.type == EventType.session_started]
    assert started[-1].payload["resumed"] is True and started[-1].worker != first_worker
    rm = [e for e in events if e.type == EventType.agent_tool_result and e.tool == "shell"]
    assert rm[-1].payload["stdout"].strip() == "removed"
    assert record.attempts == 1  # parking and resuming is one attempt


def test_denied_call_is_reported_to_the_agent(fleet_factory):
    fleet = fleet_factory(workers=1, config=ASKING, approval_wait_s=20)
    script = [step("shell", command="rm -rf /workspace-ish"), step("finish", summary="gave up")]
    fleet.submit([{"id": "d", "prompt": "x", "agent": "careful", "script": script}])
    deadline = time.time() + 30
    while not (fleet.get("d").pending_approval or {}).get("call_id"):
        assert time.time() < deadline
        time.sleep(0.05)
    call_id = fleet.get("d").pending_approval["call_id"]
    assert fleet.approve("d", call_id, allow=False, message="never delete things")
    record = fleet.wait(["d"], timeout_s=30)[0]
    assert record.state == TaskState.succeeded
    result = next(e for e in fleet.events("d") if e.type == EventType.agent_tool_result)
    assert result.payload["is_error"] and "never delete things" in result.payload["output"]
    assert not fleet.approve("d", call_id)  # nothing waits any more
    assert [e.type for e in fleet.events("d")].count(EventType.approval_decided) == 1


def test_handoff_between_two_agents(fleet_factory):
    tools = ["shell", "read_file", "write_file", "handoff", "finish"]
    config = FleetConfig.model_validate(
        {"agents": {"coder": {"tools": tools}, "writer": {"tools": tools}}}
    )
    fleet = fleet_factory(workers=2, config=config)
    script = [
        step("write_file", path="lib.py", content="def f():\n    return 1\n") | {"agent": "coder"},
        step("handoff", agent="writer", note="lib.py is done; document f") | {"agent": "coder"},
        step("shell", command="grep -c 'def f' lib.py") | {"agent": "writer"},
        step("write_file", path="DOCS.md", content="# f\nreturns 1\n") | {"agent": "writer"},
        step("finish", summary="documented") | {"agent": "writer"},
    ]
    fleet.submit(
        [
            {
                "id": "h",
                "prompt": "write and document f",
                "agent": "coder",
                "script": script,
                "gate": "grep -q 'def f' lib.py && test -s DOCS.md",
            }
        ]
    )
    final = fleet.wait(["h"], timeout_s=60)[0]
    events = fleet.events("h")
    handoff = next(e for e in events if e.type == EventType.handoff)
    assert handoff.payload["to_agent"] == "writer"
    assert "document f" in handoff.payload["note"]
    assigned = [e.payload["agent"] for e in events if e.type == EventType.task_assigned]
    assert assigned[:2] == ["coder", "writer"]
    # The writer continued on the coder's workspace: the coder's file is there.
    assert final.state == TaskState.succeeded, final.reason
    grep = next(e for e in events if e.type == EventType.agent_tool_result and e.tool == "shell")
    assert grep.payload["stdout"].strip() == "1"


def test_skill_is_installed_and_used(fleet_factory):
    config = FleetConfig.model_validate({"agents": {"mapper": {"skills": ["repo-summary"]}}})
    fleet = fleet_factory(workers=1, config=config)
    script = [
        step("shell", command="python3 .skills/repo-summary/summarize.py"),
        step("finish", summary="mapped"),
    ]
    fleet.submit(
        [
            {
                "id": "sk",
                "prompt": "map the repo",
                "agent": "mapper",
                "script": script,
                "files": {"app.py": "print('hi')\n", "tests/test_app.py": "def test(): pass\n"},
            }
        ]
    )
    assert fleet.wait(["sk"], timeout_s=60)[0].state == TaskState.succeeded
    result = next(e for e in fleet.events("sk") if e.type == EventType.agent_tool_result)
    assert result.exit_code == 0 and "test_app.py" in result.payload["stdout"]


def test_followup_task_is_created_and_linked(fleet_factory):
    tools = ["shell", "create_followup", "finish"]
    config = FleetConfig.model_validate({"agents": {"lead": {"tools": tools}}})
    fleet = fleet_factory(workers=1, config=config)
    script = [
        step("create_followup", prompt="add tests for f", labels=["tests"]),
        step("finish", summary="asked for tests"),
    ]
    fleet.submit([{"id": "p", "prompt": "x", "agent": "lead", "script": script}])
    assert fleet.wait(["p"], timeout_s=30)[0].state == TaskState.succeeded
    parent = fleet.get("p")
    assert parent.children == ["p.f1"]
    child = fleet.get("p.f1")
    assert child.spec.parent == "p" and child.spec.labels == ["tests"]
    assert child.spec.prompt == "add tests for f"
    followup = next(e for e in fleet.events("p") if e.type == EventType.task_followup)
    assert followup.payload["child"] == "p.f1"


def test_interrupt_then_steer_resumes_the_session(fleet_factory):
    fleet = fleet_factory(workers=1)
    script = [
        step("shell", command="sleep 1.5"),
        step("shell", command="echo second"),
        step("finish", summary="done"),
    ]
    fleet.submit([{"id": "i", "prompt": "x", "script": script}])
    wait_state(fleet, "i", TaskState.running)
    time.sleep(0.3)
    assert fleet.interrupt("i")
    wait_state(fleet, "i", TaskState.paused)
    assert fleet.steer("i", "carry on, please")
    record = fleet.wait(["i"], timeout_s=30)[0]
    assert record.state == TaskState.succeeded
    events = fleet.events("i")
    delivered = [e for e in events if e.type == EventType.user_message and e.worker]
    assert delivered and delivered[0].payload["text"] == "carry on, please"
    outputs = [e.payload.get("stdout") for e in events if e.type == EventType.agent_tool_result]
    assert "second\n" in outputs
    assert outputs.count("second\n") == 1
