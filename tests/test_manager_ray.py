"""The supervisor as a manager, on a real local Ray: routing, watching, retries, gates,
reviews, stages, memory, and surviving a supervisor crash."""

import contextlib
import os
import signal
import time
from collections import Counter

import pytest
import ray

from core.events import EventType
from core.specs import FleetConfig, TaskState
from tests.conftest import script, wait_state

pytestmark = pytest.mark.ray

DONE = script(("finish", {"summary": "done"}))
CHECKPOINTED = script(
    ("shell", {"command": "echo one >> log.txt"}),
    ("shell", {"command": "sleep 0.5"}),  # a checkpoint is taken here...
    ("shell", {"command": "sleep 2"}),  # ...and the session killed here
    ("shell", {"command": "echo two >> log.txt"}),
    ("finish", {"summary": "done"}),
)
ONE_THEN_TWO = 'test "$(cat log.txt)" = "$(printf \'one\\ntwo\')"'  # not started over


def types_of(fleet, task_id):
    return [e.type for e in fleet.events(task_id)]


def test_routing_by_label_and_environment(fleet_factory):
    config = FleetConfig.model_validate({"environments": {"gpu": {}}})
    fleet = fleet_factory(
        config=config,
        pools=[
            {"name": "general", "workers": 1, "environments": ["default"]},
            {"name": "python", "workers": 1, "labels": ["python"], "environments": ["default"]},
            {"name": "gpu", "workers": 1, "environments": ["gpu"]},
        ],
    )
    out = fleet.submit(
        [
            {"id": "py", "prompt": "x", "requires": ["python"], "script": DONE},
            {"id": "gpu", "prompt": "x", "environment": "gpu", "script": DONE},
            {"id": "any", "prompt": "x", "script": DONE},
            {"id": "rust", "prompt": "x", "requires": ["rust"], "script": DONE},
        ]
    )
    assert out.rejected[0]["task_id"] == "rust" and out.rejected[0]["field"] == "requires"
    fleet.wait(out.accepted, timeout_s=60)
    pools = {
        t: next(e.payload["pool"] for e in fleet.events(t) if e.type == EventType.task_assigned)
        for t in out.accepted
    }
    assert pools["py"] == "python" and pools["gpu"] == "gpu"
    assert pools["any"] in ("general", "python")


def test_stalled_session_is_stopped_with_the_reason(fleet_factory):
    fleet = fleet_factory(workers=1, watch_interval_s=0.2)
    slow = script(("shell", {"command": "sleep 20"}), ("finish", {}))
    fleet.submit(
        [{"id": "stuck", "prompt": "x", "script": slow, "stall_timeout_s": 1, "max_attempts": 1}]
    )
    record = fleet.wait(["stuck"], timeout_s=30)[0]
    assert record.state == TaskState.needs_human
    assert "stalled: no event for" in record.reason


def test_backoff_then_needs_human_with_a_brief(fleet_factory):
    fleet = fleet_factory(workers=1, retry_backoff_s=0.5)
    fleet.submit([{"id": "bad", "prompt": "x", "gate": "false", "max_attempts": 3, "script": DONE}])
    record = fleet.wait(["bad"], timeout_s=60)[0]
    assert record.state == TaskState.needs_human and record.attempts == 3
    events = fleet.events("bad")
    assigned = [e.ts for e in events if e.type == EventType.task_assigned]
    retried = [e for e in events if e.type == EventType.task_retried]
    assert [r.payload["backoff_s"] for r in retried] == [0.5, 1.0]
    assert (assigned[1] - retried[0].ts).total_seconds() >= 0.45
    assert (assigned[2] - retried[1].ts).total_seconds() >= 0.95
    brief = events[-1].payload["brief"]
    assert len(brief) == 3 and all("gate failed" in line for line in brief)


def test_gate_fails_then_passes_and_the_retry_sees_why(fleet_factory):
    from tests.fake_openai import FakeOpenAI, Reply

    server = FakeOpenAI().start()
    try:
        write = '{{"path": "answer.txt", "content": "{}"}}'
        server.queue(
            Reply(tool_calls=[("c1", "write_file", write.format(41))]),
            Reply(tool_calls=[("c2", "finish", "{}")]),
            Reply(tool_calls=[("c3", "write_file", write.format(42))]),
            Reply(tool_calls=[("c4", "finish", "{}")]),
        )
        fleet = fleet_factory(workers=1)
        agent = {"name": "api", "model": "m", "base_url": server.base_url}
        gate = "grep -qx 42 answer.txt || (echo 'answer.txt must say 42'; false)"
        fleet.submit([{"id": "g", "prompt": "write 42", "agent": agent, "gate": gate}])
        record = fleet.wait(["g"], timeout_s=60)[0]
        assert record.state == TaskState.succeeded and record.attempts == 2
        types = types_of(fleet, "g")
        assert types.count(EventType.gate_failed) == 1 and types.count(EventType.gate_passed) == 1
        second_prompt = server.requests[2].body["messages"][1]["content"]
        assert "Attempt 1 failed: gate failed" in second_prompt
        assert "answer.txt must say 42" in second_prompt
        diffs = [e for e in fleet.events("g") if e.type == EventType.artifact_saved]
        with open(diffs[-1].payload["path"]) as f:
            assert "+42" in f.read()
    finally:
        server.stop()


