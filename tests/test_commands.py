"""Commands to the fleet's tasks as a plain class (no Ray): what each records, what reaches
the running session, and why a refused one was refused."""

import asyncio
from typing import Any

from actors.commands import Commands
from actors.memory import Decision
from actors.registry import Registry
from actors.scheduler import Scheduler
from core.events import Event, EventType
from core.records import CommandResult
from core.settings import FleetSettings
from core.specs import FleetConfig, TaskSpec, TaskState


class Link:
    """A session link that notes what was pushed."""

    def __init__(self) -> None:
        self.running: dict[str, str] = {}
        self.pushed: list[tuple[str, str | None, str, Any]] = []

    def worker_of(self, task_id: str) -> str | None:
        return next((w for w, t in self.running.items() if t == task_id), None)

    def deliver(self, worker_id: str, session_id: str | None, kind: str, data: Any) -> None:
        self.pushed.append((worker_id, session_id, kind, data))

    def stop(self, worker_id: str, session_id: str | None, reason: str = "") -> None:
        self.pushed.append((worker_id, session_id, "stop", reason))


class Fleet:
    def __init__(self) -> None:
        self.sched = Scheduler(FleetConfig(), FleetSettings())
        self.link = Link()
        self.recorded: list[Event] = []

        def planner(spec: TaskSpec) -> tuple[dict[str, Any], list[Decision]]:
            return {"expected_s": 5.0}, [Decision("expected_s", 5.0, "history")]

        self.commands = Commands(self.sched, self.record, self.link, planner)

    async def record(self, events: list[Event]) -> None:
        for event in events:
            known = self.sched.tasks.get(event.task_id)
            event.seq = known.seq + 1 if known else 0
            self.sched.apply(event)
        self.recorded.extend(events)

    def run(self, task_id: str, worker: str = "w1") -> str | None:
        got = self.sched.assign(worker, only=task_id)
        assert got is not None
        asyncio.run(self.record([got[1]]))
        self.link.running[worker] = task_id
        return self.sched.tasks[task_id].session_id

    def types(self, task_id: str) -> list[EventType]:
        return [e.type for e in self.recorded if e.task_id == task_id]


def submitted(*ids: str) -> Fleet:
    fleet = Fleet()
    out = asyncio.run(fleet.commands.submit([{"id": i, "prompt": "x"} for i in ids]))
    assert out["accepted"] == list(ids)
    return fleet


def test_submit_plans_records_and_rejects_with_the_field() -> None:
    fleet = Fleet()
    tasks: list[Any] = [
        {"id": "a", "prompt": "x"},
        {"id": "a", "prompt": "again"},
        {"id": "b", "prompt": "x", "agent": "nobody"},
        {"id": "c"},
    ]
    out = asyncio.run(fleet.commands.submit(tasks, "batch1"))
    assert out["accepted"] == ["a"] and out["batch"] == "batch1"
    assert [(r["task_id"], r["field"]) for r in out["rejected"]] == [
        ("a", "id"),
        ("b", "agent"),
        ("c", ""),
    ]
    assert fleet.types("a") == [EventType.task_submitted, EventType.memory_decision]
    assert fleet.sched.tasks["a"].plan == {"expected_s": 5.0}


def test_cancel_stops_the_running_session_or_says_why_not() -> None:
    fleet = submitted("t1", "t2")
    session = fleet.run("t1")
    assert asyncio.run(fleet.commands.cancel("t1")) == CommandResult(ok=True)
    assert fleet.link.pushed == [("w1", session, "stop", "")]
    assert fleet.sched.tasks["t1"].state == TaskState.cancelled
    again = asyncio.run(fleet.commands.cancel("t1"))
    assert not again and again.reason == "task 't1' is cancelled: cannot cancel"
    assert asyncio.run(fleet.commands.cancel("nope")).reason == "no task 'nope'"
    assert asyncio.run(fleet.commands.cancel("t2"))  # queued: nothing to stop
    assert len(fleet.link.pushed) == 1


