"""A queue of tasks nobody has touched yet is held compactly (``actors.tasktable``): each is
built into its ``TaskRecord`` only when something happens to it, and the readers that go
over every task (status, listing, counts, queue depth, the watchdog) build none."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest

from actors import watchdog
from actors.scheduler import Scheduler
from actors.status import fleet_status, list_tasks
from actors.tasktable import Submitted, TaskTable
from actors.telemetry import FleetMetrics
from core.events import Event
from core.records import TaskRecord
from core.settings import FleetSettings, PoolSpec
from core.specs import FleetConfig, TaskSpec, TaskState

SPECS: list[dict[str, Any]] = [
    {"id": "plain", "prompt": "x"},
    {
        "id": "rich",
        "prompt": "Fix the bug — ünïcode ✓",
        "priority": -3,
        "labels": ["a", "b"],
        "requires": ["gpu"],
        "files": {"src/a.py": "print('hi')\n"},
        "gate": "pytest -q",
        "max_attempts": 2,
        "time_limit_s": 12.5,
        "max_turns": 7,
        "script": [{"tool": "shell", "args": {"command": "ls"}}],
        "stages": [{"agent": "planner", "prompt": "plan"}, {"agent": "coder", "gate": "make"}],
        "reviewer": "critic",
        "require_approval": True,
        "stall_timeout_s": 30,
        "parent": "p-1",
        "source": "tickets",
    },
    {
        "id": "inline",
        "prompt": "y",
        "agent": {"name": "solo", "model": "m-1", "max_turns": 3},
        "environment": {"name": "env", "pip": ["requests"], "cpus": 0.5, "files": {"a": "b"}},
        "repo": {"url": "https://example.com/r.git", "ref": "main"},
        "interactive": True,
        "gate_each_turn": True,
    },
]


@pytest.mark.parametrize("raw", SPECS, ids=[s["id"] for s in SPECS])
def test_a_task_held_as_submitted_builds_the_record_its_submit_made(raw: dict[str, Any]) -> None:
    spec = TaskSpec.model_validate(raw)
    at = datetime(2026, 11, 28, 1, 2, 3, 456789, tzinfo=UTC)
    versions = {"agent": {"default": 2}}
    plan = {"expected_s": 40.0, "agent": "default"}
    held = Submitted.of(spec, tuple(spec.labels), "batch-1", plan, versions, at, 0)
    assert len(held.spec_json) < len(spec.model_dump_json())  # defaults are left out

    record = held.build()

    expected = TaskRecord(
        id=spec.id,
        spec=spec,
        batch="batch-1",
        submitted_at=at,
        plan=plan,
        versions=versions,
        seq=0,
        last_event_at=at,
        last_event="task.submitted",
    )
    assert record == expected
    assert record.versions is versions  # shared by the tasks pinned alike, not copied


def fold(events: list[Event], settings: FleetSettings | None = None) -> Scheduler:
    sched = Scheduler(FleetConfig(), settings or FleetSettings())
    for event in events:
        event.seq = sched.next_seq(event.task_id)
        sched.apply(event)
    return sched


def submitted(sched: Scheduler, n: int, **fields: Any) -> list[Event]:
    events = []
    for i in range(n):
        labels = ["red"] if i % 3 == 0 else []
        spec = TaskSpec(id=f"t{i}", prompt=f"task {i}", labels=labels, priority=i % 2, **fields)
        event = sched.submit(spec, batch="b")
        event.seq = sched.next_seq(event.task_id)
        sched.apply(event)
        events.append(event)
    return events


def test_reading_every_task_of_a_big_queue_builds_none_of_them() -> None:
    settings = FleetSettings(
        pools=[PoolSpec(name="cpu", workers=1), PoolSpec(name="gpu", labels=["gpu"])],
        idle_timeout_s=60,
    )
    sched = Scheduler(FleetConfig(), settings)
    submitted(sched, 300)
    submitted_gpu = [TaskSpec(id=f"g{i}", prompt="x", requires=["gpu"]) for i in range(20)]
    for spec in submitted_gpu:
        event = sched.submit(spec)
        event.seq = sched.next_seq(event.task_id)
        sched.apply(event)
    assert sched.tasks.untouched == 320

    status = fleet_status(sched, {}, 1, settings, 0.0, 1.0)
    assert status["counts"]["queued"] == 320
    assert status["prompts"][status["queued"][0]] == "task 1"  # priority 1 first, then age
    newest_red = list_tasks(sched, "queued", "red", limit=3, offset=1)
    assert [r.id for r in newest_red] == ["t294", "t291", "t288"]
    assert sched.counts()["queued"] == 320
    assert sched.next_wakeup(0.0) is None
    assert watchdog.idle_expired(sched, 1e12, settings) == []
    assert FleetMetrics._queue_depth(sched, settings.pool_specs()) == {"cpu": 300, "gpu": 320}
    assert sched.tasks.peek("t5").spec.prompt == "task 5"
    assert sched.tasks.state("t5") == TaskState.queued
    assert sched.tasks.labels("t6") == ["red"]

    assert sched.tasks.untouched == 320  # nothing above built (and kept) a record


def test_what_happens_to_a_task_builds_its_record_and_keeps_it() -> None:
    sched = Scheduler(FleetConfig(), FleetSettings())
    submitted(sched, 10)

    got = sched.assign("w1")
    assert got is not None and got[0] is not None
    assignment, event = got
    assert assignment.task.id == "t1"  # priority 1, oldest
    event.seq = sched.next_seq(event.task_id)
    sched.apply(event)
    assert sched.tasks.untouched == 9
    assert sched.tasks["t1"].state == TaskState.running
    assert sched.tasks["t1"].seq == 1 and sched.tasks["t1"].attempts == 1

    record = sched.tasks.get("t2")  # looked up to be changed (a command would): kept
    assert record is not None
    record.reason = "changed"
    assert sched.tasks["t2"].reason == "changed" and sched.tasks.untouched == 8
    peeked = sched.tasks.peek("t3")
    assert peeked is not None
    peeked.reason = "lost"  # a read-only copy: not kept
    assert sched.tasks["t3"].reason == ""
    assert Counter(r.state for r in sched.tasks.records()) == {
        TaskState.queued: 9,
        TaskState.running: 1,
    }
    assert sched.counts()["queued"] == 9 and sched.counts()["running"] == 1


def test_a_replayed_log_holds_its_untouched_tasks_compactly_and_folds_the_same() -> None:
    first = Scheduler(FleetConfig(), FleetSettings())
    log = submitted(first, 50)
    got = first.assign("w1")
    assert got is not None and got[0] is not None
    got[1].seq = first.next_seq(got[1].task_id)
    first.apply(got[1])
    log.append(got[1])

    again = fold([e.model_copy() for e in log])

    assert again.tasks.untouched == 49
    assert [r.model_dump() for r in again.tasks.records()] == [
        r.model_dump() for r in first.tasks.records()
    ]
    assert again.queue.ids() == first.queue.ids()


def test_the_table_answers_for_unknown_tasks_without_failing() -> None:
    table = TaskTable()
    assert table.get("nope") is None and table.peek("nope") is None
    assert table.seq("nope") is None and table.state("nope") is None
    assert table.labels("nope") == [] and "nope" not in table and len(table) == 0
    with pytest.raises(KeyError):
        table["nope"]
