"""A docker batch three ways, on the same machine, in one run: ``python -m benchmarks.throughput``.

The workload: ``--tasks`` tasks (default 200) of five shell commands each (small file work
and two ``python3 -c`` starts), ``--workers`` at a time (default 4; ``--workers 4 8`` for
both), in docker sandboxes:

- **peer**: the shape of the popular single-machine harnesses: a thread pool, the docker SDK,
  a fresh container per task (``containers.run``), ``exec_run`` per command, the container
  stopped and removed in the background;
- **floor**: the same commands through the fleet's exec agent, in containers a plain
  thread pool (asyncio here) creates and closes: no Ray, no events, no diff;
- **fleet**: the whole ``fleet run`` command (a scripted model replays the five commands,
  then finishes), from start to exit, with its defaults: a worker resets the container a
  session used and runs its next session in it (``sandbox_reuse``);
- **fleet, new containers** (``--fresh``): the same with ``FLEET_SANDBOX_REUSE=false``, a
  new container per session as the peer and the floor have.

Prints the seconds of each, the fleet as a ratio of the peer (target at most 0.45) and of the
floor (target at most 1.3), the floor as a ratio of the peer (what a container per task
leaves to gain), and where the fleet's time goes, from its events (medians per task):
assignment to the first command, the commands, the end of the session to the task's final
state, the gap between a worker's session end and its next assignment, the share of
sessions that found a warm sandbox and of those whose container had served an earlier
session, plus start-up (command start to the first event) and shutdown (last event to
exit); then the peak memory (RSS) of each long-lived process of the fleet (supervisor,
workers, Ray's daemons), sampled every half second. Needs a Docker engine; the base image is
built if missing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks.soak import RAY_DAEMONS, descendants, role, rss_kb
from core.analytics import connect
from core.specs import EnvironmentSpec
from sandboxes import docker_available
from sandboxes.docker import DockerSandbox
from sandboxes.images import client, ensure_base_image

COMMANDS = [
    "mkdir -p src && printf 'x = 1\\ny = 2\\n' > src/a.py && echo made",
    "python3 -c \"import pathlib; print(len(pathlib.Path('src/a.py').read_text()))\"",
    "wc -l src/a.py && grep -c = src/a.py",
    'python3 -c "print(sum(range(10000)))"',
    "ls -la src > listing.txt && cat listing.txt | wc -l",
]


def peer(tasks: int, workers: int) -> float:
    """Seconds for the batch in the peer shape (thread pool, SDK, container per task)."""
    cli = client()
    image = ensure_base_image(cli)
    reaper = ThreadPoolExecutor(max_workers=workers)

    def one(i: int) -> None:
        container = cli.containers.run(
            image,
            ["sleep", "infinity"],
            detach=True,
            working_dir="/tmp",
            labels={"fleet.bench": "peer"},
        )
        try:
            for command in COMMANDS:
                code, _ = container.exec_run(["sh", "-c", command], workdir="/tmp")
                assert code == 0, (command, code)
        finally:
            reaper.submit(container.remove, force=True)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(one, range(tasks)))
    seconds = time.perf_counter() - t0
    reaper.shutdown(wait=True)  # removal is not timed: it is in the background
    return seconds


def floor(tasks: int, workers: int) -> float:
    """Seconds for the batch through the exec agent in containers a plain pool creates."""

    async def run() -> float:
        gate = asyncio.Semaphore(workers)
        closing: list[asyncio.Task[None]] = []

        async def one(i: int) -> None:
            async with gate:
                sandbox = DockerSandbox(EnvironmentSpec(), name=f"bench-floor-{i}")
                await sandbox.start()
                try:
                    for command in COMMANDS:
                        result = await sandbox.exec(command)
                        assert result.exit_code == 0, (command, result)
                finally:
                    closing.append(asyncio.create_task(sandbox.close()))

        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(tasks)))
        seconds = time.perf_counter() - t0
        await asyncio.gather(*closing)
        return seconds

    return asyncio.run(run())


def fleet(
    tasks: int, workers: int, folder: Path, reuse: bool = True
) -> tuple[float, dict[str, Any]]:
    """Seconds of the whole ``fleet run`` command, and its breakdown from the events."""
    steps = [{"tool": "shell", "args": {"command": c}} for c in COMMANDS]
    steps.append({"tool": "finish", "args": {"summary": "done"}})
    batch = folder / f"tasks-{workers}.jsonl"
    batch.write_text(
        "".join(
            json.dumps({"id": f"t{i}", "prompt": "work", "script": steps}) + "\n"
            for i in range(tasks)
        )
    )
    events = folder / f"events-{workers}-{reuse}"
    command = [
        sys.executable,
        "-m",
        "fleet.cli",
        "run",
        str(batch),
        "--workers",
        str(workers),
        "--sandbox",
        "docker",
        "--events",
        str(events),
    ]
    started_at = datetime.now().astimezone()
    t0 = time.perf_counter()
    env = {**os.environ, "FLEET_SANDBOX_REUSE": str(reuse).lower()}
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    peaks: dict[str, int] = {}
    sampling = threading.Thread(target=sample_rss, args=(process, peaks), daemon=True)
    sampling.start()
    _, stderr = process.communicate()
    seconds = time.perf_counter() - t0
    ended_at = datetime.now().astimezone()
    sampling.join()
    if process.returncode != 0:
        raise SystemExit(f"{shlex.join(command)} failed:\n{stderr[-2000:]}")
    con = connect(str(events))
    per_task = con.execute(
        """
        SELECT
            epoch(min(ts) FILTER (WHERE type = 'agent.tool_use')
                  - min(ts) FILTER (WHERE type = 'task.assigned')) AS acquire,
            epoch(max(ts) FILTER (WHERE type = 'agent.tool_result')
                  - min(ts) FILTER (WHERE type = 'agent.tool_use')) AS commands,
            epoch(max(ts) FILTER (WHERE type = 'task.succeeded')
                  - max(ts) FILTER (WHERE type = 'session.ended')) AS end_to_final
        FROM events GROUP BY task_id
        """
    ).fetchall()
    # A worker's gap: its session's end to its next assignment (work waiting: near zero).
    gaps = con.execute(
        """
        WITH s AS (
            SELECT worker, min(ts) FILTER (WHERE type = 'session.started') AS started,
                   max(ts) FILTER (WHERE type = 'session.ended') AS ended
            FROM events WHERE worker IS NOT NULL GROUP BY worker, session_id
        )
        SELECT epoch(started - lag(ended) OVER (PARTITION BY worker ORDER BY started))
        FROM s
        """
    ).fetchall()
    warm, reused = con.execute(
        "SELECT avg(CAST(json_extract(payload, '$.sandbox_warm') AS BOOLEAN)::INT), "
        "avg(CAST(json_extract(payload, '$.sandbox_reused') AS BOOLEAN)::INT) "
        "FROM events WHERE type = 'session.ended'"
    ).fetchone()
    first, last = con.execute("SELECT min(ts), max(ts) FROM events").fetchall()[0]
    breakdown = {
        name: statistics.median(row[i] for row in per_task if row[i] is not None) * 1000
        for i, name in enumerate(["acquire_ms", "commands_ms", "end_to_final_ms"])
    }
    breakdown["gap_ms"] = statistics.median(g for (g,) in gaps if g is not None) * 1000
    breakdown["warm_pct"] = 100 * (warm or 0)
    breakdown["reused_pct"] = 100 * (reused or 0)
    breakdown["startup_s"] = (first - started_at).total_seconds()
    breakdown["shutdown_s"] = (ended_at - last).total_seconds()
    breakdown["rss_mib"] = {name: kb / 1024 for name, kb in sorted(peaks.items())}
    return seconds, breakdown


def sample_rss(process: subprocess.Popen[str], peaks: dict[str, int]) -> None:
    """Peak RSS (KiB) per long-lived process role below ``process`` until it exits."""
    while process.poll() is None:
        for pid in [process.pid, *descendants(process.pid)]:
            name = "fleet run (driver)" if pid == process.pid else role(pid)
            kb = rss_kb(pid)
            if name is None or kb is None or name == "ray::IDLE":
                continue
            if name.startswith("ray::") or name in (*RAY_DAEMONS, "fleet run (driver)"):
                peaks[name] = max(peaks.get(name, 0), kb)
        time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--workers", type=int, nargs="+", default=[4, 8])
    parser.add_argument(
        "--fresh", action="store_true", help="also run the fleet with a new container per session"
    )
    args = parser.parse_args()
    if not docker_available():
        raise SystemExit("needs a Docker engine (scripts/ci-docker.sh starts one)")
    with tempfile.TemporaryDirectory(prefix="fleet-bench-throughput-") as tmp:
        for workers in args.workers:
            print(
                f"\n{args.tasks} tasks x {len(COMMANDS)} commands, {workers} at a time", flush=True
            )
            peer_s = peer(args.tasks, workers)
            print(f"  peer  (thread pool, SDK, exec_run)   {peer_s:7.1f} s", flush=True)
            floor_s = floor(args.tasks, workers)
            print(f"  floor (exec agent, plain pool)       {floor_s:7.1f} s", flush=True)
            runs = [("fleet (whole `fleet run` command)", True)]
            if args.fresh:
                runs.append(("fleet, a new container per session", False))
            for label, reuse in runs:
                fleet_s, parts = fleet(args.tasks, workers, Path(tmp), reuse)
                print(f"  {label:36s} {fleet_s:7.1f} s", flush=True)
                report(fleet_s, peer_s, floor_s, parts)


def report(fleet_s: float, peer_s: float, floor_s: float, parts: dict[str, Any]) -> None:
    print(
        f"    fleet / peer {fleet_s / peer_s:.2f} (target <= 0.45)   "
        f"fleet / floor {fleet_s / floor_s:.2f} (target <= 1.3)   "
        f"floor / peer {floor_s / peer_s:.2f}"
    )
    print(
        "    medians per task: acquire {acquire_ms:.0f} ms, commands {commands_ms:.0f} ms, "
        "end -> final {end_to_final_ms:.0f} ms, worker's session end -> next session "
        "{gap_ms:.0f} ms; sessions with a warm sandbox {warm_pct:.0f}%, in a reused "
        "container {reused_pct:.0f}%; start-up {startup_s:.1f} s, shutdown "
        "{shutdown_s:.1f} s".format(**parts)
    )
    rss = ", ".join(f"{name} {mib:.0f}" for name, mib in parts["rss_mib"].items())
    print(f"    peak RSS (MiB): {rss}", flush=True)


if __name__ == "__main__":
    main()
