"""Messages between supervisor, workers and drivers, and the task record they fold into."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr

from core.events import Event
from core.specs import AgentSpec, EnvironmentSpec, ScriptStep, TaskSpec, TaskState

OutcomeStatus = Literal[
    "finished",  # the agent called finish
    "handoff",  # the agent handed the task to another agent (handoff_to, handoff_note)
    "max_turns",
    "timeout",
    "budget",  # a token or cost budget ran out
    "error",  # the model failed (after its retries)
    "cancelled",
    "interrupted",  # stopped at a safe point on request; ``state`` resumes it
    "parked",  # waiting on an approval decision or a custom tool's result; ``state`` resumes it
    "idle",  # an interactive task's turn ended (finish); ``state`` resumes it on a message
]
RESUMABLE: frozenset[str] = frozenset(
    {"parked", "interrupted", "budget", "max_turns", "timeout", "error"}
)


class SessionOutcome(BaseModel):
    status: OutcomeStatus
    reason: str = ""
    summary: str = ""
    turns: int = 0
    tool_calls: int = 0
    handoff_to: str | None = None
    handoff_note: str = ""
    handoff_history: list[dict[str, Any]] = Field(default_factory=list)
    """For a handoff: the messages to give the target agent's ``run(prompt, history=...)``."""
    followups: list[dict[str, Any]] = Field(default_factory=list)
    """Follow-up tasks the agent asked for (TaskSpec fields); the supervisor creates them."""
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    state: dict[str, Any] | None = None
    """The loop's serialised state when it can be resumed (see ``RESUMABLE``)."""


class Assignment(BaseModel):
    """What the supervisor hands a worker: one attempt (session) of one task."""

    task: TaskSpec
    agent: AgentSpec
    environment: EnvironmentSpec
    attempt: int
    session_id: str
    max_turns: int
    time_limit_s: float
    stage: int = 0
    prompt: str = ""
    """What this session is asked (the task's prompt, a stage's prompt, plus feedback)."""
    gate: str | None = None
    script: list[ScriptStep] | None = None
    reviewer: AgentSpec | None = None
    workspace: bytes | None = None
    """A snapshot to start from (previous stage, handoff, parked session) instead of seeding."""
    base: bytes | None = None
    """The task's starting workspace (the first session's, seeded), when this session starts
    from another snapshot: its diff is against this, so it shows all of the task's work."""
    loop_state: dict[str, Any] | None = None
    """A parked or interrupted agent loop to resume."""
    keep_workspace: bool = False
    """Return a snapshot of the workspace with the result (a later stage needs it)."""
    messages: list[str] = Field(default_factory=list)
    """Steering messages sent while no session ran."""
    decision: dict[str, Any] | None = None
    """The decision a parked session waited for: call_id, allow, message."""
    tool_result: dict[str, Any] | None = None
    """The custom tool result a parked session waited for: call_id, content, is_error."""
    closing: bool = False
    """An interactive task was closed: the gate, reviewer and review run when the agent ends
    this turn (at once, when it was idle and nothing new was said)."""
    history: list[dict[str, Any]] | None = None
    """Messages a handed-over session starts with (what the previous agent did)."""
    max_tokens: int | None = None
    """What is left of the task's token budget (None: the agent's ``max_tokens``)."""
    max_cost_usd: float | None = None
    """What is left of the task's cost budget (None: the agent's ``max_cost_usd``)."""
    resources: dict[str, bytes] = Field(default_factory=dict)
    """The task's uploaded files by workspace path (``TaskSpec.resources``), for a session
    that seeds the workspace (one that starts from a snapshot has them there already)."""

    secrets: dict[str, SecretStr] = Field(default_factory=dict, exclude=True, repr=False)
    """Secret name -> value, for this session only (its agent's and reviewer's keys, its
    environment's variables): read from the vault on the head when it is assigned, carried
    in memory, never dumped (``exclude``) nor shown (SecretStr)."""

    def secret_values(self) -> dict[str, str]:
        """Name -> value of this session's secrets (for its redactor)."""
        return {name: value.get_secret_value() for name, value in self.secrets.items()}

    def api_key(self, agent: AgentSpec | None) -> str | None:
        """The key of ``agent`` when it names a vault secret (``api_key_secret``)."""
        if agent is None or not agent.api_key_secret:
            return None
        value = self.secrets.get(agent.api_key_secret)
        return value.get_secret_value() if value is not None else None

    def environment_secrets(self) -> dict[str, str]:
        """Variable -> value of the environment's secret variables (for each command)."""
        return {
            var: self.secrets[name].get_secret_value()
            for var, name in self.environment.secret_env().items()
            if name in self.secrets
        }


