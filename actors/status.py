"""The fleet's status view: a plain function of the scheduler's state and the clock."""

from __future__ import annotations

import itertools
from typing import Any

from actors.scheduler import Scheduler
from core.records import TaskRecord
from core.settings import FleetSettings
from core.specs import TaskState

PROMPT_SHOWN = 160
"""Characters of each listed task's prompt the status carries (the dashboard shows them)."""
WAITING_ON_A_PERSON = (
    TaskState.awaiting_approval,
    TaskState.awaiting_tool_result,
    TaskState.awaiting_review,
    TaskState.paused,
    TaskState.idle,
)
"""(On a person, or the API client that runs a custom tool or sends the next message.)"""


def asks_now(record: TaskRecord) -> bool:
    """A running session waits on a person for a tool call, or on the client for a custom
    tool's result (before it parks)."""
    if record.state != TaskState.running:
        return False
    pending, waiting = record.pending_approval, record.pending_custom_tool
    return bool(pending and not pending.get("decision")) or bool(
        waiting and not waiting.get("result")
    )


def waited_call(record: TaskRecord) -> dict:
    """The tool call a task waits on: the one asking for approval, else its custom tool's."""
    if record.pending_approval:
        return record.pending_approval
    return record.pending_custom_tool or {}


def fleet_status(
    sched: Scheduler,
    running: dict[str, str],
    workers: int,
    settings: FleetSettings,
    started_at: float,
    now: float,
) -> dict[str, Any]:
    """Counts, queue, running sessions (``running``: worker id -> task id), what waits on a
    person, the latest outcomes, and the last error of each source a watcher reported."""
    sessions = []
    for worker, task_id in sorted(running.items()):
        record = sched.tasks[task_id]
        began = record.started_at or record.submitted_at
        last = record.last_event_at.timestamp() if record.last_event_at else now
        sessions.append(
            {
                "task_id": task_id,
                "worker": worker,
                "attempt": record.attempts,
                "age_s": round(now - began.timestamp(), 2) if began else None,
                "last_event": record.last_event,
                "last_event_age_s": round(now - last, 2),
            }
        )
    blocked = [
        {
            "task_id": r.id,
            "state": r.state.value,
            "call_id": waited_call(r).get("call_id"),
            "tool": waited_call(r).get("tool"),
            "reason": r.reason,
        }
        for r in sched.tasks.built()  # a task held as submitted waits on nobody
        if r.state in WAITING_ON_A_PERSON or asks_now(r)
    ][:50]
    recent = [sched.tasks[i] for i in sched.finished[-10:]]
    queued = sched.queue.ids(limit=50)
    shown = [*queued, *running.values(), *(b["task_id"] for b in blocked), *(r.id for r in recent)]
    return {
        "fleet": settings.name,
        "workers": workers,
        "sandbox": settings.sandbox,  # the backend sessions run in: docker or local
        "counts": sched.counts(),
        "queued": queued,
        "running": sessions,
        "blocked": blocked,
        "recent": [{"task_id": r.id, "state": r.state.value, "reason": r.reason} for r in recent],
        "sources": dict(sched.sources),
        "prompts": {i: sched.tasks.peek(i).spec.prompt[:PROMPT_SHOWN] for i in shown},
        "events_dir": settings.events_dir,
        "uptime_s": round(now - started_at, 1),
    }


def list_tasks(
    sched: Scheduler, state: str | None, label: str | None, limit: int, offset: int
) -> list[TaskRecord]:
    """Tasks, newest first, optionally only those in ``state`` or carrying ``label``."""
    tasks = sched.tasks
    picked = (
        task_id
        for task_id in reversed(tasks)
        if (state is None or tasks.state(task_id) == state)
        and (label is None or label in tasks.labels(task_id))
    )
    return [tasks.peek(task_id) for task_id in itertools.islice(picked, offset, offset + limit)]
