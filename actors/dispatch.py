"""What workers call the supervisor for: report a session's result and wait for the next
assignment, keep a checkpoint, ship events. Plain asyncio: the supervisor forwards the
workers' calls here; no worker handle is called.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from actors import artifacts as art
from actors.artifacts import ArtifactStore
from actors.journal import Journal
from actors.manager import Manager
from actors.pool import WorkerPool
from actors.scheduler import Scheduler
from core.events import Event, EventType
from core.records import Assignment, SessionResult
from core.settings import FleetSettings
from core.specs import TaskState


class Dispatcher:
    def __init__(
        self,
        sched: Scheduler,
        pool: WorkerPool,
        journal: Journal,
        store: ArtifactStore,
        manager: Manager,
        settings: FleetSettings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.sched = sched
        self.pool = pool
        self.journal = journal
        self.store = store
        self.manager = manager
        self.settings = settings
        self.clock = clock

    async def next_assignment(
        self, worker_id: str, result: SessionResult | None
    ) -> Assignment | None:
        """Take a worker's last result (if any) and wait for its next assignment; None
        tells the worker to stop."""
        assert self.pool.work is not None
        if worker_id not in self.pool.workers:
            return None  # a worker of an earlier life (or replaced): its result is stale
        self.pool.heartbeats[worker_id] = self.clock()
        if result is not None:
            await self.take_result(worker_id, result)
        return await self.assign(worker_id)

    async def take_result(self, worker_id: str, result: SessionResult) -> None:
        """Record a session's events and artifacts and what follows it (retry, next stage,
        review, parking, success)."""
        self.pool.running.pop(worker_id, None)
        self.pool.session_started.pop(result.session_id, None)
        refs: dict[str, str] = {}
        if art.has_artifacts(result):  # first: what the log will point at exists
            refs = await asyncio.to_thread(art.store_result, self.store, result)

        decided: list[Event] = []

        def decide() -> list[Event]:
            decided.extend(self.sched.conclude(result))
            for event in decided:
                if event.type in (EventType.handoff, EventType.task_parked) and refs:
                    event.payload.update(refs)
            if refs.get("diff_ref"):
                decided.insert(0, art.diff_event(self.store, result, refs["diff_ref"]))
            return decided

        # The session's events and what follows them, in one append: a supervisor killed
        # here keeps both or neither (then the task reruns, having left no verdict).
        await self.journal.record(self.journal.live(result.events), then=decide)
        if any(e.type == EventType.task_parked for e in decided):
            # A decision that reached the worker as the session parked: resume now.
            record = self.sched.tasks[result.task_id]
            if (record.pending_approval or {}).get("decision"):
                await self.journal.record(self.sched.unpark(result.task_id))

    async def assign(self, worker_id: str) -> Assignment | None:
        """Wait until a task may run on this worker (the rules pick it, or the manager agent
        pinned it), then hand it over with what it resumes from."""
        work = self.pool.work
        assert work is not None
        pool = self.pool.pools.get(worker_id)
        async with work:
            while True:
                if self.pool.stopping or pool is None or worker_id not in self.pool.workers:
                    return None
                running = self.pool.running_records(self.sched)
                if self.manager.routes():
                    pinned = self.manager.pins.pop(worker_id, None)
                    got = (
                        self.sched.assign(worker_id, pool, running, only=pinned) if pinned else None
                    )
                    if got is None and len(self.sched.queue):
                        self.manager.request()
                else:
                    got = self.sched.assign(worker_id, pool, running)
                if got is not None and got[0] is None:  # it names a spec that is gone
                    await self.journal.record([got[1]])
                    continue
                if got is not None:
                    break
                # Woken by whatever queues work; the timeout is a safety net, not the clock.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(work.wait(), self.settings.idle_recheck_s)
        assignment, event = got
        assert assignment is not None
        self.pool.running[worker_id] = assignment.task.id
        record = self.sched.tasks[assignment.task.id]
        # One-shot refs (a parked loop, a handoff's history) are cleared by the assignment.
        refs = (
            record.workspace_ref or record.base_ref,
            record.loop_state_ref if record.workspace_ref else None,
            record.history_ref,
        )
        await self.journal.record([event])
        if any(refs):
            await asyncio.to_thread(art.load_into, self.store, assignment, *refs)
        return assignment

    async def checkpoint(
        self,
        task_id: str,
        session_id: str,
        state: dict[str, Any],
        workspace: bytes,
        base: bytes | None = None,
    ) -> bool:
        """Keep a running session's latest resume point (workspace and loop state, and the
        task's starting workspace when sent); False when the session is no longer the
        task's running one."""
        record = self.sched.tasks.get(task_id)
        if record is None or record.state != TaskState.running or record.session_id != session_id:
            return False
        refs = await asyncio.to_thread(
            art.store_checkpoint, self.store, task_id, session_id, state, workspace, base
        )
        event = art.checkpoint_event(record, session_id, refs, state.get("turns"), len(workspace))
        await self.journal.record([event])
        return True

    async def ingest(self, events: list[Event]) -> int:
        """A running session's events; those of sessions written off are dropped."""
        live = self.journal.live(events)
        await self.journal.record(live)
        return len(live)