def test_reviewer_sends_back_once(fleet_factory):
    config = FleetConfig.model_validate({"agents": {"rev": {}}})
    fleet = fleet_factory(workers=1, config=config)
    coder = [
        {"tool": "write_file", "args": {"path": "f.py", "content": "x=1\n"}, "attempt": 1},
        {"tool": "write_file", "args": {"path": "f.py", "content": "x = 1\n"}, "attempt": 2},
        {"tool": "finish", "args": {}},
    ]
    review = [
        {"tool": "request_changes", "args": {"comments": "format it"}, "attempt": 1},
        {"tool": "read_file", "args": {"path": "f.py"}, "attempt": 2},
        {"tool": "approve", "args": {"comment": "good"}, "attempt": 2},
    ]
    fleet.submit(
        [{"id": "r", "prompt": "x", "script": coder, "reviewer": "rev", "review_script": review}]
    )
    record = fleet.wait(["r"], timeout_s=60)[0]
    assert record.state == TaskState.succeeded and record.attempts == 2
    verdicts = [e.payload.get("verdict") for e in fleet.events("r") if e.payload.get("verdict")]
    assert verdicts == ["changes", "approve"]
    retried = next(e for e in fleet.events("r") if e.type == EventType.task_retried)
    assert "format it" in retried.payload["feedback"]


def test_human_approval_of_completion(fleet_factory):
    fleet = fleet_factory(workers=1)
    fleet.submit([{"id": "h", "prompt": "x", "require_approval": True, "script": DONE}])
    wait_state(fleet, "h", TaskState.awaiting_review)
    assert fleet.status()["blocked"][0]["task_id"] == "h"
    assert fleet.review("h", approve=True, message="ship it")
    assert fleet.wait(["h"], timeout_s=10)[0].state == TaskState.succeeded


def test_two_stage_handoff_keeps_the_workspace(fleet_factory):
    config = FleetConfig.model_validate({"agents": {"coder": {}, "docs": {}}})
    fleet = fleet_factory(workers=2, config=config)
    code = script(
        ("write_file", {"path": "lib.py", "content": "def f(): return 1\n"}),
        ("finish", {"summary": "lib.py written"}),
    )
    docs = script(
        ("shell", {"command": "grep -q 'def f' lib.py && echo '# f' > DOCS.md"}),
        ("finish", {"summary": "documented"}),
    )
    fleet.submit(
        [
            {
                "id": "s",
                "prompt": "x",
                "agent": "coder",
                "script": code,
                "stages": [
                    {"agent": "docs", "script": docs, "gate": "test -s DOCS.md && test -s lib.py"}
                ],
            }
        ]
    )
    record = fleet.wait(["s"], timeout_s=60)[0]
    assert record.state == TaskState.succeeded, record.reason
    events = fleet.events("s")
    handoff = next(e for e in events if e.type == EventType.handoff)
    assert handoff.payload["from_agent"] == "coder" and handoff.payload["to_agent"] == "docs"
    agents = [e.payload["agent"] for e in events if e.type == EventType.task_assigned]
    assert agents == ["coder", "docs"]


