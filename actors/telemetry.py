"""The fleet's metrics and traces, fed by the events the journal records.

Every state change of the fleet is an event that passes through one place, the supervisor's
:class:`~actors.journal.Journal`; :class:`Telemetry` is handed each batch it logged. From
them :class:`FleetMetrics` counts and times (tasks by state and label, sessions, gates,
retries, sandboxes) and :class:`~actors.tracing.TaskTracer` builds one trace per task. The
gauges (queue depth and running sessions per pool, workers, tasks per state) are sampled
from the scheduler and the pool by the supervisor's watch loop instead.

Each model turn and tool call (:data:`CALL_METRICS`: their latency, tokens and cost) is
recorded by the worker whose session made it, :class:`CallMetrics` on the events it emits:
they are most of a running fleet's events, and a Ray metric point costs about 4 µs, which
the supervisor's one thread would pay for every one of them.

The metric objects are injected: :func:`ray_metrics` makes them with ``ray.util.metrics``
(Ray exports them at each node's metrics endpoint, for Prometheus and Ray's dashboard, with
no server of the fleet's own); tests pass recorders. Plain: no Ray import but that one.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from actors.pool import WorkerPool
from actors.scheduler import Scheduler
from actors.tasktable import TaskTable
from actors.tracing import (
    SpanBatches,
    SpanData,
    TaskTracer,
    exporter_plan,
    sampler_ratio,
    tracing_enabled,
)
from core.events import TERMINAL_EVENTS, Event, EventType
from core.records import TaskRecord
from core.settings import FleetSettings
from core.specs import TaskState

log = logging.getLogger("fleet.telemetry")

GAUGE_INTERVAL_S = 5.0
"""Least time between two samples of the gauges (Ray exports every few seconds anyway)."""
SECONDS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
"""Histogram buckets (seconds) of durations: a tool call, a model turn, a session."""


@dataclass(frozen=True)
class MetricDef:
    """One metric: its kind, name (Prometheus adds ``ray_`` in front, and ``_total`` to a
    counter), what it counts, and its tags (each metric also has ``fleet``)."""

    kind: Literal["counter", "gauge", "histogram"]
    name: str
    description: str
    tags: tuple[str, ...] = ()
    boundaries: tuple[float, ...] = ()


METRICS: tuple[MetricDef, ...] = (
    MetricDef(
        "counter",
        "fleet_tasks",
        "Tasks that entered a state (queued, running, awaiting_approval, paused, "
        "awaiting_review, succeeded, failed, needs_human, cancelled), per task label "
        '(a task counts once per label; one without labels under label="")',
        ("state", "label"),
    ),
    MetricDef("gauge", "fleet_tasks_in_state", "Tasks in each state now", ("state",)),
    MetricDef(
        "gauge",
        "fleet_queue_depth",
        "Queued tasks a worker pool could take (backoffs included)",
        ("pool",),
    ),
    MetricDef("gauge", "fleet_sessions_running", "Sessions running now", ("pool",)),
    MetricDef("gauge", "fleet_workers", "Worker actors alive", ("pool",)),
    MetricDef(
        "histogram",
        "fleet_session_duration_seconds",
        "Sessions (attempts) that ended, by how (finished, handoff, parked, error, timeout, "
        "max_turns, budget, interrupted, failed)",
        ("agent", "outcome"),
        SECONDS,
    ),
    MetricDef(
        "histogram",
        "fleet_tool_call_duration_seconds",
        "Tool calls that returned",
        ("tool", "error"),
        SECONDS,
    ),
    MetricDef(
        "histogram",
        "fleet_model_latency_seconds",
        "Model turns: the time the model took to answer",
        ("agent", "model"),
        SECONDS,
    ),
    MetricDef(
        "counter",
        "fleet_tokens",
        "Model tokens (kind: input, cached_input, output)",
        ("agent", "model", "kind"),
    ),
    MetricDef("counter", "fleet_cost_usd", "Model cost in US dollars", ("agent", "model")),
    MetricDef("counter", "fleet_gates", "Gate commands run (result: passed, failed)", ("result",)),
    MetricDef(
        "counter",
        "fleet_retries",
        "Tasks queued again for another session (cause: failed, an attempt that failed; "
        "worker_lost, its worker died)",
        ("cause",),
    ),
    MetricDef(
        "counter",
        "fleet_sandbox_starts",
        "Sandboxes the workers started (for a session, or to refill their warm pool)",
    ),
    MetricDef(
        "counter",
        "fleet_sandbox_acquired",
        'Sandboxes sessions got (warm="true": ready in the warm pool, a hit; "false": '
        "started while the session waited)",
        ("warm",),
    ),
    MetricDef("counter", "fleet_sandboxes_lost", "Sessions that ended with their sandbox lost"),
    MetricDef("counter", "fleet_workers_lost", "Workers that died while running a session"),
)

CALL_METRICS: frozenset[str] = frozenset(
    {
        "fleet_tool_call_duration_seconds",
        "fleet_model_latency_seconds",
        "fleet_tokens",
        "fleet_cost_usd",
    }
)
"""The metrics of model turns and tool calls, recorded by the workers (:class:`CallMetrics`);
the supervisor records the others (:class:`FleetMetrics`)."""


class Metric(Protocol):
    """What the observer calls: ``ray.util.metrics`` objects have these (each kind one)."""

    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None: ...

    def set(self, value: float, tags: dict[str, str] | None = None) -> None: ...

    def observe(self, value: float, tags: dict[str, str] | None = None) -> None: ...


def ray_metrics(fleet: str, calls: bool = False) -> dict[str, Any]:
    """The supervisor's metrics of :data:`METRICS` (``calls``: a worker's, those of
    :data:`CALL_METRICS`) made with ``ray.util.metrics`` (call it in a Ray worker: the
    supervisor actor, a worker actor), each tagged ``fleet=<name>``."""
    from ray.util import metrics as ray_util_metrics

    made: dict[str, Any] = {}
    for d in METRICS:
        if (d.name in CALL_METRICS) != calls:
            continue
        keys = ("fleet", *d.tags)
        metric: Any
        if d.kind == "counter":
            metric = ray_util_metrics.Counter(d.name, d.description, tag_keys=keys)
        elif d.kind == "gauge":
            metric = ray_util_metrics.Gauge(d.name, d.description, tag_keys=keys)
        else:
            metric = ray_util_metrics.Histogram(
                d.name, d.description, boundaries=list(d.boundaries), tag_keys=keys
            )
        metric.set_default_tags({"fleet": fleet})
        made[d.name] = metric
    return made


class FleetMetrics:
    """Updates ``metrics`` (name -> metric, see :data:`METRICS`; those of
    :data:`CALL_METRICS` are the workers') from the events the journal records; ``tasks`` is
    the scheduler's records (a task's labels)."""

    def __init__(
        self, metrics: Mapping[str, Metric], tasks: TaskTable, fleet: FleetSettings
    ) -> None:
        self.m = metrics
        self.tasks = tasks
        self.settings = fleet
        self.agents: dict[str, str] = {}
        """session id -> its agent (from ``task.assigned``), until the session ends."""
        self._handlers: dict[EventType, Callable[[Event], None]] = {
            EventType.task_submitted: lambda e: self._entered(e, TaskState.queued.value),
            EventType.handoff: lambda e: self._entered(e, TaskState.queued.value),
            EventType.task_retried: self._retried,
            EventType.task_assigned: self._assigned,
            EventType.task_parked: self._parked,
            EventType.task_awaiting_review: lambda e: self._entered(e, "awaiting_review"),
            EventType.session_ended: self._session_ended,
            EventType.gate_passed: lambda e: self.m["fleet_gates"].inc(1, {"result": "passed"}),
            EventType.gate_failed: lambda e: self.m["fleet_gates"].inc(1, {"result": "failed"}),
            EventType.worker_lost: self._worker_lost,
        }
        for terminal in TERMINAL_EVENTS:
            self._handlers[terminal] = self._ended

    def observe(self, events: Iterable[Event]) -> None:
        for event in events:
            handler = self._handlers.get(event.type)
            if handler is not None:
                handler(event)

    # -- per event ---------------------------------------------------------------------
    def _entered(self, event: Event, state: str) -> None:
        labels = self.tasks.labels(event.task_id)
        counter = self.m["fleet_tasks"]
        for label in labels or [""]:
            counter.inc(1, {"state": state, "label": label})

    def _retried(self, event: Event) -> None:
        self._entered(event, TaskState.queued.value)
        p = event.payload
        if not p.get("resume"):
            self.m["fleet_retries"].inc(1, {"cause": "failed"})
        elif str(p.get("reason", "")).startswith("worker lost"):
            self.m["fleet_retries"].inc(1, {"cause": "worker_lost"})

    def _assigned(self, event: Event) -> None:
        self._entered(event, TaskState.running.value)
        if event.session_id:
            self.agents[event.session_id] = str(event.payload.get("agent", ""))

    def _parked(self, event: Event) -> None:
        self._entered(event, str(event.payload.get("state", TaskState.awaiting_approval.value)))

    def _ended(self, event: Event) -> None:
        self._entered(event, event.type.value.split(".", 1)[1])
        if event.session_id:
            self._forget(event.session_id)

    def _session_ended(self, event: Event) -> None:
        p = event.payload
        session_id = event.session_id or ""
        agent = str(p.get("agent") or self.agents.get(session_id, ""))
        outcome = str(p.get("outcome") or p.get("status") or "")
        if event.duration_ms is not None:
            self.m["fleet_session_duration_seconds"].observe(
                event.duration_ms / 1000, {"agent": agent, "outcome": outcome}
            )
        if isinstance(p.get("sandbox_warm"), bool):
            warm = "true" if p["sandbox_warm"] else "false"
            self.m["fleet_sandbox_acquired"].inc(1, {"warm": warm})
        started = p.get("sandboxes_started")
        if isinstance(started, int) and started > 0:
            self.m["fleet_sandbox_starts"].inc(started)
        if str(p.get("reason", "")).startswith("sandbox lost"):
            self.m["fleet_sandboxes_lost"].inc(1)
        self._forget(session_id)

    def _worker_lost(self, event: Event) -> None:
        self.m["fleet_workers_lost"].inc(1)
        if event.session_id:
            self._forget(event.session_id)

    def _forget(self, session_id: str) -> None:
        self.agents.pop(session_id, None)

    # -- sampled -----------------------------------------------------------------------
    def sample(self, sched: Scheduler, pool: WorkerPool) -> None:
        """Set the gauges from the scheduler's and the pool's state now."""
        for state, count in sched.counts().items():
            self.m["fleet_tasks_in_state"].set(count, {"state": state})
        specs = self.settings.pool_specs()
        names = [spec.name for spec in specs]
        running = Counter(pool.pools[w].name for w in pool.running if w in pool.pools)
        workers = Counter(pool.pools[w].name for w in pool.workers if w in pool.pools)
        queued = self._queue_depth(sched, specs)
        for name in names:
            tags = {"pool": name}
            self.m["fleet_sessions_running"].set(running.get(name, 0), tags)
            self.m["fleet_workers"].set(workers.get(name, 0), tags)
            self.m["fleet_queue_depth"].set(queued.get(name, 0), tags)

    @staticmethod
    def _queue_depth(sched: Scheduler, specs: list[Any]) -> dict[str, int]:
        if len(specs) == 1:  # one pool takes every task
            return {specs[0].name: len(sched.queue)}
        depth: Counter[str] = Counter()
        for (requires, environment, agent, _), queued in sched.queue.shapes().items():
            for pool in specs:
                if pool.takes(list(requires), environment, agent):
                    depth[pool.name] += queued
        return depth


Exporter = tuple[Callable[[list[SpanData]], None], Callable[[], None]]
"""How spans reach an exporter: send a batch (fire and forget), and close (flushing)."""


class CallMetrics:
    """A worker's part of the metrics (:data:`CALL_METRICS`): its sessions' model turns
    (latency, tokens, cost) and tool calls (duration), from each event a session emits, as
    it emits it. A session's agent and model come from its ``session.started``."""

    def __init__(self, metrics: Mapping[str, Metric]) -> None:
        self.m = metrics
        self.sessions: dict[str, tuple[str, str]] = {}
        """session id -> (agent, model), from ``session.started`` until ``session.ended``."""
        self._failed = False

    def observe(self, event: Event) -> None:
        """Never raises (a metric that fails is logged once): a session goes on regardless."""
        try:
            if event.type == EventType.agent_tool_result:
                self._tool_result(event)
            elif event.type == EventType.usage:
                self._usage(event)
            elif event.type == EventType.session_started and event.session_id:
                p = event.payload
                agent, model = str(p.get("agent", "")), str(p.get("model", ""))
                self.sessions[event.session_id] = (agent, model)
            elif event.type == EventType.session_ended and event.session_id:
                self.sessions.pop(event.session_id, None)
        except Exception:
            if not self._failed:
                log.exception("call metrics failed on an event (logged once)")
            self._failed = True

    def _usage(self, event: Event) -> None:
        p = event.payload
        agent, model = self.sessions.get(event.session_id or "", ("", ""))
        tags = {"agent": str(p.get("agent") or agent), "model": str(p.get("model") or model)}
        if event.duration_ms is not None:
            self.m["fleet_model_latency_seconds"].observe(event.duration_ms / 1000, tags)
        tokens = self.m["fleet_tokens"]
        counts = (
            ("input", event.tokens_in),
            ("cached_input", p.get("cached_input_tokens")),
            ("output", event.tokens_out),
        )
        for kind, count in counts:
            if isinstance(count, int) and count > 0:
                tokens.inc(count, {**tags, "kind": kind})
        if event.cost_usd:
            self.m["fleet_cost_usd"].inc(event.cost_usd, tags)

    def _tool_result(self, event: Event) -> None:
        tags = {
            "tool": event.tool or "",
            "error": "true" if event.payload.get("is_error") else "false",
        }
        self.m["fleet_tool_call_duration_seconds"].observe((event.duration_ms or 0.0) / 1000, tags)


