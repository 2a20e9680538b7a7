"""What the agent loop needs from a model, whatever serves it.

History is kept in the Chat Completions message shape (role, content, tool_calls,
tool_call_id): plain JSON, so a session serialises as it is. Tools are described neutrally
as ``{"name", "description", "parameters"}`` (a JSON schema); each client converts both
to its wire format.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from core.errors import FleetError


class ModelError(FleetError, RuntimeError):
    """The model could not produce a turn (after retries, or a script that ran out)."""


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str
    """The raw JSON text the model wrote; the loop parses and validates it."""


@dataclass
class Usage:
    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0


@dataclass
class ModelTurn:
    text: str | None
    tool_calls: list[ToolCall] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)

    def as_message(self) -> dict[str, Any]:
        """The assistant message to append to the history."""
        message: dict[str, Any] = {"role": "assistant", "content": self.text}
        if self.tool_calls:
            message["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
                for call in self.tool_calls
            ]
        return message


class ModelClient(Protocol):
    name: str

    async def complete(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
    ) -> ModelTurn: ...
