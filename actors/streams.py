"""Live streams: the latest events kept in memory for readers that follow the fleet, and the
long polls that wait on them. Plain asyncio, no Ray: the supervisor holds one.

Two views of the same events: per task (the recent tasks' events, for a session's stream)
and fleet-wide (a ring of the latest events with a global index, for the fleet stream). The
event log has every event; these only spare the live readers a trip to Parquet.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from itertools import islice

from core.events import Event


class LiveStreams:
    def __init__(self, stream_events: int, recent_tasks: int, first_index: int = 0) -> None:
        self.recent: OrderedDict[str, list[Event]] = OrderedDict()
        """Events of recently active tasks, most recent last."""
        self.recent_tasks = recent_tasks
        self.ring: deque[Event] = deque(maxlen=stream_events)
        """The latest events of every task."""
        self.next_index = first_index
        """Global index of the next event (events replayed from the log came before it)."""
        self._arrived: asyncio.Condition | None = None
        self._ended: asyncio.Condition | None = None

    def open(self) -> None:
        """Start waking waiters (on the loop that serves them); before this, reads return
        at once."""
        self._arrived = asyncio.Condition()
        self._ended = asyncio.Condition()

    def remember(self, events: list[Event]) -> None:
        """Keep numbered events for the live readers."""
        self.ring.extend(events)
        self.next_index += len(events)
        for event in events:
            cached = self.recent.get(event.task_id)
            if cached is None:
                cached = self.recent[event.task_id] = []
            else:
                self.recent.move_to_end(event.task_id)
            cached.append(event)
        while len(self.recent) > self.recent_tasks:
            self.recent.popitem(last=False)

    async def announce(self, ended: bool) -> None:
        """Wake the readers waiting for events (and, when a task ended, for endings)."""
        if self._arrived is not None:
            async with self._arrived:
                self._arrived.notify_all()
        if ended and self._ended is not None:
            async with self._ended:
                self._ended.notify_all()

    def events_after(self, task_id: str, after_seq: int) -> list[Event] | None:
        """A task's events with ``seq > after_seq`` from memory, or None when memory does
        not reach back that far."""
        cached = self.recent.get(task_id)
        if not cached or cached[0].seq > after_seq + 1:
            return None
        return [e for e in cached if e.seq > after_seq]

    async def task_events(
        self,
        task_id: str,
        after_seq: int,
        timeout_s: float,
        limit: int,
        from_log: Callable[[], Awaitable[list[Event]]],
    ) -> list[Event]:
        """A task's events with ``seq > after_seq``, oldest first (``from_log`` reads them
        all when memory does not reach back); when there are none yet, waits up to
        ``timeout_s`` for the next (a long poll)."""
        found = self.events_after(task_id, after_seq)
        if found is None:
            found = [e for e in await from_log() if e.seq > after_seq]
        if not found and timeout_s > 0 and self._arrived is not None:

            def arrived() -> bool:
                return bool(self.events_after(task_id, after_seq))

            async with self._arrived:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._arrived.wait_for(arrived), timeout_s)
            found = self.events_after(task_id, after_seq) or []
        return found[:limit]

    async def since(self, cursor: int, timeout_s: float, limit: int) -> tuple[list[Event], int]:
        """Every task's events from global index ``cursor`` on, and the index to ask for next;
        the first event's index is ``next - len(events)``, above ``cursor`` when older ones
        left the ring. A negative ``cursor`` (or one from another life) means from now. When
        there are none yet, waits up to ``timeout_s`` for one."""
        if cursor < 0 or cursor > self.next_index:
            cursor = self.next_index
        if cursor == self.next_index and timeout_s > 0 and limit > 0 and self._arrived is not None:
            async with self._arrived:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._arrived.wait_for(lambda: self.next_index > cursor), timeout_s
                    )
        oldest = self.next_index - len(self.ring)
        start = max(cursor, oldest)
        events = list(islice(self.ring, start - oldest, start - oldest + max(0, limit)))
        return events, start + len(events)

    async def wait_finished(self, finished: list[str], cursor: int, timeout_s: float) -> None:
        """Until more than ``cursor`` tasks have ended (``finished`` grows as they do), or
        ``timeout_s`` passed."""
        if len(finished) <= cursor and self._ended is not None:
            async with self._ended:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._ended.wait_for(lambda: len(finished) > cursor), timeout_s
                    )
