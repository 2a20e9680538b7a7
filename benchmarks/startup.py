"""How long a fleet takes to start, next to bare Ray: ``python -m benchmarks.startup``.

Each a fresh process, ``--runs`` times (medians printed, the two interleaved):

- **bare Ray**: ``ray.init()`` and one call to a new actor, until its answer;
- **fleet**: ``fleet run`` of one task (the scripted model finishes at once, local sandbox),
  from the command's start to its first ``session.started`` event, and to its exit.

Target: the fleet's first session within 1.5x of bare Ray's first actor answer.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from core.analytics import connect

BARE = """
import time, ray
t0 = time.perf_counter()
ray.init(include_dashboard=False, log_to_driver=False)

@ray.remote(num_cpus=0)
class Echo:
    def ping(self):
        return 1

ray.get(Echo.remote().ping.remote())
print(time.perf_counter() - t0)
"""


def bare() -> float:
    """Seconds from the process's first line to the actor's first answer."""
    done = subprocess.run([sys.executable, "-c", BARE], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-2000:])
    return float(done.stdout.strip().splitlines()[-1])


def fleet(folder: Path, run: int) -> tuple[float, float]:
    """Seconds from ``fleet run``'s start to its first session, and to its exit."""
    batch = folder / "one.jsonl"
    task = {"id": "t", "prompt": "x", "script": [{"tool": "finish", "args": {"summary": "ok"}}]}
    batch.write_text(json.dumps(task) + "\n")
    events = folder / f"events-{run}"
    command = [sys.executable, "-m", "fleet.cli", "run", str(batch), "--workers", "1"]
    command += ["--sandbox", "local", "--events", str(events)]
    started = datetime.now().astimezone()
    t0 = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    total = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(done.stderr[-2000:])
    [(first,)] = (
        connect(str(events))
        .execute("SELECT min(ts) FROM events WHERE type = 'session.started'")
        .fetchall()
    )
    return (first - started).total_seconds(), total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    bares, firsts, totals = [], [], []
    with tempfile.TemporaryDirectory(prefix="fleet-bench-startup-") as tmp:
        for run in range(args.runs):
            bares.append(bare())
            first, total = fleet(Path(tmp), run)
            firsts.append(first)
            totals.append(total)
            print(f"  run {run + 1}: bare {bares[-1]:.2f} s, fleet first session {first:.2f} s")
    b, f, t = (statistics.median(x) for x in (bares, firsts, totals))
    print(f"\nbare ray.init + one actor call  {b:6.2f} s")
    print(f"fleet run: first session        {f:6.2f} s   ({f / b:.2f}x bare; target <= 1.5x)")
    print(f"fleet run: whole command        {t:6.2f} s")


if __name__ == "__main__":
    main()
