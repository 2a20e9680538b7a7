"""The trace exporter actor: makes SDK spans of the supervisor's finished spans and exports
them as the standard ``OTEL_*`` variables say, in a process of its own, so that encoding and
sending spans never slows the supervisor (:mod:`actors.tracing` builds them from events).

One per fleet, started by the supervisor (its child: it dies with it; a restarted
supervisor starts another) on the supervisor's node, where the ``OTEL_*`` variables the
driver handed over hold (child actors inherit the supervisor's runtime environment).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from actors.tracing import ReadableSink, SpanData, fleet_resource, span_processors

log = logging.getLogger("fleet.tracing")


@ray.remote(num_cpus=0, max_restarts=0)
class TraceExporter:
    def __init__(self, fleet: str) -> None:
        self.processors = span_processors()
        self.sink = ReadableSink(self.processors, fleet_resource(fleet))

    def export(self, spans: list[SpanData]) -> None:
        """Hand finished spans to the batch processors (they export in the background)."""
        for span in spans:
            self.sink(span)

    def close(self, timeout_s: float = 10.0) -> None:
        """Export what is still buffered, then stop the exporters."""
        for processor in self.processors:
            try:
                processor.force_flush(int(timeout_s * 1000))
                processor.shutdown()
            except Exception:
                log.exception("flushing spans failed")


def start_exporter(fleet: str) -> tuple[Callable[[list[SpanData]], None], Callable[[], None]]:
    """Start the fleet's trace exporter beside the calling actor (the supervisor); returns
    how to send it spans (fire and forget) and how to close it (blocking: flushes)."""
    here = ray.get_runtime_context().get_node_id()
    handle = TraceExporter.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=True)
    ).remote(fleet)

    def send(spans: list[SpanData]) -> None:
        handle.export.remote(spans)

    def close() -> None:
        try:
            ray.get(handle.close.remote(), timeout=30)
        except Exception as exc:
            log.warning("the trace exporter did not flush: %s", exc)
        ray.kill(handle)

    return send, close
