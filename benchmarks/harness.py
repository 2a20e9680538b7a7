"""Agent-loop benchmarks: ``python -m benchmarks.harness``.

1. Loop overhead per turn, excluding model and tool time: the scripted model and a no-op
   tool, with hooks, an approval policy and compaction bookkeeping switched on as a worker
   would run them; once with checkpointing off and once on, with the worker's checkpointer at
   the default interval (the loop's state is built only when a checkpoint is taken). Target:
   at most 1 ms per turn.
2. A 200-turn session whose tool returns 6,000 characters a call against a 16k-token window:
   it must compact and every request must stay under the window.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from typing import Any

from actors.session import Checkpointer
from core.events import EventType
from core.settings import FleetSettings
from core.specs import ScriptStep
from harness.compaction import estimate_tokens
from harness.hooks import InboxHooks
from harness.loop import AgentLoop, Checkpoint
from harness.models.base import ModelTurn
from harness.models.scripted import ScriptedModel
from harness.tools import BUILTINS, Tool, ToolBox, ToolContext, ToolOutput, tool

OVERHEAD_TURNS = 2000
LONG_TURNS = 200
WINDOW = 16_000
OUTPUT_CHARS = 6_000


class Timer:
    def __init__(self) -> None:
        self.total = 0.0


MODEL_TIME = Timer()
TOOL_TIME = Timer()


@tool
async def noop(ctx: ToolContext, n: int = 0) -> ToolOutput:
    """Do nothing."""
    return ToolOutput(text="ok")


@tool
async def big(ctx: ToolContext, n: int = 0) -> ToolOutput:
    """Return a large output."""
    return ToolOutput(text=f"{n}:" + "x" * OUTPUT_CHARS)


def timed(tool_: Tool) -> Tool:
    async def fn(ctx: ToolContext, **kwargs: Any) -> ToolOutput:
        started = time.perf_counter()
        try:
            return await tool_.fn(ctx, **kwargs)
        finally:
            TOOL_TIME.total += time.perf_counter() - started

    return Tool(tool_.name, tool_.description, tool_.args_model, fn)


class TimedModel:
    """The scripted model, with the time spent in it measured."""

    def __init__(self, inner: ScriptedModel) -> None:
        self.inner = inner
        self.name = inner.name

    @property
    def position(self) -> int:
        return self.inner.position

    async def complete(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
    ) -> ModelTurn:
        started = time.perf_counter()
        try:
            return await self.inner.complete(messages, tools)
        finally:
            MODEL_TIME.total += time.perf_counter() - started


class Sink:
    """``emit`` that only keeps the events (the worker's Event building is not the loop's)."""

    def __init__(self, events: list[Any]) -> None:
        self.events = events

    def __call__(self, *args: Any, **typed: Any) -> None:
        self.events.append((args, typed))


class NullSandbox:
    """The tools here never touch it; a checkpoint's snapshot is empty."""

    kind = "null"
    workdir = "/nowhere"

    async def snapshot(self) -> bytes:
        return b""


async def discard(task_id: str, session_id: str, state: dict[str, Any], workspace: bytes) -> None:
    """A checkpoint sink that keeps nothing."""


def script(tool_name: str, turns: int) -> list[ScriptStep]:
    steps = [ScriptStep(tool=tool_name, args={"n": i}) for i in range(turns - 1)]
    return [*steps, ScriptStep(tool="finish", args={"summary": "done"})]


def make_loop(
    model: Any,
    tool_: Tool,
    turns: int,
    window: int,
    emit: Any,
    checkpoint: Checkpoint | None = None,
) -> AgentLoop:
    registry = {**BUILTINS, tool_.name: timed(tool_)}
    return AgentLoop(
        instructions="You are a benchmark.",
        model=model,
        toolbox=ToolBox([tool_.name, "finish"], registry),
        ctx=ToolContext(sandbox=NullSandbox()),  # type: ignore[arg-type]
        emit=emit,
        max_turns=turns + 1,
        time_limit_s=600,
        hooks=InboxHooks(),
        approvals={"shell": "always_ask"},
        context_window=window,
        checkpoint=checkpoint,
    )


DEFAULT_INTERVAL_S: float = FleetSettings.model_fields["checkpoint_interval_s"].default


