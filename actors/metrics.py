"""What the fleet's metrics are (:data:`METRICS`), how they are made with Ray
(:func:`ray_metrics`), and a worker's part of them (:class:`CallMetrics`).

The supervisor records most of them from the events it logs
(:class:`actors.telemetry.FleetMetrics`). Each model turn and tool call (:data:`CALL_METRICS`:
their latency, tokens and cost) is recorded by the worker whose session made it, on the
events it emits: they are most of a running fleet's events, and a Ray metric point costs
about 4 µs, which the supervisor's one thread would pay for every one of them. Ray exports
each process's series apart (its ``WorkerId`` tag); queries sum them.

The metric objects are injected: :func:`ray_metrics` makes them with ``ray.util.metrics``;
tests pass recorders. Plain: no Ray import but that one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from core.events import Event, EventType

log = logging.getLogger("fleet.metrics")

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
        'started while the session waited; reused="true": a container reset after an earlier '
        "session)",
        ("warm", "reused"),
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
