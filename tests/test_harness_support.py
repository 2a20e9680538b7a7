"""Helpers shared by the harness tests (no tests here): loops on a LocalSandbox, events."""

from __future__ import annotations

import copy
from typing import Any

from fleet.agent import AgentLoop
from fleet.events import EventType
from fleet.models.base import ModelTurn
from fleet.models.scripted import ScriptedModel
from fleet.specs import ScriptStep
from fleet.tools import CODING_TOOLS, ToolBox, ToolContext

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
