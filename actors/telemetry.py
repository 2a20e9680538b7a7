"""The fleet's metrics and traces, fed by the events the journal records.

Every state change of the fleet is an event that passes through one place, the supervisor's
:class:`~actors.journal.Journal`; :class:`Telemetry` is handed each batch it logged. From
them :class:`FleetMetrics` counts and times (tasks by state and label, sessions, gates,
retries, sandboxes) and :class:`~actors.tracing.TaskTracer` builds one trace per task. The
gauges (queue depth and running sessions per pool, workers, tasks per state) are sampled
from the scheduler and the pool by the supervisor's watch loop instead.

What each metric is, how Ray makes them, and the workers' part (each model turn and tool
call) are :mod:`actors.metrics`; this is the supervisor's part.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from actors.metrics import Metric, ray_metrics
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


class FleetMetrics:
    """Updates ``metrics`` (name -> metric, see :data:`actors.metrics.METRICS`; those of
    :data:`~actors.metrics.CALL_METRICS` are the workers') from the events the journal
    records; ``tasks`` is the scheduler's records (a task's labels)."""

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
            reused = "true" if p.get("sandbox_reused") is True else "false"
            self.m["fleet_sandbox_acquired"].inc(1, {"warm": warm, "reused": reused})
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
