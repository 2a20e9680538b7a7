"""Messages between supervisor, workers and drivers, and the task record they fold into."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from fleet.agent import SessionOutcome
from fleet.events import Event
from fleet.specs import AgentSpec, EnvironmentSpec, TaskSpec, TaskState


class Assignment(BaseModel):
    """What the supervisor hands a worker: one attempt (session) of one task."""

    task: TaskSpec
    agent: AgentSpec
    environment: EnvironmentSpec
    attempt: int
    session_id: str
    max_turns: int
    time_limit_s: float


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

    @property
    def duration_s(self) -> float | None:
        if self.started_at and self.finished_at:
            return (self.finished_at - self.started_at).total_seconds()
        return None
