"""agent-fleet: run many autonomous coding agents at once on Ray."""

from __future__ import annotations

from typing import Any

from fleet.events import Event, EventType
from fleet.settings import FleetSettings
from fleet.specs import AgentSpec, EnvironmentSpec, FleetConfig, TaskSpec, TaskState

__all__ = [
    "AgentSpec",
    "EnvironmentSpec",
    "Event",
    "EventType",
    "Fleet",
    "FleetConfig",
    "FleetError",
    "FleetSettings",
    "SubmitResult",
    "TaskSpec",
    "TaskState",
]


def __getattr__(name: str) -> Any:
    # The driver API imports the actors, which import fleet's plain modules: load it lazily.
    if name in ("Fleet", "FleetError", "SubmitResult"):
        from fleet import api

        return getattr(api, name)
    raise AttributeError(name)
