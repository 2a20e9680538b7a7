"""Interactive tasks as plain decisions (no Ray): the scheduler's fold and verdicts (idle,
messages, close, failed turns, worker loss), the watchdog's expiry, the commands' refusals,
recovery of an idle task, and which sessions skip the model at close."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from actors import recovery, watchdog
from actors.scheduler import Scheduler
from actors.session import TURN_ENDED, turn_ended
from core.events import Event, EventType
from core.records import Assignment, SessionOutcome, SessionResult
from core.settings import FleetSettings
from core.specs import AgentSpec, EnvironmentSpec, FleetConfig, TaskSpec, TaskState
from tests.test_commands import Fleet
from tests.test_scheduler import Harness

STATE = {"version": 1, "turns": 2, TURN_ENDED: True, "summary": "s"}


def ended(a: Assignment, outcome: str = "finished", status: str = "succeeded", **kw: Any):
    """An interactive session's result: outcome ``outcome`` with a state and a workspace."""
    return SessionResult(
        task_id=a.task.id,
        session_id=a.session_id,
        attempt=a.attempt,
        worker="w1",
        status=status,
        reason=kw.pop("reason", ""),
        feedback=kw.pop("feedback", ""),
        outcome=SessionOutcome(status=outcome, summary="did it", state=dict(STATE), turns=2),
        workspace=b"tar",
        interactive=True,
        **kw,
    )


def refs(events: list[Event]) -> list[Event]:
    """Add what the dispatcher stores to the events that point at it (KEEPS_WORKSPACE)."""
    for event in events:
        if event.type in (EventType.session_idle, EventType.session_checkpointed):
            sid = event.session_id
            event.payload |= {"workspace_ref": f"t/{sid}.tar", "loop_state_ref": f"t/{sid}.json"}
    return events


def idle_after_one_turn(h: Harness, **spec: Any) -> Assignment:
    h.submit(id="t", prompt="x", interactive=True, **spec)
    a = h.assign()
    assert a.keep_workspace and not a.closing
    h.record(refs(h.s.conclude(ended(a, "idle"))))
    return a


def test_an_ended_turn_goes_idle_and_a_message_resumes_it_from_there() -> None:
    h = Harness()
    a = idle_after_one_turn(h)
    record = h.s.tasks["t"]
    assert record.state == TaskState.idle and record.summary == "did it"
    assert record.attempts == 0 and record.idle_since is not None
    assert (record.workspace_ref, record.loop_state_ref) == (
        f"t/{a.session_id}.tar",
        f"t/{a.session_id}.json",
    )
    assert h.s.assign("w2") is None  # idle: nothing to run
    steered = Fleet()
    steered.sched = h.s
    steered.commands.sched = h.s
    assert asyncio.run(steered.commands.steer("t", "now do y"))
    assert record.state == TaskState.queued and record.idle_since is None
    b = h.assign("w2")
    assert (b.attempt, b.messages, b.closing) == (1, ["now do y"], False)
    # Kept until a newer resume point holds them: a lost worker resumes from the idle point.
    assert record.workspace_ref == f"t/{a.session_id}.tar" and record.inbox == ["now do y"]
    h.record(h.s.worker_lost("w2", "t", "killed"))
    c = h.assign("w3")
    assert c.messages == ["now do y"] and c.attempt == 1
    read = Event(
        task_id="t",
        type=EventType.user_message,
        session_id=c.session_id,
        payload={"text": "now do y", "delivered_at_turn": 3},
    )
    h.record([read])
    assert record.inbox == ["now do y"]  # the session's own delivery is not a new message
    h.record(refs(h.s.conclude(ended(c, "idle"))))
    assert record.state == TaskState.idle and record.inbox == []


def test_a_message_that_reached_the_session_too_late_starts_the_next_turn_at_once() -> None:
    h = Harness()
    h.submit(id="t", prompt="x", interactive=True)
    a = h.assign()
    pushed = {"text": "and z", "delivered": True}  # steered to the running session
    h.record(
        [Event(task_id="t", type=EventType.user_message, session_id=a.session_id, payload=pushed)]
    )
    assert h.s.tasks["t"].unread == ["and z"]
    decided = refs(h.s.conclude(ended(a, "idle")))
    assert [e.type for e in decided] == [EventType.session_idle, EventType.task_retried]
    h.record(decided)
    b = h.assign("w2")
    assert b.messages == ["and z"] and b.attempt == 1


