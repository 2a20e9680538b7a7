"""Model clients: ``scripted`` (replays a task's script) and OpenAI-compatible APIs."""

from __future__ import annotations

from core.settings import FleetSettings
from core.specs import AgentSpec, ScriptStep
from harness.models.base import ModelClient, ModelError, ModelTurn, ToolCall, Usage
from harness.models.scripted import ScriptedModel

__all__ = [
    "ModelClient",
    "ModelError",
    "ModelTurn",
    "ScriptedModel",
    "ToolCall",
    "Usage",
    "close_model",
    "make_model",
]


async def close_model(model: ModelClient) -> None:
    """Close a client's connections, for the clients that hold any."""
    aclose = getattr(model, "aclose", None)
    if aclose is not None:
        await aclose()


def make_model(
    agent: AgentSpec,
    script: list[ScriptStep] | None = None,
    attempt: int = 1,
    settings: FleetSettings | None = None,
    api_key: str | None = None,
) -> ModelClient:
    """The client an agent asks for: the scripted model, or an OpenAI-compatible API
    (configured by the fleet's ``settings``; default: this process's environment).
    ``api_key``: the value of the agent's ``api_key_secret`` (given with the session);
    None: the key is looked up from ``api_key_env``."""
    if agent.model == "scripted":
        return ScriptedModel(script, attempt, agent=agent.name)
    from harness.models.openai_client import make_api_model  # imports openai: only when used

    return make_api_model(agent, settings=settings, api_key=api_key)
