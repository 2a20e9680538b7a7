"""Sessions (a session is a task: same id), their events, and their live SSE stream."""

import json
import uuid
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Query
from pydantic import ValidationError

from core.events import TERMINAL_EVENTS
from core.records import CommandResult
from core.specs import TaskSpec, TaskState
from serve import models as m
from serve import sse
from serve.auth import ClientCaller
from serve.clients import shown_event
from serve.deps import Admit, Settings, Sup, page_limit, record_of
from serve.openapi import CONFLICT, NOT_FOUND, TOO_MANY
from serve.plumbing import field_error, validation_error
from serve.policy import PolicyError
from serve.ports import SupervisorPort
from serve.routes import v1_router

router = v1_router(tags=["sessions"])
streams = v1_router(tags=["sessions"], streams=True)
"""The stream also takes the token as ``?token=``: EventSource cannot set headers."""


@router.post("/sessions", status_code=201, responses={**CONFLICT, **TOO_MANY})
async def create_session(
    sup: Sup, admit: Admit, caller: ClientCaller, body: m.SessionCreate
) -> m.SessionView:
    """Submit one task; the session id is the task id. It runs the current versions of the
    agent and environment it names, whatever later updates say (409 when one is archived).
    An inline agent or environment from an API client may set only a few fields (see the
    README), within caps. `resources` place uploaded files (POST /v1/files) in its
    workspace (422 for an unknown file id)."""
    texts = [event.text() for event in body.events]
    prompt = body.prompt or "\n\n".join(texts)
    if not prompt:  # a blank one is refused by TaskSpec, as on every route
        raise field_error(("body", "prompt"), "give a prompt or a user.message event")
    # Only what the client set: the policy tells its fields from the defaults.
    fields = body.model_dump(exclude={"events", "prompt"}, exclude_none=True, exclude_unset=True)
    fields["prompt"] = prompt
    try:
        spec = TaskSpec.model_validate(fields)
    except ValidationError as exc:
        raise validation_error(exc, ("body",)) from None
    try:
        spec = admit.admit(spec, await admit.operator_specs(caller))
    except PolicyError as exc:
        raise field_error(("body", *exc.loc), exc.message) from None
    out = await admit.submit([spec], f"s-{uuid.uuid4().hex[:8]}", caller)
    if out["rejected"]:
        rejected = out["rejected"][0]
        if rejected["field"] == "id" or rejected.get("conflict"):
            raise HTTPException(409, rejected["error"])
        raise field_error(("body", rejected["field"] or "body"), rejected["error"])
    return m.SessionView.of(await record_of(sup, spec.id))


