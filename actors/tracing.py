"""One OpenTelemetry trace per task, built from the events the journal records.

Nothing is traced where it happens: every step of a task is already an event that reaches
the supervisor's journal (the workers' in batches), with its time, task, session, attempt,
turn and tool call. :class:`TaskTracer` turns that stream into spans with explicit start and
end times and hands each finished one, as a plain :class:`SpanData`, to its sink: in the
fleet, a batch shipped to the supervisor's trace exporter actor
(:mod:`actors.trace_exporter`), which makes SDK spans of them (:func:`to_readable`) for the
exporters the standard ``OTEL_*`` variables name, so that encoding and sending spans never
runs in the supervisor's process::

    task                        task.submitted .. its terminal event
    ├── session                 task.assigned .. session.ended (one per attempt; the time it
    │   │                       waited in the queue before is its fleet.queued_ms)
    │   ├── model turn          the model call (usage: ts - duration_ms) .. its last tool call
    │   │   └── tool call       agent.tool_use .. agent.tool_result
    │   ├── gate                gate.passed / gate.failed (ts - duration_ms .. ts)
    │   └── review              the reviewer agent: its model turns and tool calls
    ├── approval                approval.requested .. approval.decided
    └── parked                  task.parked .. the task queued again (resume) or ended; also
        / awaiting review       task.awaiting_review .. review.decided

Retries, handoffs, deliveries, follow-ups, steering messages and checkpoints are span events
on the task's or the session's span. ``OTEL_TRACES_SAMPLER`` (``always_on``, ``always_off``,
``traceidratio`` with ``OTEL_TRACES_SAMPLER_ARG``, and their ``parentbased_`` forms) picks
the tasks traced, by trace id.

**One task, one trace, without passing a context across Ray calls**: the trace id is derived
from the fleet's name and the task id (:func:`trace_id_of`) and the task span's id from the
trace id (:func:`task_span_id`; the other span ids are random), so every span of a task
lands in the same trace whichever worker ran it, and a supervisor that restarts (and
replays the log) goes on with the same trace and the same task span.

Attributes never carry secret values; prompts, tool arguments, the gate command and the
messages of people only with ``trace_prompts`` (truncated). Plain: no Ray.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any, NamedTuple

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event as SDKEvent
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from core.errors import InputError
from core.events import TERMINAL_EVENTS, Event, EventType
from core.records import TaskRecord
from core.settings import FleetSettings, host_variable
from core.specs import TaskState

log = logging.getLogger("fleet.tracing")

SCOPE = InstrumentationScope("agent-fleet")
TEXT_LIMIT = 4000
"""Characters of a prompt or message kept in an attribute (with ``trace_prompts``)."""
ARGS_LIMIT = 1000
"""Characters of a tool call's arguments kept (with ``trace_prompts``)."""
SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class TelemetryError(InputError):
    """A standard ``OTEL_*`` variable asks for an exporter or sampler this fleet cannot make
    (the message names the variable)."""


SpanEvent = tuple[str, int, dict[str, Any]]
"""A span event: its name, time (ns) and attributes."""


class SpanData(NamedTuple):
    """A finished span, plain (cheap to make and to pickle); :func:`to_readable` makes the
    SDK's span of it."""

    trace_id: int
    span_id: int
    parent_id: int | None
    name: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    events: list[SpanEvent]
    status: int
    """``StatusCode`` value: 0 unset, 1 ok, 2 error."""
    description: str | None = None


SpanSink = Callable[[SpanData], None]
_ids = random.Random()


def to_readable(span: SpanData, resource: Resource) -> ReadableSpan:
    """The SDK's span of ``span``, for span processors and exporters."""

    def context(span_id: int) -> SpanContext:
        return SpanContext(span.trace_id, span_id, is_remote=False, trace_flags=SAMPLED)

    code = StatusCode(span.status)
    return ReadableSpan(
        span.name,
        context=context(span.span_id),
        parent=context(span.parent_id) if span.parent_id is not None else None,
        resource=resource,
        attributes=MappingProxyType(  # read-only, as the SDK's own spans' (lists as tuples)
            {k: tuple(v) if isinstance(v, list) else v for k, v in span.attributes.items()}
        ),
        events=[SDKEvent(name, attributes, ns) for name, ns, attributes in span.events],
        kind=SpanKind.INTERNAL,
        status=Status(code, span.description if code == StatusCode.ERROR else None),
        start_time=span.start_ns,
        end_time=span.end_ns,
        instrumentation_scope=SCOPE,
    )


