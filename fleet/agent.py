"""The agent loop: model turn -> tool calls -> tool results -> next turn.

It ends when the agent calls ``finish``, runs out of turns, runs out of time, or the model
fails. Limits end the loop with an outcome, never with an exception. The loop knows nothing of
Ray: it talks to a model client, a tool box and a sandbox, and reports through ``emit``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, Field

from fleet.events import EventType
from fleet.models.base import ModelClient, ModelError
from fleet.tools import ToolBox, ToolContext, truncate

Emit = Callable[..., None]
"""``emit(event_type, payload, **typed_columns)``"""

NUDGE = "No tool was called. Use a tool to make progress, or call finish when the task is done."


OutcomeStatus = Literal[
    "finished",  # the agent called finish
    "handoff",  # the agent handed the task to another agent (handoff_to, handoff_note)
    "max_turns",
    "timeout",
    "budget",  # a token or cost budget ran out
    "error",  # the model failed (after its retries)
    "cancelled",
    "interrupted",  # stopped at a safe point on request; ``state`` resumes it
    "parked",  # waiting on an approval decision; ``state`` resumes it
]


class SessionOutcome(BaseModel):
    status: OutcomeStatus
    reason: str = ""
    summary: str = ""
    turns: int = 0
    tool_calls: int = 0
    handoff_to: str | None = None
    handoff_note: str = ""
    followups: list[dict[str, Any]] = Field(default_factory=list)
    """Follow-up tasks the agent asked for (TaskSpec fields); the supervisor creates them."""
    state: dict[str, Any] | None = None
    """The loop's serialised state when it can be resumed (parked, interrupted)."""


class AgentLoop:
    def __init__(
        self,
        instructions: str,
        model: ModelClient,
        toolbox: ToolBox,
        ctx: ToolContext,
        emit: Emit,
        max_turns: int,
        time_limit_s: float,
    ) -> None:
        self.instructions = instructions
        self.model = model
        self.toolbox = toolbox
        self.ctx = ctx
        self.emit = emit
        self.max_turns = max_turns
        self.time_limit_s = time_limit_s
        self.messages: list[dict[str, Any]] = []
        self.turns = 0
        self.tool_calls = 0

    async def run(self, prompt: str) -> SessionOutcome:
        self.messages = [
            {"role": "system", "content": self.instructions},
            {"role": "user", "content": prompt},
        ]
        try:
            async with asyncio.timeout(self.time_limit_s):
                return await self._turns()
        except TimeoutError:
            return self._outcome("timeout", f"time limit of {self.time_limit_s:g}s reached")
        except ModelError as exc:
            return self._outcome("error", f"model error: {exc}")

    async def _turns(self) -> SessionOutcome:
        schemas = self.toolbox.schemas()
        while self.turns < self.max_turns:
            self.turns += 1
            turn = await self.model.complete(self.messages, schemas)
            usage = turn.usage
            if usage.input_tokens or usage.output_tokens:
                self.emit(
                    EventType.usage,
                    {"cached_input_tokens": usage.cached_input_tokens, "model": self.model.name},
                    tokens_in=usage.input_tokens,
                    tokens_out=usage.output_tokens,
                    cost_usd=usage.cost_usd,
                )
            self.messages.append(turn.as_message())
            if turn.text:
                self.emit(EventType.agent_message, {"text": turn.text, "turn": self.turns})
            if not turn.tool_calls:
                self.messages.append({"role": "user", "content": NUDGE})
                continue
            for call in turn.tool_calls:
                self.tool_calls += 1
                self.emit(
                    EventType.agent_tool_use,
                    {
                        "call_id": call.id,
                        "args": truncate(call.arguments, 4000),
                        "turn": self.turns,
                    },
                    tool=call.name,
                )
                started = time.perf_counter()
                out = await self.toolbox.call(self.ctx, call.name, call.arguments)
                self.emit(
                    EventType.agent_tool_result,
                    {"call_id": call.id, "output": out.text, "is_error": out.is_error, **out.data},
                    tool=call.name,
                    exit_code=out.exit_code,
                    duration_ms=(time.perf_counter() - started) * 1000,
                )
                self.messages.append({"role": "tool", "tool_call_id": call.id, "content": out.text})
                if out.final:
                    return self._outcome("finished", summary=str(out.data.get("summary", "")))
        return self._outcome("max_turns", f"stopped after {self.max_turns} turns without finish")

    def _outcome(self, status: Any, reason: str = "", summary: str = "") -> SessionOutcome:
        return SessionOutcome(
            status=status,
            reason=reason,
            summary=summary,
            turns=self.turns,
            tool_calls=self.tool_calls,
        )
