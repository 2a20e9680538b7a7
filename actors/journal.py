"""The single writer of the event log: every event, the supervisor's own or a worker's, is
numbered here (``seq`` per task), applied to the scheduler's state, appended to the WAL,
shown to the fleet's telemetry (``observe``: metrics and traces) and kept for live streams,
then whoever waits on what it changed is woken.

Plain asyncio, no Ray: ``spawn`` runs background coroutines (the supervisor keeps them).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pyarrow.parquet as pq

from actors.pool import WorkerPool
from actors.scheduler import Scheduler
from actors.streams import LiveStreams
from core.eventlog import EventLog
from core.events import TERMINAL_EVENTS, Event, EventType
from core.settings import FleetSettings
from core.specs import TaskState

log = logging.getLogger("fleet.supervisor")

REQUEUES = (EventType.task_submitted, EventType.task_retried, EventType.handoff)
QUIET = frozenset(EventType) - {*REQUEUES, EventType.task_assigned, *TERMINAL_EVENTS}
"""Events the journal has nothing more to do for once they are applied (most of them)."""

Spawn = Callable[[Coroutine[Any, Any, Any]], None]
Observer = Callable[[list[Event]], None]
"""Sees each batch of events once it is logged (numbered, in order): the fleet's telemetry."""


class Journal:
    def __init__(
        self,
        sched: Scheduler,
        log: EventLog,
        streams: LiveStreams,
        pool: WorkerPool,
        settings: FleetSettings,
        spawn: Spawn,
        clock: Callable[[], float] = time.time,
        redact: Callable[[list[Event]], list[Event]] | None = None,
        observe: Observer | None = None,
    ) -> None:
        """``redact``: applied to every event before it is applied and logged (the vault's
        redactor: no secret's value reaches the log, a stream or a record)."""
        self.sched = sched
        self.log = log
        self.streams = streams
        self.pool = pool
        self.settings = settings
        self.spawn = spawn
        self.clock = clock
        self.redact = redact
        self.observe = observe
        self._roll_lock: asyncio.Lock | None = None
        self._compacting: asyncio.Future[int] | None = None

    def open(self) -> None:
        """Allow rolls (on the loop that serves them); before this ``flush`` rolls nothing."""
        self._roll_lock = asyncio.Lock()

    async def record(
        self, events: list[Event], then: Callable[[], list[Event]] | None = None
    ) -> None:
        """Number, apply and log events; wake whoever waits on what they changed.

        ``then`` decides more events from the state the first ones made (a session's result,
        then what follows it): both are logged in one append, so a crash keeps both or
        neither (never a gate's verdict without the decision it led to)."""
        if self.redact is not None:
            events = self.redact(events)
        flags = self._apply(events)
        if then is not None:
            more = then()
            if self.redact is not None:
                more = self.redact(more)
            flags = [a or b for a, b in zip(flags, self._apply(more), strict=True)]
            events = events + more
        if not events:
            return
        requeued, ended = flags
        self.log.append(events)
        if self.observe is not None:
            self.observe(events)
        self.streams.remember(events)
        await self.streams.announce(ended)
        if self.log.buffered >= self.settings.flush_max_events:
            self.spawn(self.flush())
        if requeued:
            await self.pool.wake()

    def _apply(self, events: list[Event]) -> list[bool]:
        """Number events and fold them into the state; [requeued, ended]."""
        requeued = ended = False
        now = self.clock()
        sched = self.sched
        for event in events:
            event.number(sched.next_seq(event.task_id))
            sched.apply(event)
            if event.type in QUIET:
                continue
            if event.type in REQUEUES:
                requeued = True
                not_before = event.payload.get("not_before", 0)
                if not_before and not_before > now:
                    self.wake_at(not_before)
            elif event.type == EventType.task_assigned and event.session_id:
                self.pool.session_started[event.session_id] = now
            elif event.type in TERMINAL_EVENTS:
                ended = True
        return [requeued, ended]

    def wake_at(self, when: float) -> None:
        """Wake idle workers when a backoff ends."""

        async def wake() -> None:
            await asyncio.sleep(max(0.0, when - self.clock()) + 0.01)
            await self.pool.wake()

        self.spawn(wake())

    def live(self, events: list[Event]) -> list[Event]:
        """Events of sessions the fleet still counts: the task's current session, while it
        runs or once it ended (a cancel's tail). A session whose task went back to the queue
        (its worker lost, the supervisor restarted) has been written off: what it still says
        must not mix into the task's history."""
        kept = []
        for event in events:
            record = self.sched.tasks.get(event.task_id)
            if record is None:
                continue
            if event.session_id is None or (
                event.session_id == record.session_id and record.state != TaskState.queued
            ):
                kept.append(event)
        if len(kept) < len(events):
            log.info("dropped %d events of written-off sessions", len(events) - len(kept))
        return kept

    async def flush(self, compact: bool = False) -> int:
        """Roll buffered events into Parquet now; returns how many were written. With
        ``compact``, then merge small files (and wait for it)."""
        assert self._roll_lock is not None or not self.log.buffered
        if self._roll_lock is None:
            return 0
        async with self._roll_lock:
            pending = self.log.start_roll()
            written = 0
            if pending is not None:
                await asyncio.to_thread(self.log.finish_roll, *pending)
                written = len(pending[1])
        if compact:
            await self.compact()
        return written

    async def compact(self) -> None:
        """Merge the log's small files in a thread, one compaction at a time. Not under the
        roll lock: rolls (and the reads that flush first) go on meanwhile."""
        if self._compacting is not None:
            await asyncio.shield(self._compacting)
            return
        self._compacting = asyncio.ensure_future(asyncio.to_thread(self.log.compact))
        try:
            await asyncio.shield(self._compacting)
        finally:
            self._compacting = None

    async def flush_loop(self, stopping: Callable[[], bool]) -> None:
        """Roll every ``flush_interval_s`` until ``stopping``; every 32nd roll starts a
        compaction in the background."""
        rolls = 0
        while not stopping():
            await asyncio.sleep(self.settings.flush_interval_s)
            try:
                if await self.flush():
                    rolls += 1
                    if rolls % 32 == 0 and self._compacting is None:
                        self.spawn(self._compact_logged())
            except Exception:  # keep the loop alive; the WAL still holds the events
                log.exception("event log flush failed")

    async def _compact_logged(self) -> None:
        try:
            await self.compact()
        except Exception:  # the small files stay; the next compaction tries again
            log.exception("event log compaction failed")

    async def task_events(self, task_id: str) -> list[Event]:
        """A task's events so far, in ``seq`` order (rolled files plus the buffer)."""
        await self.flush()
        for tries in range(3):  # a compaction may delete a listed file meanwhile: list again
            files = self.log.files()
            if not files:
                return []
            try:
                table = pq.read_table(
                    files, filters=[("task_id", "=", task_id)], filesystem=self.log.fs
                )
                break
            except FileNotFoundError:
                if tries == 2:
                    raise
        events = {r["seq"]: r for r in table.to_pylist()}  # once each, even mid-compaction
        return [Event.from_row(events[seq]) for seq in sorted(events)]