def test_memory_changes_a_time_limit_and_the_order(fleet_factory, tmp_path):
    events_dir = str(tmp_path / "history")
    slow = script(("shell", {"command": "sleep 0.4"}), ("finish", {}))
    first = fleet_factory(workers=2, events_dir=events_dir)
    history = [
        {"id": f"h-slow{i}", "prompt": "x", "labels": ["slow"], "script": slow} for i in range(3)
    ]
    history += [
        {"id": f"h-fast{i}", "prompt": "x", "labels": ["fast"], "script": DONE} for i in range(3)
    ]
    first.wait(first.submit(history).accepted, timeout_s=60)
    first.flush()
    first.shutdown()

    fleet = fleet_factory(workers=1, events_dir=events_dir, memory_min_runs=2)
    learned = {r["name"]: r for r in fleet.memory()["labels"]}
    assert learned["slow"]["p50_s"] > learned["fast"]["p50_s"]
    block = script(("shell", {"command": "sleep 0.5"}), ("finish", {}))
    fleet.submit([{"id": "blocker", "prompt": "x", "priority": 9, "script": block}])
    wait_state(fleet, "blocker", TaskState.running)
    fleet.submit(
        [
            {"id": "fast", "prompt": "x", "labels": ["fast"], "script": DONE},
            {"id": "slow", "prompt": "x", "labels": ["slow"], "script": DONE},
        ]
    )
    fleet.wait(["blocker", "fast", "slow"], timeout_s=60)
    decisions = {
        e.payload["decision"]: e.payload
        for e in fleet.events("slow")
        if e.type == EventType.memory_decision
    }
    assert decisions["time_limit_s"]["value"] >= 30 and "p95" in decisions["time_limit_s"]["reason"]
    assert "expected_s" in decisions
    assigned = next(e for e in fleet.events("slow") if e.type == EventType.task_assigned)
    assert assigned.payload["time_limit_s"] == decisions["time_limit_s"]["value"]
    starts = {
        t: next(e.ts for e in fleet.events(t) if e.type == EventType.task_assigned)
        for t in ("fast", "slow")
    }
    assert starts["slow"] < starts["fast"]  # submitted second, expected longer: runs first


def test_supervisor_killed_with_tasks_queued_and_running(fleet_factory):
    fleet = fleet_factory(workers=2, flush_interval_s=0.1)
    work = script(("shell", {"command": "sleep 0.3"}), ("finish", {"summary": "ok"}))
    ids = fleet.submit([{"id": f"k{i}", "prompt": "x", "script": work} for i in range(8)]).accepted
    wait_state(fleet, "k0", TaskState.running)
    pid = ray.get(fleet.supervisor.pid.remote())
    os.kill(pid, signal.SIGKILL)
    records = fleet.wait(ids, timeout_s=120)
    assert sorted(r.id for r in records) == sorted(ids)
    assert all(r.state == TaskState.succeeded for r in records)
    assert ray.get(fleet.supervisor.pid.remote()) != pid
    fleet.flush()
    from core.analytics import sql

    rows = sql(
        fleet.settings.events_dir,
        "select task_id, count(*) from events where type = 'task.succeeded' group by 1",
    ).rows
    assert Counter(dict(rows)) == Counter(dict.fromkeys(ids, 1))  # nothing lost, none twice
    submitted = sql(
        fleet.settings.events_dir, "select count(*) from events where type = 'task.submitted'"
    ).rows[0][0]
    assert submitted == 8


def test_supervisor_killed_mid_session_resumes_it_from_its_checkpoint(fleet_factory):
    """Only a running task, nothing queued: the restarted supervisor must wake its new
    workers for the orphan, and the orphan continues from its checkpoint."""
    fleet = fleet_factory(workers=1, checkpoint_interval_s=0.3, flush_interval_s=0.1)
    fleet.submit([{"id": "orph", "prompt": "x", "script": CHECKPOINTED, "gate": ONE_THEN_TWO}])
    deadline = time.time() + 30
    while not any(e.type == EventType.session_checkpointed for e in fleet.events("orph")):
        assert time.time() < deadline, "no checkpoint was made"
        time.sleep(0.1)
    os.kill(ray.get(fleet.supervisor.pid.remote()), signal.SIGKILL)
    record = fleet.wait(["orph"], timeout_s=60)[0]
    assert record.state == TaskState.succeeded, record.reason
    events = fleet.events("orph")
    retried = [e for e in events if e.type == EventType.task_retried]
    assert [e.payload["reason"] for e in retried] == ["supervisor restarted"]
    assert retried[0].payload["resume"] is True
    started = [e for e in events if e.type == EventType.session_started]
    assert started[-1].payload["resumed"] is True
    ones = [
        e for e in events if e.type == EventType.agent_tool_use and "echo one" in e.payload["args"]
    ]
    assert len(ones) == 1