def test_a_batch_session_reads_a_message_once() -> None:
    h = Harness()
    h.submit(id="t", prompt="x")
    a = h.assign()
    for payload in ({"text": "hi", "delivered": True}, {"text": "hi", "delivered_at_turn": 2}):
        event = Event(task_id="t", type=EventType.user_message, session_id=a.session_id)
        h.record([event.model_copy(update={"payload": payload})])
    record = h.s.tasks["t"]
    assert record.inbox == [] and record.unread == []  # read: never given again


def test_close_while_idle_runs_the_gate_next_without_a_model_turn() -> None:
    h = Harness()
    idle_after_one_turn(h, gate="true")
    fleet = Fleet()
    fleet.sched = fleet.commands.sched = h.s
    assert asyncio.run(fleet.commands.close("t"))
    assert [e.type for e in fleet.recorded] == [EventType.task_closed, EventType.task_retried]
    b = h.assign("w2")
    assert b.closing and b.messages == []
    assert turn_ended(b.model_copy(update={"loop_state": dict(STATE)}))
    assert not turn_ended(b.model_copy(update={"loop_state": dict(STATE), "messages": ["m"]}))
    assert not turn_ended(b.model_copy(update={"loop_state": {"turns": 2}}))  # mid-turn
    h.record(h.s.conclude(ended(b)))  # the gate passed: it ends as a batch task does
    assert h.s.tasks["t"].state == TaskState.succeeded
    refused = asyncio.run(fleet.commands.steer("t", "more"))
    assert refused.reason == "task 't' is succeeded: it has ended"


def test_close_while_a_turn_runs_gates_the_end_of_that_turn() -> None:
    h = Harness()
    h.submit(id="t", prompt="x", interactive=True)
    a = h.assign()
    h.record(h.s.close("t"))
    assert h.s.tasks["t"].closing and h.s.tasks["t"].state == TaskState.running
    assert h.s.close("t") == []  # once
    decided = refs(h.s.conclude(ended(a, "idle")))  # that session did not know: gate next
    assert [e.type for e in decided] == [EventType.session_idle, EventType.task_retried]
    h.record(decided)
    assert h.assign("w2").closing


def test_a_failed_turn_goes_on_from_where_it_stopped_told_why() -> None:
    h = Harness(default_max_attempts=2, retry_backoff_s=0)
    h.submit(id="t", prompt="x", interactive=True, gate="false")
    a = h.assign()
    h.record(h.s.close("t"))
    why = "The gate `false` failed (exit 1):\n"
    decided = refs(h.s.conclude(ended(a, status="failed", reason="gate failed", feedback=why)))
    assert [e.type for e in decided] == [EventType.session_checkpointed, EventType.task_retried]
    assert decided[1].payload["resume"] is True
    h.record(decided)
    record = h.s.tasks["t"]
    assert record.loop_state_ref == f"t/{a.session_id}.json"  # its own end, not the start
    b = h.assign()
    assert b.attempt == 2 and b.closing
    assert b.messages == ["Attempt 1 failed: gate failed\n" + why]
    h.record(refs(h.s.conclude(ended(b, status="failed", reason="gate failed"))))
    assert record.state == TaskState.needs_human  # attempts run out as for a batch task


def test_only_an_interactive_task_is_closed_and_an_expired_one_takes_no_message() -> None:
    fleet = Fleet()
    asyncio.run(fleet.commands.submit([{"id": "b", "prompt": "x"}]))
    assert (
        asyncio.run(fleet.commands.close("b")).reason
        == "task 'b' is not interactive: it ends by itself"
    )
    assert asyncio.run(fleet.commands.close("nope")).reason == "no task 'nope'"
    asyncio.run(fleet.commands.submit([{"id": "i", "prompt": "x", "interactive": True}]))
    session = fleet.run("i")
    idle = Event(task_id="i", type=EventType.session_idle, session_id=session)
    asyncio.run(fleet.record([idle]))
    assert fleet.sched.expire("b", "x") == []  # only an idle task expires
    asyncio.run(fleet.record(fleet.sched.expire("i", "idle for 61s (idle_timeout_s 60)")))
    record = fleet.sched.tasks["i"]
    assert record.state == TaskState.expired and record.state.terminal
    assert fleet.sched.finished == ["i"]
    refused = asyncio.run(fleet.commands.steer("i", "hello?"))
    assert refused.reason == (
        "task 'i' is expired: idle for 61s (idle_timeout_s 60); it takes no more messages"
    )
    assert asyncio.run(fleet.commands.close("i")).reason == "task 'i' is expired: it has ended"