class Telemetry:
    """What the supervisor holds: the metrics and the tracer a fleet's settings ask for
    (either may be off), fed through :meth:`observe` and :meth:`tick`. Neither may ever
    stop the journal: a failure is logged once and the batch goes on."""

    def __init__(
        self,
        metrics: FleetMetrics | None,
        tracer: TaskTracer | None,
        spans: SpanBatches | None = None,
        close_exporter: Callable[[], None] | None = None,
    ) -> None:
        self.metrics = metrics
        self.tracer = tracer
        self.spans = spans
        """The tracer's finished spans on their way to the exporter (sent by :meth:`tick`)."""
        self.close_exporter = close_exporter
        self._failed = False
        self._sampled_at = float("-inf")

    @classmethod
    def for_fleet(
        cls,
        settings: FleetSettings,
        tasks: TaskTable,
        make_metrics: Callable[[str], Mapping[str, Metric]] = ray_metrics,
        make_exporter: Callable[[str], Exporter] | None = None,
    ) -> Telemetry:
        """Metrics when ``settings.metrics``; traces when :func:`tracing_enabled`, sent to
        the trace exporter actor (:func:`actors.trace_exporter.start_exporter`) that exports
        them as the ``OTEL_*`` variables say. Raises TelemetryError on an exporter or
        sampler those variables ask for and this fleet cannot make."""
        metrics = None
        if settings.metrics:
            metrics = FleetMetrics(make_metrics(settings.name), tasks, settings)
        if not tracing_enabled(settings):
            return cls(metrics, None)
        exporter_plan()  # a bad OTEL_* variable fails the start, not the first export
        ratio = sampler_ratio()
        if make_exporter is None:
            from actors.trace_exporter import start_exporter  # a Ray actor

            make_exporter = start_exporter
        send, close = make_exporter(settings.name)
        spans = SpanBatches(send)
        tracer = TaskTracer(spans, settings.name, settings.trace_prompts, ratio)
        return cls(metrics, tracer, spans, close)

    @property
    def enabled(self) -> bool:
        return self.metrics is not None or self.tracer is not None

    def observe(self, events: list[Event]) -> None:
        """The journal's hook: a batch of events just logged, numbered, in order."""
        try:
            if self.metrics is not None:
                self.metrics.observe(events)
            if self.tracer is not None:
                self.tracer.observe(events)
        except Exception:
            if not self._failed:
                log.exception("telemetry failed on a batch of events (logged once)")
            self._failed = True

    def tick(self, sched: Scheduler, pool: WorkerPool, now: float) -> None:
        """The watch loop's call (every ``watch_interval_s``): send the spans finished since
        the last one; set the gauges, at most every :data:`GAUGE_INTERVAL_S`."""
        try:
            if self.spans is not None:
                self.spans.flush()
            if self.metrics is not None and now - self._sampled_at >= GAUGE_INTERVAL_S:
                self._sampled_at = now
                self.metrics.sample(sched, pool)
        except Exception:
            log.exception("telemetry tick failed")

    def prime(self, records: Iterable[TaskRecord]) -> None:
        """After a restart's replay: reopen the traces of unfinished tasks."""
        if self.tracer is not None:
            self.tracer.prime(records)

    def close(self) -> None:
        """Send the spans still here, and have the exporter export what it holds (blocking:
        run it in a thread)."""
        try:
            if self.spans is not None:
                self.spans.flush()
            if self.close_exporter is not None:
                self.close_exporter()
        except Exception:
            log.exception("closing the trace exporter failed")
