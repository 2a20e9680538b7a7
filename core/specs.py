"""The nouns of the fleet as pydantic models: agents, environments, tasks and task states."""

from __future__ import annotations

import os
import re
import uuid
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from core.events import TERMINAL_EVENTS

BUILTIN_TOOLS = ["shell", "read_file", "write_file", "edit_file", "list_files", "search", "finish"]
RESERVED_TOOL_NAMES = frozenset([*BUILTIN_TOOLS, "handoff", "create_followup"])
"""Every built-in tool's name (``harness.tools.BUILTINS``): no custom tool may take one."""
MCP_TOOL_PREFIX = "mcp__"
"""An MCP server's tools reach the model as ``mcp__<server>__<tool>``."""
MCP_SERVER_NAME = re.compile(r"^[A-Za-z0-9]+(?:[-_][A-Za-z0-9]+)*$")
"""Letters and digits, single '-' or '_' between them (so '__' only ever separates)."""
TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
"""A tool name as model APIs take it (OpenAI: letters, digits, '_' and '-', 64 at most)."""

SPEC_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
"""Agent, environment and skill names as the HTTP API takes them (no slashes or spaces)."""
PLAIN_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
"""A variable or secret name: letters, digits and '_' (no path, no '..', no '/')."""
OPERATOR_SECRET_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,99}$")
"""A secret's name as people give it (names starting with '_' are the fleet's own)."""
MAX_PATH_CHARS = 4096
MAX_TASK_FILES = 1000
TASK_ID = re.compile(r"^[!-~]+$")
"""Printable ASCII without whitespace or control characters."""


def plain_name(value: str) -> str:
    """``value`` if it is a plain variable name, else ValueError saying what a name may be."""
    if not PLAIN_NAME.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a plain variable name (letters, digits and '_', "
            "not starting with a digit; no paths)"
        )
    return value


def workspace_path(path: str) -> str:
    """``path`` if it names a file inside the workspace: relative, no '..' component, no
    NUL, at most MAX_PATH_CHARS characters; else ValueError naming the problem."""
    if not path or len(path) > MAX_PATH_CHARS:
        raise ValueError(f"file path must have 1 to {MAX_PATH_CHARS} characters")
    if "\0" in path:
        raise ValueError(f"file path {path[:100]!r} contains NUL")
    if os.path.isabs(path):
        raise ValueError(f"file path {path[:100]!r} is absolute: give a workspace-relative path")
    if ".." in path.split("/") or os.path.normpath(path) in {".", ""}:
        raise ValueError(f"file path {path[:100]!r} leaves or names the workspace itself")
    return path


class Strict(BaseModel):
    """Base for user-written specs: unknown fields are errors, not silently dropped."""

    model_config = ConfigDict(extra="forbid")


def json_schema(value: dict[str, Any]) -> dict[str, Any]:
    """``value`` if it is a valid JSON Schema (by its ``$schema``, else draft 2020-12),
    else ValueError saying what is wrong with it."""
    from jsonschema.exceptions import SchemaError
    from jsonschema.validators import validator_for

    try:
        validator_for(value).check_schema(value)
    except SchemaError as exc:
        where = "/".join(str(part) for part in exc.path)
        raise ValueError(
            f"not a valid JSON Schema: {exc.message}" + (f" (at {where})" if where else "")
        ) from None
    return value


class McpServerSpec(Strict):
    """An MCP server whose tools an agent gets, as ``mcp__<name>__<tool>``: a command that
    speaks MCP over stdio, or a streamable HTTP endpoint."""

    name: str = Field(max_length=32, description="Unique among the agent's MCP servers.")
    command: str | None = Field(
        None, min_length=1, description="A stdio server: the program to run (with ``args``)."
    )
    args: list[str] = Field(default_factory=list)
    url: str | None = Field(
        None, description="A streamable HTTP server (http or https), reached from the worker."
    )
    where: Literal["sandbox", "harness"] | None = Field(
        None,
        description="Where a stdio server runs: 'sandbox' (the default: in the session's "
        "sandbox, in the workspace, under its network policy) or 'harness' (on the worker's "
        "host, outside the sandbox). A URL is always reached from the harness.",
    )
    env: dict[str, str] = Field(
        default_factory=dict, description="A stdio server's environment variables."
    )

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if not MCP_SERVER_NAME.fullmatch(value):
            raise ValueError("letters and digits, with single '-' or '_' between them")
        return value

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^\s/]+", value):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @model_validator(mode="after")
    def _one_transport(self) -> McpServerSpec:
        if (self.command is None) == (self.url is None):
            raise ValueError("give either command (a stdio server) or url (streamable HTTP)")
        if self.url is not None:
            if self.where == "sandbox":
                raise ValueError("where: a URL server is reached from the harness, not the sandbox")
            if self.args or self.env:
                raise ValueError("args and env are for a stdio server (command), not a URL")
        return self

    @property
    def runs_in_sandbox(self) -> bool:
        """True for a stdio server that runs inside the session's sandbox."""
        return self.command is not None and self.where != "harness"


