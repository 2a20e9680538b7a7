"""Request and response bodies of the HTTP API (what /openapi.json documents)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from core.events import Event
from core.records import TaskRecord
from core.specs import (
    SPEC_NAME_PATTERN,
    AgentSpec,
    EnvironmentSpec,
    ResourceSpec,
    ScriptStep,
    TaskState,
)
from core.vault import SecretInfo

NAME_PATTERN = SPEC_NAME_PATTERN
"""Agent and environment names: they appear in URLs, so no slashes or spaces."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorBody(BaseModel):
    detail: str


# -- agents and environments -----------------------------------------------------------
class AgentCreate(AgentSpec):
    name: str = Field(pattern=NAME_PATTERN)


class AgentUpdate(AgentSpec):
    """The whole new spec; it becomes the next version."""

    name: str | None = Field(None, description="Ignored: the path names the spec.")
    version: int | None = Field(
        None, ge=0, description="The version you read: 409 if it is no longer current."
    )


class EnvironmentCreate(EnvironmentSpec):
    name: str = Field(pattern=NAME_PATTERN)


class EnvironmentUpdate(EnvironmentSpec):
    name: str | None = Field(None, description="Ignored: the path names the spec.")
    version: int | None = Field(
        None, ge=0, description="The version you read: 409 if it is no longer current."
    )


class AgentView(BaseModel):
    kind: Literal["agent"] = "agent"
    name: str
    version: int
    archived: bool
    spec: AgentSpec


class EnvironmentView(BaseModel):
    kind: Literal["environment"] = "environment"
    name: str
    version: int
    archived: bool
    spec: EnvironmentSpec


class AgentList(BaseModel):
    data: list[AgentView]


class EnvironmentList(BaseModel):
    data: list[EnvironmentView]


# -- secrets (write-only) --------------------------------------------------------------
class SecretIn(Strict):
    """A secret's value: it goes in, and no route ever answers it."""

    value: str = Field(
        description="The value (4 characters to 64 KiB), kept exactly as given.",
        json_schema_extra={"writeOnly": True, "format": "password"},
    )


SecretView = SecretInfo
"""What is shown of a secret: name, scope, origin, creation and rotation times."""


class SecretList(BaseModel):
    data: list[SecretInfo]


# -- user events -----------------------------------------------------------------------
class TextBlock(Strict):
    type: Literal["text"] = "text"
    text: str = Field(min_length=1)


class UserMessageIn(Strict):
    """Steer: delivered to the agent before its next turn."""

    type: Literal["user.message"]
    content: Annotated[str, Field(min_length=1)] | Annotated[list[TextBlock], Field(min_length=1)]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "\n".join(block.text for block in self.content)


class UserInterruptIn(Strict):
    """Stop the running session at its next safe point (resumable)."""

    type: Literal["user.interrupt"]


class ToolConfirmationIn(Strict):
    """Allow or deny the tool call waiting for approval."""

    type: Literal["user.tool_confirmation"]
    result: Literal["allow", "deny"]
    tool_use_id: str | None = Field(
        None, description="The call id of the approval.requested event; default: the pending one."
    )
    deny_message: str = Field("", max_length=10_000)


class CustomToolResultIn(Strict):
    """The result of a custom tool call (an ``agent.custom_tool_use`` event), which the
    client ran: the session gives it to the model and goes on."""

    type: Literal["user.custom_tool_result"]
    custom_tool_use_id: str = Field(
        min_length=1, max_length=200, description="The call_id of the agent.custom_tool_use."
    )
    content: (
        Annotated[str, Field(max_length=1_000_000)]
        | Annotated[list[TextBlock], Field(max_length=100)]
    ) = Field(
        description="Text, or text blocks; unless is_error, JSON matching the tool's "
        "output_schema when it has one (else 422)."
    )
    is_error: bool = False


UserEvent = Annotated[
    UserMessageIn | UserInterruptIn | ToolConfirmationIn | CustomToolResultIn,
    Field(discriminator="type"),
]


class EventsIn(Strict):
    events: list[UserEvent] = Field(min_length=1, max_length=100)


# -- sessions ----------------------------------------------------------------------------
class SessionCreate(Strict):
    """A session is one task: the fleet runs attempts of it until it succeeds or gives up."""

    id: str | None = Field(None, min_length=1, max_length=200, description="Default: generated.")
    agent: str | AgentSpec = "default"
    environment: str | EnvironmentSpec = "default"
    prompt: str | None = Field(None, min_length=1, description="Or give initial `events`.")
    events: list[UserMessageIn] = Field(
        default_factory=list,
        max_length=100,
        description="Initial user.message events; their text is the prompt when none is given.",
    )
    files: dict[str, str] = Field(default_factory=dict)
    resources: list[ResourceSpec] = Field(
        default_factory=list,
        description="Uploaded files (POST /v1/files) placed at `path` in the workspace.",
    )
    labels: list[str] = Field(default_factory=list)
    priority: int = 0
    gate: str | None = None
    script: list[ScriptStep] | None = Field(
        None, description="Tool calls the scripted model replays."
    )
    max_attempts: int | None = Field(None, ge=1, le=100)
    time_limit_s: float | None = Field(None, gt=0)
    max_turns: int | None = Field(None, ge=1)
    require_approval: bool = False
    interactive: bool = Field(
        False,
        description="A conversation: the session goes idle (no worker held) when the agent "
        "ends its turn, a user.message resumes it, POST .../close runs its gate and ends it.",
    )
    gate_each_turn: bool = Field(
        False, description="Interactive: also run the gate and reviewer after each turn."
    )


