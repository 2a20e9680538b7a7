"""MCP tool call round trip inside the sandbox vs a built-in ``shell`` call.

    python -m benchmarks.tools [--runs 200] [--sandbox local|docker|both]

For each sandbox backend: the stdio MCP server of the tests (tests/mcp_server.py, the
``mcp`` package) started in the sandbox, then ``--runs`` calls of its ``echo`` tool and as
many ``shell`` calls of ``echo``, each through the agent's ToolBox (argument validation,
the tool, its result), interleaved. Prints p50/p95 of each and the MCP call's overhead over
``shell`` at p50 (negative: the MCP call is faster, no process is started per call), and
how long the server took to start. The docker run installs ``mcp`` in the environment's
image (built once, cached). No timed assertions: figures only.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

from core.specs import EnvironmentSpec, McpServerSpec
from harness.mcp import McpTools
from harness.tools import ToolBox, ToolContext
from sandboxes import docker_available
from sandboxes.base import Sandbox
from sandboxes.local import LocalSandbox

SERVER = Path(__file__).resolve().parent.parent / "tests" / "mcp_server.py"


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def row(label: str, values: list[float]) -> None:
    print(
        f"  {label:<34} p50 {pct(values, 50):8.2f} ms   p95 {pct(values, 95):8.2f} ms"
        f"   (n={len(values)})"
    )


async def measure(sandbox: Sandbox, spec: McpServerSpec, runs: int) -> None:
    started = time.perf_counter()
    async with McpTools([spec], sandbox, 120) as servers:
        start_ms = (time.perf_counter() - started) * 1000
        box = ToolBox(["shell"], extra=servers.tools)
        ctx = ToolContext(sandbox=sandbox)
        calls = {
            "mcp echo": ("mcp__bench__echo", '{"text": "hello"}'),
            "shell echo": ("shell", '{"command": "echo hello"}'),
        }
        times: dict[str, list[float]] = {label: [] for label in calls}
        for n in range(runs + 10):
            for label, (name, args) in calls.items():
                began = time.perf_counter()
                out = await box.call(ctx, name, args)
                elapsed = (time.perf_counter() - began) * 1000
                assert not out.is_error and "hello" in out.text, out.text
                if n >= 10:  # warm-up
                    times[label].append(elapsed)
    print(f"  {'server start (until tools listed)':<34} {start_ms:8.0f} ms")
    for label, values in times.items():
        row(label, values)
    overhead = pct(times["mcp echo"], 50) - pct(times["shell echo"], 50)
    print(f"  {'MCP overhead over shell, p50':<34} {overhead:+8.2f} ms")


async def local(runs: int) -> None:
    print(f"local sandbox ({sys.executable} {SERVER.name})")
    sandbox = LocalSandbox()
    await sandbox.start()
    try:
        spec = McpServerSpec(name="bench", command=sys.executable, args=[str(SERVER)])
        await measure(sandbox, spec, runs)
    finally:
        await sandbox.close()


async def docker(runs: int) -> None:
    from sandboxes.docker import DockerSandbox

    print("docker sandbox (python3 mcp_server.py, mcp in the image)")
    environment = EnvironmentSpec(
        name="bench-mcp", pip=["mcp==2.3.0"], files={"mcp_server.py": SERVER.read_text()}
    )
    sandbox = DockerSandbox(environment, name="bench-mcp")
    await sandbox.start()
    try:
        spec = McpServerSpec(name="bench", command="python3", args=["mcp_server.py"])
        await measure(sandbox, spec, runs)
    finally:
        await sandbox.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--sandbox", choices=["local", "docker", "both"], default="both")
    args = parser.parse_args()
    if args.sandbox in ("local", "both"):
        asyncio.run(local(args.runs))
    if args.sandbox in ("docker", "both"):
        if docker_available():
            asyncio.run(docker(args.runs))
        else:
            print("docker sandbox: skipped (no Docker engine answers)")


if __name__ == "__main__":
    main()
