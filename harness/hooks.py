"""How a running session hears from outside: steering messages, interrupts, approval decisions,
custom tool results.

The agent loop asks its hooks at safe points (before each model turn, before a tool call that
needs approval). The worker gives each session an :class:`InboxHooks`, which the supervisor
feeds by pushing to the worker; tests and plain scripts use :class:`SessionHooks` (nobody
listening).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class Decision:
    allow: bool
    message: str = ""
    recorded: bool = False
    """True when the decision is in the event log already (the supervisor recorded it when a
    person decided): the session then does not log it again."""


@dataclass
class ToolResult:
    """The API client's result of a custom tool call, as the model gets it."""

    text: str
    is_error: bool = False


def content_text(content: str | list[dict[str, Any]]) -> str:
    """A ``user.custom_tool_result``'s content as text: a string, or its text blocks joined."""
    if isinstance(content, str):
        return content
    return "\n".join(str(block.get("text", "")) for block in content)


class SessionHooks:
    """Nobody is listening: no messages, no interrupts, no approval decisions, no results."""

    async def user_messages(self) -> list[str]:
        """Messages to deliver before the next model turn (taken: each is delivered once)."""
        return []

    def interrupted(self) -> bool:
        """True when the session should stop at the next safe point, resumable."""
        return False

    async def approval(
        self, call_id: str, tool: str, args: dict[str, Any], wait_s: float
    ) -> Decision | None:
        """Wait up to ``wait_s`` for a decision on ``call_id``; None means park the session."""
        return None

    def take_decision(self, call_id: str) -> Decision | None:
        """A decision on ``call_id`` delivered but not consumed yet (taken), without waiting.

        The session runner asks this after a session parked, so that a decision arriving
        just as it parked travels with the parked state instead of being dropped."""
        return None

    async def tool_result(self, call_id: str, tool: str, wait_s: float) -> ToolResult | None:
        """Wait up to ``wait_s`` for the client's result of the custom tool call ``call_id``;
        None means park the session."""
        return None

    def take_tool_result(self, call_id: str) -> ToolResult | None:
        """A result for ``call_id`` delivered but not consumed yet (taken), without waiting
        (as :meth:`take_decision`)."""
        return None


class InboxHooks(SessionHooks):
    """Hooks fed by pushes: messages queue up, interrupt is a flag, decisions wait by call id."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.interrupt = False
        self.decisions: dict[str, Decision] = {}
        self.results: dict[str, ToolResult] = {}
        self._changed = asyncio.Event()

    def push_message(self, text: str) -> None:
        self.messages.append(text)
        self._changed.set()

    def push_interrupt(self) -> None:
        self.interrupt = True
        self._changed.set()

    def push_decision(self, call_id: str, decision: Decision) -> None:
        self.decisions[call_id] = decision
        self._changed.set()

    def push_tool_result(self, call_id: str, result: ToolResult) -> None:
        self.results[call_id] = result
        self._changed.set()

    async def user_messages(self) -> list[str]:
        taken, self.messages = self.messages, []
        return taken

    def interrupted(self) -> bool:
        return self.interrupt

    async def approval(
        self, call_id: str, tool: str, args: dict[str, Any], wait_s: float
    ) -> Decision | None:
        await self._until(lambda: call_id in self.decisions, wait_s)
        return self.decisions.pop(call_id, None)

    def take_decision(self, call_id: str) -> Decision | None:
        return self.decisions.pop(call_id, None)

    async def tool_result(self, call_id: str, tool: str, wait_s: float) -> ToolResult | None:
        await self._until(lambda: call_id in self.results, wait_s)
        return self.results.pop(call_id, None)

    def take_tool_result(self, call_id: str) -> ToolResult | None:
        return self.results.pop(call_id, None)

    async def _until(self, arrived: Callable[[], bool], wait_s: float) -> None:
        """Until ``arrived()`` or an interrupt, at most ``wait_s`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while not arrived() and not self.interrupt:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
