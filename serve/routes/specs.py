"""Agents and environments: named, versioned specs. Everyone reads them (every version);
only the operator (admin token) creates, updates and archives them. Environment variable
values (of environments, of agents' MCP servers) read `***`. Each change is logged, so every
version survives a restart."""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path

from actors.registry import SpecConflict
from core.errors import one_line, root_cause
from harness import mcp
from serve import models as m
from serve.auth import operator
from serve.deps import Sup
from serve.openapi import CONFLICT, NOT_FOUND
from serve.plumbing import field_error
from serve.policy import masked_agent, masked_environment
from serve.ports import SupervisorPort
from serve.routes import v1_router

router = v1_router()
OPERATOR = [Depends(operator)]


def add_routes(
    router: APIRouter,
    kind: str,
    plural: str,
    create: type,
    update: type,
    view: type,
    listing: type,
) -> None:
    """The seven routes of one kind (``agent`` or ``environment``) under ``/{plural}``."""

    async def get_view(sup: SupervisorPort, name: str) -> dict[str, Any]:
        found = await sup.get_spec(kind, name)
        if found is None:
            raise HTTPException(404, f"no {kind} {name!r}")
        return found

    async def put(
        sup: SupervisorPort, spec: dict[str, Any], expected: int | None
    ) -> dict[str, Any]:
        try:
            return await sup.put_spec(kind, spec, expected)
        except SpecConflict as exc:
            raise HTTPException(409, one_line(root_cause(exc))) from None

    def shown_view(found: dict[str, Any]) -> dict[str, Any]:
        if kind == "agent":
            return found | {"spec": masked_agent(found["spec"])}
        return found | {"spec": masked_environment(found["spec"])}

    async def servers_start(sup: SupervisorPort, body: Any) -> None:
        """An agent's MCP servers outside sandboxes (worker side, URLs) must start: else a
        422 naming the server, with its error (stderr's end)."""
        if kind != "agent" or not body.mcp_servers:
            return
        timeout_s = (await sup.get_settings()).mcp_start_timeout_s
        failed = await mcp.probe(body.mcp_servers, timeout_s)
        if failed is not None:
            raise field_error(("body", "mcp_servers", failed[0]), failed[1])

    @router.post(
        f"/{plural}", status_code=201, responses=CONFLICT, tags=[plural], dependencies=OPERATOR
    )
    async def create_spec(sup: Sup, body: create) -> view:  # type: ignore[valid-type]
        """Create (version 1). 409 if the name is taken; 422 if an agent's MCP server that
        runs outside sandboxes does not start. Admin token only."""
        await servers_start(sup, body)
        return shown_view(await put(sup, body.model_dump(mode="json"), 0))

    @router.get(f"/{plural}", tags=[plural])
    async def list_spec(sup: Sup, include_archived: bool = False) -> listing:  # type: ignore[valid-type]
        """Environment variables are listed by name; their values read `***`."""
        found = await sup.list_specs(kind, include_archived)
        return {"data": [shown_view(v) for v in found]}

    @router.get(f"/{plural}/{{name}}", responses=NOT_FOUND, tags=[plural])
    async def get_spec(sup: Sup, name: str) -> view:  # type: ignore[valid-type]
        return shown_view(await get_view(sup, name))

    @router.get(f"/{plural}/{{name}}/versions", responses=NOT_FOUND, tags=[plural])
    async def list_versions(sup: Sup, name: str) -> listing:  # type: ignore[valid-type]
        """Every version, oldest first (an archived name's too)."""
        found = await sup.spec_versions(kind, name)
        if found is None:
            raise HTTPException(404, f"no {kind} {name!r}")
        return {"data": [shown_view(v) for v in found]}

    @router.get(f"/{plural}/{{name}}/versions/{{version}}", responses=NOT_FOUND, tags=[plural])
    async def get_version(sup: Sup, name: str, version: Annotated[int, Path(ge=1)]) -> view:  # type: ignore[valid-type]
        """One version, as it was put (tasks pinned to it run it)."""
        found = await sup.get_spec(kind, name, version)
        if found is None:
            raise HTTPException(404, f"no version {version} of {kind} {name!r}")
        return shown_view(found)

    @router.post(
        f"/{plural}/{{name}}",
        responses={**NOT_FOUND, **CONFLICT},
        tags=[plural],
        dependencies=OPERATOR,
    )
    async def update_spec(sup: Sup, name: str, body: update) -> view:  # type: ignore[valid-type]
        """Replace the spec: it becomes the next version (409 if `version` is stale).
        Admin token only."""
        current = await get_view(sup, name)
        if current.get("archived"):
            raise HTTPException(404, f"{kind} {name!r} is archived")
        await servers_start(sup, body)
        spec = body.model_dump(mode="json", exclude={"version"}) | {"name": name}
        return shown_view(await put(sup, spec, body.version))

    @router.post(
        f"/{plural}/{{name}}/archive",
        responses={**NOT_FOUND, **CONFLICT},
        tags=[plural],
        dependencies=OPERATOR,
    )
    async def archive_spec(sup: Sup, name: str) -> view:  # type: ignore[valid-type]
        """New tasks can no longer name it; it stays readable. Admin token only."""
        current = await get_view(sup, name)
        if current.get("archived"):
            return shown_view(current)
        done = await sup.archive_spec(kind, name)
        if not done:
            raise HTTPException(409, done.reason)
        return shown_view(await get_view(sup, name))


add_routes(router, "agent", "agents", m.AgentCreate, m.AgentUpdate, m.AgentView, m.AgentList)
add_routes(
    router,
    "environment",
    "environments",
    m.EnvironmentCreate,
    m.EnvironmentUpdate,
    m.EnvironmentView,
    m.EnvironmentList,
)
