"""Recovery: a supervisor that restarts (or starts with ``recover``) rebuilds its state from
the event log before it assigns anything; one that starts without it still gets its agents'
and environments' versions back (:func:`restore_registry`). Plain functions of the log and
the scheduler."""

from __future__ import annotations

import logging

import pyarrow.parquet as pq

from actors.scheduler import Scheduler
from core.eventlog import EventLog, partition_files
from core.events import REGISTRY_EVENTS, Event, EventType
from core.records import TaskRecord
from core.specs import TaskState

log = logging.getLogger("fleet.supervisor")


def recover(event_log: EventLog, sched: Scheduler) -> int:
    """Rebuild task state from the log, then send back to the queue what the log shows
    running: its worker died with the old life. Both happen before this life can assign
    anything, so no task is handed to a new worker and then requeued (which would run it
    twice). Returns how many events the state now holds (replayed plus requeues)."""
    count = 0
    for event in event_log.replay():
        sched.apply(event)
        count += 1
    orphans = [orphan_event(r) for r in sched.tasks.built() if r.state == TaskState.running]
    for event in orphans:
        event.seq = sched.tasks[event.task_id].seq + 1
        sched.apply(event)
    if orphans:
        event_log.append(orphans)
        log.warning("requeued %d tasks running when the supervisor died", len(orphans))
    return count + len(orphans)


def restore_registry(event_log: EventLog, sched: Scheduler) -> int:
    """Fold this fleet's registry events (``registry.put``, ``registry.archived``) into the
    scheduler's registry, tasks left out: a fleet started without ``recover`` on an events
    directory has the agents and environments (every version) an earlier life made. Returns
    how many events were folded."""
    files = event_log.files()
    if not files:
        return 0
    table = pq.read_table(
        files,
        filters=[("type", "in", sorted(t.value for t in REGISTRY_EVENTS))],
        filesystem=event_log.fs,
    )
    rows = sorted(table.to_pylist(), key=lambda r: (r["task_id"], r["seq"]))
    for row in rows:
        sched.apply(Event.from_row(row))
    return len(rows)


def ids_in_history(event_log: EventLog) -> set[str]:
    """Task ids the events folder already has (every fleet's): a new task may not take one,
    or reports would mix two histories under it."""
    files = partition_files(event_log.fs, event_log.root)
    if not files:
        return set()
    table = pq.read_table(
        files,
        columns=["task_id"],
        filters=[("type", "=", EventType.task_submitted.value)],
        filesystem=event_log.fs,
    )
    return set(table.column("task_id").to_pylist())


def orphan_event(record: TaskRecord) -> Event:
    """A task that ran when the supervisor died goes back to the queue. The attempt is not
    counted; it resumes from its latest checkpoint if it has one."""
    return Event(
        task_id=record.id,
        type=EventType.task_retried,
        session_id=record.session_id,
        payload={
            "reason": "supervisor restarted",
            "next_attempt": record.attempts,
            "resume": bool(record.workspace_ref),
        },
    )
