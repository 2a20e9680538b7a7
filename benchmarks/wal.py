"""What each ``wal_fsync`` mode costs an append: ``python -m benchmarks.wal``.

For each mode (always, 1ms, 10ms, 100ms, off) and batch size (1 and 100 events of a typical
tool result), appends to an event log in a temporary folder on the local disk (``--dir`` to
choose another) and prints appends/s, events/s, p50 and p99 latency of ``append`` and the
throughput as a share of ``off`` (the median of ``--repeat`` interleaved runs: the machine
may be shared and noisy). In the interval modes the fsync happens in a background
thread, so it shows as contention (the disk, the GIL), not in the append itself.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

from core.eventlog import EventLog
from core.events import Event, EventType

MODES = ["always", "1ms", "10ms", "100ms", "off"]


def events(batch: int, start: int) -> list[Event]:
    return [
        Event(
            task_id="bench",
            seq=start + i,
            type=EventType.agent_tool_result,
            session_id="s1",
            attempt=1,
            worker="w0",
            tool="shell",
            exit_code=0,
            duration_ms=12.5,
            payload={"call_id": f"c{start + i}", "output": "line of output\n" * 12},
        )
        for i in range(batch)
    ]


def counting_fsync() -> tuple[list[int], Callable[[], None]]:
    """Count os.fsync calls (to print them); returns the counter and an undo."""
    count = [0]
    real = os.fsync

    def fsync(fd: Any) -> None:
        count[0] += 1
        real(fd)

    os.fsync = fsync  # type: ignore[assignment]
    return count, lambda: setattr(os, "fsync", real)


def drop_buffered(log: EventLog) -> None:
    """Forget the events appended so far, unrolled: memory stays flat (rolls are not what is
    measured)."""
    for column in log._buffer:
        column.clear()


def run(mode: str, batch: int, appends: int, seconds: float, where: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(dir=where) as root:
        log = EventLog(root, wal_fsync=mode)
        batches = [events(batch, i * batch) for i in range(min(appends, 200))]
        count, undo = counting_fsync()
        latencies: list[float] = []
        started = time.perf_counter()
        try:
            for i in range(appends):
                one = batches[i % len(batches)]
                t0 = time.perf_counter()
                log.append(one)
                latencies.append(time.perf_counter() - t0)
                if i % 200 == 199:
                    drop_buffered(log)
                    if time.perf_counter() - started > seconds:
                        break
            elapsed = time.perf_counter() - started
            drop_buffered(log)
            log.close()
        finally:
            undo()
    latencies.sort()
    done = len(latencies)
    return {
        "mode": mode,
        "batch": batch,
        "appends/s": done / elapsed,
        "events/s": done * batch / elapsed,
        "p50_ms": statistics.median(latencies) * 1e3,
        "p99_ms": latencies[min(done - 1, int(done * 0.99))] * 1e3,
        "fsyncs": count[0],
        "appends": done,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--appends", type=int, default=5000, help="appends per case (cap)")
    parser.add_argument("--seconds", type=float, default=3.0, help="time per case (cap)")
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="folder on the disk")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--repeat", type=int, default=3, help="runs per case; the median is kept")
    args = parser.parse_args()
    modes = args.modes.split(",")
    print(f"event log in a temporary folder under {args.dir} (wal_fsync modes: {modes})")
    header = (
        f"{'mode':>7} {'batch':>5} {'appends/s':>10} {'events/s':>10} {'p50 ms':>8} "
        f"{'p99 ms':>8} {'fsyncs':>7} {'vs off':>7}"
    )
    for batch in (1, 100):
        runs: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
        for _ in range(args.repeat):  # interleaved, so that noise hits every mode alike
            for m in modes:
                runs[m].append(run(m, batch, args.appends, args.seconds, args.dir))
        rows = [sorted(runs[m], key=lambda r: r["appends/s"])[args.repeat // 2] for m in modes]
        off = next((r["appends/s"] for r in rows if r["mode"] == "off"), None)
        print(header)
        for r in rows:
            ratio = f"{r['appends/s'] / off:.2f}" if off else "-"
            print(
                f"{r['mode']:>7} {r['batch']:>5} {r['appends/s']:>10.0f} {r['events/s']:>10.0f} "
                f"{r['p50_ms']:>8.3f} {r['p99_ms']:>8.3f} {r['fsyncs']:>7} {ratio:>7}"
            )


if __name__ == "__main__":
    main()