class CustomToolSpec(Strict):
    """A tool the API client runs (as in the managed-agents APIs): the model's call goes out
    as an ``agent.custom_tool_use`` event and the session waits for the client's
    ``user.custom_tool_result``."""

    name: str = Field(description="Letters, digits, '_' and '-'; not a built-in tool's name.")
    description: str = Field("", max_length=10_000)
    input_schema: dict[str, Any] = Field(
        default_factory=lambda: {"type": "object", "properties": {}},
        description="JSON Schema of the call's input (an object); calls that do not match "
        "it go back to the model as errors.",
    )
    output_schema: dict[str, Any] | None = Field(
        None,
        description="JSON Schema a result's text must match, parsed as JSON (results marked "
        "is_error are not checked). None: any text.",
    )

    @field_validator("name")
    @classmethod
    def _not_builtin(cls, value: str) -> str:
        if not TOOL_NAME.fullmatch(value):
            raise ValueError("must be 1 to 64 letters, digits, '_' or '-'")
        if value in RESERVED_TOOL_NAMES:
            raise ValueError(f"{value!r} is the name of a built-in tool")
        if value.startswith(MCP_TOOL_PREFIX):
            raise ValueError(f"names starting with {MCP_TOOL_PREFIX!r} are MCP servers' tools")
        return value

    @field_validator("input_schema")
    @classmethod
    def _object_schema(cls, value: dict[str, Any]) -> dict[str, Any]:
        json_schema(value)
        if value.get("type") != "object":
            raise ValueError('must describe an object ("type": "object")')
        return value

    @field_validator("output_schema")
    @classmethod
    def _valid_schema(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if value is None else json_schema(value)


def _unique_names(items: list[Any], what: str) -> None:
    names = [item.name for item in items]
    for name in names:
        if names.count(name) > 1:
            raise ValueError(f"two {what} are named {name!r}")


class SecretRef(Strict):
    """A reference to a named secret of the fleet's vault (``core/vault.py``), written where
    a value would be: ``{"secret": "API_TOKEN"}``. Specs, events and API answers carry the
    reference; the value is looked up on the head when a session is assigned and travels
    to the worker in memory with it."""

    secret: str = Field(description="The secret's name (letters, digits and '_').")

    @field_validator("secret")
    @classmethod
    def _plain(cls, value: str) -> str:
        return plain_name(value)


class SecretSource(Strict):
    """Where the operator keeps one secret of the config's ``secrets:``: a variable of the
    head's environment or a file on the head (exactly one). Read when it is needed, so a
    value rotated there is picked up by the next session."""

    env: str | None = Field(None, description="Environment variable holding the value.")
    file: str | None = Field(None, description="File holding the value (trailing newline cut).")

    @field_validator("env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        return None if value is None else plain_name(value)

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretSource:
        if (self.env is None) == (self.file is None):
            raise ValueError("give exactly one of env (a variable) or file (a path)")
        return self


class AgentSpec(Strict):
    """An agent: model, instructions, tools and limits, defined once and referenced by name."""

    name: str = "default"
    model: str = Field(
        "scripted",
        description="'scripted' replays the task's script; any other name is sent to the API.",
    )
    api: Literal["chat", "responses"] = "chat"
    base_url: str | None = None
    api_key_env: str = Field(
        "OPENAI_API_KEY",
        description="Variable (or file in FLEET_SECRETS_DIR) holding the key: a plain name.",
    )
    api_key_secret: str | None = Field(
        None,
        description="The vault secret holding the key (read on the head, given to the "
        "session in memory); when set, api_key_env is not used.",
    )
    instructions: str = (
        "You are a careful coding agent working in a sandbox. Use the tools to do the task, "
        "check your work, then call finish with a short summary."
    )
    tools: list[str] = Field(default_factory=lambda: list(BUILTIN_TOOLS))
    max_turns: int | None = Field(None, ge=1)
    temperature: float | None = None
    stream: bool = Field(False, description="Stream model output (tool calls arrive in deltas).")
    context_window: int = Field(128_000, ge=1000, description="Model context size, in tokens.")
    compact_at: float = Field(
        0.75, gt=0, lt=1, description="Compact the history past this fraction of the window."
    )
    skills: list[str] = Field(
        default_factory=list, description="Skill folders copied to .skills/ at session start."
    )
    handoffs: list[str] = Field(
        default_factory=list,
        description="Agents the handoff tool may name (add 'handoff' to tools); empty: any.",
    )
    approvals: dict[
        str, Literal["always_allow", "always_ask"] | dict[Literal["ask_if"], dict[str, str]]
    ] = Field(
        default_factory=dict,
        description="Tool name (or '*') -> 'always_allow', 'always_ask', or "
        "{'ask_if': {argument: regex}}: ask when the argument matches. Unlisted: allowed.",
    )
    max_tokens: int | None = Field(
        None,
        ge=1,
        description="Task budget: input + output tokens over all its attempts and stages; "
        "spent, the task goes to a person. None: unlimited.",
    )
    max_cost_usd: float | None = Field(
        None, gt=0, description="Task budget in USD, over all its attempts and stages."
    )
    mcp_servers: list[McpServerSpec] = Field(
        default_factory=list,
        description="MCP servers whose tools the agent gets (mcp__<server>__<tool>), started "
        "with each session; one that does not start fails the session's start.",
    )
    custom_tools: list[CustomToolSpec] = Field(
        default_factory=list,
        description="Tools the API client runs: a call waits for its user.custom_tool_result.",
    )

    @field_validator("mcp_servers")
    @classmethod
    def _server_names_unique(cls, value: list[McpServerSpec]) -> list[McpServerSpec]:
        _unique_names(value, "MCP servers")
        return value

    @field_validator("custom_tools")
    @classmethod
    def _tool_names_unique(cls, value: list[CustomToolSpec]) -> list[CustomToolSpec]:
        _unique_names(value, "custom tools")
        return value

    @field_validator("api_key_env")
    @classmethod
    def _key_is_a_plain_name(cls, value: str) -> str:
        return plain_name(value)

    @field_validator("api_key_secret")
    @classmethod
    def _secret_is_a_plain_name(cls, value: str | None) -> str | None:
        return None if value is None else plain_name(value)

    @field_validator("approvals")
    @classmethod
    def _approval_regexes_compile(cls, value: dict[str, Any]) -> dict[str, Any]:
        import re

        for tool, policy in value.items():
            rules = policy.get("ask_if", {}) if isinstance(policy, dict) else {}
            for arg, pattern in rules.items():
                try:
                    re.compile(pattern)
                except re.error as exc:
                    raise ValueError(f"{tool}.ask_if.{arg}: bad regex {pattern!r}: {exc}") from None
        return value


NetworkPolicy = Literal["none", "full"] | list[str]


class EnvironmentSpec(Strict):
    """A sandbox template."""

    name: str = "default"
    image: str | None = Field(None, description="Docker image; None means the fleet's base image.")
    apt: list[str] = Field(default_factory=list)
    pip: list[str] = Field(default_factory=list)
    files: dict[str, str] = Field(default_factory=dict)
    network: NetworkPolicy = "none"
    cpus: float = Field(1.0, gt=0)
    memory_mb: int = Field(1024, ge=16)
    pids: int = Field(256, ge=8)
    disk_mb: int = Field(1024, ge=16, description="Size of the workspace (docker backend).")
    env: dict[str, str | SecretRef] = Field(
        default_factory=dict,
        description="Variables of the environment's commands: a plain value, or "
        "{secret: NAME}, given to each command (never to the image or the container).",
    )

    @field_validator("env")
    @classmethod
    def _variable_names(cls, value: dict[str, str | SecretRef]) -> dict[str, str | SecretRef]:
        for name, given in value.items():
            if isinstance(given, SecretRef):
                plain_name(name)
        return value

    def plain_env(self) -> dict[str, str]:
        """The variables with plain values (what a sandbox is built with)."""
        return {k: v for k, v in self.env.items() if isinstance(v, str)}

    def secret_env(self) -> dict[str, str]:
        """Variable -> the name of the secret it is given (per command, per session)."""
        return {k: v.secret for k, v in self.env.items() if isinstance(v, SecretRef)}


class ScriptStep(Strict):
    """One tool call replayed by the scripted model."""

    tool: str
    args: dict[str, Any] = Field(default_factory=dict)
    attempt: int | None = Field(
        None, ge=1, description="Replay this step only on that attempt (to script retries)."
    )
    agent: str | None = Field(
        None, description="Replay this step only when this agent runs (to script handoffs)."
    )


class TaskState(StrEnum):
    queued = "queued"
    running = "running"
    awaiting_approval = "awaiting_approval"
    """Parked: a tool call waits for a human decision; no worker is held."""
    awaiting_tool_result = "awaiting_tool_result"
    """Parked: a custom tool call waits for the API client's result; no worker is held."""
    awaiting_review = "awaiting_review"
    """The agent finished and the gate passed; a human approves or rejects the result."""
    paused = "paused"
    """Interrupted at a safe point; a new message (or resume) continues it."""
    idle = "idle"
    """An interactive task whose agent ended its turn: history and workspace saved, no
    worker held; a new message resumes it, a close runs its gate."""
    succeeded = "succeeded"
    failed = "failed"
    needs_human = "needs_human"
    cancelled = "cancelled"
    expired = "expired"
    """An interactive task idle longer than ``idle_timeout_s``: ended, results still readable."""

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset(TaskState(t.value.split(".", 1)[1]) for t in TERMINAL_EVENTS)
"""The states a task ends in: one per event of ``core.events.TERMINAL_EVENTS``."""


class StageSpec(Strict):
    """A later stage of a task: another agent continuing on the same workspace."""

    agent: str
    prompt: str | None = Field(None, description="Default: the task's prompt.")
    gate: str | None = None
    script: list[ScriptStep] | None = None


GIT_REF = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._/-]{0,254}$")
"""A branch, tag or commit a task's repository is checked out at (no option-like names)."""
GITHUB_REPO = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})/[A-Za-z0-9._-]{1,100}$")
"""``owner/name`` of a GitHub repository."""


