"""Fleet throughput and submit-to-running latency, next to bare Ray actor round trips.

    python -m benchmarks.orchestration [--workers 4] [--tasks 2000] [--probes 200]

Throughput: a bulk submit of trivial one-turn tasks (the scripted model calls ``finish``),
timed from submit to the last task's end. Latency: single tasks submitted one at a time to
an idle fleet, from the ``task.submitted`` event to the ``session.started`` event.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import ray

from core.analytics import connect
from fleet import Fleet

ONE_TURN = [{"tool": "finish", "args": {"summary": "done"}}]


@ray.remote(num_cpus=0)
class Echo:
    def ping(self, x: int) -> int:
        return x


def bare_ray_round_trip(n: int = 2000) -> tuple[float, float]:
    echo = Echo.remote()
    ray.get(echo.ping.remote(0))
    t0 = time.perf_counter()
    for i in range(n):
        ray.get(echo.ping.remote(i))
    sync_ms = (time.perf_counter() - t0) / n * 1000
    t0 = time.perf_counter()
    ray.get([echo.ping.remote(i) for i in range(n)])
    pipelined_ms = (time.perf_counter() - t0) / n * 1000
    ray.kill(echo)
    return sync_ms, pipelined_ms


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--probes", type=int, default=200)
    args = parser.parse_args()
    events_dir = tempfile.mkdtemp(prefix="fleet-bench-")

    with Fleet.start(workers=args.workers, sandbox="local", events_dir=events_dir) as fleet:
        sync_ms, pipelined_ms = bare_ray_round_trip()

        tasks = [
            {"id": f"bulk-{i}", "prompt": "noop", "script": ONE_TURN} for i in range(args.tasks)
        ]
        t0 = time.perf_counter()
        ids = fleet.submit(tasks, batch="bulk").accepted
        done = fleet.wait(ids)
        bulk_s = time.perf_counter() - t0
        assert all(r.state == "succeeded" for r in done), "a benchmark task failed"

        for i in range(args.probes):
            probe = fleet.submit(
                [{"id": f"probe-{i}", "prompt": "noop", "script": ONE_TURN}], batch="probe"
            ).accepted
            fleet.wait(probe)
        fleet.flush()

    con = connect(events_dir)
    rows = con.execute(
        """
        SELECT task_id,
               epoch(min(ts) FILTER (WHERE type = 'session.started')
                     - min(ts) FILTER (WHERE type = 'task.submitted')) * 1000 AS ms
        FROM events WHERE task_id LIKE 'probe-%' GROUP BY task_id
        """
    ).fetchall()
    latencies = [r[1] for r in rows]
    bulk_rows = con.execute(
        """
        SELECT epoch(min(ts) FILTER (WHERE type = 'session.started')
                     - min(ts) FILTER (WHERE type = 'task.submitted')) * 1000
        FROM events WHERE task_id LIKE 'bulk-%' GROUP BY task_id
        """
    ).fetchall()
    bulk_lat = [r[0] for r in bulk_rows]

    print(f"workers: {args.workers}, local sandbox, scripted model, one-turn tasks")
    print(f"bare Ray actor round trip:  sync {sync_ms:.3f} ms, pipelined {pipelined_ms:.3f} ms")
    print(
        f"bulk: {args.tasks} tasks in {bulk_s:.2f} s = {args.tasks / bulk_s:.0f} tasks/s "
        f"({bulk_s / args.tasks * 1000:.2f} ms per task, "
        f"{bulk_s / args.tasks * 1000 / sync_ms:.1f}x a sync round trip)"
    )
    print(
        f"bulk submit-to-running (includes queueing): p50 {pct(bulk_lat, 0.5):.1f} ms, "
        f"p99 {pct(bulk_lat, 0.99):.1f} ms"
    )
    print(
        f"idle-fleet submit-to-running over {len(latencies)} probes: "
        f"p50 {statistics.median(latencies):.2f} ms, p99 {pct(latencies, 0.99):.2f} ms"
    )


if __name__ == "__main__":
    main()
