"""An interactive session resumed by a message: how soon its agent acts.

    python -m benchmarks.conversation [--turns 40] [--sandbox docker] [--workers 2]
                                      [--warm-pool 1]

One interactive task (the scripted model: each turn runs one shell command, then finish) goes
idle after each turn; the benchmark then sends a message (``Fleet.send``) and measures, from
the moment it sent it, when the next session started (``session.started``), when the agent's
first tool call was made (``agent.tool_use``, stamped where the session runs) and when the
task was idle again (``session.idle``). p50/p95 over the turns; figures only, no assertions.
Compare warm pools with ``--warm-pool 0``. Docker needs an engine (``--sandbox local`` else).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import datetime
from typing import Any

import ray

from core.events import Event, EventType
from fleet import Fleet


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def row(label: str, values: list[float]) -> None:
    print(
        f"{label:<40} p50 {pct(values, 0.5):8.1f} ms   p95 {pct(values, 0.95):8.1f} ms"
        f"   (n={len(values)})"
    )


class Follower:
    """A task's events as they come (the supervisor's long poll)."""

    def __init__(self, fleet: Fleet, task_id: str) -> None:
        self.fleet = fleet
        self.task_id = task_id
        self.seq = -1

    def until(self, kind: EventType, timeout_s: float = 120) -> list[Event]:
        """Events up to and including the next one of ``kind``."""
        seen: list[Event] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            ref = self.fleet.supervisor.events_since.remote(self.task_id, self.seq, 2.0, 1000)
            for event in ray.get(ref):
                self.seq = max(self.seq, event.seq)
                seen.append(event)
                if event.type == kind:
                    return seen
                if event.type in (EventType.task_failed, EventType.task_needs_human):
                    raise RuntimeError(f"the task ended: {event.payload}")
        raise TimeoutError(f"no {kind} within {timeout_s}s")


def since_ms(sent: float, event: Event) -> float:
    return (event.ts.timestamp() - sent) * 1000


def first(events: list[Event], kind: EventType) -> Event:
    return next(e for e in events if e.type == kind)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--turns", type=int, default=40)
    parser.add_argument("--sandbox", default="docker")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--warm-pool", type=int, default=1)
    args = parser.parse_args()
    turn = [
        {"tool": "shell", "args": {"command": "echo turn >> log.txt"}},
        {"tool": "finish", "args": {"summary": "noted"}},
    ]
    task: dict[str, Any] = {
        "id": "conversation",
        "prompt": "keep a log",
        "interactive": True,
        "gate": "test -s log.txt",
        "script": turn * (args.turns + 1),
    }
    settings = {
        "workers": args.workers,
        "sandbox": args.sandbox,
        "warm_pool": args.warm_pool,
        "events_dir": tempfile.mkdtemp(prefix="fleet-bench-"),
    }
    with Fleet.start(**settings) as fleet:
        print(fleet.sandbox_notice)
        print(f"{args.workers} workers, warm pool {args.warm_pool}, {args.turns} turns")
        fleet.submit([task])
        follow = Follower(fleet, "conversation")
        follow.until(EventType.session_idle)
        started, tool_call, idle = [], [], []
        for n in range(args.turns):
            time.sleep(0.2)  # let the warm pool refill, as between a person's messages
            sent = time.time()
            assert fleet.send("conversation", f"message {n}")
            events = follow.until(EventType.session_idle)
            started.append(since_ms(sent, first(events, EventType.session_started)))
            tool_call.append(since_ms(sent, first(events, EventType.agent_tool_use)))
            idle.append(since_ms(sent, events[-1]))
        assert fleet.close("conversation")
        record = fleet.wait(["conversation"], timeout_s=120)[0]
        print()
        row("message -> session started", started)
        row("message -> first tool call", tool_call)
        row("message -> idle again (turn done)", idle)
        print(f"\nclosed: {record.state.value}; {record.turns} model turns in all")
        stamp = datetime.now().isoformat(timespec="seconds")
        print(f"(first tool call target: p50 <= 300 ms with the warm pool, docker; {stamp})")


if __name__ == "__main__":
    main()