def test_a_closed_task_takes_no_more_messages() -> None:
    fleet = Fleet()
    asyncio.run(fleet.commands.submit([{"id": "i", "prompt": "x", "interactive": True}]))
    assert asyncio.run(fleet.commands.close("i"))
    refused = asyncio.run(fleet.commands.steer("i", "wait"))
    assert "was closed" in refused.reason
    assert asyncio.run(fleet.commands.close("i")).reason == "task 'i' is closed already"


def test_idle_tasks_expire_after_idle_timeout_s() -> None:
    now = 1_000_000.0
    sched = Scheduler(FleetConfig(), FleetSettings())
    since = datetime.fromtimestamp(now - 100, UTC)
    for task_id, state in (("idle", TaskState.idle), ("paused", TaskState.paused)):
        sched.apply(sched.submit(TaskSpec(id=task_id, prompt="x", interactive=True)))
        sched.tasks[task_id].state = state
        sched.tasks[task_id].idle_since = since
    assert watchdog.idle_expired(sched, now, FleetSettings(idle_timeout_s=101)) == []
    assert watchdog.idle_expired(sched, now, FleetSettings(idle_timeout_s=99)) == [
        ("idle", "idle for 100s (idle_timeout_s 99)")
    ]
    assert watchdog.idle_expired(sched, now, FleetSettings(idle_timeout_s=0)) == []  # never


class Log:
    """What :func:`actors.recovery.recover` reads and appends to."""

    def __init__(self, events: list[Event]) -> None:
        self.events = events
        self.appended: list[Event] = []

    def replay(self) -> list[Event]:
        return list(self.events)

    def append(self, events: list[Event]) -> None:
        self.appended += events


def test_an_idle_task_is_still_idle_after_a_supervisor_restart() -> None:
    h = Harness()
    a = idle_after_one_turn(h)
    h.record(h.s.close("t"))  # closed and queued to run its gate...
    h.submit(id="u", prompt="x", interactive=True)
    b, assigned = h.s.assign("w2", only="u")
    h.record([assigned])
    h.record(refs(h.s.conclude(ended(b, "idle"))))  # ...and another one idle
    log = Log(h.log)
    fresh = Scheduler(FleetConfig(), FleetSettings())
    recovery.recover(log, fresh)  # type: ignore[arg-type]
    assert log.appended == []  # nothing was running: nothing to requeue
    idle, closed = fresh.tasks["u"], fresh.tasks["t"]
    assert idle.state == TaskState.idle and idle.loop_state_ref == f"t/{b.session_id}.json"
    assert idle.idle_since == h.s.tasks["u"].idle_since
    assert closed.state == TaskState.queued and closed.closing
    got = fresh.assign("w9", only="t")
    assert got is not None and got[0].closing
    assert closed.workspace_ref == f"t/{a.session_id}.tar"


def test_an_interactive_task_has_no_stages_and_gate_each_turn_needs_one() -> None:
    for fields, error in (
        ({"gate_each_turn": True}, "only for an interactive task"),
        ({"interactive": True, "stages": [{"agent": "default"}]}, "has none"),
    ):
        try:
            TaskSpec(prompt="x", **fields)
        except ValueError as exc:
            assert error in str(exc)
        else:
            raise AssertionError(f"{fields} accepted")


def test_a_close_with_nothing_to_say_needs_an_ended_turn() -> None:
    a = Assignment(
        task=TaskSpec(prompt="x", interactive=True),
        agent=AgentSpec(),
        environment=EnvironmentSpec(),
        attempt=1,
        session_id="s",
        max_turns=5,
        time_limit_s=5,
        closing=True,
    )
    assert not turn_ended(a)  # no state: the agent runs first
    assert turn_ended(a.model_copy(update={"loop_state": dict(STATE)}))
    assert not turn_ended(a.model_copy(update={"loop_state": dict(STATE), "closing": False}))


def test_an_item_from_a_source_is_a_batch_task_whatever_its_source_says() -> None:
    from types import SimpleNamespace

    from fleet.watch import Watcher
    from sources import WorkItem

    source = SimpleNamespace(name="tickets")
    config = FleetConfig.model_validate(
        {
            "sources": [
                {"name": "tickets", "kind": "sql", "task": {"interactive": True, "gate": "true"}}
            ]
        }
    )
    watcher = Watcher(None, [source], config=config)  # type: ignore[list-item]
    item = WorkItem(source="tickets", id="7", prompt="fix it")
    spec = watcher.task_for(source, item)  # type: ignore[arg-type]
    assert spec.interactive is False and spec.gate == "true"  # it ends by itself