async def overhead(checkpointing: bool) -> dict[str, float]:
    """Per-turn loop overhead in microseconds, best of 5 runs; with ``checkpointing``, the
    worker's checkpointer at the default interval."""
    per_turn: list[float] = []
    taken = 0
    for _ in range(5):
        MODEL_TIME.total = TOOL_TIME.total = 0.0
        events: list[Any] = []
        model = TimedModel(ScriptedModel(script("noop", OVERHEAD_TURNS)))
        sandbox: Any = NullSandbox()
        checkpointer = (
            Checkpointer(discard, "bench", "s-bench", sandbox, DEFAULT_INTERVAL_S)
            if checkpointing
            else None
        )
        loop = make_loop(model, noop, OVERHEAD_TURNS, 128_000, Sink(events), checkpointer)
        started = time.perf_counter()
        outcome = await loop.run("run the no-op tool many times")
        total = time.perf_counter() - started
        assert outcome.status == "finished" and outcome.turns == OVERHEAD_TURNS, outcome
        per_turn.append((total - MODEL_TIME.total - TOOL_TIME.total) / OVERHEAD_TURNS * 1e6)
        taken += checkpointer.taken if checkpointer else 0
    # state() is what a checkpoint costs (besides its snapshot); measured on the final history
    started = time.perf_counter()
    for _ in range(20):
        json.dumps(loop.state())
    state_ms = (time.perf_counter() - started) / 20 * 1000
    return {
        "best_us": min(per_turn),
        "median_us": statistics.median(per_turn),
        "state_ms": state_ms,
        "checkpoints": taken,
    }


async def long_session() -> dict[str, Any]:
    compactions: list[dict[str, Any]] = []
    max_tokens = 0

    def emit(type_: EventType, payload: dict[str, Any] | None = None, **_: Any) -> None:
        if type_ == EventType.agent_message and payload and "compaction" in payload:
            compactions.append(payload["compaction"])

    class Watching(TimedModel):
        async def complete(
            self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
        ) -> ModelTurn:
            nonlocal max_tokens
            max_tokens = max(max_tokens, estimate_tokens(messages) + len(json.dumps(tools)) // 4)
            return await super().complete(messages, tools)

    model = Watching(ScriptedModel(script("big", LONG_TURNS)))
    loop = make_loop(model, big, LONG_TURNS, WINDOW, emit)
    started = time.perf_counter()
    outcome = await loop.run("read a lot")
    elapsed = time.perf_counter() - started
    assert outcome.status == "finished" and outcome.turns == LONG_TURNS, outcome
    return {
        "turns": outcome.turns,
        "compactions": len(compactions),
        "max_request_tokens": max_tokens,
        "window": WINDOW,
        "final_messages": len(loop.messages),
        "seconds": elapsed,
        "uncompacted_tokens": LONG_TURNS * (OUTPUT_CHARS + 100) // 4,
    }


def main() -> None:
    print(f"loop overhead per turn ({OVERHEAD_TURNS} turns, scripted model, no-op tool)")
    for checkpointing in (False, True):
        figures = asyncio.run(overhead(checkpointing))
        verdict = "ok" if figures["best_us"] <= 1000 else "OVER TARGET"
        label = (
            f"checkpointing on (every {DEFAULT_INTERVAL_S:g} s, "
            f"{figures['checkpoints']} taken in 5 runs)"
            if checkpointing
            else "checkpointing off"
        )
        print(
            f"  {label}: best {figures['best_us']:.1f} us, median {figures['median_us']:.1f} us "
            f"(target <= 1000 us: {verdict})"
        )
    print(
        f"  one checkpoint's state() + json.dumps on a {OVERHEAD_TURNS}-turn history: "
        f"{figures['state_ms']:.2f} ms (plus its workspace snapshot)"
    )
    long = asyncio.run(long_session())
    fits = "ok" if long["max_request_tokens"] <= long["window"] else "OVER WINDOW"
    turns, window = long["turns"], long["window"]
    print(f"{turns}-turn session, {OUTPUT_CHARS} chars per tool output, window {window} tokens")
    print(
        f"  compactions: {long['compactions']}, largest request: "
        f"{long['max_request_tokens']} tokens ({fits}); "
        f"without compaction it would reach ~{long['uncompacted_tokens']} tokens"
    )
    print(f"  final history: {long['final_messages']} messages; wall time {long['seconds']:.2f} s")


if __name__ == "__main__":
    main()
