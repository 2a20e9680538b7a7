"""Queue order, routing and what happens after each attempt: plain logic, no Ray.

Task state is a fold over events. Every decision here is made by creating events and
applying them with :meth:`Scheduler.apply`; replaying the log through ``apply`` rebuilds
the same state after a crash.

| state             | event                 | next state                      |
| ----------------- | --------------------- | ------------------------------- |
| (none)            | task.submitted        | queued                          |
| queued            | task.assigned         | running                         |
| running           | task.retried          | queued (after a backoff)        |
| running           | handoff               | queued (next stage or agent)    |
| running           | task.parked           | awaiting_approval,              |
|                   |                       | awaiting_tool_result or paused  |
| awaiting_approval | task.retried (resume) | queued                          |
| awaiting_tool_... | task.retried (resume) | queued                          |
| running           | task.awaiting_review  | awaiting_review                 |
| awaiting_review   | task.succeeded        | succeeded (a human approved)    |
| running           | task.succeeded        | succeeded                       |
| running           | task.needs_human      | needs_human (attempts or budget |
|                   |                       | ran out)                        |
| running           | task.failed           | failed (exhausted_state=failed) |
| running           | session.idle          | idle (an interactive turn ended)|
| idle              | task.retried (resume) | queued (a message, or closed)   |
| idle              | task.expired          | expired (idle_timeout_s passed) |
| any live          | task.cancelled        | cancelled                       |

What follows a failed attempt: another attempt after ``retry_backoff_s * 2**(n-1)`` seconds,
which sees the failure (gate output, review comments) in its prompt; when attempts run out,
the task goes to a human with a brief of every attempt. A worker that dies does not use up an
attempt (up to 3 losses). Token and cost budgets are per task: ``usage`` events add up in the
record, each session gets what is left, and a task whose budget is spent is not retried.

An interactive task (``TaskSpec.interactive``) is a conversation: when its agent ends a turn
the task goes idle with its history and workspace saved (its resume point); a message queues
the next turn, which resumes there on any worker. ``task.closed`` makes the next end of turn
run the gate, reviewer and review (at once when idle), after which it ends as a batch task
does. A failed turn is retried in the same conversation, from where it stopped, told why.
"""

from __future__ import annotations

import heapq
import itertools
import time
import uuid
from collections import Counter
from collections.abc import Callable, Collection, Hashable
from typing import Any

from pydantic import SecretStr, ValidationError

from actors.delivery import Delivery
from actors.registry import Registry
from actors.tasktable import Submitted, TaskTable
from core.errors import InputError, StateError
from core.events import (
    REGISTRY_EVENTS,
    SOURCE_ID_PREFIX,
    Event,
    EventType,
    source_task_id,
)
from core.records import Assignment, SessionResult, TaskRecord
from core.settings import FleetSettings, PoolSpec, resolve
from core.specs import AgentSpec, EnvironmentSpec, FleetConfig, RepoSpec, TaskSpec, TaskState
from core.vault import UnknownSecret, Vault, needed_secrets

MAX_WORKER_LOSSES = 3
RESUMES = (
    TaskState.awaiting_approval,
    TaskState.awaiting_tool_result,
    TaskState.paused,
    TaskState.idle,
)
"""States a task leaves by :meth:`Scheduler.unpark` (a decision, a tool result, a message,
a close): its session stopped, resumable, and no worker is held meanwhile."""


def first_agent(spec: TaskSpec, plan: dict[str, Any] | None) -> str:
    """The agent a task starts with: the one memory chose at submit, else its own."""
    return (plan or {}).get("agent") or spec.agent_name


class TaskRejected(InputError):
    """A submitted task is refused; ``field`` names what is wrong with it. ``conflict``: the
    task is fine as written but the fleet's state refuses it (an archived agent)."""

    def __init__(self, task_id: str, field: str, message: str, conflict: bool = False) -> None:
        super().__init__(f"task {task_id}: {field}: {message}")
        self.task_id = task_id
        self.field = field
        self.message = message
        self.conflict = conflict


class UnknownSpec(StateError, LookupError):
    """A queued task names an agent or environment the fleet no longer has."""


def _refusal(exc: TaskRejected | ValidationError) -> str:
    """Why a task was refused, in one line: the rejection, or the first invalid field."""
    if isinstance(exc, TaskRejected):
        return str(exc)
    first = exc.errors()[0]
    return f"{'.'.join(str(part) for part in first['loc'])}: {first['msg']}"


PASSIVE_EVENTS: frozenset[EventType] = frozenset(
    {
        EventType.agent_message,
        EventType.agent_tool_use,
        EventType.agent_mcp_tool_use,
        EventType.gate_passed,
        EventType.gate_failed,
        EventType.review_decided,
        EventType.memory_decision,
        EventType.manager_decision,
        EventType.artifact_saved,
        EventType.user_interrupt,
    }
)
"""Events that change nothing of their task's record but its ``seq`` and last event (the
fold skips the rest for them: most of a running session's events are these)."""

Entry = tuple[int, float, int, str]
"""A queue entry: (-priority, -expected seconds, order of pushing, task id)."""

Shape = Hashable
"""What decides whether a queued task may run on a worker, apart from its own clock: its
requirements, environment, agent and labels (:meth:`Scheduler.shape`)."""


class Running:
    """The tasks running now, as the scheduler's limits read them: how many
    (``max_running``), and how many carry a label (``label_limits``: counted the first time a
    label is asked for). Nothing is looked up unless a limit asks: an assignment must not
    cost more the more sessions run."""

    def __init__(
        self, task_ids: Collection[str], labels_of: Callable[[str], list[str]] = lambda _: []
    ) -> None:
        self.task_ids = task_ids
        self._labels_of = labels_of
        self._labels: Counter[str] | None = None

    def __len__(self) -> int:
        return len(self.task_ids)

    def with_label(self, label: str) -> int:
        if self._labels is None:
            self._labels = Counter(
                label for task_id in self.task_ids for label in set(self._labels_of(task_id))
            )
        return self._labels[label]


