"""The supervisor as a manager: makespan with memory vs FIFO, memory with a big queue,
recovery time after a crash.

    python -m benchmarks.manager [--tasks 32] [--queue 100000] [--log 10000]

1. Makespan: a mixed batch whose durations follow a heavy-tailed (Pareto) law, one label per
   duration class, after a history batch taught the supervisor each label's duration. The
   same batch runs with memory on (longest expected first) and off (FIFO); printed as a ratio.
2. Supervisor memory (RSS) with ``--queue`` tasks queued (none can start: a label limit of 0).
3. Recovery: ``--log`` tasks in the event log, the supervisor killed with SIGKILL; the time
   until the restarted supervisor has replayed the log and answers.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import tempfile
import time
from typing import Any

import ray

from fleet import Fleet

CLASSES = {"short": 0.1, "medium": 0.4, "long": 1.6}


def sleeper(seconds: float) -> list[dict]:
    return [
        {"tool": "shell", "args": {"command": f"sleep {seconds:.3f}"}},
        {"tool": "finish", "args": {}},
    ]


def mixed_batch(n: int, prefix: str, seed: int) -> list[dict]:
    rng = random.Random(seed)
    tasks = []
    for i in range(n):
        draw = rng.paretovariate(1.5)  # heavy tail: most short, a few very long
        label = "short" if draw < 1.5 else "medium" if draw < 3 else "long"
        seconds = CLASSES[label] * rng.uniform(0.8, 1.2)
        tasks.append(
            {"id": f"{prefix}{i}", "prompt": "x", "labels": [label], "script": sleeper(seconds)}
        )
    return tasks


def makespan(events_dir: str, tasks: list[dict], memory: bool, workers: int) -> float:
    with Fleet.start(
        workers=workers,
        sandbox="local",
        events_dir=events_dir,
        memory=memory,
        memory_min_runs=2,
        name=f"ms{int(memory)}",
    ) as fleet:
        started = time.perf_counter()
        fleet.wait(fleet.submit(tasks).accepted)
        return time.perf_counter() - started


def held_fleet(name: str) -> Fleet:
    """A one-worker fleet (local sandbox, no memory, its own temporary events directory)
    whose tasks labelled ``held`` queue and never start (that label's limit is 0)."""
    return Fleet.start(
        workers=1,
        sandbox="local",
        events_dir=tempfile.mkdtemp(prefix=f"fleet-bench-{name}-"),
        memory=False,
        label_limits={"held": 0},
        name=name,
    )


def held_tasks(prefix: str, start: int, stop: int) -> list[dict[str, Any]]:
    """Tasks ``prefix<start>`` .. ``prefix<stop - 1>`` labelled ``held``."""
    return [{"id": f"{prefix}{i}", "prompt": "x", "labels": ["held"]} for i in range(start, stop)]


def submit_held(fleet: Fleet, prefix: str, n: int) -> None:
    """Queue ``n`` tasks that never start (their label's limit is 0), 5000 per call."""
    for start in range(0, n, 5000):
        fleet.submit(held_tasks(prefix, start, min(n, start + 5000)))


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def queue_memory(n: int) -> tuple[float, float]:
    with held_fleet("queue") as fleet:
        pid = ray.get(fleet.supervisor.pid.remote())
        before = rss_mib(pid)
        submit_held(fleet, "q", n)
        fleet.flush()
        after = rss_mib(pid)
        assert fleet.status()["counts"]["queued"] == n
    return before, after


def recovery(n: int) -> tuple[float, int]:
    with held_fleet("recover") as fleet:
        submit_held(fleet, "r", n)
        fleet.flush()
        pid = ray.get(fleet.supervisor.pid.remote())
        killed = time.perf_counter()
        os.kill(pid, signal.SIGKILL)
        while True:
            try:
                status = ray.get(fleet.supervisor.status.remote(), timeout=30)
                break
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                time.sleep(0.05)
        elapsed = time.perf_counter() - killed
        return elapsed, status["counts"]["queued"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=32)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--queue", type=int, default=100_000)
    parser.add_argument("--log", type=int, default=10_000)
    args = parser.parse_args()
    ray.init(include_dashboard=False, log_to_driver=False)

    history = tempfile.mkdtemp(prefix="fleet-bench-ms-")
    makespan(history, mixed_batch(24, "h", seed=1), memory=False, workers=args.workers)
    batch = mixed_batch(args.tasks, "m", seed=2)
    fifo = makespan(history, [dict(t, id=f"f-{t['id']}") for t in batch], False, args.workers)
    smart = makespan(history, [dict(t, id=f"s-{t['id']}") for t in batch], True, args.workers)
    work = sum(float(t["script"][0]["args"]["command"].split()[1]) for t in batch)
    print(
        f"makespan of {args.tasks} heavy-tailed tasks ({work:.1f}s of work) on "
        f"{args.workers} workers: FIFO {fifo:.2f}s, memory-ordered {smart:.2f}s, "
        f"ratio {fifo / smart:.2f}x (lower bound {work / args.workers:.2f}s)"
    )

    before, after = queue_memory(args.queue)
    print(
        f"supervisor RSS: {before:.0f} MiB idle, {after:.0f} MiB with {args.queue} tasks "
        f"queued ({(after - before) * 2**20 / args.queue / 1024:.1f} KiB per task)"
    )

    elapsed, queued = recovery(args.log)
    print(
        f"recovery after SIGKILL with {args.log} tasks in the log: {elapsed:.2f}s until the "
        f"restarted supervisor answered ({queued} tasks queued again)"
    )
    ray.shutdown()


if __name__ == "__main__":
    main()
