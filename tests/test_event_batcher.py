"""The worker's event batcher: running events ship early, a gate's verdict never does."""

import asyncio

from actors.worker import EventBatcher
from core.events import Event, EventType, EventWire, decode_events


class Ingest:
    def __init__(self) -> None:
        self.shipped: list[list[EventType]] = []

    async def _ingest(self, wire: EventWire) -> int:
        batch = decode_events(wire)  # what the supervisor's ingest reads
        self.shipped.append([e.type for e in batch])
        return len(batch)

    @property
    def ingest(self):  # type: ignore[no-untyped-def]
        outer = self

        class Method:
            def remote(self, wire: EventWire):  # type: ignore[no-untyped-def]
                return outer._ingest(wire)

        return Method()


def event(kind: EventType) -> Event:
    return Event(task_id="t", type=kind, session_id="s")


def test_events_ship_while_running_but_the_verdict_rides_on_the_result():
    async def scenario() -> tuple[list[list[EventType]], list[EventType]]:
        sup = Ingest()
        batcher = EventBatcher(sup, interval_s=0.01)
        batcher.add(event(EventType.agent_tool_use))
        await asyncio.sleep(0.05)
        batcher.add(event(EventType.agent_tool_result))
        batcher.add(event(EventType.gate_passed))
        batcher.add(event(EventType.session_ended))
        await asyncio.sleep(0.05)  # several intervals: nothing more may ship
        return sup.shipped, [e.type for e in await batcher.drain()]

    shipped, left = asyncio.run(scenario())
    assert shipped == [[EventType.agent_tool_use]]
    assert left == [EventType.agent_tool_result, EventType.gate_passed, EventType.session_ended]