class ReadableSink:
    """A :data:`SpanSink` that hands SDK spans to span processors (the exporter actor's;
    a test's in-memory exporter). A processor that fails is logged, never raised."""

    def __init__(self, processors: Iterable[Any], resource: Resource | None = None) -> None:
        self.processors = list(processors)
        self.resource = resource or Resource.create({"service.name": "agent-fleet"})

    def __call__(self, span: SpanData) -> None:
        readable = to_readable(span, self.resource)
        for processor in self.processors:
            try:
                processor.on_end(readable)
            except Exception:  # an exporter's trouble never stops the feed
                log.exception("a span processor failed")


def trace_id_of(fleet: str, task_id: str) -> int:
    """The trace id of a task: the same in every process and every life of the supervisor
    (``format(trace_id_of(...), "032x")`` is how trace viewers show it)."""
    digest = hashlib.sha256(f"{fleet}\0{task_id}".encode()).digest()
    return int.from_bytes(digest[:16], "big") or 1


def task_span_id(trace_id: int) -> int:
    """The span id of a task's own span (derived: a restarted supervisor reopens it)."""
    return int.from_bytes(hashlib.sha256(b"task%d" % trace_id).digest()[:8], "big") or 1


def _ns(ts: datetime) -> int:
    """An event's time in nanoseconds since the epoch (exact to the microsecond)."""
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return (ts - _EPOCH) // timedelta(microseconds=1) * 1000


def _clip(text: Any, limit: int) -> str:
    text = str(text)
    return text if len(text) <= limit else text[:limit] + "…"


@dataclass
class OpenSpan:
    """A span that has started and not ended yet."""

    name: str
    span_id: int
    parent_id: int | None
    start_ns: int
    attributes: dict[str, Any] = field(default_factory=dict)
    events: list[SpanEvent] = field(default_factory=list)
    end_ns: int = 0
    """The latest time something inside it ended (a model turn ends with its last tool call)."""

    def extend(self, ns: int) -> None:
        self.end_ns = max(self.end_ns, ns)


@dataclass
class LoopSpans:
    """An agent loop inside a session (the agent's, or the reviewer's): its open model turn
    and the tool calls under way."""

    parent: OpenSpan
    turn: OpenSpan | None = None
    tools: dict[str, OpenSpan] = field(default_factory=dict)


@dataclass
class SessionSpans:
    """A session's span, its agent's loop, and its review (the reviewer agent) once begun."""

    span: OpenSpan
    agent: LoopSpans
    review: OpenSpan | None = None
    reviewer: LoopSpans | None = None


@dataclass
class TaskSpans:
    """What is open of one task's trace: its span, the wait on a person (parked, awaiting
    review), its running session and pending approvals."""

    trace_id: int
    span: OpenSpan
    queued_ns: int = 0
    """When it last entered the queue (its next session's ``fleet.queued_ms``)."""
    wait: OpenSpan | None = None
    sessions: dict[str, SessionSpans] = field(default_factory=dict)
    approvals: dict[str, OpenSpan] = field(default_factory=dict)


