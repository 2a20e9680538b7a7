"""The fleet on a real local Ray: actors, event log, reports."""

import os
import signal
import time
from pathlib import Path

import duckdb
import pytest
import ray

from core.analytics import report, sql
from core.eventlog import read_wal
from core.events import EventType, log_rows
from core.specs import FleetConfig, TaskState
from tests.conftest import script

pytestmark = pytest.mark.ray

HELLO = script(
    ("write_file", {"path": "hello.txt", "content": "hi"}),
    ("shell", {"command": "cat hello.txt"}),
    ("finish", {"summary": "wrote hello.txt"}),
)


def test_batch_runs_on_real_actors_and_lands_in_parquet(fleet_factory):
    fleet = fleet_factory(workers=2)
    tasks = [
        {"id": f"ok{i}", "prompt": "hello", "gate": "test -s hello.txt", "script": HELLO}
        for i in range(6)
    ]
    tasks.append(
        {
            "id": "gate-fails",
            "prompt": "x",
            "gate": "test -s missing.txt",
            "max_attempts": 2,
            "script": HELLO,
        }
    )
    tasks.append({"id": "urgent", "prompt": "x", "priority": 10, "script": HELLO})
    submitted = fleet.submit(tasks, batch="b1")
    assert submitted.accepted == [t["id"] for t in tasks] and not submitted.rejected
    records = {r.id: r for r in fleet.wait(submitted.accepted, timeout_s=120)}
    assert records["ok0"].state == TaskState.succeeded and records["ok0"].turns == 3
    failed = records["gate-fails"]
    assert failed.state == TaskState.needs_human and failed.attempts == 2
    assert "gate failed" in failed.reason
    # Workers are separate processes: work spread over both.
    workers = {e.worker for t in records for e in fleet.events(t) if e.worker}
    assert workers == {"w1", "w2"}

    events = fleet.events("ok0")
    assert [e.seq for e in events] == list(range(len(events)))
    types = [e.type for e in events]
    assert types[0] == EventType.task_submitted and types[-1] == EventType.task_succeeded
    result = next(e for e in events if e.type == EventType.agent_tool_result and e.tool == "shell")
    assert result.exit_code == 0 and result.payload["stdout"] == "hi"

    fleet.flush()
    events_dir = fleet.settings.events_dir
    overview, per_task, tools = report(events_dir, batch="b1")
    row = overview.as_dicts()[0]
    assert (row["tasks"], row["succeeded"], row["needs_human"]) == (8, 7, 1)
    by_task = {r["task_id"]: r for r in per_task.as_dicts()}
    assert by_task["gate-fails"]["attempts"] == 2 and by_task["urgent"]["state"] == "succeeded"
    assert {r["tool"]: r["calls"] for r in tools.as_dicts()}["shell"] == 9  # 7 tasks + 2 attempts
    counts = dict(sql(events_dir, "select type, count(*) from events group by 1").rows)
    assert counts["task.submitted"] == 8 and counts["task.retried"] == 1
    files = duckdb.sql(f"select count(*) from glob('{events_dir}/date=*/*.parquet')").fetchall()[0][
        0
    ]
    assert files >= 1


def test_submit_rejects_bad_tasks_and_keeps_the_rest(fleet_factory):
    fleet = fleet_factory(workers=1, config=FleetConfig.model_validate({"agents": {"coder": {}}}))
    out = fleet.submit(
        [
            {"id": "good", "prompt": "x", "agent": "coder", "script": HELLO},
            {"id": "who", "prompt": "x", "agent": "ghost"},
            {"id": "good", "prompt": "dup"},
            {"id": "bad", "prompt": ""},
        ]
    )
    assert out.accepted == ["good"]
    assert {(r["task_id"], r["field"]) for r in out.rejected} >= {("who", "agent"), ("good", "id")}
    assert len(out.rejected) == 3
    assert fleet.wait(["good"], timeout_s=60)[0].state == TaskState.succeeded


def test_submitted_tasks_are_in_the_log_before_submit_returns(fleet_factory):
    fleet = fleet_factory(workers=1, flush_interval_s=60)
    fleet.submit([{"id": "durable", "prompt": "x", "script": HELLO}])
    wal = Path(fleet.settings.events_dir, "_wal", fleet.settings.name)
    rows = [row for f in wal.glob("seg-*.jsonl") for row in log_rows(read_wal(f))]
    assert any(r["task_id"] == "durable" and r["type"] == "task.submitted" for r in rows)


