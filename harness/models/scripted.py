"""The scripted model: replays the tool calls written in a task's ``script``.

It is how the demo, the tests and the benchmarks run with no API key and no network. It
calls one tool per turn and reports zero tokens, so reports never mistake it for a model.
"""

from __future__ import annotations

import json
from typing import Any

from core.specs import ScriptStep
from harness.models.base import ModelError, ModelTurn, ToolCall


class ScriptedModel:
    name = "scripted"

    def __init__(
        self, script: list[ScriptStep] | None, attempt: int = 1, agent: str | None = None
    ) -> None:
        steps = script or []
        self._steps = [
            s
            for s in steps
            if (s.attempt is None or s.attempt == attempt)
            and (s.agent is None or agent is None or s.agent == agent)
        ]
        self._turn = 0

    @property
    def position(self) -> int:
        return self._turn

    def seek(self, position: int) -> None:
        """Resume a replay part way (a session restored from its saved state)."""
        self._turn = position

    async def complete(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
    ) -> ModelTurn:
        if self._turn >= len(self._steps):
            raise ModelError("the scripted model's script ended before the agent called finish")
        step = self._steps[self._turn]
        self._turn += 1
        call = ToolCall(id=f"call_{self._turn}", name=step.tool, arguments=json.dumps(step.args))
        return ModelTurn(text=None, tool_calls=[call])
