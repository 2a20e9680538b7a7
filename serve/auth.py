"""Who may call: the API token (clients) and the admin token (the operator). Routes take
the dependencies :func:`client` (a bearer token), :func:`stream_client` (a bearer token
or ``?token=``, for EventSource) and :func:`operator` (the admin token only)."""

import hashlib
import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import APIKeyQuery, HTTPAuthorizationCredentials, HTTPBearer

from serve.settings import ServeSettings


@dataclass(frozen=True)
class Caller:
    """Who sent a request: the operator (admin token) or an API client, and a key for the
    token (its hash) to count its tasks by."""

    operator: bool
    key: str


class Tokens:
    """The configured tokens (resolved once, when the app is built)."""

    def __init__(self, settings: ServeSettings) -> None:
        self.client = settings.resolve_token().encode()
        admin = settings.resolve_admin_token()
        self.admin = admin.encode() if admin is not None else None

    def check(self, given: str | None) -> Caller:
        if given is None:
            raise HTTPException(401, "missing bearer token", {"WWW-Authenticate": "Bearer"})
        raw = given.encode("utf-8", "surrogateescape")
        is_client = hmac.compare_digest(raw, self.client)
        is_admin = self.admin is not None and hmac.compare_digest(raw, self.admin)
        if not (is_client or is_admin):
            raise HTTPException(403, "wrong token")
        return Caller(operator=is_admin, key=hashlib.sha256(raw).hexdigest()[:16])


bearer = HTTPBearer(auto_error=False, description="The fleet's API token.")
query_token = APIKeyQuery(
    name="token",
    auto_error=False,
    description="The API token in the query, for clients that cannot send headers "
    "(EventSource); streams only. Prefer the header: URLs get logged.",
)


def _tokens(request: Request) -> Tokens:
    return request.app.state.tokens


async def client(
    request: Request,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Caller:
    """Any valid token, as ``Authorization: Bearer``."""
    return _tokens(request).check(creds.credentials if creds else None)


async def stream_client(
    request: Request,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    token: Annotated[str | None, Depends(query_token)],
) -> Caller:
    """Any valid token, as a bearer header or ``?token=`` (EventSource cannot set headers)."""
    return _tokens(request).check(creds.credentials if creds else token)


async def operator(caller: Annotated[Caller, Depends(client)]) -> Caller:
    """The admin token only."""
    if not caller.operator:
        raise HTTPException(
            403,
            "operator only: agents and environments are created, updated and archived "
            "with the admin token (or in the fleet's config file)",
        )
    return caller


ClientCaller = Annotated[Caller, Depends(client)]
