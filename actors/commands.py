"""What people ask of the fleet's tasks: submit them; cancel, steer, interrupt, resume,
decide a tool call, review a result. Each command is checked against the task's state,
recorded as events, and pushed to the worker running the session, if one does; each
answers a :class:`CommandResult` that says why when it was refused.

Plain: events go through ``record`` and pushes through a :class:`SessionLink` (Ray calls in
the supervisor, in-process hooks in the tests' fake).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from actors.delivery import Delivery
from actors.memory import Decision
from actors.scheduler import Scheduler, TaskRejected
from core.events import Event, EventType
from core.records import CommandResult, TaskRecord
from core.specs import TaskSpec, TaskState


class SessionLink(Protocol):
    """How commands reach a worker's running session."""

    def worker_of(self, task_id: str) -> str | None:
        """The worker running the task's session now, if any."""
        ...

    def deliver(self, worker_id: str, session_id: str | None, kind: str, data: Any) -> None:
        """Push a ``message`` (text), an ``interrupt`` or a ``decision`` (call_id, allow,
        message) to the session."""
        ...

    def stop(self, worker_id: str, session_id: str | None, reason: str = "") -> None:
        """Stop the session (its attempt ends with ``reason``)."""
        ...


def no_task(task_id: str) -> CommandResult:
    return CommandResult.refused(f"no task {task_id!r}")


def is_in(record: TaskRecord, what: str) -> CommandResult:
    return CommandResult.refused(f"task {record.id!r} is {record.state.value}: {what}")


Planner = Callable[[TaskSpec], tuple[dict[str, Any], list[Decision]]]
"""Memory's plan for a new task (see :meth:`actors.memory.Memory.plan`)."""


