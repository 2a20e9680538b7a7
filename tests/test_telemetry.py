"""Metrics and traces from the journal's events, without Ray: a task runs on the real plain
parts (scheduler, journal, dispatcher, session runner in a local sandbox, scripted models)
and the telemetry sees what the journal logs; spans go to the SDK's in-memory exporter."""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from actors.artifacts import ArtifactStore
from actors.dispatch import Dispatcher
from actors.journal import Journal
from actors.manager import Manager
from actors.metrics import CALL_METRICS, METRICS, CallMetrics
from actors.pool import WorkerPool
from actors.scheduler import Scheduler
from actors.session import SessionRunner
from actors.streams import LiveStreams
from actors.tasktable import TaskTable
from actors.telemetry import FleetMetrics, Telemetry
from actors.tracing import (
    ReadableSink,
    SpanData,
    TaskTracer,
    TelemetryError,
    exporter_plan,
    sampler_ratio,
    span_processors,
    trace_id_of,
)
from core.eventlog import EventLog
from core.events import Event, EventType
from core.records import SessionResult
from core.settings import FleetSettings, PoolSpec
from core.specs import EnvironmentSpec, FleetConfig, TaskSpec, TaskState
from sandboxes import create_sandbox
from sandboxes.base import Sandbox

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
SECRET_PROMPT = "PROMPT-7f3a: fix the login with token sk-live-SECRET"
SECRET_ARG = "ARG-c41d sk-live-SECRET"