class TaskQueue:
    """Priority (higher first), then expected duration (longer first, from memory), then age
    (older first). Removal is lazy: a heap entry is live only while it is the task's current
    entry.

    Tasks are kept in one heap per *shape*: all tasks of a shape fit a worker or none do, so a
    pop asks once per shape and looks into the heaps of the shapes that fit only. The cost of
    an assignment does not grow with the tasks queued that cannot run (a label at its limit,
    an agent no pool of this worker takes)."""

    def __init__(self) -> None:
        self._heaps: dict[Shape, list[Entry]] = {}
        self._order = itertools.count()
        self._live: dict[str, tuple[int, Shape]] = {}
        """task id -> (its current entry's order, its shape)"""

    def push(
        self, task_id: str, priority: int, expected_s: float = 0.0, shape: Shape = None
    ) -> None:
        order = next(self._order)
        heapq.heappush(self._heaps.setdefault(shape, []), (-priority, -expected_s, order, task_id))
        self._live[task_id] = (order, shape)

    def discard(self, task_id: str) -> None:
        self._live.pop(task_id, None)

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, task_id: str) -> bool:
        return task_id in self._live

    def _is_live(self, item: Entry) -> bool:
        live = self._live.get(item[3])
        return live is not None and live[0] == item[2]

    def pop(
        self,
        fits: Callable[[str], bool] = lambda _: True,
        shape_fits: Callable[[Shape], bool] = lambda _: True,
        only: str | None = None,
    ) -> str | None:
        """Take the first task in order whose shape ``shape_fits`` and that ``fits`` (or
        ``only`` that task, if it does); the ones passed over stay queued."""
        if only is not None:
            live = self._live.get(only)
            if live is None or not shape_fits(live[1]) or not fits(only):
                return None
            del self._live[only]
            return only
        best: Entry | None = None
        for shape in list(self._heaps):
            item = self._first(shape, fits) if shape_fits(shape) else None
            if item is not None and (best is None or item < best):
                best = item
        if best is None:
            return None
        del self._live[best[3]]
        return best[3]

    def _first(
        self, shape: Shape, fits: Callable[[str], bool]
    ) -> tuple[int, float, int, str] | None:
        """The first live entry of ``shape`` that ``fits``, left in place; dead entries on
        the way are dropped (and the heap, once empty)."""
        heap = self._heaps[shape]
        skipped: list[Entry] = []
        found = None
        while heap:
            item = heap[0]
            if not self._is_live(item):
                heapq.heappop(heap)
                continue
            if fits(item[3]):
                found = item
                break
            skipped.append(heapq.heappop(heap))
        for item in skipped:
            heapq.heappush(heap, item)
        if not heap:
            del self._heaps[shape]
        return found

    def shapes(self) -> Counter[Shape]:
        """How many tasks are queued of each shape."""
        return Counter(shape for _, shape in self._live.values())

    def ids(self, limit: int | None = None) -> list[str]:
        """Queued task ids in the order they would run (the first ``limit`` of them)."""
        live = [item for heap in self._heaps.values() for item in heap if self._is_live(item)]
        first = sorted(live) if limit is None else heapq.nsmallest(limit, live)
        return [item[3] for item in first]


