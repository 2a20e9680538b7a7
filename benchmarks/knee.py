"""Where one supervisor ends: ``python -m benchmarks.knee``.

A real fleet (its supervisor actor on a local Ray, loopback only) driven by *simulated*
workers: ``--procs`` Ray actors each run hundreds of asyncio coroutines that speak the
worker protocol (``next_assignment`` with the last result, ``ingest``, ``heartbeat``)
without a sandbox or a model. Each session emits a real session's event mix:
``session.started``, then every ``--tool-every-s`` (2 s) one model turn (``usage``) and one
tool call (``agent.tool_use`` + ``agent.tool_result``) shipped in one ``ingest``, then
``session.ended`` riding on the result, as a worker's batcher does.

The number of concurrent sessions steps up (``--steps``: 50, 100, 200, ...). A step adds
workers (their first sessions spread over one session length), waits that long, then
measures for ``--measure-s``: the dispatch latency (a worker's ``next_assignment`` call,
result in, next assignment out, while tasks are always queued), the ``ingest`` latency,
events/s through the supervisor and the supervisor's CPU. The knee is the last step whose
dispatch p99 stays within ``--p99-ms`` (100 ms); the run stops at the first step over it
(``--all``: run every step). Defaults finish in about 2 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import shutil
import statistics
import tempfile
import time
from typing import Any

import ray

from core.events import Event, EventType, encode_events
from core.records import Assignment, SessionOutcome, SessionResult
from core.settings import PoolSpec
from fleet import Fleet

SIM_POOL = PoolSpec(name="simulated", workers=1, labels=["simulated"])
"""The pool the simulated workers join; tasks ask for its label, so the fleet's one real
worker (its ``real`` pool offers no label) never takes them."""


@ray.remote(num_cpus=0)
class SimulatedWorkers:
    """Many workers in one process: each a coroutine that pulls, 'runs' and reports."""

    def __init__(
        self, supervisor: Any, session_s: float, tool_every_s: float, heartbeat_s: float
    ) -> None:
        self.supervisor = supervisor
        self.session_s = session_s
        self.tool_every_s = tool_every_s
        self.heartbeat_s = heartbeat_s
        self.dispatch: list[tuple[float, float]] = []
        """(when it returned, ms) of every next_assignment call that got a task"""
        self.ingests: list[tuple[float, float, int]] = []
        """(when it returned, ms, events) of every ingest call"""
        self.tasks: set[asyncio.Task[None]] = set()

    async def add(self, worker_ids: list[str], spread_s: float) -> int:
        """Start these workers, each after a random pause within ``spread_s``."""
        for worker_id in worker_ids:
            task = asyncio.create_task(self._worker(worker_id, random.uniform(0, spread_s)))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        return len(self.tasks)

    async def _worker(self, worker_id: str, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        beat = asyncio.create_task(self._heartbeat(worker_id))
        result: SessionResult | None = None
        try:
            while True:
                t0 = time.perf_counter()
                assignment = await self.supervisor.next_assignment.remote(worker_id, result)
                if assignment is None:  # the supervisor says stop
                    return
                self.dispatch.append((time.time(), (time.perf_counter() - t0) * 1000))
                result = await self._session(worker_id, assignment)
        finally:
            beat.cancel()

    async def _heartbeat(self, worker_id: str) -> None:
        await asyncio.sleep(random.uniform(0, self.heartbeat_s))
        while True:
            await self.supervisor.heartbeat.remote(worker_id)
            await asyncio.sleep(self.heartbeat_s)

    async def _ship(self, events: list[Event]) -> None:
        t0 = time.perf_counter()
        await self.supervisor.ingest.remote(encode_events(events))  # as EventBatcher sends
        self.ingests.append((time.time(), (time.perf_counter() - t0) * 1000, len(events)))

    async def _session(self, worker_id: str, a: Assignment) -> SessionResult:
        """One session's events, a tool call every ``tool_every_s``; its result."""
        common: dict[str, Any] = {
            "task_id": a.task.id,
            "session_id": a.session_id,
            "attempt": a.attempt,
            "worker": worker_id,
        }
        started = time.perf_counter()
        begin = {
            "agent": a.agent.name,
            "model": a.agent.model,
            "environment": a.environment.name,
            "sandbox_kind": "simulated",
            "stage": a.stage,
            "resumed": False,
            "secrets": [],
        }
        await self._ship([Event(type=EventType.session_started, payload=begin, **common)])
        calls = max(1, round(self.session_s / self.tool_every_s))
        for turn in range(1, calls + 1):
            await asyncio.sleep(self.tool_every_s * random.uniform(0.9, 1.1))
            call = {"call_id": f"c{turn}", "turn": turn}
            await self._ship(
                [
                    Event(
                        type=EventType.usage,
                        payload={"cached_input_tokens": 0, "model": a.agent.model, "turn": turn},
                        tokens_in=1500 + 200 * turn,
                        tokens_out=120,
                        cost_usd=0.0,
                        duration_ms=900.0,
                        **common,
                    ),
                    Event(
                        type=EventType.agent_tool_use,
                        payload={**call, "args": {"command": "pytest -q tests/test_x.py"}},
                        tool="shell",
                        **common,
                    ),
                    Event(
                        type=EventType.agent_tool_result,
                        payload={**call, "is_error": False, "output": "." * 40 + " 40 passed"},
                        tool="shell",
                        exit_code=0,
                        duration_ms=20.0,
                        **common,
                    ),
                ]
            )
        duration_ms = (time.perf_counter() - started) * 1000
        ended = {
            "status": "succeeded",
            "outcome": "finished",
            "agent": a.agent.name,
            "turns": calls,
            "tool_calls": calls,
        }
        return SessionResult(
            status="succeeded",
            outcome=SessionOutcome(
                status="finished", summary="done", turns=calls, tool_calls=calls
            ),
            duration_ms=duration_ms,
            events=[
                Event(
                    type=EventType.session_ended,
                    payload=ended,
                    duration_ms=duration_ms,
                    **common,
                )
            ],
            **common,
        )

    def samples(self, since: float, until: float) -> tuple[list[float], list[float], int]:
        """Dispatch and ingest latencies (ms) returned within [since, until), and the events
        ingested then."""
        dispatch = [ms for at, ms in self.dispatch if since <= at < until]
        window = [(ms, n) for at, ms, n in self.ingests if since <= at < until]
        return dispatch, [ms for ms, _ in window], sum(n for _, n in window)

    # What the supervisor may ask of a worker: nothing to do here.
    def deliver(self, session_id: str, kind: str, data: Any) -> bool:
        return False

    def stop_session(self, session_id: str, reason: str = "") -> bool:
        return False

    def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()

    def pid(self) -> int:
        return os.getpid()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def submit(fleet: Fleet, prefix: str, count: int) -> None:
    """Queue ``count`` tasks only simulated workers take, in chunks."""
    tasks = [
        {"id": f"{prefix}-{i}", "prompt": "simulated", "requires": ["simulated"]}
        for i in range(count)
    ]
    for start in range(0, count, 2000):
        out = fleet.submit(tasks[start : start + 2000], batch=prefix)
        if out.rejected:
            raise SystemExit(f"tasks rejected: {out.rejected[0]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="50,100,200,400,800,1600", help="sessions per step")
    parser.add_argument("--procs", type=int, default=2, help="processes of simulated workers")
    parser.add_argument("--session-s", type=float, default=8.0, help="length of a session")
    parser.add_argument("--tool-every-s", type=float, default=2.0, help="a tool call this often")
    parser.add_argument("--measure-s", type=float, default=8.0, help="measured time per step")
    parser.add_argument("--p99-ms", type=float, default=100.0, help="dispatch p99 threshold")
    parser.add_argument("--all", action="store_true", help="run every step past the knee")
    parser.add_argument("--keep-events", action="store_true", help="keep the run's event log")
    args = parser.parse_args()
    steps = [int(s) for s in args.steps.split(",")]
    events_dir = tempfile.mkdtemp(prefix="fleet-knee-")
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(
        logging.ERROR
    )
    ray.init(
        namespace="agent-fleet",
        include_dashboard=False,
        _node_ip_address="127.0.0.1",  # loopback only
        logging_level=logging.WARNING,
        log_to_driver=False,
    )
    t_start = time.perf_counter()
    fleet = Fleet.start(
        name="knee",
        sandbox="local",
        warm_pool=0,
        memory=False,
        tracing=False,
        events_dir=events_dir,
        pools=[PoolSpec(name="real", workers=1)],  # takes none of the simulated tasks
    )
    sup_pid = ray.get(fleet.supervisor.pid.remote())
    heartbeat_s = fleet.settings.heartbeat_s
    sims = [
        SimulatedWorkers.remote(fleet.supervisor, args.session_s, args.tool_every_s, heartbeat_s)
        for _ in range(args.procs)
    ]
    sim_pids = ray.get([s.pid.remote() for s in sims])
    print(
        f"one supervisor (pid {sup_pid}), {args.procs} processes of simulated workers, "
        f"sessions of {args.session_s:g} s with a tool call every {args.tool_every_s:g} s; "
        f"{os.cpu_count()} cores; Ray at {ray.nodes()[0]['NodeManagerAddress']}; "
        f"events at {events_dir} (removed at the end unless --keep-events)",
        flush=True,
    )
    header = (
        f"{'sessions':>9}{'dispatches':>11}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}"
        f"{'ingest p99':>11}{'events/s':>10}{'sup cpu':>9}{'sims cpu':>9}"
    )
    rows: list[str] = []
    knee: int | None = None
    over = False
    workers = 0
    try:
        for n, sessions in enumerate(steps):
            add = sessions - workers
            for i, sim in enumerate(sims):
                share = add // len(sims) + (1 if i < add % len(sims) else 0)
                if share:
                    own = ray.get(
                        fleet.supervisor.attach_simulated_workers.remote(sim, share, SIM_POOL)
                    )
                    ray.get(sim.add.remote(own, args.session_s))
            workers = sessions
            # Enough queued that no worker ever waits for work: the step's sessions and more.
            per_worker = (args.session_s + args.measure_s) / args.session_s + 2
            submit(fleet, f"k{n}", int(sessions * per_worker))
            print(f"step {n + 1}/{len(steps)}: {sessions} sessions, warming up", flush=True)
            time.sleep(args.session_s)
            since = time.time()
            sup0 = cpu_seconds(sup_pid)
            sims0 = sum(cpu_seconds(p) for p in sim_pids)
            time.sleep(args.measure_s)
            until = time.time()
            sup_cpu = (cpu_seconds(sup_pid) - sup0) / (until - since)
            sims_cpu = (sum(cpu_seconds(p) for p in sim_pids) - sims0) / (until - since)
            dispatch: list[float] = []
            ingest: list[float] = []
            events = 0
            for d, i_ms, e in ray.get([s.samples.remote(since, until) for s in sims]):
                dispatch += d
                ingest += i_ms
                events += e
            queued = fleet.status().get("counts", {}).get("queued", -1)
            p99 = pct(dispatch, 0.99)
            row = (
                f"{sessions:>9}{len(dispatch):>11}{pct(dispatch, 0.5):>9.1f}{p99:>9.1f}"
                f"{max(dispatch, default=float('nan')):>9.1f}{pct(ingest, 0.99):>11.1f}"
                f"{events / (until - since):>10.0f}{sup_cpu:>8.0%} {sims_cpu:>8.0%}"
            )
            rows.append(row)
            print(header if n == 0 else "", end="\n" if n == 0 else "")
            print(row + ("" if queued else "  (queue ran dry)"), flush=True)
            if p99 > args.p99_ms:
                over = True
                if not args.all:
                    break
            elif not over:
                knee = sessions
            if statistics.fmean(dispatch or [0.0]) > 10 * args.p99_ms:
                break  # far past it: the next step would only take longer
    finally:
        fleet.shutdown()
        ray.shutdown()
        if not args.keep_events:
            shutil.rmtree(events_dir, ignore_errors=True)
    print()
    print(header)
    for row in rows:
        print(row)
    if knee is None:
        print(f"knee: below {steps[0]} sessions (dispatch p99 over {args.p99_ms:g} ms at once)")
    elif not over:
        print(f"knee: above {knee} sessions (dispatch p99 within {args.p99_ms:g} ms throughout)")
    else:
        print(
            f"knee: {knee} concurrent sessions per supervisor (the last step with dispatch "
            f"p99 <= {args.p99_ms:g} ms)"
        )
    print(f"whole run: {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