def test_a_killed_worker_does_not_lose_its_task(fleet_factory):
    fleet = fleet_factory(workers=2)
    slow = script(("shell", {"command": "sleep 3"}), ("finish", {"summary": "slept"}))
    fleet.submit([{"id": "victim", "prompt": "x", "script": slow, "max_attempts": 1}])
    deadline = time.time() + 30
    while time.time() < deadline:
        record = fleet.get("victim")
        if record.state == TaskState.running and record.worker:
            break
        time.sleep(0.05)
    workers = ray.get(fleet.supervisor.status.remote())["running"]
    assert workers and workers[0]["task_id"] == "victim"
    victim_worker = record.worker
    pid = ray.get(fleet.supervisor.worker_pid.remote(victim_worker))
    os.kill(pid, signal.SIGKILL)
    final = fleet.wait(["victim"], timeout_s=60)[0]
    assert final.state == TaskState.succeeded
    assert final.attempts == 1  # the crash did not use up the only attempt
    types = [e.type for e in fleet.events("victim")]
    assert EventType.worker_lost in types
    assert types.count(EventType.task_assigned) == 2
    assert types.count(EventType.task_succeeded) == 1
    assert fleet.status()["workers"] == 2  # the pool was refilled


def test_cancel_stops_a_running_session(fleet_factory):
    fleet = fleet_factory(workers=1)
    fleet.submit(
        [
            {
                "id": "long",
                "prompt": "x",
                "script": script(("shell", {"command": "sleep 30"}), ("finish", {})),
            }
        ]
    )
    deadline = time.time() + 30
    while fleet.get("long").state != TaskState.running and time.time() < deadline:
        time.sleep(0.05)
    started = time.time()
    assert fleet.cancel("long")
    assert fleet.wait(["long"], timeout_s=30)[0].state == TaskState.cancelled
    # the worker is free again quickly: a new task runs
    fleet.submit([{"id": "next", "prompt": "x", "script": HELLO}])
    assert fleet.wait(["next"], timeout_s=30)[0].state == TaskState.succeeded
    assert time.time() - started < 20


def test_a_task_runs_against_an_openai_compatible_server(fleet_factory):
    """The real openai client, in a worker process, against a local Chat Completions server."""
    from tests.fake_openai import FakeOpenAI, Reply

    server = FakeOpenAI().start()
    try:
        server.queue(
            Reply(
                text="I'll write the file.",
                tool_calls=[("c1", "write_file", '{"path": "out.txt", "content": "42"}')],
                input_tokens=120,
                cached_tokens=100,
                output_tokens=30,
            ),
            Reply(tool_calls=[("c2", "finish", '{"summary": "wrote out.txt"}')]),
        )
        fleet = fleet_factory(workers=1)
        agent = {"name": "real", "model": "gpt-4o-mini", "base_url": server.base_url}
        fleet.submit(
            [
                {
                    "id": "api",
                    "prompt": "write 42 to out.txt",
                    "agent": agent,
                    "gate": "grep -qx 42 out.txt",
                }
            ]
        )
        record = fleet.wait(["api"], timeout_s=60)[0]
        assert record.state == TaskState.succeeded, record.reason
        assert record.turns == 2
        first = server.requests[0].body
        assert first["model"] == "gpt-4o-mini"
        assert {t["function"]["name"] for t in first["tools"]} >= {"shell", "write_file", "finish"}
        second = server.requests[1].body["messages"]
        assert second[-1]["role"] == "tool" and second[-1]["tool_call_id"] == "c1"
        usage = [e for e in fleet.events("api") if e.type == EventType.usage]
        assert usage[0].tokens_in == 120 and usage[0].payload["cached_input_tokens"] == 100
        assert usage[0].cost_usd > 0
    finally:
        server.stop()


