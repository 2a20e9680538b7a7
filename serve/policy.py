"""What an API client may ask for: the one place that says it.

Three parties: the operator (config file, CLI and driver on the head, the HTTP admin token),
API clients (the API token), agents. The operator's specs are taken whole; a client's task is
passed through :func:`client_task`, which refuses (never clamps) anything that would widen
what the operator allowed:

- an inline agent may set only ``CLIENT_AGENT_FIELDS``; it is built on the operator's
  ``default`` agent, so the model, its server and its key stay the operator's;
- an inline environment may set only ``CLIENT_ENVIRONMENT_FIELDS``, within the operator's
  caps (``FleetSettings.max_*``); it is built on the operator's ``default`` environment;
  its ``env`` may add variables whose values are the client's own secrets
  (``{"secret": NAME}`` of scope ``client``), never plain values nor the operator's
  secrets (those reach a client's task only through an operator environment it names);
- task fields in ``OPERATOR_TASK_FIELDS`` are refused; limits are capped.

Errors are :class:`PolicyError`, naming the field (``agent.base_url``) and why.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from core.errors import InputError
from core.settings import FleetSettings
from core.specs import (
    SPEC_NAME_PATTERN,
    AgentSpec,
    EnvironmentSpec,
    SecretRef,
    TaskSpec,
    workspace_path,
)

CLIENT_AGENT_FIELDS = frozenset(
    {
        "name",
        "instructions",
        "tools",
        "max_turns",
        "temperature",
        "skills",
        "handoffs",
        "approvals",
        "max_tokens",
        "max_cost_usd",
        "custom_tools",
    }
)
"""What a client's inline agent may set. Not: model, api, base_url, api_key_env (where the
model runs and with whose key), stream, context_window, compact_at (how it is called),
mcp_servers (commands run in sandboxes or on workers, URLs reached from workers). Custom
tools are the client's own: it runs them."""

CLIENT_ENVIRONMENT_FIELDS = frozenset({"files", "cpus", "memory_mb", "pids", "disk_mb"})
"""What a client's inline environment may set. Not: name, image, apt, pip (what runs as root
at image build), network, env (but see :func:`client_env`: its own secrets)."""

OPERATOR_TASK_FIELDS = frozenset({"repo", "source"})
"""Task fields only the operator may set (``repo`` copies a directory of the head; ``source``
says which item of the operator's sources a task came from)."""

SET_BY_OPERATOR = "set by the operator; API clients may not set it"


class PolicyError(InputError):
    """A client asked for something the operator did not allow."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = f"{field}: {message}"

    @property
    def loc(self) -> tuple[str, ...]:
        return tuple(self.field.split("."))


@dataclass(frozen=True)
class OperatorSpecs:
    """What a client's task is checked against and built on."""

    agents: Mapping[str, AgentSpec]
    """The operator's named agents; ``default`` is what inline agents are built on."""
    environment: EnvironmentSpec
    """The operator's ``default`` environment: what inline environments are built on."""
    settings: FleetSettings
    """The caps (``max_*``)."""
    client_secrets: frozenset[str] = frozenset()
    """The secrets API clients made (scope ``client``): the only ones a client's inline
    environment may name."""


def client_task(spec: TaskSpec, operator: OperatorSpecs) -> TaskSpec:
    """``spec`` as the operator allows a client to have it, inline agent and environment
    built on the operator's defaults; PolicyError names the first field that is not allowed.
    Named agents and environments are checked by the scheduler, as for every task."""
    for field in sorted(OPERATOR_TASK_FIELDS & spec.model_fields_set):
        if getattr(spec, field) is not None:
            raise PolicyError(field, SET_BY_OPERATOR)
    caps = operator.settings
    _cap("max_turns", spec.max_turns, caps.max_turns_limit, "max_turns_limit")
    _cap("max_attempts", spec.max_attempts, caps.max_attempts_limit, "max_attempts_limit")
    _cap("time_limit_s", spec.time_limit_s, caps.max_time_limit_s, "max_time_limit_s")
    _cap("stall_timeout_s", spec.stall_timeout_s, caps.max_time_limit_s, "max_time_limit_s")
    update: dict[str, Any] = {}
    if isinstance(spec.agent, AgentSpec):
        update["agent"] = client_agent(spec.agent, operator)
    if isinstance(spec.environment, EnvironmentSpec):
        update["environment"] = client_environment(spec.environment, operator)
    return spec.model_copy(update=update)


