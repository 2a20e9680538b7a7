"""What an API client may send and see. Sending: a client's tasks pass the operator's
policy (:mod:`serve.policy`) and its token's queue quota; the operator's tasks only
``allow_repo``. Seeing: environment variable values are masked in records and events."""

import asyncio
from typing import Any

from fastapi import HTTPException

from core.events import Event, EventType
from core.records import TaskRecord
from core.settings import FleetSettings
from core.specs import AgentSpec, EnvironmentSpec, TaskSpec
from serve.auth import Caller
from serve.policy import (
    SECRET_MASK,
    OperatorSpecs,
    PolicyError,
    client_task,
    masked_env,
    masked_environment,
    masked_task,
)
from serve.ports import SupervisorPort
from serve.settings import ServeSettings


class Quotas:
    """What one app (one API replica) remembers across requests: each client token's
    unfinished tasks, and the fleet's settings once fetched."""

    def __init__(self) -> None:
        self.fleet_settings: FleetSettings | None = None
        self.unfinished: dict[str, set[str]] = {}  # per client token: its tasks not yet ended
        self.lock = asyncio.Lock()


class Admission:
    """Admits tasks for one request: the operator's policy, then the token's quota (kept in
    the app's :class:`Quotas`)."""

    def __init__(self, sup: SupervisorPort, settings: ServeSettings, quotas: Quotas) -> None:
        self.sup = sup
        self.settings = settings
        self.quotas = quotas

    async def fleet_settings(self) -> FleetSettings:
        if self.quotas.fleet_settings is None:
            self.quotas.fleet_settings = await self.sup.get_settings()
        return self.quotas.fleet_settings

    async def operator_specs(self, caller: Caller) -> OperatorSpecs | None:
        """The operator's agents, default environment and caps as they are now, for a
        client's tasks; None for the operator's own (not limited by the policy)."""
        if caller.operator:
            return None
        agents = await self.sup.list_specs("agent", False)
        environment = await self.sup.get_spec("environment", "default")
        mine = await self.sup.list_secrets("client") if self.settings.client_secrets else []
        return OperatorSpecs(
            agents={v["name"]: AgentSpec.model_validate(v["spec"]) for v in agents},
            environment=EnvironmentSpec.model_validate(environment["spec"]),
            settings=await self.fleet_settings(),
            client_secrets=frozenset(info.name for info in mine),
        )

    def admit(self, spec: TaskSpec, operator: OperatorSpecs | None) -> TaskSpec:
        """The task as the caller may submit it; PolicyError names what is not allowed."""
        if operator is not None:
            return client_task(spec, operator)
        if spec.repo is not None and not self.settings.allow_repo:
            raise PolicyError("repo", "server-side repo paths are not accepted (allow_repo is off)")
        return spec

    async def submit(self, specs: list[TaskSpec], batch: str, caller: Caller) -> dict[str, Any]:
        """Queue admitted tasks; 429 (nothing queued) when a client token would go over
        ``max_queued_per_token`` unfinished tasks (counted by this replica, over the tasks
        it took since it started)."""
        payload = [s.model_dump(mode="json", exclude_none=True) for s in specs]
        if caller.operator:
            return await self.sup.submit(payload, batch)
        async with self.quotas.lock:
            cap = (await self.fleet_settings()).max_queued_per_token
            mine = self.quotas.unfinished.setdefault(caller.key, set())
            ids = sorted(mine)
            for task_id, record in zip(ids, await self.sup.get(ids) if ids else [], strict=True):
                if record is None or record.state.terminal:
                    mine.discard(task_id)
            if len(mine) + len(specs) > cap:
                raise HTTPException(
                    429,
                    f"this token has {len(mine)} unfinished tasks; {len(specs)} more would "
                    f"exceed max_queued_per_token ({cap}): wait for some to end",
                )
            out = await self.sup.submit(payload, batch)
            mine.update(out["accepted"])
            return out


def shown(record: TaskRecord) -> TaskRecord:
    """A record as a client sees it: no environment variable values of its inline
    environment (references to secrets are shown: a name is not a value), nor of its inline
    agent's MCP servers."""
    update: dict[str, Any] = {}
    environment, agent = record.spec.environment, record.spec.agent
    if isinstance(environment, EnvironmentSpec):
        update["environment"] = environment.model_copy(update={"env": masked_env(environment.env)})
    if isinstance(agent, AgentSpec) and any(server.env for server in agent.mcp_servers):
        servers = [
            server.model_copy(update={"env": dict.fromkeys(server.env, SECRET_MASK)})
            for server in agent.mcp_servers
        ]
        update["agent"] = agent.model_copy(update={"mcp_servers": servers})
    if not update:
        return record
    return record.model_copy(update={"spec": record.spec.model_copy(update=update)})


def shown_event(event: Event) -> Event:
    """An event as a client sees it: a submitted task's (or a put environment's) environment
    variables masked."""
    if event.type == EventType.registry_put and event.payload.get("kind") == "environment":
        spec = masked_environment(event.payload.get("spec") or {})
        return event.model_copy(update={"payload": event.payload | {"spec": spec}})
    if event.type != EventType.task_submitted or "task" not in event.payload:
        return event
    return event.model_copy(
        update={"payload": event.payload | {"task": masked_task(event.payload["task"])}}
    )
