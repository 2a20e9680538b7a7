"""Secrets, write-only: a value goes in (``POST`` creates, ``PUT`` creates or rotates) and no
route ever answers one; listing shows names, scopes, creation and rotation times.

Who may: the admin token (the operator) creates and rotates any stored secret (scope
``operator``); an API client only when the operator allows it (``api.client_secrets``),
and then only its own (scope ``client``), and sees only those. Secrets defined in the
fleet's config or its secrets directory are changed there, not here (409)."""

from typing import Annotated

from fastapi import HTTPException, Path, Request
from pydantic import ValidationError

from core.errors import InputError, one_line, root_cause
from core.specs import OPERATOR_SECRET_NAME
from core.vault import SecretConflict, SecretDenied, SecretInfo, UnknownSecret
from serve import models as m
from serve.auth import Caller, ClientCaller
from serve.deps import Settings, Sup
from serve.openapi import CONFLICT, NOT_FOUND, VALIDATION
from serve.plumbing import loads_strict, validation_error
from serve.ports import SupervisorPort
from serve.routes import v1_router
from serve.settings import ServeSettings

router = v1_router(tags=["secrets"])

Name = Annotated[str, Path(pattern=OPERATOR_SECRET_NAME.pattern, description="The secret's name.")]
SECRET_BODY = {
    "required": True,
    "content": {"application/json": {"schema": m.SecretIn.model_json_schema()}},
}
WRITE = {
    "openapi_extra": {"requestBody": SECRET_BODY},
    "responses": {**CONFLICT, 422: VALIDATION},
}


def scope_of(caller: Caller, settings: ServeSettings) -> str:
    """The scope a caller's secrets get; 403 for a client the operator does not allow."""
    if caller.operator:
        return "operator"
    if not settings.client_secrets:
        raise HTTPException(
            403,
            "operator only: API clients may not make secrets here (the operator allows it "
            "with FLEET_API_CLIENT_SECRETS)",
        )
    return "client"


async def read_value(request: Request) -> str:
    """The body's value. Parsed here, not by FastAPI, so that an error never echoes it."""
    try:
        return m.SecretIn.model_validate(loads_strict(await request.body())).value
    except ValidationError as exc:
        raise validation_error(exc, ("body",)) from None


async def put(sup: SupervisorPort, name: str, value: str, scope: str, create: bool) -> SecretInfo:
    try:
        return await sup.put_secret(name, value, scope, create)
    except Exception as exc:
        cause = root_cause(exc)
        status = {SecretDenied: 403, SecretConflict: 409, UnknownSecret: 404}.get(type(cause))
        if status is None and isinstance(cause, InputError):
            status = 422
        if status is None:
            raise
        raise HTTPException(status, one_line(cause)) from None


@router.get("/secrets")
async def list_secrets(sup: Sup, caller: ClientCaller) -> m.SecretList:
    """Names, scopes, where each comes from, creation and rotation times; never a value.
    A client sees its own (scope `client`) only."""
    return m.SecretList(data=await sup.list_secrets(None if caller.operator else "client"))


@router.get("/secrets/{name}", responses=NOT_FOUND)
async def get_secret(sup: Sup, caller: ClientCaller, name: Name) -> m.SecretView:
    """One secret's name, scope and times (never its value)."""
    for info in await sup.list_secrets(None if caller.operator else "client"):
        if info.name == name:
            return info
    raise HTTPException(404, f"no secret {name!r}")


@router.post("/secrets/{name}", status_code=201, **WRITE)  # type: ignore[arg-type]
async def create_secret(
    request: Request, sup: Sup, caller: ClientCaller, config: Settings, name: Name
) -> m.SecretView:
    """Create a secret (409 if the name is taken). The answer never holds the value."""
    scope = scope_of(caller, config)
    return await put(sup, name, await read_value(request), scope, create=True)


@router.put("/secrets/{name}", **WRITE)  # type: ignore[arg-type]
async def put_secret(
    request: Request, sup: Sup, caller: ClientCaller, config: Settings, name: Name
) -> m.SecretView:
    """Create a secret, or rotate it: the next session that names it gets the new value
    (running ones keep theirs). A client may rotate only its own (403)."""
    scope = scope_of(caller, config)
    return await put(sup, name, await read_value(request), scope, create=False)
