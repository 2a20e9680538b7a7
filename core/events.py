"""The one schema for everything that happens in the fleet.

Every state change is an :class:`Event`. Workers create events without ``seq``; the
supervisor, the single writer of the log, numbers them per task as it receives them.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import pyarrow as pa
from pydantic import BaseModel, Field

JSON = json.JSONEncoder(default=str)
"""How events' payloads and the write-ahead log's lines are written: ``json.dumps(x,
default=str)``, made once (``json.dumps`` with an argument builds an encoder per call)."""


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
            "payload": JSON.encode(self.payload),
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


def rows_to_table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=ARROW_SCHEMA)
