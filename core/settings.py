"""Every setting of the fleet, with its default, in one place.

Values come from (highest first): explicit arguments (command-line options), environment
variables prefixed ``FLEET_`` (e.g. ``FLEET_WORKERS=8``; the HTTP endpoint's are
``FLEET_API_*``, see :class:`ServeSettings`), then the defaults below.

This module is the only one that reads the environment (besides the exec agent inside a
container): other code takes a :class:`FleetSettings` (the fleet's, or ``FleetSettings()``
for this process's environment) or calls :func:`host_variable` for other tools' variables.
The README's settings table is :func:`settings_table` (``python -m core.settings``).
"""

from __future__ import annotations

import json
import os
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

SandboxKind = Literal["local", "docker", "auto"]


def absolute_location(path: str) -> str:
    """``path`` as an absolute local path (``~`` expanded), or unchanged if it is a URI."""
    if "://" in path:
        return path
    return os.path.abspath(os.path.expanduser(path))


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


class ServeSettings(BaseSettings):
    """Settings of the HTTP endpoint; environment variables are prefixed ``FLEET_API_``."""

    model_config = SettingsConfigDict(
        env_prefix="FLEET_API_", extra="forbid", populate_by_name=True
    )

    token: SecretStr | None = Field(None, description="API clients' token (FLEET_API_TOKEN).")
    token_file: str | None = Field(None, description="File whose first line is the token.")
    admin_token: SecretStr | None = Field(
        None,
        validation_alias="FLEET_ADMIN_TOKEN",
        description="The operator's token (FLEET_ADMIN_TOKEN): it may also edit agents and "
        "environments and send full specs. None: nobody is operator over HTTP.",
    )
    admin_token_file: str | None = Field(
        None,
        validation_alias="FLEET_ADMIN_TOKEN_FILE",
        description="File whose first line is the admin token.",
    )
    cors_origins: list[str] = Field(default_factory=list, description="Empty: CORS off.")
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="Larger bodies get 413.")
    max_page: int = Field(1000, ge=1, description="Largest `limit` a list route accepts.")
    max_batch: int = Field(10_000, ge=1, description="Most tasks in one POST /v1/tasks.")
    stream_poll_s: float = Field(
        15.0, gt=0, description="Long-poll wait of SSE streams (a keep-alive after each idle one)."
    )
    allow_repo: bool = Field(
        False,
        description="Accept tasks naming a server-side `repo` path from the admin token "
        "(never from API clients; off: 422 for everyone).",
    )
    client_secrets: bool = Field(
        False,
        description="Let API clients create and rotate their own secrets (POST/PUT "
        "/v1/secrets/{name}) and name them in inline environments; off: the admin token only.",
    )

    def resolve_token(self) -> str:
        token = _read_token(self.token, self.token_file)
        if token is None:
            raise ValueError("no API token: set FLEET_API_TOKEN or give a token file")
        return token

    def resolve_admin_token(self) -> str | None:
        """The operator's token, or None when none is configured."""
        admin = _read_token(self.admin_token, self.admin_token_file)
        if admin is not None and admin == self.resolve_token():
            raise ValueError("the admin token must differ from the API token")
        return admin


def _read_token(value: SecretStr | None, file: str | None) -> str | None:
    if value is not None and value.get_secret_value():
        return value.get_secret_value()
    if file:
        lines = Path(file).read_text().strip().splitlines()
        if lines and lines[0].strip():
            return lines[0].strip()
    return None