class TaskTracer:
    """Builds each task's trace from its events (:meth:`observe`, in log order) and gives
    every span to ``sink`` as it ends. Spans that never end (a session cut off by a crash
    of the supervisor) are never exported. ``ratio``: the share of tasks traced (chosen by
    trace id, as the SDK's ``traceidratio`` sampler does)."""

    def __init__(
        self, sink: SpanSink, fleet: str, trace_prompts: bool = False, ratio: float = 1.0
    ) -> None:
        self.sink = sink
        self.fleet = fleet
        self.trace_prompts = trace_prompts
        self.bound = round(max(0.0, min(1.0, ratio)) * (1 << 64))
        self.tasks: dict[str, TaskSpans] = {}
        self._handlers: dict[EventType, Callable[[TaskSpans, Event], None]] = {
            EventType.task_assigned: self._assigned,
            EventType.session_started: self._session_started,
            EventType.usage: self._usage,
            EventType.agent_tool_use: self._tool_use,
            EventType.agent_tool_result: self._tool_result,
            EventType.agent_message: self._message,
            EventType.approval_requested: self._approval_requested,
            EventType.approval_decided: self._approval_decided,
            EventType.gate_passed: self._gate,
            EventType.gate_failed: self._gate,
            EventType.user_message: self._user_message,
            EventType.session_checkpointed: self._checkpointed,
            EventType.session_ended: self._session_ended,
            EventType.worker_lost: self._worker_lost,
            EventType.task_retried: self._retried,
            EventType.handoff: self._handoff,
            EventType.task_parked: self._parked,
            EventType.task_awaiting_review: self._awaiting_review,
            EventType.review_decided: self._review_decided,
            EventType.task_delivered: self._delivered,
            EventType.task_followup: self._followup,
            EventType.task_updated: self._updated,
        }

    # -- the feed ----------------------------------------------------------------------
    def observe(self, events: Iterable[Event]) -> None:
        for event in events:
            if event.type == EventType.task_submitted:
                self._submitted(event)
                continue
            task = self.tasks.get(event.task_id)
            if task is None:
                continue  # a source's pseudo task, or one this tracer never saw begin
            if event.type in TERMINAL_EVENTS:
                self._ended(task, event)
                continue
            handler = self._handlers.get(event.type)
            if handler is not None:
                handler(task, event)

    def prime(self, records: Iterable[TaskRecord]) -> None:
        """After a restart: reopen the spans of unfinished tasks (their trace and task span
        ids are derived, so what follows joins the spans the last life exported)."""
        for record in records:
            if record.state.terminal or record.id in self.tasks:
                continue
            submitted = _ns(record.submitted_at) if record.submitted_at else 0
            task = self._open_task(record.id, submitted, record.spec.model_dump(mode="json"))
            if task is None:
                continue
            task.span.attributes["fleet.batch"] = record.batch or ""
            task.queued_ns = _ns(record.last_event_at) if record.last_event_at else submitted
            name = {
                TaskState.awaiting_approval: "parked",
                TaskState.paused: "parked",
                TaskState.awaiting_review: "awaiting review",
            }.get(record.state)
            if name is not None:
                task.wait = self._child(task.span, name, task.queued_ns)

    # -- spans -------------------------------------------------------------------------
    def _open_task(self, task_id: str, start_ns: int, spec: Mapping[str, Any]) -> TaskSpans | None:
        """The task's spans, or None when the sampler leaves the task out."""
        trace_id = trace_id_of(self.fleet, task_id)
        if trace_id & 0xFFFF_FFFF_FFFF_FFFF >= self.bound:
            return None
        attributes: dict[str, Any] = {
            "fleet.name": self.fleet,
            "fleet.task_id": task_id,
            "fleet.labels": [str(label) for label in spec.get("labels") or []],
            "fleet.priority": int(spec.get("priority") or 0),
        }
        agent = spec.get("agent")
        if isinstance(agent, str):
            attributes["fleet.agent"] = agent
        for key in ("parent", "source", "environment"):
            if isinstance(spec.get(key), str):
                attributes[f"fleet.{key}"] = spec[key]
        if self.trace_prompts:
            attributes["fleet.prompt"] = _clip(spec.get("prompt", ""), TEXT_LIMIT)
        span = OpenSpan("task", task_span_id(trace_id), None, start_ns, attributes)
        task = TaskSpans(trace_id, span)
        self.tasks[task_id] = task
        return task

    @staticmethod
    def _child(parent: OpenSpan, name: str, start_ns: int) -> OpenSpan:
        span_id = _ids.getrandbits(64) or 1
        return OpenSpan(name, span_id, parent.span_id, start_ns, end_ns=start_ns)

    def _end(
        self,
        task: TaskSpans,
        span: OpenSpan,
        end_ns: int,
        error: str | None = None,
        ok: bool = False,
    ) -> None:
        """Finish ``span`` (at ``end_ns`` or the latest thing inside it) and hand it on."""
        status = (
            StatusCode.ERROR if error is not None else StatusCode.OK if ok else StatusCode.UNSET
        )
        finished = SpanData(
            task.trace_id,
            span.span_id,
            span.parent_id,
            span.name,
            span.start_ns,
            max(end_ns, span.end_ns, span.start_ns),
            _present(span.attributes),
            span.events,
            status.value,
            _clip(error, 500) if error is not None else None,
        )
        try:
            self.sink(finished)
        except Exception:  # an exporter's trouble never stops the journal
            log.exception("the span sink failed")

    def _end_wait(self, task: TaskSpans, ns: int, **attributes: Any) -> None:
        if task.wait is not None:
            task.wait.attributes.update(attributes)
            self._end(task, task.wait, ns)
            task.wait = None

    def _wait(self, task: TaskSpans, event: Event, name: str, **attributes: Any) -> None:
        self._end_wait(task, _ns(event.ts))
        task.wait = self._child(task.span, name, _ns(event.ts))
        task.wait.attributes.update(attributes)

    def _queued(self, task: TaskSpans, event: Event) -> None:
        """The task is back in the queue: a wait (parked, review) ends here."""
        task.queued_ns = _ns(event.ts)
        self._end_wait(task, task.queued_ns)

    def _end_loop(self, task: TaskSpans, loop: LoopSpans, ns: int, why: str) -> None:
        for span in loop.tools.values():  # cut short (parked, stopped, written off)
            span.attributes["fleet.unfinished"] = why
            self._end(task, span, ns)
        loop.tools.clear()
        if loop.turn is not None:
            self._end(task, loop.turn, loop.turn.end_ns)
            loop.turn = None

    def _end_session(
        self,
        task: TaskSpans,
        session_id: str,
        ns: int,
        error: str | None,
        why: str,
        cut: bool = False,
    ) -> None:
        """End a session's spans; ``cut``: the task ended under it (status unset)."""
        session = task.sessions.pop(session_id, None)
        if session is None:
            return
        self._end_loop(task, session.agent, ns, why)
        if session.reviewer is not None:
            self._end_loop(task, session.reviewer, ns, why)
        if session.review is not None:
            session.review.attributes["fleet.unfinished"] = why
            self._end(task, session.review, ns)
        if cut:
            session.span.attributes["fleet.unfinished"] = why
        self._end(task, session.span, ns, error=error, ok=error is None and not cut)

    def _session(self, task: TaskSpans, event: Event) -> SessionSpans | None:
        if event.session_id is None:
            return None
        return task.sessions.get(event.session_id)

    def _loop(self, task: TaskSpans, event: Event, start_ns: int) -> LoopSpans | None:
        """The loop an agent event belongs to: the reviewer's (payload role=reviewer, inside
        a review span opened by its first event) or the session's agent's."""
        session = self._session(task, event)
        if session is None:
            return None
        if event.payload.get("role") != "reviewer":
            return session.agent
        if session.review is None:
            review = self._child(session.span, "review", start_ns)
            review.attributes["fleet.reviewer"] = str(event.payload.get("agent", ""))
            session.review = review
            session.reviewer = LoopSpans(review)
        assert session.reviewer is not None
        return session.reviewer

    # -- handlers ----------------------------------------------------------------------
    def _submitted(self, event: Event) -> None:
        if event.task_id in self.tasks:
            return
        spec = event.payload.get("task") or {}
        task = self._open_task(event.task_id, _ns(event.ts), spec)
        if task is not None:
            task.span.attributes["fleet.batch"] = str(event.payload.get("batch") or "")
            task.queued_ns = _ns(event.ts)

    def _assigned(self, task: TaskSpans, event: Event) -> None:
        ns = _ns(event.ts)
        self._end_wait(task, ns)
        if event.session_id is None or event.session_id in task.sessions:
            return
        p = event.payload
        span = self._child(task.span, "session", ns)
        span.attributes.update(
            {
                "fleet.task_id": event.task_id,
                "fleet.session_id": event.session_id,
                "fleet.attempt": event.attempt,
                "fleet.worker": event.worker,
                "fleet.agent": p.get("agent"),
                "fleet.pool": p.get("pool"),
                "fleet.stage": p.get("stage"),
                "fleet.time_limit_s": p.get("time_limit_s"),
                "fleet.queued_ms": (ns - task.queued_ns) / 1e6 if task.queued_ns else None,
                "fleet.max_turns": p.get("max_turns"),
            }
        )
        task.sessions[event.session_id] = SessionSpans(span, LoopSpans(span))

    def _session_started(self, task: TaskSpans, event: Event) -> None:
        session = self._session(task, event)
        if session is None:
            return
        p = event.payload
        session.span.attributes.update(
            {
                "fleet.agent": p.get("agent"),
                "gen_ai.request.model": p.get("model"),
                "fleet.environment": p.get("environment"),
                "fleet.sandbox_kind": p.get("sandbox_kind"),
                "fleet.resumed": bool(p.get("resumed")),
                "fleet.host": p.get("host"),
                "fleet.node_id": p.get("node_id"),
                "fleet.base_commit": p.get("base_commit"),
            }
        )

    def _usage(self, task: TaskSpans, event: Event) -> None:
        ns = _ns(event.ts)
        start = ns - int((event.duration_ms or 0.0) * 1_000_000)
        loop = self._loop(task, event, start)
        if loop is None:
            return
        if loop.turn is not None:
            self._end(task, loop.turn, loop.turn.end_ns)
        p = event.payload
        turn_no = p.get("turn")
        turn = self._child(loop.parent, "model turn", start)
        turn.extend(ns)
        turn.attributes.update(
            {
                "fleet.turn": turn_no,
                "gen_ai.request.model": p.get("model"),
                "gen_ai.usage.input_tokens": event.tokens_in,
                "gen_ai.usage.output_tokens": event.tokens_out,
                "fleet.cached_input_tokens": p.get("cached_input_tokens"),
                "fleet.cost_usd": event.cost_usd,
                "fleet.model_latency_ms": event.duration_ms,
            }
        )
        loop.turn = turn

    def _tool_use(self, task: TaskSpans, event: Event) -> None:
        ns = _ns(event.ts)
        loop = self._loop(task, event, ns)
        call_id = str(event.payload.get("call_id", ""))
        if loop is None or call_id in loop.tools:
            return
        parent = loop.turn or loop.parent
        span = self._child(parent, "tool call", ns)
        span.attributes.update(
            {
                "gen_ai.tool.name": event.tool,
                "gen_ai.tool.call.id": call_id,
                "fleet.turn": event.payload.get("turn"),
            }
        )
        if self.trace_prompts:
            span.attributes["fleet.tool.args"] = _clip(event.payload.get("args", ""), ARGS_LIMIT)
        loop.tools[call_id] = span

    def _tool_result(self, task: TaskSpans, event: Event) -> None:
        ns = _ns(event.ts)
        start = ns - int((event.duration_ms or 0.0) * 1_000_000)
        loop = self._loop(task, event, start)
        if loop is None:
            return
        p = event.payload
        call_id = str(p.get("call_id", ""))
        span = loop.tools.pop(call_id, None)
        if span is None:  # a call resumed in a later session (after its approval)
            parent = loop.turn or loop.parent
            span = self._child(parent, "tool call", start)
            span.attributes.update({"gen_ai.tool.name": event.tool, "gen_ai.tool.call.id": call_id})
        span.attributes.update(
            {
                "fleet.exit_code": event.exit_code,
                "fleet.is_error": bool(p.get("is_error")),
                "fleet.duration_ms": event.duration_ms,
                "fleet.denied": True if p.get("denied") else None,
            }
        )
        self._end(task, span, ns, error="tool error" if p.get("is_error") else None)
        if loop.turn is not None:
            loop.turn.extend(ns)

    def _message(self, task: TaskSpans, event: Event) -> None:
        p = event.payload
        if p.get("role") != "reviewer" or "verdict" not in p:
            return
        session = self._session(task, event)
        if session is None or session.review is None or session.reviewer is None:
            return
        ns = _ns(event.ts)
        self._end_loop(task, session.reviewer, ns, "review ended")
        session.review.attributes["fleet.verdict"] = str(p.get("verdict"))
        if self.trace_prompts:
            session.review.attributes["fleet.comments"] = _clip(p.get("comments", ""), TEXT_LIMIT)
        self._end(task, session.review, ns, ok=p.get("verdict") == "approve")
        session.review = session.reviewer = None

    def _approval_requested(self, task: TaskSpans, event: Event) -> None:
        call_id = str(event.payload.get("call_id", ""))
        if call_id in task.approvals:
            return
        span = self._child(task.span, "approval", _ns(event.ts))
        span.attributes.update(
            {
                "gen_ai.tool.name": event.tool,
                "gen_ai.tool.call.id": call_id,
                "fleet.session_id": event.session_id,
            }
        )
        task.approvals[call_id] = span

    def _approval_decided(self, task: TaskSpans, event: Event) -> None:
        p = event.payload
        span = task.approvals.pop(str(p.get("call_id", "")), None)
        if span is None:
            return
        span.attributes["fleet.allow"] = bool(p.get("allow"))
        if self.trace_prompts and p.get("message"):
            span.attributes["fleet.message"] = _clip(p["message"], TEXT_LIMIT)
        self._end(task, span, _ns(event.ts))

    def _gate(self, task: TaskSpans, event: Event) -> None:
        session = self._session(task, event)
        if session is None:
            return
        ns = _ns(event.ts)
        start = ns - int((event.duration_ms or 0.0) * 1_000_000)
        span = self._child(session.span, "gate", start)
        passed = event.type == EventType.gate_passed
        span.attributes.update({"fleet.passed": passed, "fleet.exit_code": event.exit_code})
        if self.trace_prompts:
            span.attributes["fleet.gate.command"] = _clip(
                event.payload.get("command", ""), ARGS_LIMIT
            )
        self._end(task, span, ns, error=None if passed else "gate failed", ok=passed)

    def _user_message(self, task: TaskSpans, event: Event) -> None:
        session = self._session(task, event)
        target = session.span if session is not None else task.span
        attributes = {}
        if self.trace_prompts:
            attributes["fleet.text"] = _clip(event.payload.get("text", ""), TEXT_LIMIT)
        target.events.append(("user message", _ns(event.ts), attributes))

    def _checkpointed(self, task: TaskSpans, event: Event) -> None:
        session = self._session(task, event)
        if session is not None:
            turns = event.payload.get("turns")
            attributes = {"fleet.turns": turns} if isinstance(turns, int) else {}
            session.span.events.append(("checkpoint", _ns(event.ts), attributes))

    def _session_ended(self, task: TaskSpans, event: Event) -> None:
        session = self._session(task, event)
        if session is None:
            return
        p = event.payload
        outcome = p.get("outcome") or p.get("status")
        session.span.attributes.update(
            {
                "fleet.status": p.get("status"),
                "fleet.outcome": outcome,
                "fleet.reason": _clip(p.get("reason") or "", 500) or None,
                "fleet.turns": p.get("turns"),
                "fleet.tool_calls": p.get("tool_calls"),
                "fleet.duration_ms": event.duration_ms,
                "fleet.sandbox_warm": p.get("sandbox_warm"),
            }
        )
        failed = p.get("status") == "failed" and outcome not in ("parked", "interrupted")
        error = (p.get("reason") or "failed") if failed else None
        self._end_session(task, str(event.session_id), _ns(event.ts), error, f"session {outcome}")

    def _worker_lost(self, task: TaskSpans, event: Event) -> None:
        why = f"worker lost: {event.payload.get('reason', '')}"
        self._end_session(task, str(event.session_id), _ns(event.ts), why, why)

    def _retried(self, task: TaskSpans, event: Event) -> None:
        ns = _ns(event.ts)
        p = event.payload
        for session_id in list(task.sessions):  # one a crash wrote off
            self._end_session(task, session_id, ns, "written off", "written off")
        attributes = {
            "fleet.reason": _clip(p.get("reason", ""), 500),
            "fleet.next_attempt": p.get("next_attempt"),
            "fleet.resume": bool(p.get("resume")),
        }
        if p.get("backoff_s") is not None:
            attributes["fleet.backoff_s"] = float(p["backoff_s"])
        task.span.events.append(("retried", ns, _present(attributes)))
        self._queued(task, event)

    def _handoff(self, task: TaskSpans, event: Event) -> None:
        p = event.payload
        attributes = {
            "fleet.from_agent": p.get("from_agent"),
            "fleet.to_agent": p.get("to_agent"),
            "fleet.stage": p.get("stage"),
        }
        if self.trace_prompts and p.get("note"):
            attributes["fleet.note"] = _clip(p["note"], TEXT_LIMIT)
        task.span.events.append(("handoff", _ns(event.ts), _present(attributes)))
        self._queued(task, event)

    def _parked(self, task: TaskSpans, event: Event) -> None:
        p = event.payload
        state = str(p.get("state", TaskState.awaiting_approval.value))
        self._wait(task, event, "parked", **{"fleet.state": state})

    def _awaiting_review(self, task: TaskSpans, event: Event) -> None:
        self._wait(task, event, "awaiting review")

    def _review_decided(self, task: TaskSpans, event: Event) -> None:
        p = event.payload
        attributes: dict[str, Any] = {"fleet.approve": bool(p.get("approve"))}
        if self.trace_prompts and p.get("message"):
            attributes["fleet.message"] = _clip(p["message"], TEXT_LIMIT)
        self._end_wait(task, _ns(event.ts), **attributes)

    def _delivered(self, task: TaskSpans, event: Event) -> None:
        p = event.payload
        keys = ("branch", "commit", "pr_url", "pr_error", "wip", "adopted")
        attributes = {f"fleet.{k}": p[k] for k in keys if isinstance(p.get(k), str | bool)}
        task.span.events.append(("delivered", _ns(event.ts), attributes))

    def _followup(self, task: TaskSpans, event: Event) -> None:
        child = event.payload.get("child")
        attributes = {"fleet.child": child} if child else {"fleet.refused": True}
        task.span.events.append(("follow-up", _ns(event.ts), attributes))

    def _updated(self, task: TaskSpans, event: Event) -> None:
        task.span.events.append(("prompt updated", _ns(event.ts), {}))

    def _ended(self, task: TaskSpans, event: Event) -> None:
        ns = _ns(event.ts)
        state = event.type.value.split(".", 1)[1]
        self._end_wait(task, ns)
        for session_id in list(task.sessions):
            self._end_session(task, session_id, ns, None, f"task {state}", cut=True)
        for span in task.approvals.values():
            self._end(task, span, ns)
        p = event.payload
        task.span.attributes.update(
            {
                "fleet.state": state,
                "fleet.reason": _clip(p.get("reason") or "", 500) or None,
                "fleet.attempts": p.get("attempts"),
            }
        )
        error = None
        if event.type in (EventType.task_failed, EventType.task_needs_human):
            error = p.get("reason") or state
        ok = event.type == EventType.task_succeeded
        self._end(task, task.span, ns, error=error, ok=ok)
        del self.tasks[event.task_id]


