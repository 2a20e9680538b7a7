"""Docker sandbox figures: exec round trip, container start and reset, warm-pool acquire.

    python -m benchmarks.sandboxes [--runs 200]

Prints, for ``true``: the exec agent round trip (p50/p99) next to ``docker exec`` (p50, via
the Docker API, as the docker SDK does it); container create+start until the agent answers,
and its removal; the reset of a used container for the next session (``sandbox_reuse``) next
to a new one's start and removal; and warm pool acquire-to-first-command. Needs a Docker
engine.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import time

from core.specs import EnvironmentSpec
from sandboxes import docker_available
from sandboxes.docker import DockerSandbox
from sandboxes.images import client, ensure_base_image
from sandboxes.pool import WarmPool


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def row(label: str, values: list[float]) -> None:
    print(
        f"{label:<44} p50 {pct(values, 50):8.2f} ms   p99 {pct(values, 99):8.2f} ms"
        f"   (n={len(values)})"
    )


async def exec_agent_times(runs: int) -> tuple[list[float], str]:
    sandbox = DockerSandbox(EnvironmentSpec(), name="bench-exec")
    await sandbox.start()
    try:
        for _ in range(10):
            await sandbox.exec("true")
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            await sandbox.exec("true")
            times.append((time.perf_counter() - started) * 1000)
        assert sandbox.container_id
        return times, sandbox.container_id
    finally:
        await sandbox.close()


def docker_exec_times(runs: int, cli_binary: bool = False) -> list[float]:
    """``docker exec`` of ``true`` in a running container: via the API (create + start +
    inspect, as the SDK does), or via the ``docker`` command line."""
    cli = client()
    container = cli.containers.run(
        ensure_base_image(cli),
        ["sleep", "infinity"],
        detach=True,
        network_mode="none",
        labels={"agent-fleet": "1", "agent-fleet.sandbox": "bench-docker-exec"},
    )
    try:
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            if cli_binary:
                code = subprocess.run(
                    ["docker", "exec", "-u", "1000", container.id, "true"]
                ).returncode
            else:
                code, _ = container.exec_run(["true"], user="1000")
            times.append((time.perf_counter() - started) * 1000)
            assert code == 0
        return times
    finally:
        container.remove(force=True)
        cli.close()


async def start_times(runs: int) -> tuple[list[float], list[float]]:
    """Create+start until the agent answers, and the removal, of ``runs`` containers (ms)."""
    starts, closes = [], []
    for i in range(runs):
        started = time.perf_counter()
        sandbox = DockerSandbox(EnvironmentSpec(), name=f"bench-start-{i}")
        await sandbox.start()
        starts.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        await sandbox.close()
        closes.append((time.perf_counter() - started) * 1000)
    return starts, closes


LEFT_BEHIND = "mkdir -p src/pkg && seq 1000 > src/pkg/data && echo x > /tmp/t && (sleep 300 &)"
"""What a session leaves for the reset: files in the workspace and /tmp, a process."""


async def reset_times(runs: int) -> list[float]:
    sandbox = DockerSandbox(EnvironmentSpec(), name="bench-reset")
    await sandbox.start()
    times = []
    try:
        for _ in range(runs):
            await sandbox.exec(LEFT_BEHIND)
            started = time.perf_counter()
            await sandbox.reset()
            times.append((time.perf_counter() - started) * 1000)
    finally:
        await sandbox.close()
    return times


async def pool_times(runs: int) -> list[float]:
    env = EnvironmentSpec()
    pool = WarmPool(lambda e: DockerSandbox(e, name="bench-pool"), size=2)
    pool.fill(env)
    times = []
    try:
        for _ in range(runs):
            while pool.idle(env) < 1:  # a steady state where the pool keeps up
                await asyncio.sleep(0.05)
            started = time.perf_counter()
            sandbox = await pool.acquire(env)
            await sandbox.exec("true")
            times.append((time.perf_counter() - started) * 1000)
            await sandbox.close()
    finally:
        await pool.close()
    return times


def fleet_batch(
    warm_pool: int, tasks: int, workers: int, probes: int = 0
) -> tuple[float, list[float], list[float]]:
    """Wall time of a batch of ``tasks`` tasks of 5 commands on docker sandboxes, each task's
    time from assignment to its first command (from the event log), and the same for
    ``probes`` single tasks sent one at a time to the idle fleet afterwards."""
    import tempfile

    from core.analytics import connect
    from fleet import Fleet

    events_dir = tempfile.mkdtemp(prefix="fleet-bench-docker-")
    steps = [{"tool": "shell", "args": {"command": f"echo step {i} > s{i}.txt"}} for i in range(5)]
    steps.append({"tool": "finish", "args": {}})
    batch = [{"id": f"t{i}", "prompt": "five commands", "script": steps} for i in range(tasks)]
    with Fleet.start(
        workers=workers, sandbox="docker", warm_pool=warm_pool, events_dir=events_dir
    ) as fleet:
        started = time.perf_counter()
        records = fleet.wait(fleet.submit(batch).accepted)
        wall = time.perf_counter() - started
        assert all(r.state == "succeeded" for r in records), "a benchmark task failed"
        for i in range(probes):
            time.sleep(0.6)  # let the warm pool refill, as between tasks in a calm fleet
            fleet.wait(fleet.submit([{"id": f"p{i}", "prompt": "x", "script": steps}]).accepted)
        fleet.flush()
    sql = """
        SELECT task_id LIKE 'p%' AS probe,
               epoch(min(ts) FILTER (WHERE type = 'agent.tool_use')
                     - min(ts) FILTER (WHERE type = 'task.assigned')) * 1000
        FROM events GROUP BY task_id
    """
    rows = connect(events_dir).execute(sql).fetchall()
    return wall, [r[1] for r in rows if not r[0]], [r[1] for r in rows if r[0]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--starts", type=int, default=10)
    parser.add_argument("--batch", type=int, default=40, help="tasks in the fleet batch (0: skip)")
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    if not docker_available():
        raise SystemExit("no Docker engine answers")
    ensure_base_image()
    agent, _ = asyncio.run(exec_agent_times(args.runs))
    docker_exec = docker_exec_times(max(20, args.runs // 4))
    docker_cli = docker_exec_times(20, cli_binary=True) if shutil.which("docker") else []
    starts, closes = asyncio.run(start_times(args.starts))
    resets = asyncio.run(reset_times(max(20, args.runs // 4)))
    pooled = asyncio.run(pool_times(args.starts))
    print("docker sandbox benchmark ('true' = the no-op command)")
    row("exec 'true' via exec agent", agent)
    row("exec 'true' via docker exec (API)", docker_exec)
    if docker_cli:
        row("exec 'true' via docker exec (CLI)", docker_cli)
    print(f"{'':<44} speed-up at p50: {pct(docker_exec, 50) / pct(agent, 50):.0f}x")
    row("create+start container until agent ready", starts)
    row("remove a container", closes)
    row("reset a used container (files, a process)", resets)
    new = pct(starts, 50) + pct(closes, 50)
    print(f"{'':<44} a new container / a reset at p50: {new / pct(resets, 50):.0f}x")
    row("warm pool: acquire -> first command done", pooled)
    if args.batch:
        warm_wall, warm_first, warm_idle = fleet_batch(1, args.batch, args.workers, probes=20)
        cold_wall, cold_first, cold_idle = fleet_batch(0, args.batch, args.workers, probes=20)
        print(f"fleet batch: {args.batch} tasks x 5 commands on {args.workers} workers (docker)")
        row("  idle fleet, warm pool on:  assign -> 1st cmd", warm_idle)
        row("  idle fleet, warm pool off: assign -> 1st cmd", cold_idle)
        row("  busy batch, warm pool on:  assign -> 1st cmd", warm_first)
        row("  busy batch, warm pool off: assign -> 1st cmd", cold_first)
        print(
            f"  wall time: warm pool on {warm_wall:.2f} s, off {cold_wall:.2f} s, "
            f"ratio off/on {cold_wall / warm_wall:.2f}x"
        )


if __name__ == "__main__":
    main()
