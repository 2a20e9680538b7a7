"""Every setting of the fleet, with its default, in one place.

Values come from (highest first): explicit arguments, environment variables prefixed
``FLEET_`` (e.g. ``FLEET_WORKERS=8``), then the defaults below.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

SandboxKind = Literal["local", "docker", "auto"]


class PoolSpec(BaseModel):
    """Workers that share what they can do. Empty lists mean 'anything'."""

    model_config = ConfigDict(extra="forbid")

    name: str = "default"
    workers: int = Field(1, ge=1, le=256)
    labels: list[str] = Field(
        default_factory=list, description="Skills these workers offer (tasks' `requires`)."
    )
    environments: list[str] = Field(default_factory=list, description="Only these environments.")
    agents: list[str] = Field(default_factory=list, description="Only these agents.")

    def takes(self, requires: list[str], environment: str, agent: str) -> bool:
        return (
            set(requires) <= set(self.labels)
            and (not self.environments or environment in self.environments)
            and (not self.agents or agent in self.agents)
        )


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
        None,
        description="Write-ahead log directory (a local disk); default: <events_dir>/_wal, "
        "or ~/fleet-wal/<hash of the URI> when events_dir is a URI.",
    )
    flush_interval_s: float = Field(
        1.0, gt=0, description="How often buffered events are rolled into a Parquet file."
    )
    wal_fsync: str = Field(
        "100ms",
        pattern=r"^(always|off|\d+(\.\d+)?(ms)?)$",
        description="When the write-ahead log is fsynced (every mode survives a crash of the "
        "process; this is about the host's): 'always' (before an append is acknowledged), an "
        "interval in ms like '100ms' or '100' (a background fsync at most that often and at "
        "most that long after an append: a host crash loses at most that window), or 'off'.",
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

    model: str | None = Field(
        None,
        description="Model for the default agent instead of the scripted one (FLEET_MODEL); "
        "the server comes from OPENAI_BASE_URL, the key from OPENAI_API_KEY.",
    )
    api: Literal["chat", "responses"] = Field("chat", description="API the default agent uses.")

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

    stream_events: int = Field(
        5000, ge=10, description="Latest events kept for the fleet-wide live stream."
    )
    recent_tasks: int = Field(
        2000, ge=10, description="Tasks whose events the supervisor keeps in memory for streams."
    )

    artifacts_dir: str | None = Field(
        None, description="Workspace diffs and snapshots; default: <events_dir>/_artifacts."
    )
    capture_diff: bool = Field(True, description="Save each session's workspace diff.")

    checkpoint_interval_s: float = Field(
        30.0,
        ge=0,
        description="Save a running session's workspace and state this often, so "
        "that it resumes there if its worker dies (0: never).",
    )
    approval_wait_s: float = Field(
        30.0, ge=0, description="How long a session waits for an approval before it parks."
    )
    skill_dirs: list[str] = Field(
        default_factory=list, description="Folders searched for skills (before the built-ins)."
    )

    # Scheduling and routing.
    pools: list[PoolSpec] = Field(
        default_factory=list,
        description="Worker pools split by labels, environment or agent; empty: one pool of "
        "`workers` workers that take any task.",
    )
    routing: Literal["rules", "manager"] = Field(
        "rules",
        description="Who assigns work: the rules (priority, memory, fit) or a manager agent.",
    )
    manager_agent: str = Field("manager", description="The agent that routes when routing=manager.")
    max_running: int | None = Field(None, ge=1, description="Sessions running at once, in all.")
    label_limits: dict[str, int] = Field(
        default_factory=dict, description="Sessions running at once per task label."
    )
    retry_backoff_s: float = Field(1.0, ge=0, description="Base of exponential retry backoff.")
    retry_backoff_max_s: float = Field(300.0, ge=0)
    exhausted_state: Literal["needs_human", "failed"] = Field(
        "needs_human", description="Where a task goes when its attempts run out."
    )

    # What API clients may ask for (a request above a cap is refused, never clamped).
    max_cpus: float = Field(4.0, gt=0, description="Most cpus a client's environment may ask.")
    max_memory_mb: int = Field(8192, ge=16, description="Most memory_mb a client may ask.")
    max_pids: int = Field(1024, ge=8, description="Most pids a client's environment may ask.")
    max_disk_mb: int = Field(10_240, ge=16, description="Most disk_mb a client may ask.")
    max_time_limit_s: float = Field(
        3600.0, gt=0, description="Most time_limit_s (and stall_timeout_s) a client may ask."
    )
    max_turns_limit: int = Field(200, ge=1, description="Most max_turns a client may ask.")
    max_attempts_limit: int = Field(10, ge=1, description="Most max_attempts a client may ask.")
    max_prompt_chars: int = Field(
        100_000, ge=1, description="Longest prompt (and stage prompt) of any task."
    )
    max_queued_per_token: int = Field(
        1000, ge=1, description="Unfinished tasks an API client token may have at once (429)."
    )

    # Watching.
    stall_timeout_s: float = Field(
        300.0, gt=0, description="Stop a session with no event for this long (per task too)."
    )
    watch_interval_s: float = Field(1.0, gt=0, description="How often sessions are checked.")
    heartbeat_s: float = Field(5.0, gt=0, description="Worker heartbeat interval.")
    heartbeat_timeout_s: float = Field(
        60.0, gt=0, description="A worker silent this long is replaced (its task retried)."
    )

    # Supervisor policy (the watchdog, idle workers, the manager agent, the head's reaper).
    watchdog_grace_s: float = Field(
        30.0,
        ge=0,
        description="A session still running this long past its time limit is stopped by the "
        "supervisor (the session stops itself at the limit; this catches one that cannot).",
    )
    idle_recheck_s: float = Field(
        5.0, gt=0, description="An idle worker re-checks the queue this often without a wake-up."
    )
    reap_interval_s: float = Field(
        60.0, gt=0, description="How often the head looks for containers of dead workers."
    )
    manager_time_limit_s: float = Field(
        120.0, gt=0, description="Longest a manager agent's routing round may take."
    )
    manager_max_turns: int = Field(
        20, ge=1, description="Turns of a manager round when its agent sets no max_turns."
    )
    manager_backoff_s: float = Field(
        60.0, ge=0, description="After a failed manager round the rules route this long."
    )

    # Memory of past runs.
    memory: bool = Field(True, description="Use run history for time limits, order, agents.")
    memory_refresh_s: float = Field(60.0, gt=0)
    memory_min_runs: int = Field(3, ge=1, description="Runs of a label before history counts.")
    memory_escalate_below: float = Field(
        0.2, ge=0, le=1, description="Labels succeeding less often go to a human after one try."
    )

    # Placement on a cluster.
    worker_strategy: Literal["SPREAD", "DEFAULT"] = Field(
        "SPREAD", description="Ray scheduling strategy of workers: SPREAD puts them on all nodes."
    )
    worker_resources: dict[str, float] = Field(
        default_factory=dict,
        description='Custom Ray resources each worker needs, e.g. {"docker": 1}: workers then '
        "land only on nodes started with `--resources '{\"docker\": N}'`.",
    )
    pool_resources: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description="Custom Ray resources per pool name, added to `worker_resources`.",
    )

    def pool_specs(self) -> list[PoolSpec]:
        return self.pools or [PoolSpec(name="default", workers=self.workers)]