def test_an_archived_agent_fails_its_queued_task_and_no_worker_dies(fleet_factory):
    config = FleetConfig.model_validate({"agents": {"temp": {}}})
    fleet = fleet_factory(workers=1, config=config)
    slow = script(("shell", {"command": "sleep 1"}), ("finish", {}))
    fleet.submit([{"id": "first", "prompt": "x", "script": slow}])
    fleet.submit([{"id": "orphan", "prompt": "x", "agent": "temp", "script": HELLO}])
    assert ray.get(fleet.supervisor.archive_spec.remote("agent", "temp"))
    fleet.submit([{"id": "after", "prompt": "x", "script": HELLO}])
    records = {r.id: r for r in fleet.wait(["first", "orphan", "after"], timeout_s=60)}
    assert records["orphan"].state == TaskState.failed
    assert records["orphan"].reason == "cannot run: agent 'temp' no longer exists"
    assert records["after"].state == TaskState.succeeded
    assert fleet.status()["workers"] == 1
    assert not any(e.type == EventType.worker_lost for t in records for e in fleet.events(t))


def test_a_task_id_from_an_earlier_run_in_the_same_log_is_refused(fleet_factory, tmp_path):
    events = str(tmp_path / "shared-events")
    first = fleet_factory(workers=1, events_dir=events)
    first.wait(first.submit([{"id": "same", "prompt": "x", "script": HELLO}]).accepted)
    first.shutdown()
    second = fleet_factory(workers=1, events_dir=events)  # another fleet, no resume
    result = second.submit([{"id": "same", "prompt": "y", "script": HELLO}])
    assert result.accepted == []
    assert result.rejected[0]["field"] == "id"
    assert "already exists" in result.rejected[0]["error"]


BIG_WORKSPACE = script(
    (
        "shell",
        {
            "command": 'python3 -c "import os\nfor i in range(300): '
            "open(f'f{i}.bin', 'wb').write(os.urandom(100_000))\""
        },
    ),
    ("finish", {"summary": "30 MB written"}),
)
"""A session whose finish (snapshot of 30 MB, diff, result to the supervisor) takes a while."""


def test_a_worker_takes_its_next_task_while_its_last_session_finishes(fleet_factory):
    fleet = fleet_factory(workers=1)
    ids = ["big", "next"]
    fleet.submit([{"id": i, "prompt": "x", "script": BIG_WORKSPACE} for i in ids])
    assert all(r.state == TaskState.succeeded for r in fleet.wait(ids, timeout_s=120))
    big = {e.type: e for e in fleet.events("big")}
    nxt = {e.type: e for e in fleet.events("next")}
    assert big[EventType.session_started].worker == nxt[EventType.session_started].worker
    # The worker had its next task before the first session's finish (snapshot, diff) ended.
    assert nxt[EventType.task_assigned].ts < big[EventType.session_ended].ts
    assert big[EventType.session_ended].payload["status"] == "succeeded"
    assert len(fleet.files("big")) == 300  # its workspace was kept, all of it


def test_a_worker_killed_while_a_session_finishes_behind_loses_neither_task(fleet_factory):
    fleet = fleet_factory(workers=1)
    ids = ["big", "next"]
    slow = script(("shell", {"command": "sleep 2"}), ("finish", {"summary": "slept"}))
    fleet.submit(
        [
            {"id": "big", "prompt": "x", "script": BIG_WORKSPACE, "max_attempts": 1},
            {"id": "next", "prompt": "x", "script": slow, "max_attempts": 1},
        ]
    )
    deadline = time.time() + 60
    while time.time() < deadline:  # "big" finishes behind while "next" runs
        big, nxt = (fleet.get(task_id) for task_id in ids)
        if big.state == nxt.state == TaskState.running and big.worker == nxt.worker:
            break
        time.sleep(0.01)
    else:
        pytest.fail("never saw a session finishing behind the next one")
    pid = ray.get(fleet.supervisor.worker_pid.remote(big.worker))
    os.kill(pid, signal.SIGKILL)
    finals = fleet.wait(ids, timeout_s=120)
    assert [r.state for r in finals] == [TaskState.succeeded] * 2
    assert [r.attempts for r in finals] == [1, 1]  # the crash used up no attempt
    for task_id in ids:
        types = [e.type for e in fleet.events(task_id)]
        assert types.count(EventType.task_succeeded) == 1, task_id
        assert EventType.worker_lost in types, task_id
