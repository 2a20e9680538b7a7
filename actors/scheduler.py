"""Queue order, assignment and what happens after each attempt: plain logic, no Ray.

Task state is a fold over events. Every decision here is made by creating events and
applying them with :meth:`Scheduler.apply`; replaying the log through ``apply`` rebuilds
the same state after a crash.

| state       | event                 | next state  |
| ----------- | --------------------- | ----------- |
| (none)      | task.submitted        | queued      |
| queued      | task.assigned         | running     |
| running     | task.retried          | queued      |
| running     | task.succeeded        | succeeded   |
| running     | task.failed           | failed      |
| any live    | task.cancelled        | cancelled   |
"""

from __future__ import annotations

import heapq
import itertools
import uuid
from collections.abc import Callable

from fleet.events import Event, EventType
from fleet.records import Assignment, SessionResult, TaskRecord
from fleet.settings import FleetSettings
from fleet.specs import FleetConfig, TaskSpec, TaskState


class TaskRejected(ValueError):
    def __init__(self, task_id: str, field: str, message: str) -> None:
        super().__init__(f"task {task_id}: {field}: {message}")
        self.task_id = task_id
        self.field = field
        self.message = message


class TaskQueue:
    """Priority (higher first), then age (older first). Removal is lazy: a heap entry is
    live only while it is the task's current entry."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, str]] = []
        self._order = itertools.count()
        self._live: dict[str, int] = {}

    def push(self, task_id: str, priority: int) -> None:
        order = next(self._order)
        heapq.heappush(self._heap, (-priority, order, task_id))
        self._live[task_id] = order

    def discard(self, task_id: str) -> None:
        self._live.pop(task_id, None)

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, task_id: str) -> bool:
        return task_id in self._live

    def _is_live(self, item: tuple[int, int, str]) -> bool:
        return self._live.get(item[2]) == item[1]

    def pop(self, fits: Callable[[str], bool] = lambda _: True) -> str | None:
        """Take the first task in order that ``fits``; the ones passed over stay queued."""
        skipped: list[tuple[int, int, str]] = []
        found = None
        while self._heap:
            item = heapq.heappop(self._heap)
            if not self._is_live(item):
                continue
            if fits(item[2]):
                found = item[2]
                del self._live[found]
                break
            skipped.append(item)
        for item in skipped:
            heapq.heappush(self._heap, item)
        return found

    def ids(self) -> list[str]:
        return [item[2] for item in sorted(self._heap) if self._is_live(item)]


class Scheduler:
    def __init__(self, config: FleetConfig, settings: FleetSettings) -> None:
        self.config = config
        self.settings = settings
        self.tasks: dict[str, TaskRecord] = {}
        self.queue = TaskQueue()
        self.finished: list[str] = []
        """Task ids in the order they reached a terminal state (drivers page through it)."""

    # -- the fold ----------------------------------------------------------------------
    def apply(self, event: Event) -> None:
        if event.type == EventType.task_submitted:
            spec = TaskSpec.model_validate(event.payload["task"])
            record = TaskRecord(
                id=spec.id, spec=spec, batch=event.payload.get("batch"), submitted_at=event.ts
            )
            self.tasks[spec.id] = record
            self.queue.push(spec.id, spec.priority)
        record = self.tasks.get(event.task_id)
        if record is None:
            return
        record.seq = max(record.seq, event.seq)
        record.last_event_at = event.ts
        record.last_event = event.type.value
        match event.type:
            case EventType.task_assigned:
                self.queue.discard(record.id)
                record.state = TaskState.running
                record.attempts = event.attempt or record.attempts + 1
                record.worker = event.worker
                record.session_id = event.session_id
                record.started_at = record.started_at or event.ts
            case EventType.approval_requested:
                record.pending_approval = {
                    k: event.payload.get(k) for k in ("call_id", "tool", "args")
                }
            case EventType.approval_decided:
                record.pending_approval = None
            case EventType.session_ended:
                record.turns += int(event.payload.get("turns", 0))
                record.tool_calls += int(event.payload.get("tool_calls", 0))
            case EventType.worker_lost:
                record.lost_workers += 1
            case EventType.task_retried:
                record.state = TaskState.queued
                record.reason = event.payload.get("reason", "")
                record.attempts = int(event.payload.get("next_attempt", record.attempts + 1)) - 1
                if record.id not in self.queue:
                    self.queue.push(record.id, record.spec.priority)
            case (
                EventType.task_succeeded
                | EventType.task_failed
                | EventType.task_needs_human
                | EventType.task_cancelled
            ):
                self.queue.discard(record.id)
                record.state = TaskState(event.type.value.split(".", 1)[1])
                record.finished_at = event.ts
                record.summary = event.payload.get("summary", record.summary)
                record.reason = event.payload.get("reason", "")
                self.finished.append(record.id)

    # -- decisions ---------------------------------------------------------------------
    def submit(self, spec: TaskSpec, batch: str | None = None) -> Event:
        """Validate a new task against what the fleet knows; return its submitted event."""
        if spec.id in self.tasks:
            raise TaskRejected(spec.id, "id", "a task with this id already exists")
        if isinstance(spec.agent, str) and spec.agent not in self.config.agents:
            known = ", ".join(sorted(self.config.agents))
            raise TaskRejected(spec.id, "agent", f"unknown agent {spec.agent!r} (known: {known})")
        if isinstance(spec.environment, str) and spec.environment not in self.config.environments:
            known = ", ".join(sorted(self.config.environments))
            raise TaskRejected(
                spec.id, "environment", f"unknown environment {spec.environment!r} (known: {known})"
            )
        return Event(
            task_id=spec.id,
            type=EventType.task_submitted,
            payload={"task": spec.model_dump(mode="json", exclude_none=True), "batch": batch},
        )

    def assign(self, worker: str) -> tuple[Assignment, Event] | None:
        task_id = self.queue.pop()
        if task_id is None:
            return None
        record = self.tasks[task_id]
        spec = record.spec
        agent = self.config.resolve_agent(spec)
        attempt = record.attempts + 1
        assignment = Assignment(
            task=spec,
            agent=agent,
            environment=self.config.resolve_environment(spec),
            attempt=attempt,
            session_id=f"s-{uuid.uuid4().hex[:12]}",
            max_turns=spec.max_turns or agent.max_turns or self.settings.default_max_turns,
            time_limit_s=spec.time_limit_s or self.settings.default_time_limit_s,
        )
        event = Event(
            task_id=task_id,
            type=EventType.task_assigned,
            session_id=assignment.session_id,
            attempt=attempt,
            worker=worker,
            payload={"time_limit_s": assignment.time_limit_s, "max_turns": assignment.max_turns},
        )
        return assignment, event

    def complete(self, result: SessionResult) -> list[Event]:
        """Decide what follows an attempt: success, a retry, or failure."""
        record = self.tasks.get(result.task_id)
        if record is None or record.state != TaskState.running:
            return []  # e.g. cancelled while it ran
        if record.session_id != result.session_id:
            return []  # a late result of a session that was already written off
        common = {
            "task_id": result.task_id,
            "session_id": result.session_id,
            "attempt": result.attempt,
            "worker": result.worker,
        }
        if result.status == "succeeded":
            summary = result.outcome.summary if result.outcome else ""
            return [Event(type=EventType.task_succeeded, payload={"summary": summary}, **common)]
        max_attempts = record.spec.max_attempts or self.settings.default_max_attempts
        if result.attempt < max_attempts:
            payload = {"reason": result.reason, "next_attempt": result.attempt + 1}
            return [Event(type=EventType.task_retried, payload=payload, **common)]
        payload = {"reason": result.reason, "attempts": result.attempt}
        return [Event(type=EventType.task_failed, payload=payload, **common)]

    def worker_lost(self, worker: str, task_id: str, reason: str) -> list[Event]:
        """A worker died mid-task: the attempt does not count against the task."""
        record = self.tasks.get(task_id)
        if record is None or record.state != TaskState.running or record.worker != worker:
            return []
        common = {"task_id": task_id, "session_id": record.session_id, "worker": worker}
        events = [Event(type=EventType.worker_lost, payload={"reason": reason}, **common)]
        if record.lost_workers + 1 >= 3:
            payload = {"reason": f"lost {record.lost_workers + 1} workers: {reason}"}
            events.append(Event(type=EventType.task_failed, payload=payload, **common))
        else:
            # The attempt number is reused: the crash was not the agent's fault.
            payload = {"reason": f"worker lost: {reason}", "next_attempt": record.attempts}
            events.append(Event(type=EventType.task_retried, payload=payload, **common))
        return events

    def cancel(self, task_id: str, reason: str = "cancelled by user") -> list[Event]:
        record = self.tasks.get(task_id)
        if record is None or record.state.terminal:
            return []
        return [Event(task_id=task_id, type=EventType.task_cancelled, payload={"reason": reason})]

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys((s.value for s in TaskState), 0)
        for record in self.tasks.values():
            counts[record.state.value] += 1
        return counts