def test_steer_reaches_the_session_or_waits_in_the_inbox() -> None:
    fleet = submitted("run", "queued")
    session = fleet.run("run")
    assert asyncio.run(fleet.commands.steer("run", "also y"))
    assert fleet.link.pushed == [("w1", session, "message", "also y")]
    assert asyncio.run(fleet.commands.steer("queued", "later"))
    assert fleet.sched.tasks["queued"].inbox == ["later"]
    asyncio.run(fleet.commands.cancel("queued"))
    ended = asyncio.run(fleet.commands.steer("queued", "too late"))
    assert ended.reason == "task 'queued' is cancelled: it has ended"


def test_interrupt_and_resume_need_a_running_then_a_paused_task() -> None:
    fleet = submitted("t")
    refused = asyncio.run(fleet.commands.interrupt("t"))
    assert refused.reason == "task 't' is queued: no session is running"
    assert asyncio.run(fleet.commands.resume("t")).reason == (
        "task 't' is queued: not paused or waiting on an approval"
    )
    session = fleet.run("t")
    assert asyncio.run(fleet.commands.interrupt("t"))
    assert fleet.link.pushed == [("w1", session, "interrupt", None)]
    assert fleet.types("t")[-1] == EventType.user_interrupt


def test_an_approval_needs_the_waiting_call_and_is_decided_once() -> None:
    fleet = submitted("t")
    session = fleet.run("t")
    asked = Event(
        task_id="t",
        type=EventType.approval_requested,
        session_id=session,
        payload={"call_id": "c1", "tool": "shell", "args": {}},
    )
    asyncio.run(fleet.record([asked]))
    wrong = asyncio.run(fleet.commands.decide_approval("t", "c2", True))
    assert wrong.reason == "no tool call waits for approval with id 'c2'"
    assert asyncio.run(fleet.commands.decide_approval("t", "c1", False, "no"))
    decision = {"call_id": "c1", "allow": False, "message": "no"}
    assert fleet.link.pushed == [("w1", session, "decision", decision)]
    twice = asyncio.run(fleet.commands.decide_approval("t", "c1", True))
    assert twice.reason == "the tool call 'c1' is decided already"


def test_review_needs_a_result_awaiting_review() -> None:
    fleet = submitted("t")
    assert asyncio.run(fleet.commands.review("t", True)).reason == (
        "task 't' is queued: not in review"
    )
    fleet.run("t")
    asyncio.run(fleet.record([Event(task_id="t", type=EventType.task_awaiting_review)]))
    assert asyncio.run(fleet.commands.review("t", True, "ship it"))
    assert fleet.sched.tasks["t"].state == TaskState.succeeded


def test_archiving_says_why_a_spec_cannot_go() -> None:
    config = FleetConfig.model_validate({"agents": {"temp": {}}})
    registry = Registry(config)
    assert registry.archive("agent", "temp")
    assert registry.archive("agent", "temp").reason == "agent 'temp' is archived already"
    assert registry.archive("agent", "nobody").reason == "no agent 'nobody'"
    assert registry.archive("agent", "default").reason == "the default agent cannot be archived"


def test_a_submit_call_records_its_accepted_tasks_in_one_append() -> None:
    fleet = Fleet()
    appends: list[list[EventType]] = []
    record = fleet.record

    async def counted(events: list[Event]) -> None:
        appends.append([e.type for e in events])
        await record(events)

    fleet.commands.record = counted
    tasks = [
        {"id": "a", "prompt": "x"},
        {"id": "bad", "agent": "nobody"},
        {"id": "b", "prompt": "y"},
    ]
    out = asyncio.run(fleet.commands.submit(tasks))
    assert out["accepted"] == ["a", "b"]
    submitted_, decided = EventType.task_submitted, EventType.memory_decision
    assert appends == [[submitted_, decided, submitted_, decided]]  # both or neither in the log
    assert asyncio.run(fleet.commands.submit([{"id": "bad", "agent": "nobody"}]))["accepted"] == []
    assert len(appends) == 1  # nothing accepted: nothing appended
