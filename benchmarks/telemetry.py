"""What metrics and traces cost the orchestration benchmark: ``python -m benchmarks.telemetry``.

Three set-ups run the same bulk of trivial one-turn tasks (the workload of
``benchmarks.orchestration``), each on a fleet of its own started for the run: ``off``
(``metrics=False, tracing=False``), ``metrics`` (the default: Ray metrics, no traces) and
``metrics+tracing`` (every span exported over OTLP/HTTP to a stand-in collector in this
process that reads and drops them). Runs are interleaved, their order rotated each round (the
machine is shared and noisy); each prints tasks/s, and the medians are compared with ``off``.

It also prints what the telemetry costs per event inside the supervisor's process (the
metrics; the tracer and the calls that ship its spans to the trace exporter actor) and in a
worker's (the metrics of its model turns and tool calls), measured in a Ray task over a
synthetic stream of one-turn tasks (8 events each).

    python -m benchmarks.telemetry [--workers 4] [--tasks 400] [--rounds 3]
"""

from __future__ import annotations

import argparse
import http.server
import os
import statistics
import tempfile
import threading
import time
from typing import Any

import ray

from fleet import Fleet

ONE_TURN = [{"tool": "finish", "args": {"summary": "done"}}]
SETUPS: dict[str, dict[str, Any]] = {
    "off": {"metrics": False, "tracing": False},
    "metrics": {"metrics": True, "tracing": False},
    "metrics+tracing": {"metrics": True, "tracing": True},
}


class Sink(http.server.BaseHTTPRequestHandler):
    """A collector stand-in: reads each OTLP request and answers 200."""

    received = 0

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        Sink.received += len(body)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def bulk(setup: dict[str, Any], workers: int, tasks: int, tag: str) -> float:
    """Tasks per second of one bulk on a fresh fleet (after a warm-up batch)."""
    events_dir = tempfile.mkdtemp(prefix="fleet-bench-telemetry-")
    with Fleet.start(
        name=f"bench-{tag}", workers=workers, sandbox="local", events_dir=events_dir, **setup
    ) as fleet:
        warm = [{"id": f"w{i}", "prompt": "noop", "script": ONE_TURN} for i in range(workers * 4)]
        fleet.wait(fleet.submit(warm).accepted)
        batch = [{"id": f"b{i}", "prompt": "noop", "script": ONE_TURN} for i in range(tasks)]
        t0 = time.perf_counter()
        done = fleet.wait(fleet.submit(batch).accepted)
        elapsed = time.perf_counter() - t0
        assert all(r.state == "succeeded" for r in done), "a benchmark task failed"
    return tasks / elapsed


@ray.remote(num_cpus=0)
def per_event_cost(tasks: int, endpoint: str) -> dict[str, float]:
    """Microseconds per event, in the caller's process, of the metrics and of the tracer
    (spans shipped to a trace exporter actor, as the supervisor ships them)."""
    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
    from actors.metrics import CallMetrics, ray_metrics
    from actors.scheduler import Scheduler
    from actors.telemetry import FleetMetrics
    from actors.trace_exporter import start_exporter
    from actors.tracing import SpanBatches, TaskTracer
    from core.events import Event, EventType
    from core.settings import FleetSettings
    from core.specs import FleetConfig, TaskSpec

    settings = FleetSettings(memory=False)
    sched = Scheduler(FleetConfig(), settings)
    stream: list[Event] = []
    for i in range(tasks):
        submitted = sched.submit(TaskSpec(id=f"t{i}", prompt="noop", labels=["bench"]))
        sched.apply(submitted)
        c = {"task_id": f"t{i}", "session_id": f"s{i}", "attempt": 1, "worker": "w1"}
        call = {"call_id": "call_1", "turn": 1}
        stream += [
            submitted,
            Event(type=EventType.task_assigned, payload={"agent": "default", "pool": "p"}, **c),
            Event(type=EventType.session_started, payload={"model": "scripted"}, **c),
            Event(type=EventType.usage, payload={"model": "scripted", "turn": 1}, **c),
            Event(type=EventType.agent_tool_use, tool="finish", payload=call, **c),
            Event(
                type=EventType.agent_tool_result, tool="finish", duration_ms=0.1, payload=call, **c
            ),
            Event(
                type=EventType.session_ended, duration_ms=5.0, payload={"status": "succeeded"}, **c
            ),
            Event(type=EventType.task_succeeded, payload={"summary": "done"}, **c),
        ]
    for n, event in enumerate(stream):
        event.seq = n
    metrics = FleetMetrics(ray_metrics("bench-micro"), sched.tasks, settings)
    t0 = time.perf_counter()
    for n in range(0, len(stream), 8):
        metrics.observe(stream[n : n + 8])
    metrics_us = (time.perf_counter() - t0) / len(stream) * 1e6
    calls = CallMetrics(ray_metrics("bench-micro", calls=True))
    t0 = time.perf_counter()
    for event in stream:  # a worker's share: the model turns and tool calls it made
        calls.observe(event)
    calls_us = (time.perf_counter() - t0) / len(stream) * 1e6
    send, close = start_exporter("bench-micro")
    spans = SpanBatches(send)
    tracer = TaskTracer(spans, "bench-micro")
    t0 = time.perf_counter()
    for n in range(0, len(stream), 8):
        tracer.observe(stream[n : n + 8])
        if n % 800 == 0:
            spans.flush()  # the supervisor's watch loop sends them every second
    spans.flush()
    tracing_us = (time.perf_counter() - t0) / len(stream) * 1e6
    close()
    return {"metrics_us": metrics_us, "calls_us": calls_us, "tracing_us": tracing_us}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--tasks", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    for name in [k for k in os.environ if k.startswith("OTEL_")]:
        del os.environ[name]
    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint  # the tracing fleet's supervisor
    ray.init(namespace="agent-fleet-bench", include_dashboard=False, log_to_driver=False)

    micro = ray.get(per_event_cost.remote(2000, endpoint))
    rates: dict[str, list[float]] = {name: [] for name in SETUPS}
    names = list(SETUPS)
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            rate = bulk(SETUPS[name], args.workers, args.tasks, f"{name.replace('+', '-')}-{r}")
            rates[name].append(rate)
            print(f"round {r + 1}: {name:16s} {rate:7.1f} tasks/s", flush=True)
    ray.shutdown()
    server.shutdown()

    print(
        f"\nworkers: {args.workers}, local sandbox, scripted model, one-turn tasks, "
        f"{args.tasks} per run, {args.rounds} interleaved rounds"
    )
    base = statistics.median(rates["off"])
    for name in names:
        median = statistics.median(rates[name])
        print(
            f"{name:16s} median {median:7.1f} tasks/s   {median / base:6.3f} x off   "
            f"(overhead {(1 - median / base) * 100:+.1f}%)"
        )
    print(
        f"per event in the supervisor: metrics {micro['metrics_us']:.1f} us, "
        f"tracing {micro['tracing_us']:.1f} us (8 events per one-turn task); in a worker: "
        f"its model turns' and tool calls' metrics {micro['calls_us']:.1f} us; "
        f"the collector stand-in received {Sink.received / 1e6:.1f} MB of spans"
    )


if __name__ == "__main__":
    main()
