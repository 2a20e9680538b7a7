"""The HTTP endpoint on Ray Serve (one replica, loopback): request rate and latency, and streams.

    python -m benchmarks.serve [--clients 32] [--requests 2000] [--creates 1000] [--streams 100]

- ``GET /v1/fleet/status`` and ``POST /v1/sessions`` at ``--clients`` concurrent clients
  (httpx async). Created sessions name an agent no worker pool takes, so they stay queued:
  the figure is the API plus the supervisor's submit, not agent work.
- ``--streams`` concurrent SSE streams on one running session (scripted model, short shell
  steps): each must receive every event, in order, once; delivery lag is now - event.ts.
- ``--streams`` concurrent fleet-wide streams (``/v1/events/stream``, what dashboards read)
  while another such session runs: each must receive all of its events, with gapless ids.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
from ray import serve

from core.settings import PoolSpec
from core.specs import FleetConfig
from fleet import Fleet
from serve.app import ServeSettings
from serve.deployment import start

TOKEN = "bench-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def load(
    client: httpx.AsyncClient, clients: int, total: int, make: Any
) -> tuple[float, list[float], int]:
    """``total`` requests from ``clients`` concurrent loops: (requests/s, latencies ms, errors)."""
    latencies: list[float] = []
    errors = 0
    counter = iter(range(total))

    async def loop() -> None:
        nonlocal errors
        for n in counter:
            t0 = time.perf_counter()
            response = await make(client, n)
            latencies.append((time.perf_counter() - t0) * 1000)
            errors += response.status_code >= 400

    started = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(clients)))
    return total / (time.perf_counter() - started), latencies, errors


def report(name: str, rps: float, latencies: list[float], errors: int) -> None:
    print(
        f"{name:<28} {rps:8.0f} req/s   p50 {pct(latencies, 0.5):7.1f} ms   "
        f"p99 {pct(latencies, 0.99):7.1f} ms   errors {errors}"
    )


async def sse_messages(response: httpx.Response) -> AsyncIterator[dict[str, str]]:
    """The server-sent messages of a streamed response, each as its fields (id, event, data)."""
    fields: dict[str, str] = {}
    async for line in response.aiter_lines():
        if line:
            key, _, value = line.partition(": ")
            fields[key] = value
        elif fields:
            yield fields
            fields = {}


def lag_ms(event: dict[str, Any]) -> float:
    """How long ago the event happened."""
    return (datetime.now(UTC) - datetime.fromisoformat(event["ts"])).total_seconds() * 1000


async def stream_one(client: httpx.AsyncClient, sid: str) -> tuple[list[int], list[float]]:
    """Read a session's stream to its end: (seqs, lags ms)."""
    seqs: list[int] = []
    lags: list[float] = []
    async with client.stream("GET", f"/v1/sessions/{sid}/events/stream") as response:
        async for message in sse_messages(response):
            if message.get("event") == "session.end":
                break
            if "data" in message:
                data = json.loads(message["data"])
                seqs.append(data["seq"])
                lags.append(lag_ms(data))
    return seqs, lags


async def fleet_stream_one(
    client: httpx.AsyncClient, sid: str, opened: asyncio.Queue[None]
) -> tuple[list[int], list[int], list[float]]:
    """Read the fleet-wide stream until ``sid`` ends: (global ids, sid's seqs, lags ms)."""
    ids: list[int] = []
    seqs: list[int] = []
    lags: list[float] = []
    async with client.stream("GET", "/v1/events/stream") as response:
        async for message in sse_messages(response):
            if message.get("event") == "stream.open":
                opened.put_nowait(None)
            elif "data" in message and "event" not in message:
                ids.append(int(message["id"]))
                data = json.loads(message["data"])
                if data["task_id"] == sid:
                    seqs.append(data["seq"])
                    lags.append(lag_ms(data))
                    if data["type"] in ("task.succeeded", "task.failed", "task.needs_human"):
                        break
    return ids, seqs, lags


