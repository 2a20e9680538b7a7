"""Recovery as plain functions of the event log and the scheduler (no Ray): what a
restarted supervisor rebuilds, requeues and refuses."""

from pathlib import Path

from actors.recovery import ids_in_history, orphan_event, recover
from actors.scheduler import Scheduler
from core.eventlog import EventLog
from core.events import Event, EventType
from core.settings import FleetSettings
from core.specs import FleetConfig, TaskSpec, TaskState


def record(sched: Scheduler, log: EventLog, events: list[Event]) -> None:
    for event in events:
        known = sched.tasks.get(event.task_id)
        event.seq = known.seq + 1 if known else 0
        sched.apply(event)
    log.append(events)


def first_life(root: Path) -> None:
    """Four tasks: one running, one running with a checkpoint, one queued, one done."""
    sched = Scheduler(FleetConfig(), FleetSettings())
    log = EventLog(str(root), writer="f")
    for task_id in ("run", "ckpt", "queued", "done"):
        record(sched, log, [sched.submit(TaskSpec(id=task_id, prompt="x"))])
    for task_id in ("run", "ckpt", "done"):
        got = sched.assign("w1", only=task_id)
        assert got is not None and got[0] is not None
        record(sched, log, [got[1]])
    session = sched.tasks["ckpt"].session_id
    refs = {"workspace_ref": "ckpt/a.tar", "loop_state_ref": "ckpt/a.json"}
    record(
        sched,
        log,
        [
            Event(
                task_id="ckpt",
                type=EventType.session_checkpointed,
                session_id=session,
                payload=refs,
            ),
            Event(task_id="done", type=EventType.task_succeeded, payload={"summary": "ok"}),
        ],
    )
    log.close()


def test_a_restart_rebuilds_the_state_and_requeues_what_ran(tmp_path: Path) -> None:
    first_life(tmp_path)
    sched = Scheduler(FleetConfig(), FleetSettings())
    log = EventLog(str(tmp_path), writer="f")
    try:
        count = recover(log, sched)
        states = {t: sched.tasks[t].state for t in sched.tasks}
        assert states == {
            "run": TaskState.queued,
            "ckpt": TaskState.queued,
            "queued": TaskState.queued,
            "done": TaskState.succeeded,
        }
        assert count == 4 + 3 + 2 + 2  # submitted, assigned, checkpoint + end, 2 requeues
        assert log.buffered == 2  # the requeues are logged before anything is assigned
        run, ckpt = sched.tasks["run"], sched.tasks["ckpt"]
        assert run.reason == ckpt.reason == "supervisor restarted"
        assert run.attempts == ckpt.attempts == 0  # the lost attempt is not counted
        assert run.workspace_ref is None
        assert ckpt.workspace_ref == "ckpt/a.tar"  # it resumes from its checkpoint
        assert sorted(sched.queue.ids()) == ["ckpt", "queued", "run"]
    finally:
        log.close()


def test_ids_of_every_fleets_history_are_taken(tmp_path: Path) -> None:
    first_life(tmp_path)
    other = EventLog(str(tmp_path), writer="other")
    other.append([Event(task_id="theirs", type=EventType.task_submitted, seq=0)])
    other.close()
    log = EventLog(str(tmp_path), writer="f")
    try:
        assert ids_in_history(log) == {"run", "ckpt", "queued", "done", "theirs"}
    finally:
        log.close()
    empty = EventLog(str(tmp_path / "empty"), writer="f")
    try:
        assert ids_in_history(empty) == set()
    finally:
        empty.close()


def test_an_orphan_resumes_only_when_it_has_a_checkpoint() -> None:
    sched = Scheduler(FleetConfig(), FleetSettings())
    sched.apply(sched.submit(TaskSpec(id="t", prompt="x")))
    got = sched.assign("w1")
    assert got is not None
    sched.apply(got[1])
    record = sched.tasks["t"]
    event = orphan_event(record)
    assert event.type == EventType.task_retried and event.session_id == record.session_id
    assert event.payload == {"reason": "supervisor restarted", "next_attempt": 1, "resume": False}
    with_ckpt = record.model_copy(update={"workspace_ref": "t/s.tar"})
    assert orphan_event(with_ckpt).payload["resume"] is True
