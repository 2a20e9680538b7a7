"""The one schema for everything that happens in the fleet.

Every state change is an :class:`Event`. Workers create events without ``seq``; the
supervisor, the single writer of the log, numbers them per task as it receives them.
"""

from __future__ import annotations

import json
import operator
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from itertools import chain
from typing import Any

import orjson
import pyarrow as pa
from pydantic import BaseModel, Field

from core.errors import InputError

_DUMPS_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME
"""Keys that are not strings written as text, and a ``datetime`` left to ``str`` (``default``),
as ``json.dumps(x, default=str)`` does."""


def to_json(value: Any) -> str:
    """``value`` as compact JSON text: how events' payloads and the write-ahead log's lines
    are written (``orjson``, several times faster than the standard library: the supervisor
    writes each payload as text, then that text again inside its WAL line). What JSON has no
    form for is written as its ``str``; where orjson refuses (an int past 64 bits, nesting
    deeper than 254), ``json.dumps(value, default=str)`` writes it instead."""
    try:
        return orjson.dumps(value, default=str, option=_DUMPS_OPTIONS).decode()
    except orjson.JSONEncodeError:
        return json.dumps(value, default=str, separators=(",", ":"), ensure_ascii=False)


class EventType(StrEnum):
    task_submitted = "task.submitted"
    task_assigned = "task.assigned"
    task_retried = "task.retried"
    task_succeeded = "task.succeeded"
    task_failed = "task.failed"
    task_needs_human = "task.needs_human"
    task_cancelled = "task.cancelled"
    session_started = "session.started"
    session_ended = "session.ended"
    session_checkpointed = "session.checkpointed"
    agent_message = "agent.message"
    agent_tool_use = "agent.tool_use"
    agent_tool_result = "agent.tool_result"
    agent_mcp_tool_use = "agent.mcp_tool_use"
    """The model called a tool of one of its agent's MCP servers (``server``, ``name``: the
    server's own tool name; ``tool`` is ``mcp__<server>__<name>``)."""
    agent_mcp_tool_result = "agent.mcp_tool_result"
    """What that MCP tool answered (or why it could not: ``is_error``)."""
    agent_custom_tool_use = "agent.custom_tool_use"
    """The model called a custom tool: the API client runs it and answers with
    ``user.custom_tool_result`` (``call_id`` is its ``custom_tool_use_id``)."""
    user_custom_tool_result = "user.custom_tool_result"
    """The client's result of a custom tool call (``custom_tool_use_id``, ``content``,
    ``is_error``), recorded by the supervisor; the session gives it to the model."""
    approval_requested = "approval.requested"
    approval_decided = "approval.decided"
    gate_passed = "gate.passed"
    gate_failed = "gate.failed"
    user_message = "user.message"
    user_interrupt = "user.interrupt"
    task_parked = "task.parked"
    task_awaiting_review = "task.awaiting_review"
    review_decided = "review.decided"
    task_followup = "task.followup"
    memory_decision = "memory.decision"
    manager_decision = "manager.decision"
    artifact_saved = "artifact.saved"
    handoff = "handoff"
    usage = "usage"
    worker_lost = "worker.lost"
    task_delivered = "task.delivered"
    """A task's result was committed and pushed to its branch (``branch``, ``commit``), and
    its pull request opened (``pr_url``) or not (``pr_error``) when the repository is on GitHub."""
    task_updated = "task.updated"
    """A queued task's prompt was replaced (its item was edited at the source)."""
    session_idle = "session.idle"
    """An interactive task's agent ended its turn: its history and workspace are saved
    (``workspace_ref``, ``loop_state_ref``), no worker or container is held, and a
    ``user.message`` resumes it on any worker."""
    task_closed = "task.closed"
    """A client closed an interactive task: its gate, reviewer and review run next (at the
    end of the running turn, if one runs), then it ends as a batch task does."""
    task_expired = "task.expired"
    """An interactive task stayed idle longer than ``idle_timeout_s``: it ends ``expired``;
    its workspace and history stay readable, it takes no more messages."""
    source_error = "source.error"
    """A source of work could not be reached. Not a task's event: its ``task_id`` is the
    fleet-level pseudo id ``source:<source name>`` (see :func:`source_task_id`)."""
    registry_put = "registry.put"
    """An agent or environment was created or updated: ``kind``, ``name``, ``version`` and
    the whole ``spec`` (its JSON as validated). Not a task's event: its ``task_id`` is the
    pseudo id ``registry:<kind>/<name>`` (see :func:`registry_task_id`)."""
    registry_archived = "registry.archived"
    """An agent or environment was archived (``kind``, ``name``, ``version``): new tasks may
    not name it; its versions stay readable and tasks that started with one keep it."""