@router.get("/sessions")
async def list_sessions(
    sup: Sup,
    limit: Annotated[int, Depends(page_limit(50))],
    status: TaskState | None = None,
    label: Annotated[str | None, Query(max_length=200)] = None,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> m.SessionList:
    """Newest first."""
    state = status.value if status else None
    records = await sup.list_tasks(state, label, limit + 1, offset)
    more = len(records) > limit
    return m.SessionList(
        data=[m.SessionView.of(r) for r in records[:limit]],
        has_more=more,
        next_offset=offset + limit if more else None,
    )


@router.get("/sessions/{session_id}", responses=NOT_FOUND)
async def get_session(sup: Sup, session_id: str) -> m.SessionView:
    return m.SessionView.of(await record_of(sup, session_id))


@router.post("/sessions/{session_id}/archive", responses=NOT_FOUND)
async def archive_session(sup: Sup, session_id: str) -> m.SessionView:
    """Stop the session if it is live (it is cancelled); its history stays readable."""
    record = await record_of(sup, session_id)
    if not record.state.terminal:
        await sup.cancel(session_id)
    return m.SessionView.of(await record_of(sup, session_id))


@router.post("/sessions/{session_id}/close", responses={**NOT_FOUND, **CONFLICT})
async def close_session(sup: Sup, session_id: str) -> m.SessionView:
    """Close an interactive session: its gate, reviewer and human review run (now when it
    is idle, else when the agent ends its running turn), then it ends as a batch task does
    (succeeded, or retried in the same conversation, ...). 409 with the reason when it is
    not interactive, closed already or ended."""
    await record_of(sup, session_id)
    done = await sup.close_task(session_id)
    if not done:
        raise HTTPException(409, done.reason)
    return m.SessionView.of(await record_of(sup, session_id))


@router.get("/sessions/{session_id}/events", responses=NOT_FOUND)
async def list_events(
    sup: Sup,
    session_id: str,
    limit: Annotated[int, Depends(page_limit(100))],
    after_seq: Annotated[int, Query(ge=-1, le=2**62)] = -1,
) -> m.EventPage:
    """The full history, oldest first, a page at a time (by `seq`)."""
    await record_of(sup, session_id)
    events = await sup.events_since(session_id, after_seq, 0.0, limit + 1)
    page = events[:limit]
    return m.EventPage(
        data=[shown_event(e) for e in page],
        has_more=len(events) > limit,
        next_after_seq=page[-1].seq if page else after_seq,
    )


@router.post("/sessions/{session_id}/events", responses={**NOT_FOUND, **CONFLICT})
async def post_events(sup: Sup, session_id: str, body: m.EventsIn) -> m.EventsPosted:
    """Steer (`user.message`; an idle interactive session resumes with it on any worker),
    interrupt, answer a tool confirmation, or give a custom tool call's result
    (`user.custom_tool_result`), in order. Stops at the first event the session cannot take:
    409 (its state: ended, expired, closed...), 404 (no custom tool call of that id waits),
    422 (the result does not match the tool's output_schema)."""
    await record_of(sup, session_id)
    for n, event in enumerate(body.events):
        if isinstance(event, m.UserMessageIn):
            done = await sup.steer(session_id, event.text())
        elif isinstance(event, m.UserInterruptIn):
            done = await sup.interrupt(session_id)
        elif isinstance(event, m.CustomToolResultIn):
            content = event.content
            if not isinstance(content, str):
                content = [block.model_dump() for block in content]
            done = await sup.custom_tool_result(
                session_id, event.custom_tool_use_id, content, event.is_error
            )
        else:
            pending = (await record_of(sup, session_id)).pending_approval or {}
            call_id = event.tool_use_id or pending.get("call_id")
            if not call_id:
                done = CommandResult.refused("no tool call waits for approval")
            else:
                allow = event.result == "allow"
                done = await sup.decide_approval(session_id, call_id, allow, event.deny_message)
        if not done and done.refusal == "invalid":
            raise field_error(("body", "events", n, "content"), done.reason)
        if not done:
            status = 404 if done.refusal == "unknown" else 409
            raise HTTPException(status, f"events[{n}] ({event.type}) refused: {done.reason}")
    return m.EventsPosted(
        accepted=len(body.events), session=m.SessionView.of(await record_of(sup, session_id))
    )


SESSION_EVENT = sse.event_schema(
    "One server-sent event.",
    "The event's seq (resume after it).",
    "The event type, or session.end.",
    ["data", "event"],
    {
        "description": "session.end: the session's final status.",
        "required": ["status"],
        "properties": {"status": {"type": "string"}},
    },
)


@streams.get(
    "/sessions/{session_id}/events/stream",
    response_class=sse.EventStreamResponse,
    responses={
        **NOT_FOUND,
        200: {
            "description": "Server-Sent Events: `id` is the event's seq, `event` its type, "
            "`data` the event as JSON; a final `session.end` event (no id) closes it.",
            "content": {"text/event-stream": {"schema": SESSION_EVENT}},
        },
    },
)
async def stream_events(
    sup: Sup,
    config: Settings,
    session_id: str,
    last_event_id: Annotated[
        str | None, Header(description="Resume after this seq (sent by EventSource).")
    ] = None,
    after_seq: Annotated[int, Query(ge=-1, le=2**62)] = -1,
) -> sse.EventStreamResponse:
    """Live events from `after_seq` (or `Last-Event-ID`) until the session ends."""
    after_seq = sse.resume_point(last_event_id, after_seq)
    await record_of(sup, session_id)
    return sse.EventStreamResponse(
        follow(sup, session_id, after_seq, config.stream_poll_s), headers=sse.STREAM_HEADERS
    )


async def follow(
    sup: SupervisorPort, task_id: str, last: int, poll_s: float
) -> AsyncIterator[bytes]:
    """A session's events after seq ``last``, then ``session.end`` once it has ended."""
    yield sse.RETRY
    [record] = await sup.get([task_id])
    ended = record is None or (record.state.terminal and record.seq <= last)
    while not ended:
        events = await sup.events_since(task_id, last, poll_s, 500)
        for event in events:
            if event.seq <= last:
                continue
            last = event.seq
            yield sse.session_event(shown_event(event))
            ended = ended or event.type in TERMINAL_EVENTS
        if not events:  # idle: has it ended without us seeing it (e.g. never started)?
            [record] = await sup.get([task_id])
            ended = record is None or (record.state.terminal and record.seq <= last)
            yield sse.KEEP_ALIVE
    [record] = await sup.get([task_id])
    status = record.state.value if record else "unknown"
    yield sse.encode(json.dumps({"status": status}), event="session.end")