class RepoSpec(Strict):
    """A git repository a task works on: cloned at ``ref`` (outside the sandbox, with the
    fleet's credentials), the agent's changes pushed back to the task's own branch."""

    url: str = Field(
        min_length=1,
        max_length=2000,
        description="Git URL (https, ssh, file) or local path; never with a password in it.",
    )
    ref: str | None = Field(
        None, description="Branch, tag or commit to start from; None: the remote's HEAD."
    )
    github: str | None = Field(
        None,
        description="owner/name on GitHub (at the github_api_url setting): a pull request is "
        "opened there for the pushed branch. None: taken from a URL on a github_hosts host.",
    )

    @field_validator("url")
    @classmethod
    def _url_has_no_secret(cls, value: str) -> str:
        if value.startswith("-") or any(c.isspace() or ord(c) < 32 for c in value):
            raise ValueError("must not start with '-' nor contain whitespace")
        if "::" in value.split("/", 1)[0]:
            raise ValueError("git transport helpers ('<helper>::<address>') are not allowed")
        netloc = value.split("://", 1)[1].split("/", 1)[0] if "://" in value else ""
        if ":" in netloc.rpartition("@")[0]:
            raise ValueError(
                "must not contain a password: name the token in the git_token_env setting"
            )
        return value

    @field_validator("ref")
    @classmethod
    def _ref_is_plain(cls, value: str | None) -> str | None:
        if value is not None and (not GIT_REF.fullmatch(value) or ".." in value):
            raise ValueError("must be a branch, tag or commit name (letters, digits, ._/-)")
        return value

    @field_validator("github")
    @classmethod
    def _github_name(cls, value: str | None) -> str | None:
        if value is not None and not GITHUB_REPO.fullmatch(value):
            raise ValueError("must be a GitHub repository name 'owner/name'")
        return value


