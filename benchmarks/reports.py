"""How long the reports take over a big history: ``python -m benchmarks.reports``.

Writes a synthetic history (``tests/history.py``: tasks with retries, turns and tool calls,
about 15 events a task) of ``--events`` events (default one million) as Parquet files laid
out like the event log, then times, ``--repeat`` times each (the median is printed):

- ``fleet report`` (the overview, tasks and tools tables),
- ``fleet report --html`` (every chart of the page; target: 3 s over a million events),
- one query over each view (``sessions``, ``tool_calls``, ``turns``),
- a plain ``SELECT count(*) FROM events`` as the yardstick the others are a multiple of.

Then, as the history grows in a running fleet (``--small-files``: a file per roll, ~500
events each), ``fleet report`` and the memory refresh over those small files, over the same
rows after ``EventLog.compact()``, and over one Parquet file of them all, with the ratios to
the one file (target: compacted at most 1.5x).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from actors.memory import Memory
from core import analytics
from core.eventlog import EventLog
from core.report_page import html_report
from core.settings import FleetSettings
from tests.history import write_history

EVENTS_PER_TASK = 14.7
"""About how many events :func:`write_history` writes per task."""


def timed(what: Callable[[], Any], repeat: int) -> float:
    """The median seconds of ``repeat`` runs of ``what``."""
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        what()
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--small-files", type=int, default=500, help="events per small file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fleet-bench-reports-") as tmp:
        root = Path(tmp)
        tasks = int(args.events / EVENTS_PER_TASK)
        print(f"writing a history of ~{args.events:,} events ({tasks:,} tasks)...", flush=True)
        t0 = time.perf_counter()
        written = write_history(root, tasks)
        files = len(list(root.glob("date=*/*.parquet")))
        print(f"  {written:,} events in {files} files, {time.perf_counter() - t0:.1f} s")
        events_dir = str(root)
        cases: list[tuple[str, Callable[[], Any]]] = [
            (
                "count(*) FROM events",
                lambda: analytics.sql(events_dir, "SELECT count(*) FROM events"),
            ),
            ("fleet report", lambda: analytics.report(events_dir)),
            ("fleet report --html", lambda: html_report(events_dir)),
            (
                "sessions by agent",
                lambda: analytics.sql(
                    events_dir, "SELECT agent, count(*), avg(duration_s) FROM sessions GROUP BY 1"
                ),
            ),
            (
                "tool_calls p95 by tool",
                lambda: analytics.sql(
                    events_dir,
                    "SELECT tool, quantile_cont(duration_ms, 0.95) FROM tool_calls GROUP BY 1",
                ),
            ),
            (
                "turns latency by model",
                lambda: analytics.sql(
                    events_dir, "SELECT model, median(latency_ms) FROM turns GROUP BY 1"
                ),
            ),
        ]
        base = None
        print(f"\n{'query':<26}{'median s':>10}{'x count(*)':>12}")
        for name, run in cases:
            seconds = timed(run, args.repeat)
            base = base or seconds
            print(f"{name:<26}{seconds:>10.3f}{seconds / base:>12.1f}", flush=True)
        growing(Path(tmp), tasks, args.small_files, args.repeat)


def growing(tmp: Path, tasks: int, per_file: int, repeat: int) -> None:
    """Report and memory refresh over small files, compacted files and one file."""
    small = tmp / "small"
    print(f"\nthe same history in files of ~{per_file} events...", flush=True)
    write_history(small, tasks, per_file=per_file, writer="bench")
    one = tmp / "one" / "date=2026-11-01"
    one.mkdir(parents=True)
    pq.write_table(pq.read_table(str(small)), one / "seg-bench-00000000.parquet")
    memory = Memory(FleetSettings())

    def figures(root: Path) -> tuple[int, float, float]:
        files = len(list(root.glob("date=*/*.parquet")))
        report = timed(lambda: analytics.report(str(root)), repeat)
        refresh = timed(lambda: memory.refresh(str(root)), repeat)
        return files, report, refresh

    rows = [("small files", figures(small))]
    log = EventLog(str(small), writer="bench", compact_min_files=2)
    t0 = time.perf_counter()
    log.compact()
    compact_s = time.perf_counter() - t0
    log.close()
    rows.append(("compacted", figures(small)))
    rows.append(("one file", figures(tmp / "one")))
    _, one_report, one_refresh = rows[-1][1]
    print(f"  compaction took {compact_s:.1f} s")
    print(f"\n{'layout':<14}{'files':>7}{'report s':>10}{'x one':>7}{'memory s':>10}{'x one':>7}")
    for name, (files, report, refresh) in rows:
        print(
            f"{name:<14}{files:>7}{report:>10.3f}{report / one_report:>7.2f}"
            f"{refresh:>10.3f}{refresh / one_refresh:>7.2f}"
        )


if __name__ == "__main__":
    main()