def test_killed_worker_resumes_the_session_from_its_checkpoint(fleet_factory):
    fleet = fleet_factory(workers=2, checkpoint_interval_s=0.3)
    task = {"id": "ck", "prompt": "x", "script": CHECKPOINTED, "gate": ONE_THEN_TWO}
    fleet.submit([{**task, "max_attempts": 1}])
    deadline = time.time() + 30
    while not any(e.type == EventType.session_checkpointed for e in fleet.events("ck")):
        assert time.time() < deadline, "no checkpoint was made"
        time.sleep(0.1)
    worker = fleet.get("ck").worker
    os.kill(ray.get(fleet.supervisor.worker_pid.remote(worker)), signal.SIGKILL)
    record = fleet.wait(["ck"], timeout_s=60)[0]
    assert record.state == TaskState.succeeded, record.reason
    events = fleet.events("ck")
    started = [e for e in events if e.type == EventType.session_started]
    assert len(started) == 2 and started[1].payload["resumed"] is True
    assert started[1].worker != worker
    ones = [
        e for e in events if e.type == EventType.agent_tool_use and "echo one" in e.payload["args"]
    ]
    assert len(ones) == 1  # the step before the checkpoint did not run again


def test_manager_agent_makes_the_assignment_calls(fleet_factory):
    """routing=manager: an LLM (the real openai client, a local server) picks the order."""
    from tests.fake_openai import FakeOpenAI, Reply

    server = FakeOpenAI().start()
    try:
        server.queue(
            Reply(tool_calls=[("c1", "list_tasks", "{}")]),
            Reply(
                tool_calls=[
                    ("c2", "assign_task", '{"task_id": "low", "worker_id": "w1"}'),
                    (
                        "c3",
                        "update_status",
                        '{"task_id": "doomed", '
                        '"status": "needs_human", "note": "needs a spec first"}',
                    ),
                    ("c3b", "create_task", '{"prompt": "write a spec", "labels": ["spec"]}'),
                ]
            ),
            Reply(tool_calls=[("c4", "finish", '{"summary": "low first"}')]),
            Reply(tool_calls=[("c5", "assign_task", '{"task_id": "high", "worker_id": "w1"}')]),
            Reply(tool_calls=[("c6", "finish", "{}")]),
        )
        config = FleetConfig.model_validate(
            {"agents": {"manager": {"model": "boss", "base_url": server.base_url}}}
        )
        fleet = fleet_factory(workers=1, config=config, routing="manager")
        fleet.submit(
            [
                {"id": "high", "prompt": "x", "priority": 9, "script": DONE},
                {"id": "low", "prompt": "x", "priority": 0, "script": DONE},
                {"id": "doomed", "prompt": "x", "script": DONE},
            ]
        )
        records = {r.id: r for r in fleet.wait(["high", "low", "doomed"], timeout_s=60)}
        assert records["doomed"].state == TaskState.needs_human
        assert records["doomed"].reason == "manager: needs a spec first"
        starts = {
            t: next(e.ts for e in fleet.events(t) if e.type == EventType.task_assigned)
            for t in ("high", "low")
        }
        assert starts["low"] < starts["high"]  # the manager's call, not the priority rule
        decision = next(e for e in fleet.events("low") if e.type == EventType.manager_decision)
        assert decision.payload == {"action": "assign", "worker": "w1"}
        created = ray.get(fleet.supervisor.list_tasks.remote(label="spec"))
        assert [(r.spec.prompt, r.spec.labels) for r in created] == [("write a spec", ["spec"])]
        tools = {t["function"]["name"] for t in server.requests[0].body["tools"]}
        assert tools == {
            "list_tasks",
            "list_workers",
            "assign_task",
            "update_status",
            "create_task",
            "finish",
        }
        listed = server.requests[1].body["messages"][-1]["content"]
        assert '"task_id": "high"' in listed and '"task_id": "low"' in listed
    finally:
        server.stop()


def test_a_frozen_worker_is_replaced_and_its_task_runs_elsewhere(fleet_factory):
    """A worker that stops heartbeating (SIGSTOP: alive but silent) is written off."""
    fleet = fleet_factory(workers=2, heartbeat_s=0.2, heartbeat_timeout_s=2.0, watch_interval_s=0.2)
    slow = script(("shell", {"command": "sleep 1"}), ("finish", {"summary": "ok"}))
    fleet.submit([{"id": "frozen", "prompt": "x", "script": slow, "max_attempts": 1}])
    record = wait_state(fleet, "frozen", TaskState.running)
    pid = ray.get(fleet.supervisor.worker_pid.remote(record.worker))
    os.kill(pid, signal.SIGSTOP)
    try:
        done = fleet.wait(["frozen"], timeout_s=60)[0]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    assert done.state == TaskState.succeeded, done.reason  # max_attempts 1: the loss is free
    events = fleet.events("frozen")
    lost = [e for e in events if e.type == EventType.worker_lost]
    assert [e.worker for e in lost] == [record.worker]
    workers = [e.worker for e in events if e.type == EventType.task_assigned]
    assert workers[0] == record.worker and workers[-1] != record.worker
    assert fleet.status()["workers"] == 2  # replaced
