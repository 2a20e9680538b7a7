"""Live streams and their long polls, on plain asyncio (no Ray)."""

import asyncio
import time

from actors.streams import LiveStreams
from core.events import Event, EventType


def ev(task_id: str, seq: int) -> Event:
    return Event(task_id=task_id, type=EventType.agent_message, seq=seq)


def test_a_tasks_events_come_from_memory_while_it_reaches_back() -> None:
    streams = LiveStreams(stream_events=10, recent_tasks=2)
    streams.remember([ev("a", 0), ev("a", 1), ev("b", 0)])
    assert [e.seq for e in streams.events_after("a", 0)] == [1]
    assert streams.events_after("a", 1) == []
    streams.recent["a"] = streams.recent["a"][1:]  # as if seq 0 was never kept
    assert streams.events_after("a", -1) is None  # the log must answer
    streams.remember([ev("c", 0)])  # only 2 tasks are kept: the least recent, a, goes
    assert list(streams.recent) == ["b", "c"]


def test_task_events_read_the_log_when_memory_does_not_reach_back() -> None:
    streams = LiveStreams(stream_events=10, recent_tasks=10)
    streams.remember([ev("a", 2)])
    logged = [ev("a", 0), ev("a", 1), ev("a", 2)]

    async def from_log() -> list[Event]:
        return logged

    found = asyncio.run(streams.task_events("a", 0, 0.0, 10, from_log))
    assert [e.seq for e in found] == [1, 2]
    assert asyncio.run(streams.task_events("a", 0, 0.0, 1, from_log)) == [logged[1]]


def test_the_fleet_stream_pages_by_global_index_and_skips_what_left_the_ring() -> None:
    streams = LiveStreams(stream_events=3, recent_tasks=10, first_index=100)

    async def read(cursor: int, limit: int = 10) -> tuple[list[int], int]:
        events, nxt = await streams.since(cursor, 0.0, limit)
        return [e.seq for e in events], nxt

    streams.remember([ev("a", n) for n in range(5)])  # indexes 100..104; 102.. kept
    assert asyncio.run(read(100)) == ([2, 3, 4], 105)  # 100, 101 left the ring
    assert asyncio.run(read(103, limit=1)) == ([3], 104)
    assert asyncio.run(read(-1)) == ([], 105)  # from now
    assert asyncio.run(read(999)) == ([], 105)  # a cursor of another life: from now


def test_long_polls_wait_for_the_next_event_and_endings() -> None:
    async def scenario() -> None:
        streams = LiveStreams(stream_events=10, recent_tasks=10)
        streams.open()
        finished: list[str] = []

        async def later() -> None:
            await asyncio.sleep(0.05)
            streams.remember([ev("a", 0)])
            await streams.announce(ended=False)
            await asyncio.sleep(0.05)
            finished.append("a")
            await streams.announce(ended=True)

        async def no_log() -> list[Event]:
            return []

        started = time.monotonic()
        pusher = asyncio.create_task(later())
        fleet, task = await asyncio.gather(
            streams.since(-1, 5.0, 10), streams.task_events("a", -1, 5.0, 10, no_log)
        )
        assert [e.task_id for e in fleet[0]] == ["a"] and fleet[1] == 1
        assert [e.seq for e in task] == [0]
        await streams.wait_finished(finished, 0, 5.0)
        assert finished == ["a"] and time.monotonic() - started < 2
        await pusher
        started = time.monotonic()
        assert await streams.since(-1, 0.1, 10) == ([], 1)  # nothing came: the poll times out
        assert time.monotonic() - started >= 0.09

    asyncio.run(scenario())


def test_before_open_nothing_waits() -> None:
    streams = LiveStreams(stream_events=10, recent_tasks=10)

    async def scenario() -> None:
        started = time.monotonic()
        assert await streams.since(-1, 5.0, 10) == ([], 0)
        await streams.wait_finished([], 0, 5.0)
        await streams.announce(ended=True)
        assert time.monotonic() - started < 1

    asyncio.run(scenario())
