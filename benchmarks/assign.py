"""What an assignment costs as blocked tasks pile up: ``python -m benchmarks.assign``.

A plain :class:`actors.scheduler.Scheduler` (no Ray): ``--blocked`` tasks queued that cannot
run (their label is at its limit), then ``--tasks`` runnable ones assigned one by one; prints
the microseconds per assignment with 0, 10,000 and 100,000 blocked tasks, and the ratio to
none blocked (target: about 1, the cost independent of what cannot run yet).
"""

from __future__ import annotations

import argparse
import time

from actors.scheduler import Scheduler
from core.settings import FleetSettings
from core.specs import FleetConfig, TaskSpec


def per_assign_us(blocked: int, tasks: int) -> float:
    sched = Scheduler(FleetConfig(), FleetSettings(label_limits={"held": 0}, memory=False))
    specs = [TaskSpec(id=f"b{i}", prompt="x", labels=["held"], priority=5) for i in range(blocked)]
    specs += [TaskSpec(id=f"r{i}", prompt="x") for i in range(tasks)]
    for spec in specs:
        event = sched.submit(spec)
        event.seq = 0
        sched.apply(event)
    t0 = time.perf_counter()
    for _ in range(tasks):
        picked = sched.assign("w1")
        assert picked is not None and picked[0] is not None
    return (time.perf_counter() - t0) / tasks * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000)
    args = parser.parse_args()
    base = None
    print(f"{'blocked tasks':>14}{'us per assign':>16}{'x none blocked':>16}")
    for blocked in (0, 10_000, 100_000):
        us = per_assign_us(blocked, args.tasks)
        base = base or us
        print(f"{blocked:>14,}{us:>16.1f}{us / base:>16.2f}", flush=True)


if __name__ == "__main__":
    main()
