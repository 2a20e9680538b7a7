"""Helpers shared by the harness tests (no tests here): loops on a LocalSandbox, events,
sessions through the SessionRunner."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable
from typing import Any

from actors.session import SessionRunner
from core.events import Event, EventType
from core.records import Assignment, SessionResult
from core.settings import FleetSettings
from core.specs import AgentSpec, EnvironmentSpec, ScriptStep, TaskSpec
from harness.hooks import InboxHooks
from harness.loop import AgentLoop
from harness.models.base import ModelTurn, ToolCall, Usage
from harness.models.scripted import ScriptedModel
from harness.tools import CODING_TOOLS, ToolBox, ToolContext
from sandboxes.base import Sandbox
from sandboxes.local import LocalSandbox

ALL_TOOLS = [*CODING_TOOLS, "handoff", "create_followup"]


def steps(*pairs: tuple[str, dict[str, Any]]) -> list[ScriptStep]:
    return [ScriptStep(tool=t, args=a) for t, a in pairs]


class Events(list):
    """``emit`` that keeps ``(type, payload, typed)`` tuples."""

    def __call__(self, type_: EventType, payload: dict[str, Any] | None = None, **kw: Any) -> None:
        self.append((type_, payload or {}, kw))

    def of(self, type_: EventType) -> list[dict[str, Any]]:
        return [p for t, p, _ in self if t == type_]

    def typed(self, type_: EventType) -> list[dict[str, Any]]:
        return [kw for t, _, kw in self if t == type_]


class Recording:
    """Wraps a model and keeps a copy of the messages each turn was sent."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.name = getattr(model, "name", "recording")
        self.sent: list[list[dict[str, Any]]] = []

    @property
    def position(self) -> int:
        return self.model.position

    def seek(self, position: int) -> None:
        self.model.seek(position)

    async def complete(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
    ) -> ModelTurn:
        self.sent.append(copy.deepcopy(messages))
        return await self.model.complete(messages, tools)


def make_loop(
    model: Any,
    sandbox: Any,
    events: Events,
    tools: list[str] | None = None,
    max_turns: int = 30,
    time_limit_s: float = 30.0,
    **kwargs: Any,
) -> AgentLoop:
    return AgentLoop(
        instructions="be good",
        model=model,
        toolbox=ToolBox(tools or ALL_TOOLS),
        ctx=ToolContext(sandbox=sandbox),
        emit=events,
        max_turns=max_turns,
        time_limit_s=time_limit_s,
        **kwargs,
    )


def scripted(*pairs: tuple[str, dict[str, Any]]) -> ScriptedModel:
    return ScriptedModel(steps(*pairs))


class Priced:
    """A model that reports tokens and cost each turn and never finishes."""

    name = "priced"

    def __init__(self, tokens: int = 100, cost: float = 0.01) -> None:
        self.tokens, self.cost, self.turn = tokens, cost, 0

    async def complete(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
    ) -> ModelTurn:
        self.turn += 1
        usage = Usage(
            input_tokens=self.tokens, cached_input_tokens=40, output_tokens=10, cost_usd=self.cost
        )
        return ModelTurn(
            text=None,
            tool_calls=[ToolCall(f"c{self.turn}", "shell", '{"command": "true"}')],
            usage=usage,
        )


# --- sessions through the SessionRunner ---------------------------------------------------


class Box(LocalSandbox):
    """A local sandbox that can be slow to snapshot and runs a callback after each one."""

    def __init__(
        self, snapshot_delay_s: float = 0.0, after_snapshot: Callable[[int], None] | None = None
    ) -> None:
        super().__init__()
        self.snapshot_delay_s = snapshot_delay_s
        self.after_snapshot = after_snapshot
        self.snapshots = 0

    async def snapshot(self) -> bytes:
        await asyncio.sleep(self.snapshot_delay_s)
        data = await super().snapshot()
        self.snapshots += 1
        if self.after_snapshot is not None:
            self.after_snapshot(self.snapshots)
        return data


def factory(box: Box | None = None) -> Callable[[EnvironmentSpec, str], Any]:
    async def make(environment: EnvironmentSpec, name: str) -> Sandbox:
        sandbox = box or Box()
        await sandbox.start()
        return sandbox

    return make


def assignment(agent: AgentSpec, *script: tuple[str, dict[str, Any]], **kw: Any) -> Assignment:
    steps = [ScriptStep(tool=t, args=a) for t, a in script]
    return Assignment(
        task=TaskSpec(id="t", prompt="do it"),
        agent=agent,
        environment=EnvironmentSpec(),
        attempt=1,
        session_id="s-1",
        max_turns=20,
        time_limit_s=30,
        script=steps,
        **kw,
    )


def settings(**kw: Any) -> FleetSettings:
    return FleetSettings(**{"checkpoint_interval_s": 0, "approval_wait_s": 0.05, **kw})


def run_session(
    runner: SessionRunner, a: Assignment, hooks: InboxHooks | None = None
) -> tuple[SessionResult, list[Event]]:
    events: list[Event] = []
    result = asyncio.run(runner.run(a, events.append, hooks or InboxHooks()))
    return result, events


def tool_results(events: list[Event]) -> list[dict[str, Any]]:
    return [e.payload for e in events if e.type == EventType.agent_tool_result]
