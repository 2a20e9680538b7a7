"""Server-Sent Events: the response class, how an event is encoded, the OpenAPI schema of
one event, and where a stream resumes (``Last-Event-ID``)."""

from typing import Any, TypeVar

from fastapi.responses import StreamingResponse

from core.events import Event
from serve.plumbing import field_error


class EventStreamResponse(StreamingResponse):
    media_type = "text/event-stream"


STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
RETRY = b"retry: 2000\n\n"
KEEP_ALIVE = b": keep-alive\n\n"


def encode(
    data: str, *, id: int | None = None, event: str | None = None, retry: int | None = None
) -> bytes:
    """One SSE message (``data`` is one line of JSON)."""
    lines = [f"retry: {retry}"] if retry is not None else []
    lines += [f"id: {id}"] if id is not None else []
    lines += [f"event: {event}"] if event is not None else []
    return ("\n".join([*lines, f"data: {data}"]) + "\n\n").encode()


def session_event(event: Event) -> bytes:
    """A session's event: its seq as id, its type as event name."""
    return encode(event.model_dump_json(), id=event.seq, event=event.type.value)


_Default = TypeVar("_Default", int, None)


def resume_point(last_event_id: str | None, default: _Default) -> int | _Default:
    """Where a stream resumes: after ``Last-Event-ID`` when the client sent one."""
    if last_event_id is None or not last_event_id.strip():
        return default
    try:
        return max(-1, int(last_event_id.strip()))
    except ValueError:
        raise field_error(("header", "last-event-id"), "must be an integer") from None


def event_schema(
    about: str, id_means: str, event_means: str, required: list[str], control: dict[str, Any]
) -> dict[str, Any]:
    """The OpenAPI schema of one server-sent event: a fleet Event, or a ``control`` one."""
    return {
        "type": "object",
        "description": about,
        "required": required,
        "properties": {
            "id": {"type": "string", "description": id_means},
            "event": {"type": "string", "description": event_means},
            "data": {
                "type": "string",
                "contentMediaType": "application/json",
                "contentSchema": {
                    "anyOf": [{"$ref": "#/components/schemas/Event"}, {"type": "object", **control}]
                },
            },
            "retry": {"type": "integer"},
        },
    }
