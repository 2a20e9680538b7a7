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
  then finishes), from start to exit.

Prints the seconds of each, the fleet as a ratio of the peer (target at most 0.45) and of the
floor (target at most 1.3), and where the fleet's time goes, from its events (medians per
task): assignment to the first command, the commands, the end of the session to the task's
final state, plus start-up (command start to the first event) and shutdown (last event to
exit). Needs a Docker engine; the base image is built if missing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

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


def fleet(tasks: int, workers: int, folder: Path) -> tuple[float, dict[str, float]]:
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
    events = folder / f"events-{workers}"
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
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    ended_at = datetime.now().astimezone()
    if done.returncode != 0:
        raise SystemExit(f"{shlex.join(command)} failed:\n{done.stderr[-2000:]}")
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
    first, last = con.execute("SELECT min(ts), max(ts) FROM events").fetchall()[0]
    breakdown = {
        name: statistics.median(row[i] for row in per_task if row[i] is not None) * 1000
        for i, name in enumerate(["acquire_ms", "commands_ms", "end_to_final_ms"])
    }
    breakdown["startup_s"] = (first - started_at).total_seconds()
    breakdown["shutdown_s"] = (ended_at - last).total_seconds()
    return seconds, breakdown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--workers", type=int, nargs="+", default=[4])
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
            fleet_s, parts = fleet(args.tasks, workers, Path(tmp))
            print(f"  fleet (whole `fleet run` command)    {fleet_s:7.1f} s", flush=True)
            print(
                f"  fleet / peer {fleet_s / peer_s:.2f} (target <= 0.45)   "
                f"fleet / floor {fleet_s / floor_s:.2f} (target <= 1.3)"
            )
            print(
                "  fleet, medians per task: acquire {acquire_ms:.0f} ms, commands "
                "{commands_ms:.0f} ms, end -> final {end_to_final_ms:.0f} ms; start-up "
                "{startup_s:.1f} s, shutdown {shutdown_s:.1f} s".format(**parts)
            )


if __name__ == "__main__":
    main()