class SessionView(BaseModel):
    id: str
    type: Literal["session"] = "session"
    status: TaskState
    agent: str
    agent_version: int | None = Field(
        None, description="The version of the named agent the session runs (pinned at create)."
    )
    environment: str
    environment_version: int | None = Field(
        None, description="The version of the named environment it runs (pinned at create)."
    )
    labels: list[str]
    batch: str | None
    prompt: str
    attempts: int
    turns: int
    tool_calls: int
    worker: str | None
    attempt_session_id: str | None = Field(description="The current attempt's session id.")
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime | None
    last_event: str | None
    last_seq: int
    summary: str
    reason: str
    pending_approval: dict[str, Any] | None
    pending_custom_tool: dict[str, Any] | None = Field(
        None, description="The custom tool call waiting for your result: call_id, tool, input."
    )
    duration_s: float | None
    branch: str | None = Field(None, description="The branch the task's work was pushed to.")
    pr_url: str | None = Field(None, description="The pull request opened for it.")
    interactive: bool = Field(False, description="A conversation (see SessionCreate).")
    idle_since: datetime | None = Field(
        None, description="When it went idle, waiting for a user.message or a close."
    )
    closed: bool = Field(False, description="An interactive session was closed.")

    @classmethod
    def of(cls, record: TaskRecord) -> SessionView:
        spec = record.spec
        agent = record.agent or spec.agent_name
        versions = record.versions
        return cls(
            id=record.id,
            status=record.state,
            agent=agent,
            agent_version=versions.get("agent", {}).get(agent),
            environment=spec.environment_name,
            environment_version=versions.get("environment", {}).get(spec.environment_name),
            labels=spec.labels,
            batch=record.batch,
            prompt=spec.prompt,
            attempts=record.attempts,
            turns=record.turns,
            tool_calls=record.tool_calls,
            worker=record.worker,
            attempt_session_id=record.session_id,
            created_at=record.submitted_at,
            started_at=record.started_at,
            finished_at=record.finished_at,
            updated_at=record.last_event_at,
            last_event=record.last_event,
            last_seq=record.seq,
            summary=record.summary,
            reason=record.reason,
            pending_approval=record.pending_approval,
            pending_custom_tool=record.pending_custom_tool,
            duration_s=record.duration_s,
            # Set by git delivery when the record has them (read so, to need no such fields).
            branch=getattr(record, "branch", None),
            pr_url=getattr(record, "pr_url", None),
            interactive=spec.interactive,
            idle_since=record.idle_since,
            closed=record.closing,
        )


class SessionList(BaseModel):
    data: list[SessionView]
    has_more: bool
    next_offset: int | None


class EventPage(BaseModel):
    data: list[Event]
    has_more: bool
    next_after_seq: int = Field(description="Pass as after_seq to read the next page.")


class EventsPosted(BaseModel):
    accepted: int
    session: SessionView


# -- tasks, status, reports --------------------------------------------------------------
class ReviewIn(Strict):
    approve: bool
    message: str = Field("", max_length=10_000)


class Rejection(BaseModel):
    task_id: str
    field: str
    error: str
    line: int | None = Field(None, description="1-based line (or array index + 1) of the task.")


class BatchResult(BaseModel):
    batch: str
    accepted: list[str]
    rejected: list[Rejection]


class RunningItem(BaseModel):
    task_id: str
    worker: str
    attempt: int
    age_s: float | None
    last_event: str | None
    last_event_age_s: float | None


class RecentItem(BaseModel):
    task_id: str
    state: str
    reason: str | None


class BlockedItem(BaseModel):
    """A task waiting on a person: a tool call to allow, a result to review, or paused."""

    task_id: str
    state: TaskState
    call_id: str | None = Field(None, description="The tool call waiting for approval.")
    tool: str | None = Field(None, description="Its tool.")
    reason: str | None = None


class SourceHealth(BaseModel):
    """The last error a watcher met reading a source (``source.error`` events)."""

    error: str
    at: str = Field(description="When (ISO 8601, UTC).")
    failures: int = Field(description="Failures in a row at that time.")


class FleetStatus(BaseModel):
    fleet: str
    workers: int
    sandbox: str = Field(
        "", description="The sandbox backend sessions run in: docker, or local (not isolated)."
    )
    counts: dict[str, int]
    queued: list[str]
    running: list[RunningItem]
    blocked: list[BlockedItem] = Field(
        default_factory=list,
        description="Tasks awaiting approval or review, or paused (at most 50).",
    )
    recent: list[RecentItem]
    sources: dict[str, SourceHealth] = Field(
        default_factory=dict, description="Each source a watcher could not reach: its last error."
    )
    prompts: dict[str, str] = Field(
        default_factory=dict,
        description="The start of the prompt of each task listed here, by task id.",
    )
    uptime_s: float


class Report(BaseModel):
    name: str
    title: str
    columns: list[str]
    rows: list[dict[str, Any]]


class Health(BaseModel):
    ok: bool


class FileView(BaseModel):
    """An uploaded file (``POST /v1/files``)."""

    id: str = Field(description="The SHA-256 of its bytes (64 hex digits).")
    type: Literal["file"] = "file"
    filename: str = Field(description="As the first upload named it (may be empty).")
    media_type: str
    size_bytes: int
    created_at: datetime = Field(description="When it was first uploaded.")


class FileEntry(BaseModel):
    """One entry of a task's final workspace."""

    path: str = Field(description="Relative to the workspace.")
    size: int
    mode: str = Field(description="Permission bits, octal (e.g. 644).")
    type: Literal["file", "symlink"]
    target: str | None = Field(None, description="A symlink's target.")


class FileList(BaseModel):
    data: list[FileEntry]