class FleetSettings(BaseSettings):
    """Every setting of a fleet; each field ``x`` is also the variable ``FLEET_X``."""

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
    sandbox_reuse: bool = Field(
        True,
        description="A docker container that served a session is reset (every process killed, "
        "everything the sandbox user wrote removed, checked) and serves the worker's next "
        "session of the same environment, instead of a new container per session; one that "
        "cannot be reset is removed. False: a new container for every session. Needs "
        "warm_pool >= 1.",
    )
    sandbox_output_limit: int = Field(
        1_000_000, ge=1000, description="Bytes of a command's output kept (head + tail)."
    )

    # Event log.
    events_dir: str = Field(
        "~/fleet-events",
        description="Event log root: a path or a pyarrow URI. One default for `fleet run`, "
        "`fleet demo`, the batch job and `Fleet.start`; a path is made absolute where the "
        "settings are made (`~` is the home there).",
    )
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
        16, ge=2, description="Compact a date partition once it holds this many small files."
    )
    compact_small_bytes: int = Field(
        32 * 2**20,
        ge=1,
        description="A Parquet file of the log smaller than this is merged by compaction; "
        "bigger ones are left as they are (bounded work per compaction).",
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
    default_max_turns: int = Field(
        50, ge=1, description="Model turns per attempt when neither the task nor its agent says."
    )
    default_time_limit_s: float = Field(
        600.0, gt=0, description="Time limit of an attempt when neither the task nor memory says."
    )
    default_max_attempts: int = Field(
        2, ge=1, description="Attempts before a task goes to a person, unless the task says."
    )

    recover: bool = Field(
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
    max_file_bytes: int = Field(
        32 * 1024 * 1024,
        ge=1,
        description="Largest file POST /v1/files (or Fleet.upload) takes (413 beyond); files "
        "are kept in the artifact store, by the SHA-256 of their bytes.",
    )
    keep_workspaces_days: float = Field(
        30.0,
        ge=0,
        description="Days a finished task's workspace snapshots are kept (its files and "
        "archive; the diff stays); 0: forever.",
    )

    checkpoint_interval_s: float = Field(
        30.0,
        ge=0,
        description="Save a running session's workspace and state this often, so "
        "that it resumes there if its worker dies (0: never).",
    )
    approval_wait_s: float = Field(
        30.0,
        ge=0,
        description="How long a session waits for an approval, or for the client's result of "
        "a custom tool call, before it parks.",
    )
    idle_timeout_s: float = Field(
        86400.0,
        ge=0,
        description="An interactive task idle this long (no message, not closed) expires: "
        "it ends 'expired', its workspace kept with its results (0: never).",
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
    max_running: int | None = Field(
        None, ge=0, description="Sessions running at once, in all (0 pauses: tasks stay queued)."
    )
    label_limits: dict[str, int] = Field(
        default_factory=dict, description="Sessions running at once per task label."
    )
    retry_backoff_s: float = Field(1.0, ge=0, description="Base of exponential retry backoff.")
    retry_backoff_max_s: float = Field(300.0, ge=0, description="Longest retry backoff.")
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
    memory_refresh_s: float = Field(
        60.0, gt=0, description="How often memory re-reads the run history."
    )
    memory_min_runs: int = Field(3, ge=1, description="Runs of a label before history counts.")
    memory_decisions_shown: int = Field(
        20, ge=0, description="Latest memory decisions (with reasons) `fleet memory` lists."
    )
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

    # Proof of work and tools.
    gate_timeout_s: float = Field(
        600.0, gt=0, description="Longest a gate command runs (also bounded by the time limit)."
    )
    command_timeout_s: float = Field(
        120.0, gt=0, description="Longest an agent's command runs, whatever timeout it asks for."
    )
    mcp_start_timeout_s: float = Field(
        30.0,
        gt=0,
        description="How long an agent's MCP server may take to start and list its tools "
        "(its calls are bounded by command_timeout_s).",
    )
    max_followups: int = Field(
        10, ge=0, description="Follow-up task requests one session may make."
    )

    # Repositories and branches (tasks with repo: {url, ref}; see actors/delivery.py).
    branch_pattern: str = Field(
        "fleet/{task_id}", description="Branch a task on a git repository works on, pushed there."
    )
    git_author_name: str = Field("agent-fleet", description="Author of the fleet's commits.")
    git_author_email: str = Field(
        "agent-fleet@localhost", description="Author e-mail of the fleet's commits."
    )
    git_commit_message: str = Field(
        "{title}\n\n{summary}\n\nTask {task_id}, delivered by the fleet.",
        description="Commit message template: {task_id}, {title} (the summary's first line), "
        "{summary}. A 'Fleet-Task: <id>' trailer is always added.",
    )
    git_token_env: str | None = Field(
        None,
        description="Variable holding the token for https remotes (sent as an HTTP header "
        "for each git command, never in a URL, never seen by agents).",
    )
    git_token_file: str | None = Field(
        None, description="File whose first line is that token (when the variable is unset)."
    )
    git_push_wip: bool = Field(
        False,
        description="Push a task's last workspace as a work-in-progress commit to its branch "
        "when it goes to needs_human.",
    )
    git_timeout_s: float = Field(300.0, gt=0, description="Longest one git command runs.")
    github_pull_requests: bool = Field(
        True,
        description="Open a pull request for a pushed branch when the repository is on GitHub "
        "(repo.github, or a URL on a github_hosts host); the token is the git token.",
    )
    github_api_url: str = Field(
        "https://api.github.com",
        description="GitHub's REST API root (GitHub Enterprise: https://<host>/api/v3).",
    )
    github_hosts: list[str] = Field(
        default_factory=lambda: ["github.com"],
        description="Hosts whose repository URLs (https or ssh) are on GitHub at github_api_url.",
    )

    # Model clients (the key of an agent comes from its api_key_env, see secrets_dir).
    model_timeout_s: float = Field(
        300.0, gt=0, description="Timeout of one HTTP request to a model server."
    )
    prices: str | None = Field(
        None,
        description="JSON file of model prices (USD per 1M tokens) laid over the built-in "
        'table: {"my-model": {"input": 0.5, "cached_input": 0.05, "output": 1.5}}.',
    )
    secrets_dir: str | None = Field(
        None,
        description="Directory of secret files: an agent's key is the file named after its "
        "api_key_env when that variable is not set (e.g. a mounted secret); on the head, "
        "each file is also a secret of the vault, named after it.",
    )
    vault_dir: str | None = Field(
        None,
        description="Where secrets made over HTTP (or with Fleet.put_secret) are kept, one "
        "file each, mode 0600, on the head; default: ~/fleet-vault/<fleet name>. Never "
        "inside the events directory.",
    )

    # Docker images (read where the image is built: the worker's node).
    debian_mirror: str = Field(
        "http://deb.debian.org/debian",
        description="Debian mirror debootstrap uses when the base image is built locally.",
    )
    base_source: Literal["auto", "pull", "debootstrap"] = Field(
        "auto",
        description="How the base image is made: pull python:3.11-slim, debootstrap, or "
        "auto (pull when a registry answers, else debootstrap).",
    )

    # Metrics and traces (actors/telemetry.py, actors/tracing.py).
    metrics: bool = Field(
        True,
        description="Record the fleet's metrics with ray.util.metrics: Ray exports them at "
        "each node's metrics endpoint (Prometheus) and shows them in its dashboard.",
    )
    tracing: bool | None = Field(
        None,
        description="OpenTelemetry traces, one per task, exported as the standard OTEL_* "
        "variables say (OTLP over HTTP by default). None: on when OTEL_TRACES_EXPORTER (other "
        "than none) or OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT is set.",
    )
    trace_prompts: bool = Field(
        False,
        description="Put prompts, tool call arguments, gate commands and people's messages "
        "(truncated) in spans; off: spans carry none of them.",
    )

    # The driver.
    ray_logs: bool = Field(
        False, description="Show the Ray workers' logs on the driver's terminal."
    )

    # The HTTP endpoint (`fleet serve`): its variables are FLEET_API_*, as listed.
    api: ServeSettings = Field(
        default_factory=ServeSettings, description="Settings of the HTTP endpoint."
    )

    @field_validator("branch_pattern", "git_commit_message")
    @classmethod
    def _template_fills(cls, value: str) -> str:
        """A template that names only the fields it is given (checked now, not at delivery)."""
        try:
            value.format(task_id="t", title="t", summary="s")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"bad template {value!r}: {exc!r}") from None
        return value

    @field_validator("github_api_url")
    @classmethod
    def _api_url(cls, value: str) -> str:
        """An http(s) URL without credentials (the token is the git token)."""
        parts = urllib.parse.urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http(s) URL")
        if parts.username or parts.password:
            raise ValueError("must not hold credentials (the token is git_token_env's)")
        return value.rstrip("/")

    @field_validator("git_token_env")
    @classmethod
    def _variable_name(cls, value: str | None) -> str | None:
        if value is not None and not value.replace("_", "a").isalnum():
            raise ValueError(f"{value!r} is not a variable name")
        return value

    @field_validator("events_dir", "wal_dir", "artifacts_dir", "vault_dir")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        """A local path made absolute (``~`` expanded) now; a URI is kept as it is."""
        return None if value is None else absolute_location(value)

    def pool_specs(self) -> list[PoolSpec]:
        return self.pools or [PoolSpec(name="default", workers=self.workers)]


PLAN_DEFAULTS: dict[str, str] = {
    "time_limit_s": "default_time_limit_s",
    "max_attempts": "default_max_attempts",
    "max_turns": "default_max_turns",
    "stall_timeout_s": "stall_timeout_s",
}
"""Per-task values and the setting each falls back to."""


def resolve(
    field: str,
    spec: Any,
    plan: Mapping[str, Any],
    settings: FleetSettings,
    *fallbacks: Any,
) -> Any:
    """A per-task value, in one order everywhere: the task's own ``field``, else memory's plan
    for the task (``plan[field]``), else each of ``fallbacks`` (e.g. the agent's
    ``max_turns``), else the fleet's setting (``PLAN_DEFAULTS[field]``). None means unset."""
    for value in (getattr(spec, field, None), plan.get(field), *fallbacks):
        if value is not None:
            return value
    return getattr(settings, PLAN_DEFAULTS[field])


def host_variable(name: str) -> str | None:
    """A variable of another tool, read here so that one module reads the environment: the
    key an agent's ``api_key_env`` names, ``OPENAI_BASE_URL``, ``DOCKER_HOST``, pip's CA
    variables, ``COLUMNS``, the ``PATH`` a worker-side MCP server gets. Empty counts as unset."""
    return os.environ.get(name) or None


def ray_workers_at_normal_priority() -> None:
    """Have a Ray this process starts run its worker processes at nice 0 (Ray's default is
    15, to yield to its own daemons) unless ``RAY_worker_niceness`` says otherwise: the
    fleet's supervisor and workers are its latency path, and the containers they drive run
    at nice 0, so on a busy machine (weight 36 against 1024) they would starve."""
    os.environ.setdefault("RAY_worker_niceness", "0")


def otel_variables() -> dict[str, str]:
    """The standard OpenTelemetry variables (``OTEL_*``) set here: the driver hands them to
    the supervisor, which exports the traces, wherever it runs."""
    return {k: v for k, v in os.environ.items() if k.startswith("OTEL_") and v}


# -- the README's settings table ----------------------------------------------------------


def _env_var(model: type[BaseSettings], name: str) -> str:
    info = model.model_fields[name]
    if isinstance(info.validation_alias, str):
        return info.validation_alias
    return f"{model.model_config.get('env_prefix', '')}{name}".upper()


def _shown(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value).replace("\n", "\\n")  # one table row


def settings_rows() -> list[tuple[str, str, str, str]]:
    """(field, environment variable, default, description) for every setting; the fields of
    the HTTP endpoint are ``api.<name>``."""
    rows = []
    for model, prefix in ((FleetSettings, ""), (ServeSettings, "api.")):
        for name, info in model.model_fields.items():
            if model is FleetSettings and name == "api":
                continue
            default = info.get_default(call_default_factory=True)
            if isinstance(default, SecretStr):
                default = "***"
            description = (info.description or "").replace("|", "\\|").replace("\n", " ")
            rows.append((prefix + name, _env_var(model, name), _shown(default), description))
    return rows


def settings_table() -> str:
    """The README's settings table (markdown), generated from the models."""
    lines = ["| setting | variable | default | meaning |", "| --- | --- | --- | --- |"]
    for name, env, default, description in settings_rows():
        lines.append(f"| `{name}` | `{env}` | `{default}` | {description} |")
    return "\n".join(lines) + "\n"


def write_readme_table(readme: Path) -> None:
    """Replace the table between the README's settings-table markers with the current one."""
    text = readme.read_text()
    start = text.index("\n", text.index("<!-- settings-table")) + 1
    end = text.index("<!-- /settings-table -->")
    readme.write_text(text[:start] + settings_table() + text[end:])


if __name__ == "__main__":  # python -m core.settings [--write README.md]
    import sys

    if sys.argv[1:2] == ["--write"]:
        write_readme_table(Path(sys.argv[2] if len(sys.argv) > 2 else "README.md"))
    else:
        print(settings_table(), end="")
