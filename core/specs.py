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

SPEC_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
"""Agent, environment and skill names as the HTTP API takes them (no slashes or spaces)."""
PLAIN_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
"""A variable or secret name: letters, digits and '_' (no path, no '..', no '/')."""
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

    @field_validator("api_key_env")
    @classmethod
    def _key_is_a_plain_name(cls, value: str) -> str:
        return plain_name(value)

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
    env: dict[str, str] = Field(default_factory=dict)


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


class FleetConfig(Strict):
    """Named agents and environments, usually read from a YAML file."""

    agents: dict[str, AgentSpec] = Field(default_factory=dict)
    environments: dict[str, EnvironmentSpec] = Field(default_factory=dict)
    sources: list[SourceSpec] = Field(
        default_factory=list, description="Where work is picked up from (see sources/)."
    )

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