class Scheduler:
    def __init__(
        self,
        config: FleetConfig,
        settings: FleetSettings,
        file_exists: Callable[[str], bool] | None = None,
    ) -> None:
        self.settings = settings
        self.registry = Registry(config)
        """The versions of agents and environments (its events fold in through apply)."""
        self.file_exists = file_exists or (lambda _: False)
        """Is there an uploaded file of this id (``actors.files``)? Without a store: no."""
        self.tasks = TaskTable()
        self.queue = TaskQueue()
        self.finished: list[str] = []
        """Task ids in the order they reached a terminal state (drivers page through it)."""
        self.taken_ids: set[str] = set()
        """Ids of the log's history (other fleets', earlier runs'): never reused."""
        self.sources: dict[str, dict[str, Any]] = {}
        """Source name -> its last error (``error``, ``at``, ``failures``), from the
        ``source.error`` events of watchers (shown by the status)."""
        self._pseudo_seq: dict[str, int] = {}
        """Last ``seq`` of each fleet-level pseudo id (``source:<name>``,
        ``registry:<kind>/<name>``)."""
        self.vault: Vault | None = None
        """Where the secrets a session names are read when it is assigned (None: no task
        may name one)."""
        self._shapes: dict[Shape, Shape] = {}
        """Each shape once (queue entries of the same shape share its tuple)."""
        self._pins: dict[tuple[Any, ...], dict[str, dict[str, int]]] = {}
        """Pinned versions by value, shared by the tasks pinned to them (:meth:`_pinned`)."""

    @property
    def config(self) -> FleetConfig:
        """The agents and environments new tasks may name: the registry's current ones."""
        return self.registry.config

    @config.setter
    def config(self, config: FleetConfig) -> None:
        """Start over from ``config`` (its specs are version 1), before any task."""
        self.registry = Registry(config)

    def next_seq(self, task_id: str) -> int:
        """The ``seq`` the next event of ``task_id`` gets (a task's or a pseudo id's)."""
        seq = self.tasks.seq(task_id)
        if seq is not None:
            return seq + 1
        return self._pseudo_seq.get(task_id, -1) + 1

    # -- the fold ----------------------------------------------------------------------
    def apply(self, event: Event) -> None:
        if event.type in PASSIVE_EVENTS:  # most of a session's events: quick to fold
            passive = self.tasks.get(event.task_id)
            if passive is not None:
                passive.touch(event)
            return
        p = event.payload
        if event.type == EventType.task_submitted:
            spec = TaskSpec.model_validate(p["task"])
            plan = p.get("plan") or {}
            shape = self._shape_of(spec, first_agent(spec, plan))
            self.queue.push(spec.id, spec.priority, plan.get("expected_s", 0.0), shape)
            versions = self._pinned(p.get("versions") or {})
            held = Submitted.of(spec, shape[3], p.get("batch"), plan, versions, event.ts, event.seq)
            self.tasks.submitted(spec.id, held)
            return
        elif event.type in REGISTRY_EVENTS:
            seen = self._pseudo_seq.get(event.task_id, -1)
            self._pseudo_seq[event.task_id] = max(seen, event.seq)
            self.registry.apply(event)
            return
        elif event.type == EventType.source_error:
            seen = self._pseudo_seq.get(event.task_id, -1)
            self._pseudo_seq[event.task_id] = max(seen, event.seq)
            name = str(p.get("source") or event.task_id.removeprefix(SOURCE_ID_PREFIX))
            self.sources[name] = {
                "error": p.get("error", ""),
                "at": event.ts.isoformat(),
                "failures": int(p.get("failures", 1)),
            }
            return
        record = self.tasks.get(event.task_id)
        if record is None:
            return
        record.touch(event)
        match event.type:
            case EventType.task_assigned:
                self.queue.discard(record.id)
                record.state = TaskState.running
                record.attempts = event.attempt or record.attempts + 1
                record.worker = event.worker
                record.session_id = event.session_id
                record.started_at = record.started_at or event.ts
                record.unread = []
                record.idle_since = None
                record.history_ref = None
                if (record.pending_custom_tool or {}).get("result"):
                    record.pending_custom_tool = None  # handed over (Assignment.tool_result)
                # The resume point and inbox are handed to this session (read before this
                # event is applied); its own checkpoints set a new resume point. An
                # interactive task keeps them until then: a turn whose worker dies is
                # resumed from there, its messages given again.
                if not record.spec.interactive:
                    record.inbox = []
                    record.workspace_ref = record.loop_state_ref = None
            case EventType.approval_requested:
                record.pending_approval = {k: p.get(k) for k in ("call_id", "tool", "args")}
            case EventType.approval_decided:
                if record.pending_approval:
                    record.pending_approval["decision"] = {
                        "allow": bool(p.get("allow")),
                        "message": p.get("message", ""),
                    }
            case EventType.agent_tool_result | EventType.agent_mcp_tool_result:
                pending = record.pending_approval
                if pending and pending.get("call_id") == p.get("call_id"):
                    record.pending_approval = None  # the call it waited for has run (or not)
            case EventType.agent_custom_tool_use:
                record.pending_custom_tool = {
                    "call_id": p.get("call_id"),
                    "tool": event.tool or p.get("name"),
                    "input": p.get("input"),
                }
            case EventType.user_custom_tool_result:
                waiting = record.pending_custom_tool
                if waiting and waiting.get("call_id") == p.get("custom_tool_use_id"):
                    waiting["result"] = {
                        "content": p.get("content", ""),
                        "is_error": bool(p.get("is_error")),
                    }
            case EventType.user_message:
                text = str(p.get("text", ""))
                if "delivered_at_turn" in p:  # the session read it
                    if event.session_id == record.session_id and text in record.unread:
                        record.unread.remove(text)
                elif p.get("delivered"):  # pushed to the running session
                    record.unread.append(text)
                else:  # for the next session
                    record.inbox.append(text)
            case EventType.session_ended:
                record.turns += int(p.get("turns", 0))
                record.tool_calls += int(p.get("tool_calls", 0))
                agent = p.get("agent", "?")
                how = p.get("outcome") or p.get("status", "?")
                reason = p.get("reason") or p.get("summary") or ""
                record.history.append(
                    f"attempt {event.attempt} (agent {agent}, stage {record.stage}): {how}"
                    + (f": {reason}" if reason else "")
                )
            case EventType.worker_lost:
                record.lost_workers += 1
            case EventType.usage:
                record.spent_tokens += (event.tokens_in or 0) + (event.tokens_out or 0)
                record.spent_cost_usd += event.cost_usd or 0.0
            case EventType.task_retried:
                record.state = TaskState.queued
                record.reason = p.get("reason", "")
                record.attempts = int(p.get("next_attempt", record.attempts + 1)) - 1
                record.not_before = float(p.get("not_before", 0.0))
                if p.get("feedback"):
                    record.feedback.append(p["feedback"])
                if not p.get("resume"):  # a fresh attempt: forget any point to resume from
                    record.workspace_ref = record.loop_state_ref = None
                record.inbox += record.unread  # pushed to a session that did not read them
                record.unread = []
                record.idle_since = None
                if record.spec.interactive and p.get("feedback") and record.loop_state_ref:
                    record.inbox.append(p["feedback"])  # the conversation resumes: say why
                self._enqueue(record)
            case EventType.handoff:
                record.state = TaskState.queued
                record.stage = int(p.get("stage", record.stage))
                record.agent = p.get("to_agent")
                if p.get("to_agent") and p.get("to_version"):  # pinned as it takes over
                    pins = record.versions.get("agent", {})
                    if p["to_agent"] not in pins:  # a new dict: the old one may be shared
                        pins = {**pins, p["to_agent"]: int(p["to_version"])}
                        record.versions = {**record.versions, "agent": pins}
                record.attempts = 0
                record.feedback = (
                    [f"Handed over by {p.get('from_agent')}: {p['note']}"] if p.get("note") else []
                )
                record.base_ref = p.get("workspace_ref")
                record.workspace_ref = record.loop_state_ref = None
                record.history_ref = p.get("history_ref")
                self._enqueue(record)
            case EventType.task_parked:
                self.queue.discard(record.id)
                record.state = TaskState(p.get("state", TaskState.awaiting_approval))
                record.workspace_ref = p.get("workspace_ref")
                record.loop_state_ref = p.get("loop_state_ref")
                record.attempts = max(0, record.attempts - 1)  # the resumed session continues it
                record.inbox = record.unread  # (the parked state holds what it read)
                record.unread = []
            case EventType.session_idle:
                self.queue.discard(record.id)
                record.state = TaskState.idle
                record.summary = p.get("summary", record.summary)
                record.workspace_ref = p.get("workspace_ref")
                record.loop_state_ref = p.get("loop_state_ref")
                record.attempts = max(0, record.attempts - 1)  # the next turn continues it
                record.inbox = record.unread  # (the saved history holds what it read)
                record.unread = []
                record.idle_since = event.ts
            case EventType.task_closed:
                record.closing = True
            case EventType.session_checkpointed:
                if record.state == TaskState.running and record.session_id == event.session_id:
                    record.workspace_ref = p.get("workspace_ref")
                    record.loop_state_ref = p.get("loop_state_ref")
                    if record.spec.interactive:
                        record.inbox = []  # (delivered before any checkpoint of the session)
            case EventType.task_awaiting_review:
                record.state = TaskState.awaiting_review
                record.summary = p.get("summary", record.summary)
                record.workspace_ref = p.get("workspace_ref")  # what approval delivers
            case EventType.session_started:
                record.base_commit = p.get("base_commit", record.base_commit)
            case EventType.task_delivered:
                record.branch = p.get("branch", record.branch)
                record.commit = p.get("commit", record.commit)
                record.pr_url = p.get("pr_url") or record.pr_url
            case EventType.task_updated:
                record.spec = record.spec.model_copy(update={"prompt": p["prompt"]})
            case EventType.task_followup:
                record.children.append(p.get("child", ""))
            case (
                EventType.task_succeeded
                | EventType.task_failed
                | EventType.task_needs_human
                | EventType.task_cancelled
                | EventType.task_expired
            ):
                self.queue.discard(record.id)
                record.state = TaskState(event.type.value.split(".", 1)[1])
                record.finished_at = event.ts
                record.summary = p.get("summary", record.summary)
                record.reason = p.get("reason", "")
                self.finished.append(record.id)

    def _enqueue(self, record: TaskRecord) -> None:
        if record.id not in self.queue:
            expected_s = record.plan.get("expected_s", 0.0)
            self.queue.push(record.id, record.spec.priority, expected_s, self.shape(record))

    def _pinned(self, versions: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
        """A new task's pinned versions (``TaskRecord.versions``), one dict shared by every
        task pinned to the same versions: a big queue holds a few, not one per task. Shared,
        so never changed in place (a handoff pins its target in a new dict)."""
        key = tuple(sorted((kind, tuple(sorted(pins.items()))) for kind, pins in versions.items()))
        shared = self._pins.get(key)
        if shared is None:
            shared = self._pins[key] = {kind: dict(pins) for kind, pins in versions.items()}
        return shared

    # -- decisions ---------------------------------------------------------------------
    def submit(self, spec: TaskSpec, batch: str | None = None, plan: dict | None = None) -> Event:
        """Validate a new task against what the fleet knows; return its submitted event."""
        if spec.id in self.tasks or spec.id in self.taken_ids:
            raise TaskRejected(spec.id, "id", "a task with this id already exists")
        if spec.id.startswith(SOURCE_ID_PREFIX):
            raise TaskRejected(spec.id, "id", f"{SOURCE_ID_PREFIX!r} starts the ids of sources")
        cap = self.settings.max_prompt_chars
        prompts = [("prompt", spec.prompt)]
        prompts += [(f"stages.{n}.prompt", st.prompt or "") for n, st in enumerate(spec.stages)]
        for field, prompt in prompts:
            if len(prompt) > cap:
                raise TaskRejected(
                    spec.id, field, f"{len(prompt)} characters; max_prompt_chars is {cap}"
                )
        names = [spec.agent] if isinstance(spec.agent, str) else []
        names += spec.agents + [st.agent for st in spec.stages]
        names += [spec.reviewer] if spec.reviewer else []
        for field, inline in (("agent", spec.agent), ("environment", spec.environment)):
            for name in sorted(needed_secrets(inline) if not isinstance(inline, str) else ()):
                if self.vault is None or self.vault.origin(name) is None:
                    raise TaskRejected(spec.id, field, f"unknown secret {name!r}")
        first = first_agent(spec, plan)
        names += [first] if (plan or {}).get("agent") else []
        versions: dict[str, dict[str, int]] = {}
        for name in names:
            self._check_named(spec.id, "agent", name)
            versions.setdefault("agent", {})[name] = self.registry.current_version("agent", name)
        if isinstance(spec.environment, str):
            self._check_named(spec.id, "environment", spec.environment)
            current = self.registry.current_version("environment", spec.environment)
            versions["environment"] = {spec.environment: current}
        for n, resource in enumerate(spec.resources):
            if not self.file_exists(resource.file_id):
                raise TaskRejected(
                    spec.id,
                    f"resources.{n}.file_id",
                    f"no file {resource.file_id!r}: upload it first (POST /v1/files)",
                )
        for agent in [first] + [st.agent for st in spec.stages]:
            if not any(
                pool.takes(spec.requires, spec.environment_name, agent)
                for pool in self.settings.pool_specs()
            ):
                raise TaskRejected(
                    spec.id, "requires", f"no worker pool can run this task as agent {agent!r}"
                )
        payload = {"task": spec.model_dump(mode="json", exclude_none=True), "batch": batch}
        if plan:
            payload["plan"] = plan
        if versions:
            payload["versions"] = versions
        return Event(task_id=spec.id, type=EventType.task_submitted, payload=payload)

    def _check_named(self, task_id: str, kind: str, name: str) -> None:
        """A name a new task gives must be live: TaskRejected says it is unknown, or (a
        conflict) archived."""
        if self.registry.live(kind, name):
            return
        if self.registry.is_archived(kind, name):
            message = f"{kind} {name!r} is archived: new tasks may not name it"
            raise TaskRejected(task_id, kind, message, conflict=True)
        known = ", ".join(self.registry.names(kind))
        raise TaskRejected(task_id, kind, f"unknown {kind} {name!r} (known: {known})")

    def agent_name(self, record: TaskRecord) -> str:
        """The agent of the task's current stage."""
        if record.agent:
            return record.agent
        spec = record.spec
        if record.stage > 0:
            return spec.stages[record.stage - 1].agent
        return first_agent(spec, record.plan)

    def resolve_agent(self, record: TaskRecord) -> AgentSpec:
        """The agent spec of the task's current stage (inline, or the pinned version of a
        named one)."""
        name = self.agent_name(record)
        inline = record.spec.agent
        if isinstance(inline, AgentSpec) and name == inline.name and record.stage == 0:
            return inline
        agent = self._named(record, "agent", name, "agent")
        assert isinstance(agent, AgentSpec)
        return agent

    def resolve_environment(self, record: TaskRecord) -> EnvironmentSpec:
        """The task's environment: inline, or the pinned version of a named one."""
        spec = record.spec
        if isinstance(spec.environment, EnvironmentSpec):
            return spec.environment
        environment = self._named(record, "environment", spec.environment, "environment")
        assert isinstance(environment, EnvironmentSpec)
        return environment

    def _named(
        self, record: TaskRecord, kind: str, name: str, role: str
    ) -> AgentSpec | EnvironmentSpec:
        """The version of a named spec the task is pinned to. A task that has not started
        fails (UnknownSpec) when the name was archived or removed since it was submitted;
        one that started goes on with its pinned version. Never another spec instead."""
        live = self.registry.live(kind, name)
        if not live and record.started_at is None:
            raise UnknownSpec(f"{role} {name!r} no longer exists")
        version = record.versions.get(kind, {}).get(name)
        if version is None:  # not pinned (a log from before versions): the current one
            if not live:
                raise UnknownSpec(f"{role} {name!r} no longer exists")
            return self.registry.spec(kind, name, self.registry.current_version(kind, name))
        found = self.registry.spec(kind, name, version)
        if found is None:
            raise UnknownSpec(f"{role} {name!r} version {version} no longer exists")
        return found

    def resources_missing(self, record: TaskRecord) -> str:
        """The first uploaded file of a task about to seed its workspace that the store does
        not have (empty: none is missing)."""
        if record.workspace_ref or record.base_ref:  # it starts from a snapshot that has them
            return ""
        for resource in record.spec.resources:
            if not self.file_exists(resource.file_id):
                return resource.file_id
        return ""

    def shape(self, record: TaskRecord) -> Shape:
        """What decides, apart from its own clock, whether the task may run on a worker: its
        requirements, environment, agent and labels (the queue keeps a heap per shape)."""
        return self._shape_of(record.spec, self.agent_name(record))

    def _shape_of(self, spec: TaskSpec, agent: str) -> tuple[Any, ...]:
        shape = (tuple(sorted(spec.requires)), spec.environment_name, agent, tuple(spec.labels))
        return self._shapes.setdefault(shape, shape)  # one tuple per shape, not per task

    def running(self, task_ids: Collection[str]) -> Running:
        """These tasks as what runs now (:class:`Running`)."""
        return Running(task_ids, self.tasks.labels)

    def shape_fits(self, shape: Shape, pool: PoolSpec, running: Running) -> bool:
        """May tasks of ``shape`` start on a worker of ``pool``, given what is running?"""
        requires, environment, agent, labels = shape
        if not pool.takes(list(requires), environment, agent):
            return False
        if self.settings.max_running is not None and len(running) >= self.settings.max_running:
            return False
        for label in labels:
            limit = self.settings.label_limits.get(label)
            if limit is not None and running.with_label(label) >= limit:
                return False
        return True

    def assign(
        self,
        worker: str,
        pool: PoolSpec | None = None,
        running: Running | None = None,
        now: float | None = None,
        only: str | None = None,
    ) -> tuple[Assignment, Event] | tuple[None, Event] | None:
        """Pick the first queued task this worker may run now (or ``only`` that one).

        Returns None when none may run, ``(assignment, task.assigned)``, or ``(None,
        task.failed)`` when the picked task names an agent or environment that is gone."""
        pool = pool or PoolSpec(workers=1)
        running = Running(()) if running is None else running
        now = time.time() if now is None else now
        task_id = self.queue.pop(
            lambda t: self.tasks.not_before(t) <= now,
            lambda shape: self.shape_fits(shape, pool, running),
            only,
        )
        if task_id is None:
            return None
        record = self.tasks[task_id]
        spec = record.spec
        stage = spec.stages[record.stage - 1] if record.stage > 0 else None
        last_stage = record.stage >= len(spec.stages)
        try:
            agent = self.resolve_agent(record)
            environment = self.resolve_environment(record)
            reviewer = None
            if spec.reviewer and last_stage:
                reviewer = self._named(record, "agent", spec.reviewer, "reviewer agent")
                assert isinstance(reviewer, AgentSpec)
            if missing := self.resources_missing(record):
                raise UnknownSpec(f"file {missing!r} no longer exists")
            secrets = self._secrets(agent, environment, reviewer)
        except (UnknownSpec, UnknownSecret) as exc:
            payload = {"reason": f"cannot run: {exc}", "attempts": record.attempts}
            return None, Event(task_id=task_id, type=EventType.task_failed, payload=payload)
        attempt = record.attempts + 1
        tokens_left, cost_left = self._budget_left(record, agent)
        assignment = Assignment(
            task=spec,
            agent=agent,
            environment=environment,
            attempt=attempt,
            session_id=f"s-{uuid.uuid4().hex[:12]}",
            max_turns=resolve("max_turns", spec, record.plan, self.settings, agent.max_turns),
            time_limit_s=resolve("time_limit_s", spec, record.plan, self.settings),
            stage=record.stage,
            prompt=self._prompt(record, stage.prompt if stage and stage.prompt else spec.prompt),
            gate=(stage.gate if stage and stage.gate else spec.gate),
            script=stage.script if stage else spec.script,
            reviewer=reviewer,
            # kept for a later stage, to deliver, or for an interactive task's next turn
            keep_workspace=not last_stage or isinstance(spec.repo, RepoSpec) or spec.interactive,
            messages=list(record.inbox),
            decision=self._decision(record),
            tool_result=self._tool_result(record),
            closing=record.closing,
            max_tokens=tokens_left,
            max_cost_usd=cost_left,
            secrets=secrets,
        )
        event = Event(
            task_id=task_id,
            type=EventType.task_assigned,
            session_id=assignment.session_id,
            attempt=attempt,
            worker=worker,
            payload={
                "time_limit_s": assignment.time_limit_s,
                "max_turns": assignment.max_turns,
                "agent": agent.name,
                "stage": record.stage,
                "pool": pool.name,
                **self._versions_of(record, agent, environment),
            },
        )
        return assignment, event

    def _secrets(self, *specs: AgentSpec | EnvironmentSpec | None) -> dict[str, SecretStr]:
        """The values of the secrets a session of these specs is given, read now."""
        names = needed_secrets(*specs)
        if not names:
            return {}
        if self.vault is None:
            raise UnknownSecret(f"no vault for the secrets {', '.join(sorted(names))}")
        return self.vault.values(names)

    @staticmethod
    def _versions_of(
        record: TaskRecord, agent: AgentSpec, environment: EnvironmentSpec
    ) -> dict[str, int]:
        """The pinned versions a session runs, for its ``task.assigned`` event."""
        found = {
            "agent_version": record.versions.get("agent", {}).get(agent.name),
            "environment_version": record.versions.get("environment", {}).get(environment.name),
        }
        return {k: v for k, v in found.items() if v is not None}

    @staticmethod
    def _decision(record: TaskRecord) -> dict | None:
        pending = record.pending_approval
        if pending and pending.get("decision"):
            return {"call_id": pending["call_id"], **pending["decision"]}
        return None

    @staticmethod
    def _tool_result(record: TaskRecord) -> dict | None:
        waiting = record.pending_custom_tool
        if waiting and waiting.get("result"):
            return {"call_id": waiting["call_id"], **waiting["result"]}
        return None

    @staticmethod
    def _prompt(record: TaskRecord, base: str) -> str:
        if not record.feedback:
            return base
        notes = "\n".join(f"- {f}" for f in record.feedback[-5:])
        return f"{base}\n\n## Feedback on earlier work\n{notes}"

    def delivery_due(self, result: SessionResult) -> bool:
        """Does this result end its task in success, on a git repository? Then the result is
        delivered (pushed to the task's branch) before :meth:`conclude` decides."""
        record = self.tasks.get(result.task_id)
        if record is None or record.state != TaskState.running:
            return False
        spec, outcome = record.spec, result.outcome
        return (
            isinstance(spec.repo, RepoSpec)
            and record.session_id == result.session_id
            and result.status == "succeeded"
            and (outcome is None or outcome.status == "finished")
            and record.stage >= len(spec.stages)
            and not spec.require_approval
        )

    @staticmethod
    def delivered(delivery: Delivery | None, summary: str, common: dict) -> list[Event]:
        """The events that end a task in success: ``task.delivered`` (when a commit was
        pushed or found there), then ``task.succeeded``; or ``task.needs_human`` with git's
        error when the push was refused (the workspace is kept)."""
        if delivery is not None and delivery.refused:
            payload = {"reason": f"delivery refused: {delivery.error}", "branch": delivery.branch}
            return [Event(type=EventType.task_needs_human, payload=payload, **common)]
        events = []
        if delivery is not None and delivery.commit:
            events.append(
                Event(type=EventType.task_delivered, payload=delivery.payload(), **common)
            )
        return [
            *events,
            Event(type=EventType.task_succeeded, payload={"summary": summary}, **common),
        ]

    def conclude(
        self, result: SessionResult, now: float | None = None, delivery: Delivery | None = None
    ) -> list[Event]:
        """Decide what follows a session: success, next stage, review, parking or retry.
        ``delivery``: what pushing the result did, when :meth:`delivery_due`."""
        now = time.time() if now is None else now
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
        outcome = result.outcome
        events = self._followups(record, result) + self._resume_point(result, common)
        if outcome is not None and outcome.status == "budget":  # not retried: it would not fit
            spent = self._budget_spent(record) or outcome.reason
            return [*events, *self._give_up(record, f"budget spent: {spent}", common)]
        if outcome is not None and outcome.status in ("parked", "interrupted"):
            state = TaskState.paused
            if outcome.status == "parked":
                for_client = bool((outcome.state or {}).get("pending_custom_tool"))
                state = (
                    TaskState.awaiting_tool_result if for_client else TaskState.awaiting_approval
                )
            payload = {"state": state.value, "reason": outcome.reason}
            return [*events, Event(type=EventType.task_parked, payload=payload, **common)]
        if outcome is not None and outcome.status == "idle":
            return [*events, *self._went_idle(record, outcome.summary, common)]
        if result.status == "succeeded":
            spec = record.spec
            if outcome is not None and outcome.status == "handoff":
                target = outcome.handoff_to or ""
                if target not in self.config.agents:
                    result = result.model_copy(
                        update={
                            "status": "failed",
                            "reason": f"handoff to unknown agent {target!r}",
                        }
                    )
                    return [*events, *self._retry_or_give_up(record, result, common, now)]
                payload = {
                    "from_agent": self.agent_name(record),
                    "to_agent": target,
                    "note": outcome.handoff_note,
                    "stage": record.stage,
                }
                if target not in record.versions.get("agent", {}):
                    payload["to_version"] = self.registry.current_version("agent", target)
                return [*events, Event(type=EventType.handoff, payload=payload, **common)]
            if record.stage < len(spec.stages):
                nxt = spec.stages[record.stage]
                payload = {
                    "from_agent": self.agent_name(record),
                    "to_agent": nxt.agent,
                    "note": outcome.summary if outcome else "",
                    "stage": record.stage + 1,
                }
                return [*events, Event(type=EventType.handoff, payload=payload, **common)]
            summary = outcome.summary if outcome else ""
            if spec.require_approval:
                payload = {"summary": summary}
                return [
                    *events,
                    Event(type=EventType.task_awaiting_review, payload=payload, **common),
                ]
            return [*events, *self.delivered(delivery, summary, common)]
        return [*events, *self._retry_or_give_up(record, result, common, now)]

    @staticmethod
    def _resume_point(result: SessionResult, common: dict) -> list[Event]:
        """An interactive session that ended other than idle or parked: where it stopped
        becomes the task's resume point (a failed turn goes on from there, told why), as a
        ``session.checkpointed`` to which the dispatcher adds the refs of what it stored."""
        outcome = result.outcome
        if (
            not result.interactive
            or outcome is None
            or outcome.state is None
            or outcome.status in ("idle", "parked", "interrupted")
            or result.workspace is None
        ):
            return []
        payload = {"turns": outcome.turns, "ended": outcome.status}
        return [Event(type=EventType.session_checkpointed, payload=payload, **common)]

    @staticmethod
    def _went_idle(record: TaskRecord, summary: str, common: dict) -> list[Event]:
        """An interactive task's turn ended: ``session.idle`` (the dispatcher adds the refs
        of the saved history and workspace); then at once the next session when the task was
        closed meanwhile (its gate runs) or a message reached the session too late."""
        idle = Event(type=EventType.session_idle, payload={"summary": summary}, **common)
        if not (record.closing or record.unread):
            return [idle]
        why = "closed: its gate runs" if record.closing else "a message came as the turn ended"
        payload = {"reason": why, "next_attempt": common["attempt"], "resume": True}
        return [idle, Event(type=EventType.task_retried, payload=payload, **common)]

    def _followups(self, record: TaskRecord, result: SessionResult) -> list[Event]:
        """Follow-up tasks an agent asked for: submitted, linked to their parent."""
        events: list[Event] = []
        requests = result.outcome.followups if result.outcome else []
        for n, request in enumerate(requests, start=len(record.children) + 1):
            fields = {k: v for k, v in request.items() if k in TaskSpec.model_fields}
            fields.setdefault("id", f"{record.id}.f{n}")
            fields["parent"] = record.id
            try:
                spec = TaskSpec.model_validate(fields)
                inline = [x for x in (spec.agent, spec.environment) if not isinstance(x, str)]
                if needed_secrets(*inline):  # an agent asks: it gets no secret that way
                    raise TaskRejected(spec.id, "environment", "a follow-up may not name secrets")
                child = self.submit(spec)
            except (TaskRejected, ValidationError) as exc:
                payload = {"error": _refusal(exc), "request": request}
                events.append(
                    Event(task_id=record.id, type=EventType.task_followup, payload=payload)
                )
                continue
            payload = {"child": fields["id"], "prompt": fields.get("prompt", "")}
            events.append(Event(task_id=record.id, type=EventType.task_followup, payload=payload))
            events.append(child)
        return events

    def _retry_or_give_up(
        self, record: TaskRecord, result: SessionResult, common: dict, now: float
    ) -> list[Event]:
        spent = self._budget_spent(record)
        if spent:  # another attempt would stop at once
            reason = f"budget spent: {spent} (last attempt: {result.reason})"
            return self._give_up(record, reason, common)
        spec = record.spec
        max_attempts = resolve("max_attempts", spec, record.plan, self.settings)
        if result.attempt < max_attempts:
            delay = min(
                self.settings.retry_backoff_max_s,
                self.settings.retry_backoff_s * 2 ** (result.attempt - 1),
            )
            payload = {
                "reason": result.reason,
                "next_attempt": result.attempt + 1,
                "not_before": now + delay,
                "backoff_s": delay,
                "feedback": f"Attempt {result.attempt} failed: {result.reason}"
                + (f"\n{result.feedback}" if result.feedback else ""),
            }
            if spec.interactive:  # the conversation goes on from its latest resume point
                payload["resume"] = True
            return [Event(type=EventType.task_retried, payload=payload, **common)]
        return self._give_up(record, f"{result.reason} (after {result.attempt} attempts)", common)

    @staticmethod
    def _budget_left(record: TaskRecord, agent: AgentSpec) -> tuple[int | None, float | None]:
        """What is left of the task's token and cost budgets: the limits of the agent running
        it (``max_tokens``, ``max_cost_usd``) less what all the task's sessions spent."""
        tokens, cost = agent.max_tokens, agent.max_cost_usd
        return (
            None if tokens is None else max(0, tokens - record.spent_tokens),
            None if cost is None else max(0.0, cost - record.spent_cost_usd),
        )

    def _budget_spent(self, record: TaskRecord) -> str:
        """Why the task's budget is spent, or empty."""
        try:
            agent = self.resolve_agent(record)
        except UnknownSpec:  # the next assignment fails it with the reason
            return ""
        if agent.max_tokens is not None and record.spent_tokens >= agent.max_tokens:
            return f"{record.spent_tokens} of {agent.max_tokens} tokens used"
        if agent.max_cost_usd is not None and record.spent_cost_usd >= agent.max_cost_usd:
            return f"${record.spent_cost_usd:.4f} of ${agent.max_cost_usd:g} used"
        return ""

    def _give_up(self, record: TaskRecord, reason: str, common: dict) -> list[Event]:
        if self.settings.exhausted_state == "failed":
            payload = {"reason": reason, "attempts": record.attempts}
            return [Event(type=EventType.task_failed, payload=payload, **common)]
        brief = list(record.history)
        payload = {"reason": reason, "attempts": record.attempts, "brief": brief}
        return [Event(type=EventType.task_needs_human, payload=payload, **common)]

    def review(
        self, task_id: str, approve: bool, message: str = "", delivery: Delivery | None = None
    ) -> list[Event]:
        """A human's verdict on a result awaiting review (``delivery``: what pushing an
        approved result of a task on a git repository did)."""
        record = self.tasks.get(task_id)
        if record is None or record.state != TaskState.awaiting_review:
            return []
        common = {"task_id": task_id, "session_id": record.session_id, "attempt": record.attempts}
        decided = Event(
            type=EventType.review_decided,
            payload={"approve": approve, "message": message},
            **common,
        )
        if approve:
            ended = self.delivered(delivery, record.summary or message, common)
            ended[-1].payload.setdefault("reviewed_by", "human")
            return [decided, *ended]
        result = SessionResult(
            task_id=task_id,
            session_id=record.session_id or "",
            attempt=record.attempts,
            worker=record.worker or "",
            status="failed",
            reason="rejected in review",
            feedback=f"A human reviewer rejected the result: {message}",
        )
        return [decided, *self._retry_or_give_up(record, result, common, time.time())]

    def unpark(self, task_id: str) -> list[Event]:
        """Put a parked, paused or idle task back in the queue (its decision, tool result or
        message arrived, or it was closed)."""
        record = self.tasks.get(task_id)
        if record is None or record.state not in RESUMES:
            return []
        payload = {"reason": "resumed", "next_attempt": record.attempts + 1, "resume": True}
        return [
            Event(
                task_id=task_id,
                type=EventType.task_retried,
                session_id=record.session_id,
                payload=payload,
            )
        ]

    def close(self, task_id: str) -> list[Event]:
        """A client closes an interactive task: ``task.closed``, and an idle one is queued
        to run its gate now. None for a task that is not interactive, ended or closed."""
        record = self.tasks.get(task_id)
        if record is None or not record.spec.interactive or record.closing:
            return []
        if record.state.terminal:
            return []
        closed = Event(task_id=task_id, type=EventType.task_closed, session_id=record.session_id)
        return [closed, *self.unpark(task_id)] if record.state == TaskState.idle else [closed]

    def expire(self, task_id: str, reason: str) -> list[Event]:
        """An idle task nobody wrote to for too long ends ``expired`` (see the watchdog)."""
        record = self.tasks.get(task_id)
        if record is None or record.state != TaskState.idle:
            return []
        payload = {"reason": reason, "summary": record.summary}
        return [Event(task_id=task_id, type=EventType.task_expired, payload=payload)]

    def worker_lost(self, worker: str, task_id: str, reason: str) -> list[Event]:
        """A worker died mid-task: the attempt does not count against the task."""
        record = self.tasks.get(task_id)
        if record is None or record.state != TaskState.running or record.worker != worker:
            return []
        common = {"task_id": task_id, "session_id": record.session_id, "worker": worker}
        events = [Event(type=EventType.worker_lost, payload={"reason": reason}, **common)]
        if record.lost_workers + 1 >= MAX_WORKER_LOSSES:
            reason = f"lost {record.lost_workers + 1} workers: {reason}"
            return events + self._give_up(record, reason, common)
        # The attempt number is reused (the crash was not the agent's fault) and the session
        # resumes from its last checkpoint, if it made one.
        payload = {
            "reason": f"worker lost: {reason}",
            "next_attempt": record.attempts,
            "resume": True,
        }
        events.append(Event(type=EventType.task_retried, payload=payload, **common))
        return events

    def cancel(self, task_id: str, reason: str = "cancelled by user") -> list[Event]:
        record = self.tasks.get(task_id)
        if record is None or record.state.terminal:
            return []
        return [Event(task_id=task_id, type=EventType.task_cancelled, payload={"reason": reason})]

    def update_prompt(self, task_id: str, prompt: str, reason: str = "") -> list[Event]:
        """Replace the prompt of a task that has not started yet (queued, no attempt made);
        refused (no event) once it started, ended, or for a blank or too long prompt."""
        record = self.tasks.get(task_id)
        if record is None or record.state != TaskState.queued or record.attempts > 0:
            return []
        if record.stage > 0 or not prompt.strip() or len(prompt) > self.settings.max_prompt_chars:
            return []
        payload = {"prompt": prompt, "reason": reason}
        return [Event(task_id=task_id, type=EventType.task_updated, payload=payload)]

    @staticmethod
    def source_error(source: str, error: str, failures: int, retry_in_s: float) -> Event:
        """A watcher could not reach ``source``: a fleet-level event under ``source:<name>``."""
        payload = {
            "source": source,
            "error": error,
            "failures": failures,
            "retry_in_s": round(retry_in_s, 2),
        }
        return Event(task_id=source_task_id(source), type=EventType.source_error, payload=payload)

    def next_wakeup(self, now: float) -> float | None:
        """The earliest future time a queued task becomes eligible (end of a backoff)."""
        times = [
            r.not_before
            for r in self.tasks.built()  # a task held as submitted has no backoff
            if r.state == TaskState.queued and r.not_before > now
        ]
        return min(times, default=None)

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys((s.value for s in TaskState), 0)
        counts[TaskState.queued.value] = self.tasks.untouched
        for record in self.tasks.built():
            counts[record.state.value] += 1
        return counts