def _present(attributes: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in attributes.items() if v is not None}


# -- configuration from the standard OTEL_* variables -------------------------------------


def tracing_enabled(settings: FleetSettings) -> bool:
    """The ``tracing`` setting, or (unset) whether the standard variables ask for traces:
    ``OTEL_TRACES_EXPORTER`` other than ``none``, or an OTLP endpoint. ``OTEL_SDK_DISABLED``
    turns them off."""
    if (host_variable("OTEL_SDK_DISABLED") or "").strip().lower() == "true":
        return False
    if settings.tracing is not None:
        return settings.tracing
    exporter = (host_variable("OTEL_TRACES_EXPORTER") or "").strip().lower()
    if exporter:
        return exporter != "none"
    endpoints = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    return any(host_variable(name) for name in endpoints)


def fleet_resource(fleet: str) -> Resource:
    """The service the spans come from: ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES``
    when set, else ``agent-fleet``; plus ``fleet.name``."""
    resource = Resource.create({"fleet.name": fleet})
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "agent-fleet"}))
    return resource


def sampler_ratio() -> float:
    """The share of tasks traced, from ``OTEL_TRACES_SAMPLER`` (default ``always_on``) and
    ``OTEL_TRACES_SAMPLER_ARG``; a task's spans have no parent outside the fleet, so the
    ``parentbased_`` forms mean the same."""
    name = (host_variable("OTEL_TRACES_SAMPLER") or "parentbased_always_on").strip().lower()
    name = name.removeprefix("parentbased_")
    if name == "always_on":
        return 1.0
    if name == "always_off":
        return 0.0
    if name == "traceidratio":
        arg = host_variable("OTEL_TRACES_SAMPLER_ARG") or "1.0"
        try:
            ratio = float(arg)
        except ValueError:
            raise TelemetryError(f"OTEL_TRACES_SAMPLER_ARG: {arg!r} is not a number") from None
        return max(0.0, min(1.0, ratio))
    raise TelemetryError(
        f"OTEL_TRACES_SAMPLER: {name!r} is not supported (always_on, always_off, "
        "traceidratio, or their parentbased_ forms)"
    )