SOURCE_ID_PREFIX = "source:"
REGISTRY_ID_PREFIX = "registry:"
"""Registry pseudo ids hold a '/', which no task id may (``TaskSpec.id``)."""
REGISTRY_EVENTS = frozenset({EventType.registry_put, EventType.registry_archived})


def source_task_id(source: str) -> str:
    """The pseudo task id that a source's fleet-level events (``source.error``) carry."""
    return f"{SOURCE_ID_PREFIX}{source}"


def registry_task_id(kind: str, name: str) -> str:
    """The pseudo task id of the registry events of one agent or environment."""
    return f"{REGISTRY_ID_PREFIX}{kind}/{name}"


TERMINAL_EVENTS: frozenset[EventType] = frozenset(
    {
        EventType.task_succeeded,
        EventType.task_failed,
        EventType.task_needs_human,
        EventType.task_cancelled,
        EventType.task_expired,
    }
)
"""The events that end a task: its state is the part after ``task.`` (``TaskState``)."""


class Event(BaseModel):
    """One thing that happened. Typed columns hold what analytics asks for often."""

    ts: datetime = Field(default_factory=lambda: datetime.now(UTC))
    task_id: str
    type: EventType
    seq: int = -1
    session_id: str | None = None
    attempt: int | None = None
    worker: str | None = None
    payload: dict[str, Any] = Field(default_factory=dict)
    tool: str | None = None
    exit_code: int | None = None
    duration_ms: float | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    cost_usd: float | None = None

    def number(self, seq: int) -> None:
        """Give the event its ``seq`` (the journal numbers every event it records). Written
        straight into the field: an event validates no assignment, and pydantic's own
        ``__setattr__`` costs about a microsecond (``model_fields_set`` is left as it was:
        nothing reads it of an event)."""
        self.__dict__["seq"] = seq

    def to_row(self) -> dict[str, Any]:
        """The event as a row of :data:`ARROW_SCHEMA` (the payload as JSON text). Read from
        the fields as they are (no ``model_dump``: no deep copy of the payload per event)."""
        return {
            "ts": self.ts,
            "task_id": self.task_id,
            "type": self.type.value,
            "seq": self.seq,
            "session_id": self.session_id,
            "attempt": self.attempt,
            "worker": self.worker,
            "payload": to_json(self.payload),
            "tool": self.tool,
            "exit_code": self.exit_code,
            "duration_ms": self.duration_ms,
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "cost_usd": self.cost_usd,
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Event:
        data = {k: row.get(k) for k in cls.model_fields}
        payload = data.get("payload")
        data["payload"] = json.loads(payload) if isinstance(payload, str) and payload else {}
        ts = data.get("ts")
        if isinstance(ts, datetime) and ts.tzinfo is None:
            data["ts"] = ts.replace(tzinfo=UTC)
        return cls.model_validate(data)


ARROW_SCHEMA = pa.schema(
    [
        pa.field("ts", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("task_id", pa.string(), nullable=False),
        pa.field("type", pa.string(), nullable=False),
        pa.field("seq", pa.int64(), nullable=False),
        pa.field("session_id", pa.string()),
        pa.field("attempt", pa.int32()),
        pa.field("worker", pa.string()),
        pa.field("payload", pa.string()),
        pa.field("tool", pa.string()),
        pa.field("exit_code", pa.int32()),
        pa.field("duration_ms", pa.float64()),
        pa.field("tokens_in", pa.int64()),
        pa.field("tokens_out", pa.int64()),
        pa.field("cost_usd", pa.float64()),
    ]
)


FIELDS: tuple[str, ...] = tuple(Event.model_fields)
"""An event's fields in their order: the columns of :data:`ARROW_SCHEMA`, of the event
log's columns (:func:`log_columns`) and of the wire (:func:`encode_events`)."""

TS, TYPE, PAYLOAD = (FIELDS.index(name) for name in ("ts", "type", "payload"))
"""Where those fields are in :data:`FIELDS` (and in the columns made of them)."""

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)


def ts_us(ts: datetime) -> int:
    """A time as microseconds since the epoch, exactly (a naive time is taken as UTC, as
    :meth:`Event.from_row` does)."""
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return (ts - EPOCH) // _ONE_US


def us_ts(us: int) -> datetime:
    """:func:`ts_us` back: the UTC time (exact to the microsecond: a float of seconds
    since the epoch resolves a tenth of one, for a few thousand years)."""
    return datetime.fromtimestamp(us / 1e6, UTC)


_fields_of = operator.attrgetter(*FIELDS)
_VALUES: dict[EventType, str] = {t: t.value for t in EventType}


def no_columns() -> list[list[Any]]:
    """The columns of no events (one empty list per field)."""
    return [[] for _ in FIELDS]


def event_columns(events: list[Event]) -> list[list[Any]]:
    """The events' values field by field (:data:`FIELDS` order), ``type`` as its value."""
    if not events:
        return no_columns()
    columns = list(map(list, zip(*map(_fields_of, events), strict=True)))
    columns[TYPE] = list(map(_VALUES.__getitem__, columns[TYPE]))
    return columns


def _ts_us_column(column: list[datetime]) -> list[int]:
    """:func:`ts_us` of each (one expression for the usual column, all of them aware)."""
    try:
        return [(ts - EPOCH) // _ONE_US for ts in column]
    except TypeError:  # a naive one among them
        return [ts_us(ts) for ts in column]


def log_columns(events: list[Event]) -> list[list[Any]]:
    """The events as the event log writes and buffers them: :meth:`Event.to_row`'s values
    column by column (:data:`FIELDS` order), ``ts`` as :func:`ts_us`. Cheaper to make, to
    write as JSON and to turn into Arrow than a dict per event."""
    columns = event_columns(events)
    columns[TS] = _ts_us_column(columns[TS])
    columns[PAYLOAD] = [to_json(payload) for payload in columns[PAYLOAD]]
    return columns


def log_rows(columns: list[list[Any]]) -> list[dict[str, Any]]:
    """:func:`log_columns` back into :meth:`Event.to_row`'s dicts."""
    rows = [dict(zip(FIELDS, values, strict=True)) for values in zip(*columns, strict=True)]
    for row in rows:
        row["ts"] = us_ts(row["ts"])
    return rows


def columns_table(columns: list[list[Any]]) -> pa.Table:
    """:func:`log_columns` as a table of :data:`ARROW_SCHEMA` (Arrow converts each column
    at once: several times cheaper than ``pa.Table.from_pylist`` of the rows)."""
    arrays = [pa.array(c, type=f.type) for c, f in zip(columns, ARROW_SCHEMA, strict=True)]
    return pa.Table.from_arrays(arrays, schema=ARROW_SCHEMA)


# -- the wire: a batch of events from a worker to the supervisor -------------------------
WIRE = "events/1"
"""The first item of a batch in the wire form: what it is, and which version."""

EventWire = tuple[Any, ...]
"""A batch of events as a worker sends it (see :func:`encode_events`)."""

_NONE = type(None)
_WIRE_KINDS: dict[str, frozenset[type]] = {
    "ts": frozenset({datetime}),
    "task_id": frozenset({str}),
    "type": frozenset({str}),
    "seq": frozenset({int}),
    "session_id": frozenset({str, _NONE}),
    "attempt": frozenset({int, _NONE}),
    "worker": frozenset({str, _NONE}),
    "payload": frozenset({dict}),
    "tool": frozenset({str, _NONE}),
    "exit_code": frozenset({int, _NONE}),
    "duration_ms": frozenset({float, int, _NONE}),
    "tokens_in": frozenset({int, _NONE}),
    "tokens_out": frozenset({int, _NONE}),
    "cost_usd": frozenset({float, int, _NONE}),
}
"""Each field's column: the exact types its values may have (what a validated
:class:`Event` holds; ``type`` as its value; an int where a float goes becomes a float)."""

_TYPES: dict[str, EventType] = {value: t for t, value in _VALUES.items()}


_new = object.__new__
_set = object.__setattr__
_ALL_SET = set(FIELDS)
"""The ``model_fields_set`` of every decoded event (each has every field): one set for all,
fewer objects for the garbage collector to scan. Safe to share: pydantic only adds a field
to it as one is assigned, which changes nothing when every field is in it already."""


class EventWireError(InputError):
    """A batch sent to the supervisor's ``ingest`` is not in the wire form of
    :func:`encode_events` (the message names the field and the event)."""


def encode_events(events: list[Event]) -> EventWire:
    """A batch of events as a worker sends it to the supervisor: :data:`WIRE`, then one
    list per field (:data:`FIELDS` order) of its plain values (``type`` as its value).
    Ray pickles this several times faster than the models, and unpickles it into far fewer
    objects (fewer for the garbage collector, too); :func:`decode_events` reads it."""
    return (WIRE, *event_columns(events))


def decode_events(wire: object) -> list[Event]:
    """The events of a batch that :func:`encode_events` made, checked as the model would
    (each field's type, the event type, the payload's keys) and built without validating
    again. Raises :class:`EventWireError` on anything else, before any event is built."""
    if not isinstance(wire, tuple | list) or len(wire) != len(FIELDS) + 1 or wire[0] != WIRE:
        size = f" of {len(wire)} items" if isinstance(wire, tuple | list) else ""
        raise EventWireError(
            f"not a batch of events in the wire form {WIRE!r} (encode_events makes one): "
            f"a {type(wire).__name__}{size}"
        )
    columns = list(wire[1:])
    count = len(columns[0]) if type(columns[0]) is list else 0
    for name, column in zip(FIELDS, columns, strict=True):
        if type(column) is not list or len(column) != count:
            what = f"{len(column)} values" if type(column) is list else type(column).__name__
            raise EventWireError(f"events wire: {name}: expected a list of {count}, got {what}")
        kinds = _WIRE_KINDS[name]
        if not kinds.issuperset(map(type, column)):
            index, value = next((i, v) for i, v in enumerate(column) if type(v) not in kinds)
            raise EventWireError(
                f"events wire: event {index}: {name} may not be a {type(value).__name__}"
            )
    ts, task_id, kind, seq, session_id, attempt, worker, payload, tool, exit_code = columns[:10]
    duration_ms, tokens_in, tokens_out, cost_usd = columns[10:]
    if not {str}.issuperset(map(type, chain.from_iterable(payload))):
        index = next(i for i, p in enumerate(payload) if any(type(k) is not str for k in p))
        raise EventWireError(f"events wire: event {index}: a payload key is not a str")
    try:
        kind = [_TYPES[value] for value in kind]
    except KeyError as exc:
        raise EventWireError(f"events wire: unknown event type {exc.args[0]!r}") from None
    duration_ms, cost_usd = _floats(duration_ms), _floats(cost_usd)
    events = []
    for values in zip(
        ts, task_id, kind, seq, session_id, attempt, worker, payload, tool, exit_code,
        duration_ms, tokens_in, tokens_out, cost_usd, strict=True,
    ):  # fmt: skip
        event = _new(Event)
        _set(event, "__dict__", _event_dict(*values))
        _set(event, "__pydantic_fields_set__", _ALL_SET)
        _set(event, "__pydantic_extra__", None)
        _set(event, "__pydantic_private__", None)
        events.append(event)
    return events


def _floats(column: list[Any]) -> list[Any]:
    """A float column with its ints made floats (as validation does)."""
    if int not in set(map(type, column)):
        return column
    return [float(v) if type(v) is int else v for v in column]


def _event_dict(
    ts: datetime,
    task_id: str,
    type: EventType,
    seq: int,
    session_id: str | None,
    attempt: int | None,
    worker: str | None,
    payload: dict[str, Any],
    tool: str | None,
    exit_code: int | None,
    duration_ms: float | None,
    tokens_in: int | None,
    tokens_out: int | None,
    cost_usd: float | None,
) -> dict[str, Any]:
    """An :class:`Event`'s ``__dict__`` of values of its fields' types, as
    ``model_construct`` fills it (one dict display: made at its size, in one step)."""
    return {
        "ts": ts,
        "task_id": task_id,
        "type": type,
        "seq": seq,
        "session_id": session_id,
        "attempt": attempt,
        "worker": worker,
        "payload": payload,
        "tool": tool,
        "exit_code": exit_code,
        "duration_ms": duration_ms,
        "tokens_in": tokens_in,
        "tokens_out": tokens_out,
        "cost_usd": cost_usd,
    }
