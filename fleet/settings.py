"""Every setting of the fleet, with its default, in one place.

Values come from (highest first): explicit arguments, environment variables prefixed
``FLEET_`` (e.g. ``FLEET_WORKERS=8``), then the defaults below.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

SandboxKind = Literal["local", "docker", "auto"]


class FleetSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLEET_", extra="forbid")

    # Where and how Ray runs.
    name: str = Field("default", description="Fleet name; the supervisor actor is named after it.")
    namespace: str = Field("agent-fleet", description="Ray namespace of the fleet's named actors.")
    ray_address: str | None = Field(
        None, description="Ray address to connect to ('auto', 'ray://host:port'); None starts Ray."
    )

    # Worker pool.
    workers: int = Field(4, ge=1, le=256, description="Worker actors in the pool.")
    worker_num_cpus: float = Field(
        0.0, ge=0, description="Ray CPUs reserved per worker (agents mostly wait on I/O)."
    )
    sandbox: SandboxKind = Field(
        "auto", description="Sandbox backend: docker, local, or auto (docker if an engine answers)."
    )
    warm_pool: int = Field(
        1, ge=0, le=16, description="Started sandboxes a worker keeps ready (0: on demand)."
    )
    sandbox_output_limit: int = Field(
        1_000_000, ge=1000, description="Bytes of a command's output kept (head + tail)."
    )

    # Event log.
    events_dir: str = Field("fleet-events", description="Event log root: a path or a pyarrow URI.")
    wal_dir: str | None = Field(
        None, description="Write-ahead log directory; default: <events_dir>/_wal (local only)."
    )
    flush_interval_s: float = Field(
        1.0, gt=0, description="How often buffered events are rolled into a Parquet file."
    )
    flush_max_events: int = Field(
        20_000, ge=1, description="Roll a Parquet file as soon as this many events are buffered."
    )
    compact_min_files: int = Field(
        16, ge=2, description="Compact a date partition once it holds this many files."
    )
    worker_event_batch_s: float = Field(
        0.2, gt=0, description="Workers send buffered events to the supervisor at this interval."
    )

    # Agent loop.
    tool_output_limit: int = Field(
        10_000, ge=200, description="Characters of tool output kept (head + tail) per call."
    )
    default_max_turns: int = Field(50, ge=1)
    default_time_limit_s: float = Field(600.0, gt=0)
    default_max_attempts: int = Field(2, ge=1)

    resume: bool = Field(
        False, description="On start, rebuild unfinished tasks from the event log and run them."
    )

    recent_tasks: int = Field(
        2000, ge=10, description="Tasks whose events the supervisor keeps in memory for streams."
    )

    # Scheduling.
    retry_backoff_s: float = Field(0.0, ge=0, description="Base of exponential retry backoff.")
