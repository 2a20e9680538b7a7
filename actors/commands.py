"""What people ask of the fleet's tasks: submit them; cancel, steer, interrupt, resume,
decide a tool call, answer a custom tool call, review a result; and of its agents and
environments: put a version, archive a name. Each command is checked against the task's
state, recorded as events, and pushed to the worker running the session, if one does; each
answers a :class:`CommandResult` that says why when it was refused.

Plain: events go through ``record`` and pushes through a :class:`SessionLink` (Ray calls in
the supervisor, in-process hooks in the tests' fake).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from actors.delivery import Delivery
from actors.memory import Decision
from actors.scheduler import Scheduler, TaskRejected, UnknownSpec
from core.events import Event, EventType
from core.records import CommandResult, TaskRecord
from core.specs import TaskSpec, TaskState
from harness.hooks import content_text
from harness.tools import schema_problem


class SessionLink(Protocol):
    """How commands reach a worker's running session."""

    def worker_of(self, task_id: str) -> str | None:
        """The worker running the task's session now, if any."""
        ...

    def deliver(self, worker_id: str, session_id: str | None, kind: str, data: Any) -> None:
        """Push a ``message`` (text), an ``interrupt``, a ``decision`` (call_id, allow,
        message) or a ``tool_result`` (call_id, content, is_error) to the session."""
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
        events: list[Event] = []
        accepted_ids: set[str] = set()
        for raw in tasks:
            try:
                spec = raw if isinstance(raw, TaskSpec) else TaskSpec.model_validate(raw)
                if self.sched.vault is not None:  # an inline environment's values: by reference
                    spec = self.sched.vault.seal(spec)
                plan, decisions = self.planner(spec) if self.planner else ({}, [])
                if spec.id in accepted_ids:  # twice in this call (the scheduler sees the log)
                    raise TaskRejected(spec.id, "id", "a task with this id already exists")
                event = self.sched.submit(spec, batch, plan)
            except TaskRejected as exc:
                rejection = {"task_id": exc.task_id, "field": exc.field, "error": exc.message}
                rejected.append(rejection | ({"conflict": True} if exc.conflict else {}))
                continue
            except (ValueError, OSError) as exc:  # OSError: the vault could not keep a value
                task_id = str(raw.get("id", "?")) if isinstance(raw, dict) else "?"
                rejected.append({"task_id": task_id, "field": "", "error": str(exc)})
                continue
            events += [event, *(d.event(spec.id) for d in decisions)]
            accepted.append(spec.id)
            accepted_ids.add(spec.id)
        # One append for the whole call: every accepted task is logged (or none, on a crash)
        # before this returns, and nothing awaits between the checks above and the apply.
        if events:
            await self.record(events)
        return {"accepted": accepted, "rejected": rejected, "batch": batch}

    async def put_spec(
        self, kind: str, spec: dict[str, Any], expected_version: int | None = None
    ) -> dict[str, Any]:
        """Create or update a named agent or environment: ``registry.put`` is logged before
        this returns the new version's view (SpecConflict when ``expected_version`` is not
        the current version; a pydantic ValidationError for a bad spec)."""
        registry = self.sched.registry
        event = registry.put_event(kind, spec, expected_version)
        await self.record([event])
        view = registry.view(kind, event.payload["name"], event.payload["version"])
        assert view is not None
        return view

    async def archive_spec(self, kind: str, name: str) -> CommandResult:
        """New tasks may no longer name it (``registry.archived``); its versions stay
        readable and tasks that started with one go on with it."""
        registry = self.sched.registry
        why = registry.archive_refusal(kind, name)
        if why:
            return CommandResult.refused(why)
        await self.record([registry.archived_event(kind, name)])
        return CommandResult.done()

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
        decision = {"call_id": call_id, "allow": allow, "message": message}
        return await self._answer(record, event, "decision", decision, TaskState.awaiting_approval)

    async def custom_tool_result(
        self,
        task_id: str,
        call_id: str,
        content: str | list[dict[str, Any]],
        is_error: bool = False,
    ) -> CommandResult:
        """The API client's result of a custom tool call: recorded as
        ``user.custom_tool_result`` and given to the session (pushed to it while it runs; a
        parked one resumes on any worker). Refused as ``unknown`` when no call of that id
        waits, ``invalid`` when the content does not match the tool's ``output_schema``."""
        record = self.sched.tasks.get(task_id)
        if record is None:
            return no_task(task_id)
        waiting = record.pending_custom_tool
        if record.state.terminal:
            return is_in(record, "it has ended")
        if not waiting or waiting.get("call_id") != call_id:
            return CommandResult.refused(
                f"no custom tool call waits for a result with id {call_id!r}", "unknown"
            )
        if waiting.get("result") is not None:
            return CommandResult.refused(f"the custom tool call {call_id!r} has its result")
        problem = self._result_problem(record, str(waiting.get("tool")), content, is_error)
        if problem:
            return CommandResult.refused(problem, "invalid")
        event = Event(
            task_id=task_id,
            type=EventType.user_custom_tool_result,
            session_id=record.session_id,
            tool=waiting.get("tool"),
            payload={"custom_tool_use_id": call_id, "content": content, "is_error": is_error},
        )
        result = {"call_id": call_id, "content": content, "is_error": is_error}
        return await self._answer(
            record, event, "tool_result", result, TaskState.awaiting_tool_result
        )

    async def _answer(
        self,
        record: TaskRecord,
        event: Event,
        kind: str,
        answer: dict[str, Any],
        parked: TaskState,
    ) -> CommandResult:
        """Record ``event`` and give the session what it waits for: pushed to its worker
        while it runs, or the task unparked (any worker resumes it) when it waits ``parked``."""
        worker = self.link.worker_of(record.id)
        await self.record([event])
        if worker is not None:
            self.link.deliver(worker, record.session_id, kind, answer)
        elif record.state == parked:
            await self.record(self.sched.unpark(record.id))
        return CommandResult.done()

    def _result_problem(self, record: TaskRecord, tool: str, content: Any, is_error: bool) -> str:
        """What is wrong with a custom tool's result, or empty: content is text or a list of
        text blocks; unless it is an error, its text must be JSON matching the tool's
        ``output_schema`` when the tool has one."""
        blocks = content if isinstance(content, list) else None
        if not isinstance(content, str) and not (
            blocks is not None
            and all(
                isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str)
                for b in blocks
            )
        ):
            return "content must be text or a list of text blocks ({type: text, text})"
        try:
            agent = self.sched.resolve_agent(record)
        except UnknownSpec:
            return ""  # the task fails with the reason when it is next assigned
        spec = next((t for t in agent.custom_tools if t.name == tool), None)
        if spec is None or spec.output_schema is None or is_error:
            return ""
        text = content_text(content)
        try:
            value = json.loads(text)
        except ValueError:
            return f"the {tool} tool's result must be JSON matching its output_schema"
        problem = schema_problem(spec.output_schema, value)
        return (
            f"the result does not match the {tool} tool's output_schema: {problem}"
            if problem
            else ""
        )

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