def exporter_plan() -> list[str]:
    """What ``span_processors`` will make, checked now (where the fleet starts): ``otlp``
    with its protocol, ``console``. Raises TelemetryError on names or protocols it cannot
    serve."""
    plan: list[str] = []
    names = (host_variable("OTEL_TRACES_EXPORTER") or "otlp").lower().split(",")
    for name in (n.strip() for n in names):
        if name in ("", "none"):
            continue
        if name == "console":
            plan.append("console")
        elif name == "otlp":
            protocol = (
                host_variable("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or host_variable("OTEL_EXPORTER_OTLP_PROTOCOL")
                or "http/protobuf"
            ).strip()
            if protocol not in ("http/protobuf", "grpc"):
                raise TelemetryError(
                    f"OTEL_EXPORTER_OTLP_PROTOCOL: {protocol!r} is not supported "
                    "(http/protobuf or grpc)"
                )
            if protocol == "grpc":
                try:
                    import opentelemetry.exporter.otlp.proto.grpc.trace_exporter  # noqa: F401
                except ImportError:
                    raise TelemetryError(
                        "OTEL_EXPORTER_OTLP_PROTOCOL=grpc needs the package "
                        "opentelemetry-exporter-otlp-proto-grpc (or use http/protobuf)"
                    ) from None
            plan.append(f"otlp {protocol}")
        else:
            raise TelemetryError(
                f"OTEL_TRACES_EXPORTER: unknown exporter {name!r} (otlp, console or none)"
            )
    return plan


def span_processors() -> list[Any]:
    """Batch span processors for the exporters ``OTEL_TRACES_EXPORTER`` names (default
    ``otlp``; also ``console``, ``none``; see :func:`exporter_plan`). The exporters and
    processors read their other ``OTEL_*`` variables themselves (endpoint, headers, timeout,
    compression, ``OTEL_BSP_*``)."""
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    processors: list[Any] = []
    for item in exporter_plan():
        if item == "console":
            processors.append(BatchSpanProcessor(ConsoleSpanExporter()))
        elif item == "otlp grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # type: ignore[import-not-found]
                OTLPSpanExporter as GrpcSpanExporter,
            )

            processors.append(BatchSpanProcessor(GrpcSpanExporter()))
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            processors.append(BatchSpanProcessor(OTLPSpanExporter()))
    return processors


class SpanBatches:
    """A :data:`SpanSink` that gathers finished spans and sends them in batches (``send``:
    the call to the trace exporter actor): at ``max_batch`` spans, and at each
    :meth:`flush` (the supervisor's watch loop calls it every second)."""

    def __init__(self, send: Callable[[list[SpanData]], None], max_batch: int = 512) -> None:
        self.send = send
        self.max_batch = max_batch
        self.pending: list[SpanData] = []

    def __call__(self, span: SpanData) -> None:
        self.pending.append(span)
        if len(self.pending) >= self.max_batch:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            batch, self.pending = self.pending, []
            self.send(batch)