async def bench(base: str, args: argparse.Namespace) -> None:
    limits = httpx.Limits(max_connections=max(args.clients, args.streams) + 8)
    async with httpx.AsyncClient(base_url=base, headers=AUTH, limits=limits, timeout=120) as client:
        for _ in range(50):  # warm up
            await client.get("/v1/fleet/status")

        async def status(c: httpx.AsyncClient, _: int) -> httpx.Response:
            return await c.get("/v1/fleet/status")

        report("GET /v1/fleet/status", *await load(client, args.clients, args.requests, status))

        async def create(c: httpx.AsyncClient, n: int) -> httpx.Response:
            return await c.post("/v1/sessions", json={"prompt": f"p{n}", "agent": "held"})

        report("POST /v1/sessions", *await load(client, args.clients, args.creates, create))

        steps = [{"tool": "shell", "args": {"command": "sleep 0.05"}}] * args.steps
        steps.append({"tool": "finish", "args": {"summary": "done"}})
        body = {"prompt": "stream me", "script": steps}
        sid = (await client.post("/v1/sessions", json=body)).json()["id"]
        started = time.perf_counter()
        results = await asyncio.gather(*(stream_one(client, sid) for _ in range(args.streams)))
        wall = time.perf_counter() - started
        history = (await client.get(f"/v1/sessions/{sid}/events", params={"limit": 1000})).json()
        expected = [e["seq"] for e in history["data"]]
        complete = sum(seqs == expected for seqs, _ in results)
        lags = [lag for _, stream_lags in results for lag in stream_lags]
        print(
            f"{args.streams} SSE streams, 1 session  {len(expected)} events each   "
            f"complete {complete}/{args.streams}   wall {wall:.1f} s   "
            f"lag p50 {statistics.median(lags):.1f} ms   p99 {pct(lags, 0.99):.1f} ms"
        )

        # The fleet-wide stream: open every stream first, then run a session.
        sid = f"fleet-stream-{uuid.uuid4().hex[:8]}"
        opened: asyncio.Queue[None] = asyncio.Queue()
        readers = [
            asyncio.create_task(fleet_stream_one(client, sid, opened)) for _ in range(args.streams)
        ]
        for _ in range(args.streams):
            await asyncio.wait_for(opened.get(), 120)
        started = time.perf_counter()
        await client.post("/v1/sessions", json={**body, "id": sid})
        fleet_results = await asyncio.wait_for(asyncio.gather(*readers), 300)
        wall = time.perf_counter() - started
        history = (await client.get(f"/v1/sessions/{sid}/events", params={"limit": 1000})).json()
        expected = [e["seq"] for e in history["data"]]
        complete = sum(
            seqs == expected and ids == list(range(ids[0], ids[0] + len(ids)))
            for ids, seqs, _ in fleet_results
        )
        lags = [lag for _, _, stream_lags in fleet_results for lag in stream_lags]
        print(
            f"{args.streams} fleet-wide streams     {len(expected)} events each   "
            f"complete {complete}/{args.streams}   wall {wall:.1f} s   "
            f"lag p50 {statistics.median(lags):.1f} ms   p99 {pct(lags, 0.99):.1f} ms"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--creates", type=int, default=1000)
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--steps", type=int, default=20, help="Tool calls of the streamed session.")
    args = parser.parse_args()
    config = FleetConfig.model_validate({"agents": {"held": {}}})
    fleet = Fleet.start(
        config=config,
        sandbox="local",
        workers=2,
        events_dir=tempfile.mkdtemp(prefix="fleet-serve-bench-"),
        pools=[PoolSpec(name="run", workers=2, agents=["default"])],
    )
    port = free_port()
    try:
        start(fleet.settings.name, fleet.settings.namespace, ServeSettings(token=TOKEN), port=port)
        print(f"Ray Serve, 1 replica, http://127.0.0.1:{port} (loopback), {args.clients} clients")
        asyncio.run(bench(f"http://127.0.0.1:{port}", args))
    finally:
        serve.shutdown()
        fleet.shutdown()


if __name__ == "__main__":
    main()