class Commands:
    def __init__(
        self,
        sched: Scheduler,
        record: Callable[[list[Event]], Awaitable[None]],
        link: SessionLink,
        planner: Planner | None = None,
        deliver: Callable[[str], Awaitable[Delivery | None]] | None = None,
    ) -> None:
        self.sched = sched
        self.record = record
        self.link = link
        self.planner = planner
        self.deliver = deliver
        """Pushes an approved result of a task on a git repository (see
        ``Dispatcher.deliver_reviewed``)."""

    async def submit(
        self, tasks: list[dict[str, Any] | TaskSpec], batch: str | None = None
    ) -> dict[str, Any]:
        """Queue tasks; each accepted one is recorded before this returns, the others are
        listed with the field at fault and why."""
        accepted: list[str] = []
        rejected: list[dict[str, str]] = []
        for raw in tasks:
            try:
                spec = raw if isinstance(raw, TaskSpec) else TaskSpec.model_validate(raw)
                plan, decisions = self.planner(spec) if self.planner else ({}, [])
                event = self.sched.submit(spec, batch, plan)
            except TaskRejected as exc:
                rejected.append({"task_id": exc.task_id, "field": exc.field, "error": exc.message})
                continue
            except ValueError as exc:
                task_id = str(raw.get("id", "?")) if isinstance(raw, dict) else "?"
                rejected.append({"task_id": task_id, "field": "", "error": str(exc)})
                continue
            # Apply at once so a duplicate id later in the same batch is caught.
            await self.record([event, *(d.event(spec.id) for d in decisions)])
            accepted.append(spec.id)
        return {"accepted": accepted, "rejected": rejected, "batch": batch}

    async def cancel(self, task_id: str, reason: str = "cancelled by user") -> CommandResult:
        """End a task that has not ended (``reason`` goes in its event); its running session
        is stopped."""
        record = self.sched.tasks.get(task_id)
        if record is None:
            return no_task(task_id)
        events = self.sched.cancel(task_id, reason)
        if not events:
            return is_in(record, "cannot cancel")
        worker = self.link.worker_of(task_id)
        await self.record(events)
        if worker is not None:
            self.link.stop(worker, record.session_id)
        return CommandResult.done()

    async def update_prompt(self, task_id: str, prompt: str, reason: str = "") -> CommandResult:
        """Replace the prompt of a task that has not started (``task.updated``)."""
        return await self._decide(
            task_id,
            lambda: self.sched.update_prompt(task_id, prompt, reason),
            "only a queued task that never started may get a new prompt",
        )

    async def steer(self, task_id: str, text: str) -> CommandResult:
        """A user message for the task's session: delivered at its next turn (a paused or
        idle task resumes; a queued or parked one gets it when its next session starts)."""
        record = self.sched.tasks.get(task_id)
        if record is None:
            return no_task(task_id)
        if record.state == TaskState.expired:
            return is_in(record, f"{record.reason}; it takes no more messages")
        if record.state.terminal:
            return is_in(record, "it has ended")
        if record.closing:
            return CommandResult.refused(
                f"task {task_id!r} was closed: its gate and review run, it takes no more messages"
            )
        worker = self.link.worker_of(task_id)
        event = Event(
            task_id=task_id,
            type=EventType.user_message,
            session_id=record.session_id,
            payload={"text": text, "delivered": worker is not None},
        )
        await self.record([event])
        if worker is not None:
            self.link.deliver(worker, record.session_id, "message", text)
        elif record.state in (TaskState.paused, TaskState.idle):
            await self.record(self.sched.unpark(task_id))
        return CommandResult.done()

    async def close(self, task_id: str) -> CommandResult:
        """Close an interactive task: its gate, reviewer and review run (now when it is idle,
        else when its agent ends the running turn), then it ends as a batch task does."""
        record = self.sched.tasks.get(task_id)
        if record is None:
            return no_task(task_id)
        if not record.spec.interactive:
            return CommandResult.refused(f"task {task_id!r} is not interactive: it ends by itself")
        if record.closing:
            return CommandResult.refused(f"task {task_id!r} is closed already")
        return await self._decide(task_id, lambda: self.sched.close(task_id), "it has ended")

    async def resume(self, task_id: str) -> CommandResult:
        """Continue a paused (interrupted) or parked task on any worker."""
        record = self.sched.tasks.get(task_id)
        if record is None:
            return no_task(task_id)
        events = self.sched.unpark(task_id)
        if not events:
            return is_in(record, "not paused or waiting on an approval")
        await self.record(events)
        return CommandResult.done()

    async def interrupt(self, task_id: str) -> CommandResult:
        """Stop a running session at its next safe point, leaving it resumable."""
        record = self.sched.tasks.get(task_id)
        if record is None:
            return no_task(task_id)
        worker = self.link.worker_of(task_id)
        if worker is None:
            return is_in(record, "no session is running")
        event = Event(task_id=task_id, type=EventType.user_interrupt, session_id=record.session_id)
        await self.record([event])
        self.link.deliver(worker, record.session_id, "interrupt", None)
        return CommandResult.done()

    async def decide_approval(
        self, task_id: str, call_id: str, allow: bool, message: str = ""
    ) -> CommandResult:
        """Allow or deny a tool call that waits for approval (a parked task resumes)."""
        record = self.sched.tasks.get(task_id)
        if record is None:
            return no_task(task_id)
        pending = record.pending_approval
        if not pending or pending.get("call_id") != call_id:
            return CommandResult.refused(f"no tool call waits for approval with id {call_id!r}")
        if pending.get("decision") is not None or record.state.terminal:
            return CommandResult.refused(f"the tool call {call_id!r} is decided already")
        event = Event(
            task_id=task_id,
            type=EventType.approval_decided,
            session_id=record.session_id,
            payload={"call_id": call_id, "allow": allow, "message": message, "by": "user"},
        )
        worker = self.link.worker_of(task_id)
        await self.record([event])
        if worker is not None:
            decision = {"call_id": call_id, "allow": allow, "message": message}
            self.link.deliver(worker, record.session_id, "decision", decision)
        elif record.state == TaskState.awaiting_approval:
            await self.record(self.sched.unpark(task_id))  # parked: any worker picks it up
        return CommandResult.done()

    async def review(self, task_id: str, approve: bool, message: str = "") -> CommandResult:
        """A person approves or rejects a result that awaits review; an approved result on
        a git repository is delivered (pushed) first."""
        record = self.sched.tasks.get(task_id)
        delivery = None
        if (
            approve
            and record is not None
            and self.deliver is not None
            and record.state == TaskState.awaiting_review
        ):
            delivery = await self.deliver(task_id)
        return await self._decide(
            task_id,
            lambda: self.sched.review(task_id, approve, message, delivery),
            "not in review",
        )

    async def _decide(
        self, task_id: str, decide: Callable[[], list[Event]], refusal: str
    ) -> CommandResult:
        """Record what the scheduler decides for an existing task; ``refusal`` (after its
        state) when it decides nothing."""
        record = self.sched.tasks.get(task_id)
        if record is None:
            return no_task(task_id)
        events = decide()
        if not events:
            return is_in(record, refusal)
        await self.record(events)
        return CommandResult.done()
