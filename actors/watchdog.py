"""The watchdog's decisions: which sessions to stop (silent too long, or past their time
limit), which workers to replace (no heartbeat) and which idle interactive tasks expire, as
plain functions of the state and ``now``. The supervisor's loop acts on them (it stops
sessions, kills workers, records expiries)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from actors.pool import WorkerPool
from actors.scheduler import Scheduler
from core.records import TaskRecord
from core.settings import FleetSettings, resolve
from core.specs import TaskState

log = logging.getLogger("fleet.supervisor")


@dataclass(frozen=True)
class SessionStop:
    """A session to stop, on which worker, and why."""

    worker_id: str
    task_id: str
    session_id: str | None
    reason: str


def overdue(record: TaskRecord, started: float, now: float, settings: FleetSettings) -> str | None:
    """Why a running session must stop (no event for its stall timeout, or its time limit
    plus ``watchdog_grace_s`` passed since it was assigned at ``started``), or None."""
    stall = record.spec.stall_timeout_s or settings.stall_timeout_s
    silent = now - record.last_event_at.timestamp() if record.last_event_at else 0
    limit = resolve("time_limit_s", record.spec, record.plan, settings)
    if silent > stall:
        return f"stalled: no event for {silent:.0f}s (stall timeout {stall:g}s)"
    if now - started > limit + settings.watchdog_grace_s:
        return f"time limit of {limit:g}s passed"
    return None


def sessions_to_stop(
    sched: Scheduler, pool: WorkerPool, now: float, settings: FleetSettings
) -> list[SessionStop]:
    """The running (or finishing) sessions of live workers that must stop now."""
    stops = []
    finishing = [(worker_id, task_id) for worker_id, (task_id, _) in pool.finishing.items()]
    for worker_id, task_id in [*pool.running.items(), *finishing]:
        record = sched.tasks[task_id]
        started = pool.session_started.get(record.session_id or "", now)
        reason = overdue(record, started, now, settings)
        if reason and worker_id in pool.workers:
            stops.append(SessionStop(worker_id, task_id, record.session_id, reason))
    return stops


def idle_expired(sched: Scheduler, now: float, settings: FleetSettings) -> list[tuple[str, str]]:
    """Interactive tasks idle for longer than ``idle_timeout_s`` (0: never), with why:
    ``(task_id, reason)``, for :meth:`Scheduler.expire`."""
    timeout = settings.idle_timeout_s
    if timeout <= 0:
        return []
    return [
        (r.id, f"idle for {now - r.idle_since.timestamp():.0f}s (idle_timeout_s {timeout:g})")
        for r in sched.tasks.built()  # an idle task is past its submit
        if r.state == TaskState.idle
        and r.idle_since is not None
        and now - r.idle_since.timestamp() > timeout
    ]


def silent_workers(pool: WorkerPool, now: float, timeout_s: float) -> list[str]:
    """Live workers whose last heartbeat is older than ``timeout_s``: to be replaced. Their
    clock restarts now, so one that takes a while to die is not named again at once."""
    silent = [
        w for w, beat in pool.heartbeats.items() if now - beat > timeout_s and w in pool.workers
    ]
    for worker_id in silent:
        pool.heartbeats[worker_id] = now
    return silent


class ReapClock:
    """When the head next looks for containers of dead workers (those of a crashed life die
    late, so it looks again every ``interval_s``)."""

    def __init__(self, now: float, interval_s: float) -> None:
        self.reaped_at = now
        self.interval_s = interval_s

    def due(self, now: float) -> bool:
        if now - self.reaped_at > self.interval_s:
            self.reaped_at = now
            return True
        return False


async def reap_head(sandbox: str) -> int:
    """Remove this node's sandbox containers whose worker died (each worker reaps its own
    node too, when it starts). Returns how many were removed."""
    if sandbox != "docker":
        return 0
    from sandboxes.docker import reap_orphans

    try:
        reaped = await asyncio.to_thread(reap_orphans)
    except Exception as exc:  # no engine on the head: Docker only on worker nodes
        log.info("no orphan containers reaped on the head: %s", exc)
        return 0
    if reaped:
        log.warning("removed %d containers left by dead workers", reaped)
    return reaped