class Recorder:
    """A metric that remembers every value it was given, per tag set."""

    def __init__(self) -> None:
        self.values: dict[frozenset[tuple[str, str]], list[float]] = defaultdict(list)

    def _record(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        self.values[frozenset((tags or {}).items())].append(value)

    inc = set = observe = _record

    def total(self, **tags: str) -> float:
        return sum(sum(v) for k, v in self.values.items() if set(tags.items()) <= k)

    def count(self, **tags: str) -> int:
        return sum(len(v) for k, v in self.values.items() if set(tags.items()) <= k)

    def last(self, **tags: str) -> float:
        return self.values[frozenset(tags.items())][-1]


def recorders() -> dict[str, Recorder]:
    return {d.name: Recorder() for d in METRICS}


class PlainFleet:
    """The supervisor's plain parts with one worker coroutine (no Ray), the telemetry hooked
    into the journal as the supervisor hooks it, the call metrics on the sessions' events as
    the worker hooks them."""

    def __init__(self, root: Path, config: FleetConfig, trace_prompts: bool = False) -> None:
        self.settings = FleetSettings(
            events_dir=str(root), memory=False, retry_backoff_s=0.0, sandbox="local", name="pf"
        )
        self.sched = Scheduler(config, self.settings)
        self.pool = WorkerPool()
        self.log = EventLog(str(root), writer="test")
        self.exporter = InMemorySpanExporter()
        self.metrics = recorders()
        self.calls = CallMetrics(self.metrics)
        self.telemetry = Telemetry(
            FleetMetrics(self.metrics, self.sched.tasks, self.settings),
            TaskTracer(ReadableSink([SimpleSpanProcessor(self.exporter)]), "pf", trace_prompts),
        )
        self.background: list[asyncio.Task[Any]] = []
        self.journal = Journal(
            self.sched,
            self.log,
            LiveStreams(100, 100),
            self.pool,
            self.settings,
            self.background_task,
            observe=self.telemetry.observe,
        )
        self.store = ArtifactStore(str(root / "_artifacts"))

        async def nothing(*_: Any) -> None:
            return None

        manager = Manager(
            self.settings, config, self.sched, self.pool, nothing, nothing, lambda *_: None
        )
        self.dispatch = Dispatcher(
            self.sched, self.pool, self.journal, self.store, manager, self.settings
        )
        self.runner = SessionRunner(self.settings, "w1", self.sandbox)

    def sink(self, events: list[Event]) -> Callable[[Event], None]:
        """A session's events, as the worker takes them: its call metrics, then ``events``."""

        def take(event: Event) -> None:
            self.calls.observe(event)
            events.append(event)

        return take

    def background_task(self, coro: Any) -> None:
        self.background.append(asyncio.create_task(coro))

    async def sandbox(self, environment: EnvironmentSpec, name: str) -> Sandbox:
        sandbox = create_sandbox("local", environment, name=name)
        await sandbox.start()
        return sandbox

    async def run(self, spec: dict[str, Any]) -> None:
        """Submit one task and run its sessions on worker w1 until it ends."""
        self.pool.open()
        self.journal.open()
        self.pool.add("w1", object(), PoolSpec(), time.time())
        await self.journal.record([self.sched.submit(TaskSpec.model_validate(spec), "b1")])
        task_id = spec["id"]
        while not self.sched.tasks[task_id].state.terminal:
            a = await asyncio.wait_for(self.dispatch.assign("w1"), 10)
            assert a is not None
            events: list[Event] = []
            result: SessionResult = await self.runner.run(a, self.sink(events))
            for event in events:  # the worker adds these to session.ended
                if event.type == EventType.session_ended:
                    event.payload |= {
                        "sandbox_warm": a.attempt == 2,
                        "sandbox_reused": a.attempt == 2,
                        "sandboxes_started": 1,
                    }
            result.events = events
            await self.dispatch.take_result("w1", result)
        for task in self.background:
            task.cancel()
        self.log.close()


CONFIG = FleetConfig.model_validate(
    {
        "agents": {
            "coder": {"tools": ["write_file", "shell", "handoff", "finish"]},
            "docs": {},
            "rev": {},
        }
    }
)


def two_attempts_and_a_handoff() -> dict[str, Any]:
    """Attempt 1 of the coder fails its gate; attempt 2 hands off to docs, whose session
    passes the gate and the reviewer agent."""
    return {
        "id": "t1",
        "prompt": SECRET_PROMPT,
        "agent": "coder",
        "labels": ["auth", "web"],
        "gate": "grep -q good lib.py",
        "reviewer": "rev",
        "script": [
            {
                "tool": "write_file",
                "args": {"path": "lib.py", "content": "bad"},
                "attempt": 1,
                "agent": "coder",
            },
            {
                "tool": "shell",
                "args": {"command": f"echo {SECRET_ARG}"},
                "attempt": 1,
                "agent": "coder",
            },
            {"tool": "finish", "args": {"summary": "try 1"}, "attempt": 1, "agent": "coder"},
            {
                "tool": "write_file",
                "args": {"path": "lib.py", "content": "good"},
                "attempt": 2,
                "agent": "coder",
            },
            {
                "tool": "handoff",
                "args": {"agent": "docs", "note": "document it"},
                "attempt": 2,
                "agent": "coder",
            },
            {"tool": "write_file", "args": {"path": "DOCS.md", "content": "d"}, "agent": "docs"},
            {"tool": "finish", "args": {"summary": "documented"}, "agent": "docs"},
        ],
        "review_script": [
            {"tool": "read_file", "args": {"path": "lib.py"}},
            {"tool": "approve", "args": {"comment": "fine"}},
        ],
    }


def run_task(root: Path, trace_prompts: bool = False) -> PlainFleet:
    fleet = PlainFleet(root, CONFIG, trace_prompts)
    asyncio.run(fleet.run(two_attempts_and_a_handoff()))
    assert fleet.sched.tasks["t1"].state == TaskState.succeeded, fleet.sched.tasks["t1"].reason
    return fleet


def by_name(spans: list[ReadableSpan], name: str) -> list[ReadableSpan]:
    return sorted((s for s in spans if s.name == name), key=lambda s: s.start_time or 0)


def children(spans: list[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    found = [
        s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id
    ]
    return sorted(found, key=lambda s: (s.start_time or 0, s.name))


def test_a_two_attempt_task_with_a_handoff_is_one_trace_of_the_right_shape(
    tmp_path: Path,
) -> None:
    spans = list(run_task(tmp_path).exporter.get_finished_spans())
    assert {s.context.trace_id for s in spans} == {trace_id_of("pf", "t1")}
    (task,) = [s for s in spans if s.parent is None]
    assert task.name == "task" and task.status.status_code == StatusCode.OK
    assert task.attributes["fleet.state"] == "succeeded"
    assert task.attributes["fleet.labels"] == ("auth", "web")
    assert task.attributes["fleet.batch"] == "b1"
    # The task: three sessions (each after a wait in the queue).
    assert [s.name for s in children(spans, task)] == ["session", "session", "session"]
    assert [e.name for e in task.events] == ["retried", "handoff"]
    assert task.events[0].attributes["fleet.next_attempt"] == 2
    assert task.events[1].attributes["fleet.to_agent"] == "docs"
    first, second, third = by_name(spans, "session")
    assert all(s.attributes["fleet.queued_ms"] >= 0 for s in (first, second, third))
    assert first.start_time - task.start_time == pytest.approx(
        first.attributes["fleet.queued_ms"] * 1e6, abs=1000
    )
    assert [
        (s.attributes["fleet.agent"], s.attributes["fleet.attempt"]) for s in (first, second, third)
    ] == [
        ("coder", 1),
        ("coder", 2),
        ("docs", 1),
    ]
    assert first.status.status_code == StatusCode.ERROR
    assert "gate failed" in (first.status.description or "")
    assert second.attributes["fleet.outcome"] == "handoff"
    assert second.status.status_code == StatusCode.OK
    assert third.attributes["fleet.sandbox_warm"] is False
    assert second.attributes["fleet.sandbox_warm"] is True
    assert first.attributes["gen_ai.request.model"] == "scripted"
    # Attempt 1: three model turns, a tool call under each, then the gate that failed.
    turns = [s for s in children(spans, first) if s.name == "model turn"]
    assert [t.attributes["fleet.turn"] for t in turns] == [1, 2, 3]
    tools = [[c.attributes["gen_ai.tool.name"] for c in children(spans, t)] for t in turns]
    assert tools == [["write_file"], ["shell"], ["finish"]]
    assert [s.name for s in children(spans, first)][-1] == "gate"
    gate = children(spans, first)[-1]
    assert gate.attributes["fleet.passed"] is False and gate.attributes["fleet.exit_code"] == 1
    # Attempt 2 hands off: no gate. The docs session passes the gate, then the review.
    assert "gate" not in [s.name for s in children(spans, second)]
    names = [s.name for s in children(spans, third)]
    assert names == ["model turn", "model turn", "gate", "review"]
    (review,) = by_name(spans, "review")
    assert review.attributes["fleet.verdict"] == "approve"
    assert review.attributes["fleet.reviewer"] == "rev"
    review_turns = children(spans, review)
    assert [t.name for t in review_turns] == ["model turn", "model turn"]
    assert [c.attributes["gen_ai.tool.name"] for t in review_turns for c in children(spans, t)] == [
        "read_file",
        "approve",
    ]
    # Every span lies inside the trace's time and ends after it starts.
    for span in spans:
        assert span.end_time is not None and span.start_time is not None
        assert span.start_time <= span.end_time
        assert task.start_time <= span.start_time and span.end_time <= task.end_time
    # Spans carry no prompt and no tool arguments unless asked.
    dumped = json.dumps([json.loads(s.to_json()) for s in spans])
    assert "PROMPT-7f3a" not in dumped and "ARG-c41d" not in dumped and "sk-live" not in dumped


def test_prompts_and_tool_arguments_go_in_spans_only_when_asked(tmp_path: Path) -> None:
    spans = list(run_task(tmp_path, trace_prompts=True).exporter.get_finished_spans())
    (task,) = by_name(spans, "task")
    assert task.attributes["fleet.prompt"].startswith("PROMPT-7f3a")
    shell = next(s for s in spans if s.attributes.get("gen_ai.tool.name") == "shell")
    assert "ARG-c41d" in shell.attributes["fleet.tool.args"]
    (gate, _) = by_name(spans, "gate")
    assert gate.attributes["fleet.gate.command"] == "grep -q good lib.py"


def test_the_metrics_count_what_the_task_did(tmp_path: Path) -> None:
    m = run_task(tmp_path).metrics
    tasks = m["fleet_tasks"]
    # Per label: queued 3 times (submit, retry, handoff), running 3 times, succeeded once.
    for label in ("auth", "web"):
        assert tasks.total(state="queued", label=label) == 3
        assert tasks.total(state="running", label=label) == 3
        assert tasks.total(state="succeeded", label=label) == 1
    assert tasks.total(state="failed") == 0
    sessions = m["fleet_session_duration_seconds"]
    assert sessions.count() == 3
    assert sessions.count(agent="coder", outcome="finished") == 1
    assert sessions.count(agent="coder", outcome="handoff") == 1
    assert sessions.count(agent="docs", outcome="finished") == 1
    tools = m["fleet_tool_call_duration_seconds"]
    # 3 + 2 + 2 of the agents, 2 of the reviewer.
    assert tools.count() == 9
    assert tools.count(tool="write_file", error="false") == 3
    latency = m["fleet_model_latency_seconds"]
    assert latency.count(agent="coder", model="scripted") == 5
    assert latency.count(agent="docs", model="scripted") == 2
    assert latency.count(agent="rev", model="scripted") == 2
    assert m["fleet_gates"].total(result="failed") == 1
    assert m["fleet_gates"].total(result="passed") == 1
    assert m["fleet_retries"].total(cause="failed") == 1
    assert m["fleet_sandbox_acquired"].total(warm="true") == 1
    assert m["fleet_sandbox_acquired"].total(warm="false") == 2
    assert m["fleet_sandbox_acquired"].total(warm="true", reused="true") == 1
    assert m["fleet_sandbox_acquired"].total(reused="false") == 2
    assert m["fleet_sandbox_starts"].total() == 3
    assert m["fleet_tokens"].total() == 0  # the scripted model reports none
    assert m["fleet_sandboxes_lost"].total() == 0


def test_tokens_cost_lost_sandboxes_and_workers_are_counted() -> None:
    settings = FleetSettings(memory=False)
    sched = Scheduler(FleetConfig(), settings)
    submitted = sched.submit(TaskSpec(id="t", prompt="x"))
    sched.apply(submitted)
    m = recorders()
    metrics = FleetMetrics(m, sched.tasks, settings)
    calls = CallMetrics(m)
    common = {"task_id": "t", "session_id": "s1", "attempt": 1}
    started = Event(
        type=EventType.session_started, payload={"agent": "coder", "model": "gpt-x"}, **common
    )
    usage = Event(
        type=EventType.usage,
        payload={"cached_input_tokens": 40, "turn": 1},
        tokens_in=100,
        tokens_out=7,
        cost_usd=0.25,
        duration_ms=1500.0,
        **common,
    )
    ended = Event(
        type=EventType.session_ended,
        payload={"status": "failed", "reason": "sandbox lost: container died"},
        duration_ms=2000.0,
        **common,
    )
    for event in (started, usage, ended):  # what the worker sees of its session
        calls.observe(event)
    assert calls.sessions == {}  # forgotten once the session ended
    metrics.observe(
        [
            submitted,
            Event(type=EventType.task_assigned, payload={"agent": "coder"}, **common),
            started,
            usage,
            ended,
            Event(type=EventType.worker_lost, payload={"reason": "died"}, **common),
            Event(
                type=EventType.task_retried,
                payload={"reason": "worker lost: died", "resume": True},
                **common,
            ),
        ]
    )
    tokens = m["fleet_tokens"]
    assert tokens.total(agent="coder", model="gpt-x", kind="input") == 100
    assert tokens.total(kind="cached_input") == 40 and tokens.total(kind="output") == 7
    assert m["fleet_cost_usd"].total(agent="coder", model="gpt-x") == 0.25
    assert m["fleet_model_latency_seconds"].total(agent="coder") == 1.5
    assert m["fleet_session_duration_seconds"].count(agent="coder", outcome="failed") == 1
    assert m["fleet_sandboxes_lost"].total() == 1 and m["fleet_workers_lost"].total() == 1
    assert m["fleet_retries"].total(cause="worker_lost") == 1
    assert m["fleet_retries"].total(cause="failed") == 0
    assert m["fleet_tasks"].total(state="queued", label="") == 2  # submitted, requeued


def test_model_turns_and_tool_calls_are_the_workers_to_record_not_the_supervisors() -> None:
    settings = FleetSettings(memory=False)
    sched = Scheduler(FleetConfig(), settings)
    submitted = sched.submit(TaskSpec(id="t", prompt="x"))
    sched.apply(submitted)
    common = {"task_id": "t", "session_id": "s1", "attempt": 1}
    session = [
        Event(type=EventType.session_started, payload={"agent": "a", "model": "m"}, **common),
        Event(type=EventType.usage, payload={"turn": 1}, tokens_in=3, duration_ms=20.0, **common),
        Event(type=EventType.agent_tool_use, tool="shell", payload={"call_id": "c"}, **common),
        Event(
            type=EventType.agent_tool_result,
            tool="shell",
            duration_ms=250.0,
            payload={"call_id": "c", "is_error": True},
            **common,
        ),
    ]
    supervisor = recorders()
    FleetMetrics(supervisor, sched.tasks, settings).observe([submitted, *session])
    assert all(supervisor[name].count() == 0 for name in CALL_METRICS)
    assert supervisor["fleet_tasks"].total(state="queued") == 1  # its own, still
    worker = recorders()
    calls = CallMetrics(worker)
    for event in session:
        calls.observe(event)
    assert worker["fleet_model_latency_seconds"].values == {
        frozenset({("agent", "a"), ("model", "m")}): [0.02]
    }
    assert worker["fleet_tokens"].total(agent="a", model="m", kind="input") == 3
    assert worker["fleet_tool_call_duration_seconds"].values == {
        frozenset({("tool", "shell"), ("error", "true")}): [0.25]
    }
    assert {n for n, r in worker.items() if r.count()} == CALL_METRICS - {"fleet_cost_usd"}

    class Broken(Recorder):
        def _record(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
            raise RuntimeError("exporter down")

        inc = set = observe = _record

    broken = CallMetrics({name: Broken() for name in worker})
    for event in session:  # a metric that fails never fails the session's event
        broken.observe(event)


def test_the_gauges_follow_the_queue_and_the_pools() -> None:
    pools = [PoolSpec(name="gpu", workers=1, labels=["gpu"]), PoolSpec(name="cpu", workers=2)]
    settings = FleetSettings(memory=False, pools=pools)
    sched = Scheduler(FleetConfig(), settings)
    for spec in (
        TaskSpec(id="a", prompt="x", requires=["gpu"]),
        TaskSpec(id="b", prompt="x"),
        TaskSpec(id="c", prompt="x"),
    ):
        sched.apply(sched.submit(spec))
    pool = WorkerPool()
    pool.add("w1", object(), pools[0], 0.0)
    pool.add("w2", object(), pools[1], 0.0)
    pool.add("w3", object(), pools[1], 0.0)
    got = sched.assign("w2", pools[1])
    assert got is not None and got[0] is not None
    sched.apply(got[1])
    pool.running["w2"] = got[0].task.id
    m = recorders()
    telemetry = Telemetry(FleetMetrics(m, sched.tasks, settings), None)
    telemetry.tick(sched, pool, now=100.0)
    # "a" needs gpu: only the gpu pool takes it; the gpu pool takes "c" too (no requirement).
    assert m["fleet_queue_depth"].last(pool="gpu") == 2
    assert m["fleet_queue_depth"].last(pool="cpu") == 1
    assert m["fleet_sessions_running"].last(pool="cpu") == 1
    assert m["fleet_sessions_running"].last(pool="gpu") == 0
    assert m["fleet_workers"].last(pool="cpu") == 2
    assert m["fleet_tasks_in_state"].last(state="queued") == 2
    assert m["fleet_tasks_in_state"].last(state="running") == 1
    telemetry.tick(sched, pool, now=101.0)  # too soon: not sampled again
    assert m["fleet_queue_depth"].count(pool="gpu") == 1


def test_a_restarted_supervisor_goes_on_with_the_same_trace_and_task_span(tmp_path: Path) -> None:
    """Spans of a task whose supervisor restarted join the trace and task span it had."""
    before = run_task(tmp_path / "a").exporter.get_finished_spans()
    (task_before,) = by_name(list(before), "task")
    exporter = InMemorySpanExporter()
    tracer = TaskTracer(ReadableSink([SimpleSpanProcessor(exporter)]), "pf")
    sched = Scheduler(CONFIG, FleetSettings(memory=False))
    submitted = sched.submit(TaskSpec.model_validate(two_attempts_and_a_handoff()))
    submitted.seq = 0
    sched.apply(submitted)
    tracer.prime(sched.tasks.records())  # as a new life after replaying the log
    tracer.observe(
        [Event(task_id="t1", type=EventType.task_cancelled, seq=1, payload={"reason": "r"})]
    )
    (task_after,) = by_name(list(exporter.get_finished_spans()), "task")
    assert task_after.context.trace_id == task_before.context.trace_id
    assert task_after.context.span_id == task_before.context.span_id
    assert task_after.start_time == int(submitted.ts.timestamp() * 1e6) * 1000
    assert task_after.attributes["fleet.state"] == "cancelled"


def test_every_metric_is_named_in_the_readme() -> None:
    missing = [d.name for d in METRICS if f"`ray_{d.name}" not in README]
    assert missing == []


def test_a_failing_span_processor_or_sink_does_not_stop_the_feed() -> None:
    class Broken:
        def on_end(self, span: ReadableSpan) -> None:
            raise RuntimeError("collector down")

    exporter = InMemorySpanExporter()
    tracer = TaskTracer(ReadableSink([Broken(), SimpleSpanProcessor(exporter)]), "f")
    sched = Scheduler(FleetConfig(), FleetSettings(memory=False))
    submitted = sched.submit(TaskSpec(id="t", prompt="x"))
    tracer.observe([submitted, Event(task_id="t", type=EventType.task_cancelled)])
    assert [s.name for s in exporter.get_finished_spans()] == ["task"]

    def refuse(span: SpanData) -> None:
        raise RuntimeError("no")

    tracer = TaskTracer(refuse, "f")
    tracer.observe([submitted, Event(task_id="t", type=EventType.task_cancelled)])
    assert tracer.tasks == {}


def test_spans_reach_the_exporter_in_batches_and_the_sampler_picks_tasks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OTEL_TRACES_SAMPLER", raising=False)
    sent: list[list[SpanData]] = []
    closed: list[bool] = []

    def exporter(fleet: str) -> tuple[Any, Any]:
        assert fleet == "f"
        return sent.append, lambda: closed.append(True)

    settings = FleetSettings(name="f", memory=False, tracing=True, metrics=False)
    sched = Scheduler(FleetConfig(), settings)
    telemetry = Telemetry.for_fleet(settings, sched.tasks, make_exporter=exporter)
    assert telemetry.metrics is None and telemetry.tracer is not None
    assert telemetry.spans is not None
    telemetry.spans.max_batch = 3
    for n in range(4):
        submitted = sched.submit(TaskSpec(id=f"t{n}", prompt="x"))
        telemetry.observe([submitted, Event(task_id=f"t{n}", type=EventType.task_cancelled)])
    assert [len(batch) for batch in sent] == [3]  # a full batch goes at once
    telemetry.tick(sched, WorkerPool(), now=0.0)
    assert [len(batch) for batch in sent] == [3, 1]
    telemetry.close()
    assert closed == [True]
    assert {span.trace_id for batch in sent for span in batch} == {
        trace_id_of("f", f"t{n}") for n in range(4)
    }
    # A quarter of the tasks, by trace id.
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.25")
    assert sampler_ratio() == 0.25
    kept: list[SpanData] = []
    tracer = TaskTracer(kept.append, "f", ratio=sampler_ratio())
    for n in range(400):
        submitted = sched.submit(TaskSpec(id=f"s{n}", prompt="x"))
        tracer.observe([submitted, Event(task_id=f"s{n}", type=EventType.task_cancelled)])
    assert 60 < len(kept) < 140
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    assert sampler_ratio() == 0.0
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "jaeger_remote")
    with pytest.raises(TelemetryError, match="jaeger_remote"):
        sampler_ratio()


def test_the_otel_variables_choose_the_exporter(monkeypatch: pytest.MonkeyPatch) -> None:
    from actors.tracing import tracing_enabled

    for name in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SDK_DISABLED"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    assert not tracing_enabled(FleetSettings())  # off by default
    assert tracing_enabled(FleetSettings(tracing=True))
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    assert tracing_enabled(FleetSettings())
    assert not tracing_enabled(FleetSettings(tracing=False))
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert not tracing_enabled(FleetSettings(tracing=True))
    monkeypatch.delenv("OTEL_SDK_DISABLED")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    assert not tracing_enabled(FleetSettings()) and span_processors() == []
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp,console")
    processors = span_processors()
    assert [type(p.span_exporter).__name__ for p in processors] == [
        "OTLPSpanExporter",
        "ConsoleSpanExporter",
    ]
    for processor in processors:
        processor.shutdown()
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin")
    with pytest.raises(TelemetryError, match="zipkin"):
        exporter_plan()
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
    with pytest.raises(TelemetryError, match="http/json"):
        exporter_plan()
    # The fleet refuses to start on such a variable (not at its first export).
    with pytest.raises(TelemetryError, match="http/json"):
        Telemetry.for_fleet(
            FleetSettings(tracing=True), TaskTable(), make_exporter=lambda _: (print, print)
        )


def test_a_parked_session_resumed_after_approval_and_a_cancel_under_a_session() -> None:
    """Park and resume: the approval and the wait on a person are spans of the task, the
    call cut short by the park ends unfinished, the resumed session runs it; a task
    cancelled under a running session ends that session unfinished."""
    exporter = InMemorySpanExporter()
    tracer = TaskTracer(ReadableSink([SimpleSpanProcessor(exporter)]), "f")
    sched = Scheduler(FleetConfig(), FleetSettings(memory=False))
    start = time.time()
    clock = iter(range(1000))

    def at(type_: EventType, session: str | None = None, **fields: Any) -> Event:
        ts = datetime.fromtimestamp(start + next(clock), UTC)
        return Event(task_id="p", type=type_, session_id=session, ts=ts, **fields)

    call = {"call_id": "c1", "turn": 1}
    tracer.observe(
        [
            sched.submit(TaskSpec(id="p", prompt="x")),
            at(EventType.task_assigned, "s1", attempt=1, payload={"agent": "a"}),
            at(EventType.usage, "s1", duration_ms=500.0, payload={"turn": 1, "model": "m"}),
            at(EventType.agent_tool_use, "s1", tool="shell", payload=call),
            at(EventType.approval_requested, "s1", tool="shell", payload=call),
            at(
                EventType.session_ended,
                "s1",
                payload={"status": "failed", "outcome": "parked", "reason": "awaits approval"},
            ),
            at(EventType.task_parked, "s1", payload={"state": "awaiting_approval"}),
            at(EventType.approval_decided, "s1", payload={"call_id": "c1", "allow": True}),
            at(EventType.task_retried, "s1", payload={"reason": "resumed", "resume": True}),
            at(EventType.task_assigned, "s2", attempt=1, payload={"agent": "a"}),
            at(EventType.agent_tool_result, "s2", tool="shell", duration_ms=200.0, payload=call),
            at(EventType.usage, "s2", duration_ms=100.0, payload={"turn": 2, "model": "m"}),
            at(EventType.task_cancelled, payload={"reason": "enough"}),
        ]
    )
    spans = list(exporter.get_finished_spans())
    (task,) = by_name(spans, "task")
    assert task.status.status_code == StatusCode.UNSET
    assert task.attributes["fleet.state"] == "cancelled"
    names = [s.name for s in children(spans, task)]
    assert names == ["session", "approval", "parked", "session"]
    first, approval, parked, second = children(spans, task)
    assert first.status.status_code == StatusCode.OK  # parked: no error
    assert first.attributes["fleet.outcome"] == "parked"
    assert approval.attributes["fleet.allow"] is True
    assert parked.attributes["fleet.state"] == "awaiting_approval"
    assert parked.end_time == second.start_time - 1_000_000_000  # until the task was requeued
    (cut_call,) = [c for t in children(spans, first) for c in children(spans, t)]
    assert cut_call.attributes["fleet.unfinished"] == "session parked"
    resumed_call, turn = children(spans, second)
    assert (
        resumed_call.name == "tool call" and resumed_call.attributes["gen_ai.tool.call.id"] == "c1"
    )
    assert turn.name == "model turn" and turn.attributes["fleet.turn"] == 2
    assert second.attributes["fleet.unfinished"] == "task cancelled"
    assert second.status.status_code == StatusCode.UNSET
    assert tracer.tasks == {}
