"""One supervisor's limits (issue 16, item 4): ``python -m benchmarks.limits``.

    python -m benchmarks.limits [--dispatch 10000] [--chunk 1000] [--events 200000]
                                [--producers 4] [--batch 200] [--queue 100000]
                                [--blocked 100000] [--only dispatch,events,queue,assign]

Prints each figure with its target and the ratio figure / target (>= 1 meets it, or <= 1
for the memory target):

1. **Bulk dispatch** (tasks/s): ``Fleet.submit`` of ``--dispatch`` tasks, ``--chunk`` per
   call, each accepted one validated, numbered, applied and in the event log (WAL) when its
   call returns (none can start: a label limit of 0, so no worker competes). Next to it,
   the same supervisor parts without Ray taking each task from submit to ``task.assigned``
   to ``task.succeeded`` with 8 simulated workers that answer at once (the dispatch cycle a
   fleet of fast workers costs the supervisor). Target: 1,000 tasks/s.
2. **Events appended** (events/s): ``--producers`` Ray actors each send ``--events`` /
   producers events (tool calls and results, like a session's) in batches of ``--batch``
   through the supervisor's ``ingest``, each with two calls in flight, all at once. A batch
   is sent as workers' ``EventBatcher`` sends it (``core.events.encode_events``); the events
   are made and encoded before the clock starts, which stops when every call returned (each
   batch decoded, numbered, redacted, applied, in the WAL, observed and kept for streams).
   Printed beside it: what the encoding cost the producers (µs per event, off the clock),
   then the roll of what is buffered into Parquet (``flush``). Target: 50,000 events/s.
3. **Queue memory** (MiB): the supervisor's RSS with ``--queue`` tasks queued that cannot
   start. Target: <= 300 MiB.
4. **Assignment cost**: microseconds per assignment with ``--blocked`` tasks queued that
   cannot run against none (a plain ``Scheduler``, as in ``benchmarks.assign``). Target: a
   ratio of about 1 (independent of what cannot run yet; <= 1.5 printed as met).

Each fleet is started with ``sandbox="local"`` and its own temporary events directory.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from typing import Any

import ray

from actors.artifacts import ArtifactStore
from actors.commands import Commands
from actors.dispatch import Dispatcher
from actors.journal import Journal
from actors.manager import Manager
from actors.pool import WorkerPool
from actors.scheduler import Scheduler
from actors.streams import LiveStreams
from benchmarks.assign import per_assign_us
from benchmarks.manager import held_fleet, held_tasks, queue_memory
from core.eventlog import EventLog
from core.events import Event, EventType, EventWire, encode_events
from core.records import SessionOutcome, SessionResult
from core.settings import FleetSettings, PoolSpec
from core.specs import FleetConfig


def line(what: str, value: float, unit: str, target: float, higher_is_better: bool = True) -> None:
    """One figure, its target and the ratio (figure / target)."""
    ratio = value / target
    met = ratio >= 1 if higher_is_better else ratio <= 1
    sign = ">=" if higher_is_better else "<="
    print(
        f"{what}: {value:,.0f} {unit} (target {sign} {target:,.0f}; "
        f"ratio {ratio:.2f}, {'met' if met else 'NOT met'})",
        flush=True,
    )


def bulk_submit(n: int, chunk: int) -> float:
    """Tasks/s of ``Fleet.submit`` (accepted and journaled) through the supervisor."""
    with held_fleet("limits-dispatch") as fleet:
        fleet.submit(held_tasks("warm", 0, 10))
        t0 = time.perf_counter()
        accepted = 0
        for start in range(0, n, chunk):
            accepted += len(fleet.submit(held_tasks("d", start, min(n, start + chunk))).accepted)
        elapsed = time.perf_counter() - t0
        assert accepted == n, f"only {accepted} of {n} accepted"
    return n / elapsed


async def dispatch_cycle(n: int, workers: int = 8) -> float:
    """Tasks/s from submit to ``task.succeeded`` through the supervisor's plain parts
    (journal, scheduler, dispatcher; no Ray), ``workers`` simulated workers answering at
    once."""
    root = tempfile.mkdtemp(prefix="fleet-bench-lim-c-")
    settings = FleetSettings(events_dir=root, memory=False)
    sched = Scheduler(FleetConfig(), settings)
    pool = WorkerPool()
    log = EventLog(root, writer="cycle")
    streams = LiveStreams(settings.stream_events, settings.recent_tasks)
    background: list[asyncio.Task[Any]] = []
    journal = Journal(
        sched, log, streams, pool, settings, lambda c: background.append(asyncio.ensure_future(c))
    )

    async def nothing(*_: Any) -> None:
        return None

    manager = Manager(settings, FleetConfig(), sched, pool, nothing, nothing, lambda *_: None)
    dispatch = Dispatcher(
        sched, pool, journal, ArtifactStore(f"{root}/_artifacts"), manager, settings
    )
    commands = Commands(sched, journal.record, None, None, None)  # type: ignore[arg-type]
    pool.open()
    streams.open()
    journal.open()
    for w in range(workers):
        pool.add(f"w{w}", object(), PoolSpec(), time.time())

    async def worker(worker_id: str) -> None:
        result = None
        while True:
            assignment = await dispatch.next_assignment(worker_id, result)
            if assignment is None:  # stopping: every task has ended
                return
            common = {"task_id": assignment.task.id, "session_id": assignment.session_id}
            result = SessionResult(
                **common,
                attempt=assignment.attempt,
                worker=worker_id,
                status="succeeded",
                outcome=SessionOutcome(status="finished", summary="done", turns=1),
                events=[
                    Event(type=EventType.session_started, attempt=assignment.attempt, **common),
                    Event(type=EventType.session_ended, payload={"turns": 1}, **common),
                ],
            )

    async def stop_when_done() -> None:
        while len(sched.finished) < n:
            await streams.wait_finished(sched.finished, n - 1, 1.0)
        pool.stopping = True
        await pool.wake()

    t0 = time.perf_counter()
    tasks = [{"id": f"c{i}", "prompt": "x"} for i in range(n)]
    runners = [asyncio.ensure_future(worker(f"w{w}")) for w in range(workers)]
    runners.append(asyncio.ensure_future(stop_when_done()))
    for start in range(0, n, 1000):
        await commands.submit(tasks[start : start + 1000], "cycle")
    await asyncio.gather(*runners)
    elapsed = time.perf_counter() - t0
    assert sched.counts()["succeeded"] == n, sched.counts()
    await journal.flush()
    log.close()
    return n / elapsed


@ray.remote(num_cpus=0)
class Producer:
    """Sends a session's kind of events to the supervisor in batches, ``in_flight`` calls at
    a time (several sessions' batchers, as one worker node would), each encoded as a
    worker's ``EventBatcher`` sends it. The events are made and encoded before the clock
    starts: what is timed is the supervisor taking them."""

    def __init__(self, supervisor: Any, task_id: str) -> None:
        self.supervisor = supervisor
        self.task_id = task_id
        self.batches: list[EventWire] = []

    def prepare(self, events: int, batch: int) -> float:
        """Make ``events`` events in batches of ``batch`` and encode them; the seconds the
        encoding took (``encode_events``, what a worker pays per batch it ships)."""
        made = [self.batch(i, min(batch, events - i)) for i in range(0, events, batch)]
        t0 = time.perf_counter()
        self.batches = [encode_events(b) for b in made]
        return time.perf_counter() - t0

    def run(self, in_flight: int = 2) -> float:
        t0 = time.perf_counter()
        pending: list[Any] = []
        for batch in self.batches:
            if len(pending) >= in_flight:
                ready, pending = ray.wait(pending, num_returns=1)
                ray.get(ready)
            pending.append(self.supervisor.ingest.remote(batch))
        ray.get(pending)
        self.batches = []
        return time.perf_counter() - t0

    def batch(self, first: int, size: int) -> list[Event]:
        out = []
        for i in range(first, first + size):
            call = f"c{i // 2}"
            if i % 2 == 0:
                out.append(
                    Event(
                        task_id=self.task_id,
                        type=EventType.agent_tool_use,
                        tool="shell",
                        payload={"call_id": call, "args": {"command": f"ls -la src/{i}"}},
                    )
                )
            else:
                out.append(
                    Event(
                        task_id=self.task_id,
                        type=EventType.agent_tool_result,
                        tool="shell",
                        exit_code=0,
                        duration_ms=12.5,
                        payload={"call_id": call, "output": "total 8\nfile.py\n" * 4},
                    )
                )
        return out


def events_rate(events: int, producers: int, batch: int) -> tuple[float, float, float]:
    """Events/s appended through ``ingest`` by concurrent producers; the producers'
    encoding, µs per event; the flush's seconds."""
    with held_fleet("limits-events") as fleet:
        ids = fleet.submit(held_tasks("e", 0, producers)).accepted
        actors = [Producer.remote(fleet.supervisor, task_id) for task_id in ids]
        ray.get([p.prepare.remote(batch, batch) for p in actors])
        ray.get([p.run.remote() for p in actors])  # warm: actors up, code loaded
        each = events // producers
        encoding = sum(ray.get([p.prepare.remote(each, batch) for p in actors]))
        t0 = time.perf_counter()
        ray.get([p.run.remote() for p in actors])
        elapsed = time.perf_counter() - t0
        t1 = time.perf_counter()
        fleet.flush()
        flushed = time.perf_counter() - t1
    return each * producers / elapsed, encoding * 1e6 / (each * producers), flushed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dispatch", type=int, default=10_000)
    parser.add_argument("--chunk", type=int, default=1000)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--producers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--queue", type=int, default=100_000)
    parser.add_argument("--blocked", type=int, default=100_000)
    parser.add_argument("--only", default="dispatch,events,queue,assign")
    args = parser.parse_args()
    only = set(args.only.split(","))
    if only & {"dispatch", "events", "queue"}:
        ray.init(include_dashboard=False, log_to_driver=False)

    if "dispatch" in only:
        rate = bulk_submit(args.dispatch, args.chunk)
        line(
            f"bulk dispatch, Fleet.submit of {args.dispatch:,} tasks ({args.chunk:,} a call)",
            rate,
            "tasks/s",
            1000,
        )
        cycle = asyncio.run(dispatch_cycle(args.dispatch))
        line(
            f"dispatch cycle without Ray, submit -> assigned -> succeeded of {args.dispatch:,} "
            "tasks, 8 instant workers",
            cycle,
            "tasks/s",
            1000,
        )
    if "events" in only:
        rate, encode_us, flushed = events_rate(args.events, args.producers, args.batch)
        line(
            f"events appended through ingest, {args.producers} producers, batches of {args.batch}",
            rate,
            "events/s",
            50_000,
        )
        print(
            f"  the producers' encoding (encode_events, off the clock): {encode_us:.2f} us/event",
            flush=True,
        )
        print(f"  then rolling them into Parquet (flush): {flushed:.2f} s", flush=True)
    if "queue" in only:
        before, after = queue_memory(args.queue)
        line(
            f"supervisor RSS with {args.queue:,} tasks queued (idle {before:.0f} MiB, "
            f"{(after - before) * 1024 / args.queue:.2f} KiB per task)",
            after,
            "MiB",
            300,
            higher_is_better=False,
        )
    if "assign" in only:
        none = per_assign_us(0, 2000)
        blocked = per_assign_us(args.blocked, 2000)
        ratio = blocked / none
        print(
            f"assignment: {none:.1f} us with none blocked, {blocked:.1f} us with "
            f"{args.blocked:,} blocked (target: ratio about 1, <= 1.5; ratio {ratio:.2f}, "
            f"{'met' if ratio <= 1.5 else 'NOT met'})",
            flush=True,
        )
    if ray.is_initialized():
        ray.shutdown()


if __name__ == "__main__":
    main()