def client_agent(agent: AgentSpec, operator: OperatorSpecs) -> AgentSpec:
    """A client's inline agent, on top of the operator's default agent."""
    base = operator.agents["default"]
    asked = agent.model_fields_set
    if refused := sorted(asked - CLIENT_AGENT_FIELDS):
        raise PolicyError(f"agent.{refused[0]}", SET_BY_OPERATOR)
    caps = operator.settings
    if "name" in asked:
        if not re.fullmatch(SPEC_NAME_PATTERN, agent.name):
            raise PolicyError("agent.name", f"must match {SPEC_NAME_PATTERN}")
        if agent.name in operator.agents:
            raise PolicyError(
                "agent.name",
                f"{agent.name!r} is an operator agent: give its name as a string to use it, "
                "or name yours otherwise",
            )
    for tool in agent.tools if "tools" in asked else []:
        if tool not in base.tools:
            raise PolicyError(
                "agent.tools",
                f"{tool!r} is not one of the default agent's tools ({', '.join(base.tools)})",
            )
    _cap("agent.max_turns", agent.max_turns, caps.max_turns_limit, "max_turns_limit")
    _cap("agent.max_tokens", agent.max_tokens, base.max_tokens, "the default agent's max_tokens")
    _cap(
        "agent.max_cost_usd",
        agent.max_cost_usd,
        base.max_cost_usd,
        "the default agent's max_cost_usd",
    )
    if "instructions" in asked and len(agent.instructions) > caps.max_prompt_chars:
        raise PolicyError(
            "agent.instructions",
            f"{len(agent.instructions)} characters; max_prompt_chars is {caps.max_prompt_chars}",
        )
    for skill in agent.skills:
        if not re.fullmatch(SPEC_NAME_PATTERN, skill):
            raise PolicyError("agent.skills", f"{skill[:100]!r} must match {SPEC_NAME_PATTERN}")
    outside = [a for a in agent.handoffs if base.handoffs and a not in base.handoffs]
    if outside:
        raise PolicyError(
            "agent.handoffs",
            f"{outside[0]!r} is not among the default agent's handoffs "
            f"({', '.join(base.handoffs)})",
        )
    for tool, policy in agent.approvals.items():
        if not _as_strict(tool, policy, base.approvals):
            raise PolicyError(
                f"agent.approvals.{tool}",
                "would ask less often than the operator's default agent does "
                "(a client may only add approvals)",
            )
    merged = base.model_dump() | {field: getattr(agent, field) for field in asked}
    merged["handoffs"] = agent.handoffs or base.handoffs
    merged["approvals"] = base.approvals | agent.approvals
    return AgentSpec.model_validate(merged)


def client_environment(environment: EnvironmentSpec, operator: OperatorSpecs) -> EnvironmentSpec:
    """A client's inline environment, on top of the operator's default environment."""
    asked = environment.model_fields_set
    if refused := sorted(asked - CLIENT_ENVIRONMENT_FIELDS - {"env"}):
        raise PolicyError(
            f"environment.{refused[0]}",
            SET_BY_OPERATOR + " (name an operator environment instead)",
        )
    for path in environment.files:
        try:
            workspace_path(path)
        except ValueError as exc:
            raise PolicyError("environment.files", str(exc)) from None
    caps = operator.settings
    _cap("environment.cpus", environment.cpus, caps.max_cpus, "max_cpus")
    _cap("environment.memory_mb", environment.memory_mb, caps.max_memory_mb, "max_memory_mb")
    _cap("environment.pids", environment.pids, caps.max_pids, "max_pids")
    _cap("environment.disk_mb", environment.disk_mb, caps.max_disk_mb, "max_disk_mb")
    base = operator.environment
    merged = base.model_dump() | {field: getattr(environment, field) for field in asked}
    merged["files"] = base.files | environment.files
    merged["env"] = base.env | client_env(environment.env, operator)
    return EnvironmentSpec.model_validate(merged)


def client_env(env: Mapping[str, str | SecretRef], operator: OperatorSpecs) -> dict[str, Any]:
    """A client's inline ``env``: only its own secrets, as new variables. A plain value, an
    operator's secret, or a variable the operator's environment sets is refused."""
    for var, given in env.items():
        if not isinstance(given, SecretRef):
            raise PolicyError(
                "environment.env",
                SET_BY_OPERATOR + f" ({var}: a client gives only its own secrets, "
                '{"secret": NAME}, or names an operator environment)',
            )
        if given.secret not in operator.client_secrets:
            raise PolicyError(
                f"environment.env.{var}",
                f"secret {given.secret!r} is not one of this client's secrets "
                "(POST /v1/secrets/{name} makes one, when the operator allows it)",
            )
        if var in operator.environment.env:
            raise PolicyError(
                f"environment.env.{var}", "set by the operator's environment: not replaced"
            )
    return {var: given.model_dump() for var, given in env.items()}


def _cap(field: str, value: float | None, cap: float | None, name: str) -> None:
    if value is not None and cap is not None and value > cap:
        raise PolicyError(
            field, f"{_number(value)} is above the operator's cap {_number(cap)} ({name})"
        )


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _as_strict(tool: str, policy: Any, base: Mapping[str, Any]) -> bool:
    """Whether ``policy`` for ``tool`` asks at least whenever the operator's ``base`` does."""
    current = base.get(tool, base.get("*", "always_allow"))
    return policy == "always_ask" or policy == current or current == "always_allow"


SECRET_MASK = "***"


def masked_env(env: Mapping[str, Any]) -> dict[str, Any]:
    """Variables as shown over HTTP: a reference to a secret as it is (a name, not a
    value), a plain value as ``***`` (it may be one the operator gives the sandbox)."""
    return {
        var: given if isinstance(given, dict | SecretRef) else SECRET_MASK
        for var, given in env.items()
    }


def masked_environment(spec: dict[str, Any]) -> dict[str, Any]:
    """An environment spec (as JSON) to show to a client: ``env`` keeps its names, not their
    values (they may be secrets the operator gives the sandbox)."""
    if not spec.get("env"):
        return spec
    return spec | {"env": masked_env(spec["env"])}


def masked_agent(spec: dict[str, Any]) -> dict[str, Any]:
    """An agent spec (as JSON) to show to a client: its MCP servers' ``env`` keep their
    names, not their values (as an environment's)."""
    servers = spec.get("mcp_servers")
    if not servers or not any(server.get("env") for server in servers):
        return spec
    return spec | {"mcp_servers": [masked_environment(server) for server in servers]}


def masked_task(task: dict[str, Any]) -> dict[str, Any]:
    """A task spec (as JSON) to show to a client: its inline environment and agent masked."""
    environment, agent = task.get("environment"), task.get("agent")
    if isinstance(environment, dict):
        task = task | {"environment": masked_environment(environment)}
    if isinstance(agent, dict):
        task = task | {"agent": masked_agent(agent)}
    return task
