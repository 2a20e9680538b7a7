"""Metrics and traces of a real fleet on a local Ray: the node's Prometheus endpoint shows the
fleet's metrics with the right values after a batch, and the supervisor exports each task's
trace over OTLP (to a collector stand-in here) as the standard OTEL_* variables say."""

from __future__ import annotations

import http.server
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from prometheus_client.parser import text_string_to_metric_families

from actors.tracing import trace_id_of
from core.specs import TaskState
from tests.conftest import script

pytestmark = pytest.mark.ray


def scrape() -> dict[str, list[tuple[dict[str, str], float]]]:
    """The node's metrics: sample name -> [(labels, value)]."""
    import ray

    port = ray._private.worker.global_worker.node.metrics_export_port
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def total(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **tags: str) -> float:
    """The sum of a metric's series whose labels include ``tags`` (every process's)."""
    return sum(v for labels, v in samples.get(name, []) if tags.items() <= labels.items())


def test_the_metrics_endpoint_shows_the_batch(fleet_factory: Any) -> None:
    fleet = fleet_factory(workers=2)
    name = fleet.settings.name
    work = script(
        ("write_file", {"path": "a.txt", "content": "a"}),
        ("shell", {"command": "cat a.txt"}),
        ("finish", {"summary": "done"}),
    )
    tasks = [
        {"id": f"ok{i}", "prompt": "x", "labels": ["m"], "gate": "test -s a.txt", "script": work}
        for i in range(3)
    ]
    tasks.append({"id": "bad", "prompt": "x", "gate": "false", "max_attempts": 2, "script": work})
    records = fleet.wait(fleet.submit(tasks).accepted, timeout_s=120)
    states = {r.id: r.state for r in records}
    assert states == {
        "ok0": "succeeded",
        "ok1": "succeeded",
        "ok2": "succeeded",
        "bad": "needs_human",
    }
    # 3 tasks x 1 session + 1 task x 2 sessions, 3 tool calls each.
    sessions, calls = 5, 15
    f = {"fleet": name}
    wanted = {
        ("ray_fleet_tasks_total", "succeeded", "m"): 3.0,
        ("ray_fleet_tasks_total", "needs_human", ""): 1.0,
        ("ray_fleet_tasks_total", "running", ""): 2.0,
    }
    deadline = time.monotonic() + 40  # Ray exports every few seconds
    while True:
        samples = scrape()
        seen = {key: total(samples, key[0], state=key[1], label=key[2], **f) for key in wanted}
        seen["tool calls"] = total(samples, "ray_fleet_tool_call_duration_seconds_count", **f)
        seen["sessions"] = total(samples, "ray_fleet_session_duration_seconds_count", **f)
        seen["workers"] = total(samples, "ray_fleet_workers", pool="default", **f)
        expected = {**wanted, "tool calls": float(calls), "sessions": float(sessions)}
        expected["workers"] = 2.0
        if seen == expected or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert seen == expected
    assert total(samples, "ray_fleet_tasks_total", state="queued", label="m", **f) == 3
    assert total(samples, "ray_fleet_gates_total", result="passed", **f) == 3
    assert total(samples, "ray_fleet_gates_total", result="failed", **f) == 2
    assert total(samples, "ray_fleet_retries_total", cause="failed", **f) == 1
    shell = total(samples, "ray_fleet_tool_call_duration_seconds_count", tool="shell", **f)
    assert shell == 5
    assert total(samples, "ray_fleet_model_latency_seconds_count", model="scripted", **f) == calls
    acquired = total(samples, "ray_fleet_sandbox_acquired_total", **f)
    assert acquired == sessions
    # Each worker's first session waits for the sandbox its pool started (or takes it ready):
    # with warm_pool 1, most sessions after it find one ready.
    assert total(samples, "ray_fleet_sandbox_acquired_total", warm="true", **f) >= 1
    assert total(samples, "ray_fleet_sandbox_starts_total", **f) >= sessions
    assert total(samples, "ray_fleet_queue_depth", pool="default", **f) == 0


class Collector(http.server.BaseHTTPRequestHandler):
    """An OTLP/HTTP trace receiver: keeps every span it is sent."""

    spans: list[Any] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                self.spans.extend(scope_spans.spans)
        reply = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[int]:
    Collector.spans = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_a_task_is_one_trace_at_the_otlp_endpoint(
    fleet_factory: Any, collector: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{collector}")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    fleet = fleet_factory(workers=1)
    work = [
        {"tool": "write_file", "args": {"path": "f", "content": "no"}, "attempt": 1},
        {"tool": "write_file", "args": {"path": "f", "content": "yes"}, "attempt": 2},
        {"tool": "finish", "args": {}},
    ]
    spec = {"id": "tr", "prompt": "x", "gate": "grep -q yes f", "script": work}
    (record,) = fleet.wait(fleet.submit([spec]).accepted, timeout_s=60)
    assert record.state == TaskState.succeeded and record.attempts == 2
    fleet.shutdown()  # flushes the spans still buffered
    spans = Collector.spans
    trace_id = trace_id_of(fleet.settings.name, "tr").to_bytes(16, "big")
    assert spans and {s.trace_id for s in spans} == {trace_id}
    names = sorted(s.name for s in spans)
    assert names.count("task") == 1 and names.count("session") == 2
    assert names.count("gate") == 2 and names.count("model turn") == 4
    assert names.count("tool call") == 4
    (task,) = [s for s in spans if s.name == "task"]
    sessions = [s for s in spans if s.name == "session"]
    assert all(s.parent_span_id == task.span_id for s in sessions)
    assert sorted(
        a.value.int_value for s in sessions for a in s.attributes if a.key == "fleet.attempt"
    ) == [1, 2]