class SessionResult(BaseModel):
    """What a worker reports when a session ends, with the events not yet sent."""

    task_id: str
    session_id: str
    attempt: int
    worker: str
    status: Literal["succeeded", "failed"]
    reason: str = ""
    outcome: SessionOutcome | None = None
    duration_ms: float = 0.0
    events: list[Event] = Field(default_factory=list)
    feedback: str = ""
    """What the next attempt should know (gate output, review comments)."""
    diff: str | None = None
    """Against the task's starting workspace (``Assignment.base``, else the session's own)."""
    changed_files: list[str] = Field(default_factory=list)
    workspace: bytes | None = None
    """The workspace as the session left it (every session that ended with a sandbox)."""
    base: bytes | None = None
    """The task's starting workspace, from the session that seeded it, when a later session
    may continue from this one's workspace (kept once per task as ``<task>/base.tar``)."""
    interactive: bool = False
    """The session is a turn of an interactive task: its loop state is kept whatever its
    outcome, so that the conversation goes on after a failed turn too."""


class TaskRecord(BaseModel):
    """Where a task stands: the fold of its events (see ``Scheduler.apply``)."""

    id: str
    spec: TaskSpec
    batch: str | None = None
    state: TaskState = TaskState.queued
    attempts: int = 0
    turns: int = 0
    tool_calls: int = 0
    worker: str | None = None
    session_id: str | None = None
    submitted_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    last_event_at: datetime | None = None
    last_event: str | None = None
    summary: str = ""
    reason: str = ""
    seq: int = -1
    lost_workers: int = 0
    pending_approval: dict[str, Any] | None = None
    """The tool call waiting for a decision: call_id, tool, args."""
    pending_custom_tool: dict[str, Any] | None = None
    """The custom tool call waiting for the client: call_id, tool, input; ``result``
    (content, is_error) once the client answered, until a session takes it."""
    stage: int = 0
    agent: str | None = None
    """The agent of the current stage (a handoff or a stage changes it)."""
    not_before: float = 0.0
    """Epoch seconds before which a retry may not start (backoff)."""
    feedback: list[str] = Field(default_factory=list)
    history: list[str] = Field(default_factory=list)
    """One line per ended session: what was tried and how it ended (the brief for humans)."""
    plan: dict[str, Any] = Field(default_factory=dict)
    """Decisions taken from memory at submit: expected_s, time_limit_s, agent, max_attempts."""
    versions: dict[str, dict[str, int]] = Field(default_factory=dict)
    """The versions the task is pinned to, by kind and name (``{"agent": {"coder": 2},
    "environment": {"default": 1}}``): taken at submit (a handoff's target at the handoff);
    every session of the task runs them, whatever later updates say."""
    base_ref: str | None = None
    """The workspace this stage starts from (the previous stage's), when not seeded."""
    workspace_ref: str | None = None
    """A point to resume from (parked, paused, or a checkpoint): its workspace snapshot..."""
    loop_state_ref: str | None = None
    """...and the agent loop's state there."""
    history_ref: str | None = None
    inbox: list[str] = Field(default_factory=list)
    """Messages for the next session: sent while none ran (for an interactive task, until a
    newer resume point holds them: a checkpoint, or the task going idle)."""
    unread: list[str] = Field(default_factory=list)
    """Messages pushed to the running session that it has not read yet (they move to the
    inbox when it stops first)."""
    idle_since: datetime | None = None
    """When an interactive task last went idle (``session.idle``); None while not idle."""
    closing: bool = False
    """An interactive task was closed (``task.closed``): its next end of turn is gated."""
    children: list[str] = Field(default_factory=list)
    spent_tokens: int = 0
    """Input + output tokens of every session of the task (its ``usage`` events)."""
    spent_cost_usd: float = 0.0
    """The cost of those tokens: the task's budgets count against these."""
    base_commit: str | None = None
    """A task on a git repository: the commit its workspace was checked out at."""
    branch: str | None = None
    """...the branch its result was pushed to (``task.delivered``)..."""
    commit: str | None = None
    """...the commit pushed there..."""
    pr_url: str | None = None
    """...and the pull request opened for it, once one is."""

    def touch(self, event: Event) -> None:
        """What every event of the task does to its record: its ``seq`` (never lower), the
        time and type of its last event. Written straight into the fields, as
        :meth:`Event.number` does: most of a running session's events change nothing else."""
        fields = self.__dict__
        if event.seq > fields["seq"]:
            fields["seq"] = event.seq
        fields["last_event_at"] = event.ts
        fields["last_event"] = event.type.value

    @property
    def duration_s(self) -> float | None:
        if self.started_at and self.finished_at:
            return (self.finished_at - self.started_at).total_seconds()
        return None


class CommandResult(BaseModel):
    """What a command to the fleet (cancel, steer, review, archive...) did: ``ok``, or
    ``reason``, why it was refused (said to the person who asked). Truthy when ``ok``, so
    ``if fleet.cancel(task_id):`` reads as before."""

    ok: bool
    reason: str = ""
    refusal: Literal["state", "unknown", "invalid"] = "state"
    """Why it was refused: the task's state does not allow it (HTTP 409), what it names is
    not there (404), or what it carries is not valid (422)."""

    def __bool__(self) -> bool:
        return self.ok

    @classmethod
    def done(cls) -> CommandResult:
        return cls(ok=True)

    @classmethod
    def refused(
        cls, reason: str, refusal: Literal["state", "unknown", "invalid"] = "state"
    ) -> CommandResult:
        return cls(ok=False, reason=reason, refusal=refusal)
