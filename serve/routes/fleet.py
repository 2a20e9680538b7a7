"""The fleet as a whole: its status, and the live stream of every task's events."""

import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Header, Query

from serve import models as m
from serve import sse
from serve.clients import shown_event
from serve.deps import Settings, Sup
from serve.ports import SupervisorPort
from serve.routes import v1_router

router = v1_router(tags=["fleet"])
streams = v1_router(tags=["fleet"], streams=True)
"""The stream also takes the token as ``?token=``: EventSource cannot set headers."""


@router.get("/fleet/status")
async def fleet_status(sup: Sup) -> m.FleetStatus:
    """Counts by state, the queue head, running sessions, tasks waiting on a person
    (`blocked`: a tool call to allow, a result to review, paused), recent outcomes."""
    return await sup.status()


FLEET_EVENT = sse.event_schema(
    "One server-sent event of the fleet-wide stream.",
    "The event's global index (resume after it).",
    "Absent for fleet events; stream.open or stream.gap otherwise.",
    ["data"],
    {
        "description": "stream.open: where the stream starts; stream.gap: "
        "how many events this client missed.",
        "properties": {"next": {"type": "integer"}, "missed": {"type": "integer"}},
    },
)


@streams.get(
    "/events/stream",
    response_class=sse.EventStreamResponse,
    responses={
        200: {
            "description": "Server-Sent Events of every task: `id` is the event's global "
            "index (resume after it with `Last-Event-ID`), `data` the event as JSON (its "
            "`task_id`, `seq` and `type` inside); no `event` field, so EventSource's "
            "`onmessage` gets them all. Control events: `stream.open` first (its id is "
            "the position the stream starts after) and `stream.gap` when events were "
            "dropped before this client read them (`missed`: how many). Never ends.",
            "content": {"text/event-stream": {"schema": FLEET_EVENT}},
        },
    },
)
async def stream_fleet(
    sup: Sup,
    config: Settings,
    last_event_id: Annotated[
        str | None, Header(description="Resume after this index (sent by EventSource).")
    ] = None,
    after: Annotated[
        int | None,
        Query(
            ge=-1,
            le=2**62,
            description="Resume after this event index (-1: from the oldest event the "
            "fleet still holds). Default: only events from now on.",
        ),
    ] = None,
) -> sse.EventStreamResponse:
    """The fleet's live event stream: every event of every task as it is recorded (for
    dashboards). Resumable: a client that reconnects with `Last-Event-ID` misses
    nothing the fleet still holds (its last few thousand events) and sees nothing twice."""
    resume = sse.resume_point(last_event_id, after)  # None: from now on
    cursor = -1 if resume is None else resume + 1
    return sse.EventStreamResponse(
        follow_fleet(sup, cursor, config.stream_poll_s), headers=sse.STREAM_HEADERS
    )


async def follow_fleet(sup: SupervisorPort, cursor: int, poll_s: float) -> AsyncIterator[bytes]:
    """``cursor``: the index of the first event wanted (negative: from now)."""
    _, start = await sup.stream_since(cursor, 0.0, 0)
    missed = max(0, start - cursor) if cursor >= 0 else 0
    opened = json.dumps({"next": start, "missed": missed})
    yield sse.encode(opened, retry=2000, id=start - 1, event="stream.open")
    cursor = start
    while True:
        events, after = await sup.stream_since(cursor, poll_s, 500)
        first = after - len(events)
        if first > cursor:  # they left the fleet's ring before we read them
            yield sse.encode(json.dumps({"missed": first - cursor}), event="stream.gap")
        chunks = [
            sse.encode(shown_event(event).model_dump_json(), id=first + n)
            for n, event in enumerate(events)
        ]
        yield b"".join(chunks) if chunks else sse.KEEP_ALIVE
        cursor = after