FILE_ID = re.compile(r"^[0-9a-f]{64}$")
"""An uploaded file's id: the SHA-256 of its bytes, in lowercase hex."""


class ResourceSpec(Strict):
    """An uploaded file (``POST /v1/files``, ``Fleet.upload``) placed in the workspace before
    the agent starts."""

    file_id: str = Field(description="The file's id: the SHA-256 of its bytes (64 hex digits).")
    path: str = Field(description="Where it goes: workspace-relative, no '..'.")

    @field_validator("file_id")
    @classmethod
    def _file_id_is_a_digest(cls, value: str) -> str:
        if not FILE_ID.fullmatch(value):
            raise ValueError("must be a file id: the SHA-256 of the file, 64 lowercase hex digits")
        return value

    @field_validator("path")
    @classmethod
    def _path_inside_workspace(cls, value: str) -> str:
        return workspace_path(value)


def new_task_id() -> str:
    return "t-" + uuid.uuid4().hex[:12]


class TaskSpec(Strict):
    """A unit of work. Only ``prompt`` is required."""

    id: str = Field(
        default_factory=new_task_id,
        min_length=1,
        max_length=200,
        description="Printable ASCII, no whitespace, '/' or backslash.",
    )
    prompt: str = Field(min_length=1, description="Not blank.")
    agent: str | AgentSpec = "default"
    environment: str | EnvironmentSpec = "default"
    priority: int = Field(0, description="Higher runs first; ties go to the older task.")
    labels: list[str] = Field(default_factory=list)
    files: dict[str, str] = Field(
        default_factory=dict,
        description=f"Files the workspace starts with (at most {MAX_TASK_FILES}; "
        "workspace-relative paths, no '..').",
    )
    resources: list[ResourceSpec] = Field(
        default_factory=list,
        description=f"Uploaded files placed in the workspace (after `files`; at most "
        f"{MAX_TASK_FILES}, each path once).",
    )
    repo: str | RepoSpec | None = Field(
        None,
        description="A local directory copied into the workspace, or {url, ref}: a git "
        "checkout on the task's own branch, its result pushed there (see delivery).",
    )
    gate: str | None = Field(None, description="Command that must exit 0 in the sandbox.")
    max_attempts: int | None = Field(None, ge=1, le=100)
    time_limit_s: float | None = Field(None, gt=0)
    max_turns: int | None = Field(None, ge=1)
    script: list[ScriptStep] | None = None
    requires: list[str] = Field(
        default_factory=list, description="Worker labels (skills) a worker must have to run it."
    )
    agents: list[str] = Field(
        default_factory=list,
        description="Agents allowed to run it; the one with the best record is picked.",
    )
    stages: list[StageSpec] = Field(
        default_factory=list,
        description="Agents that run one after another on the same workspace (after the first).",
    )
    reviewer: str | None = Field(None, description="Agent that reviews the diff before success.")
    review_script: list[ScriptStep] | None = Field(
        None, description="Tool calls the scripted reviewer replays (approve / request_changes)."
    )
    require_approval: bool = Field(False, description="A human approves the result before done.")
    stall_timeout_s: float | None = Field(None, gt=0, description="Stop after this long silent.")
    interactive: bool = Field(
        False,
        description="A conversation: when the agent ends its turn the task goes idle (no "
        "worker held) until a user.message resumes it; the gate, reviewer and review run when "
        "it is closed. time_limit_s and max_turns then count per turn.",
    )
    gate_each_turn: bool = Field(
        False,
        description="Interactive: also run the gate and the reviewer at the end of each turn "
        "(a failed one is a failed attempt, retried in the same conversation).",
    )
    parent: str | None = Field(None, description="The task that asked for this one.")
    source: str | None = Field(
        None,
        description="Where a watcher picked it up: '<source name>:<item id>' (set by the fleet).",
    )

    @field_validator("id")
    @classmethod
    def _id_is_path_safe(cls, value: str) -> str:
        if not TASK_ID.fullmatch(value):
            raise ValueError("must be printable ASCII without whitespace or control characters")
        if any(c in value for c in "/\\") or value in {".", ".."}:
            raise ValueError("must not contain '/' or '\\', nor be '.' or '..'")
        return value

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value

    @field_validator("files")
    @classmethod
    def _files_inside_workspace(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > MAX_TASK_FILES:
            raise ValueError(f"more than {MAX_TASK_FILES} files")
        for path in value:
            workspace_path(path)
        return value

    @field_validator("resources")
    @classmethod
    def _resource_paths_unique(cls, value: list[ResourceSpec]) -> list[ResourceSpec]:
        if len(value) > MAX_TASK_FILES:
            raise ValueError(f"more than {MAX_TASK_FILES} resources")
        paths = [os.path.normpath(r.path) for r in value]
        for path in paths:
            if paths.count(path) > 1:
                raise ValueError(f"two resources go to {path!r}")
        return value

    @model_validator(mode="after")
    def _interactive_fields_fit(self) -> TaskSpec:
        if self.gate_each_turn and not self.interactive:
            raise ValueError("gate_each_turn: only for an interactive task")
        if self.interactive and self.stages:
            raise ValueError("stages: an interactive task has none (one conversation)")
        return self

    @property
    def agent_name(self) -> str:
        return self.agent if isinstance(self.agent, str) else self.agent.name

    @property
    def environment_name(self) -> str:
        return self.environment if isinstance(self.environment, str) else self.environment.name


class SourceSpec(Strict):
    """A place teams keep work (a SQL table, an issue tracker) that a watcher picks tasks from.

    ``kind`` names the class that reads it: a built-in kind (``sql``), a Python entry point
    in the group ``agent_fleet.sources``, or an import path ``package.module:ClassName``.
    ``options`` are that class's own settings, validated by it when the source is built
    (``sources.build_source``); secrets such as a DSN are never written here, only the name
    of the variable or file that holds them.
    """

    name: str = Field(pattern=SPEC_NAME_PATTERN, description="Unique among the sources.")
    kind: str = Field(min_length=1, description="'sql', an entry point name, or 'module:Class'.")
    options: dict[str, Any] = Field(default_factory=dict)
    task: dict[str, Any] = Field(
        default_factory=dict,
        description="Task fields every item of this source gets (gate, environment, "
        "max_attempts, time_limit_s, script...); the item's own fields win.",
    )


BUILTIN_REPORTS = ("overview", "tasks", "tools", "durations")
"""The reports every fleet has (``fleet report NAME``, ``GET /v1/reports/{name}``)."""


class SavedReport(Strict):
    """A named SQL query over the history (``reports:`` in the config), run by
    ``fleet report NAME`` and ``GET /v1/reports/{name}`` like the built-in reports."""

    sql: str = Field(
        min_length=1,
        description="DuckDB SQL over the views events, tasks, sessions, tool_calls, turns.",
    )
    title: str = Field("", max_length=200, description="Shown above the table.")
    description: str = Field("", max_length=2000, description="What the query answers.")


class FleetConfig(Strict):
    """Named agents, environments, secrets and sources, usually read from a YAML file."""

    agents: dict[str, AgentSpec] = Field(default_factory=dict)
    environments: dict[str, EnvironmentSpec] = Field(default_factory=dict)
    sources: list[SourceSpec] = Field(
        default_factory=list, description="Where work is picked up from (see sources/)."
    )
    reports: dict[str, SavedReport] = Field(
        default_factory=dict, description="Saved queries over the history, by name."
    )

    @field_validator("reports")
    @classmethod
    def _report_names(cls, value: dict[str, SavedReport]) -> dict[str, SavedReport]:
        for name in value:
            if name in BUILTIN_REPORTS:
                raise ValueError(f"{name!r} is a built-in report: choose another name")
            if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,63}", name):
                raise ValueError(
                    f"report name {name!r}: use lowercase letters, digits, '_' and '-'"
                )
        return value

    secrets: dict[str, SecretSource] = Field(
        default_factory=dict,
        description="The operator's named secrets: name -> {env: VAR} or {file: PATH} on "
        "the head (see core/vault.py).",
    )

    @field_validator("secrets")
    @classmethod
    def _secret_names(cls, value: dict[str, SecretSource]) -> dict[str, SecretSource]:
        for name in value:
            if not OPERATOR_SECRET_NAME.fullmatch(name):
                raise ValueError(
                    f"{name!r}: a secret's name is letters, digits and '_', starting with a letter"
                )
        return value

    @field_validator("sources")
    @classmethod
    def _source_names_unique(cls, value: list[SourceSpec]) -> list[SourceSpec]:
        names = [source.name for source in value]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"two sources are named {name!r}")
        return value

    def model_post_init(self, _context: Any) -> None:
        for name, agent in self.agents.items():
            agent.name = name
        for name, env in self.environments.items():
            env.name = name
        self.agents.setdefault("default", AgentSpec())
        self.environments.setdefault("default", EnvironmentSpec())

    def resolve_agent(self, task: TaskSpec) -> AgentSpec:
        if isinstance(task.agent, AgentSpec):
            return task.agent
        return self.agents[task.agent]

    def resolve_environment(self, task: TaskSpec) -> EnvironmentSpec:
        if isinstance(task.environment, EnvironmentSpec):
            return task.environment
        return self.environments[task.environment]
