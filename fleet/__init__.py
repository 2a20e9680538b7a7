"""agent-fleet: run many autonomous coding agents at once on Ray."""

from __future__ import annotations

from core.errors import FleetError
from core.events import Event, EventType
from core.settings import FleetSettings
from core.specs import AgentSpec, EnvironmentSpec, FleetConfig, TaskSpec, TaskState
from fleet.api import Fleet, FleetUnavailable, SubmitResult
from fleet.fleets import Fleets

__all__ = [
    "AgentSpec",
    "EnvironmentSpec",
    "Event",
    "EventType",
    "Fleet",
    "FleetConfig",
    "FleetError",
    "FleetSettings",
    "FleetUnavailable",
    "Fleets",
    "SubmitResult",
    "TaskSpec",
    "TaskState",
]
