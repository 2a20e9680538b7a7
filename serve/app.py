"""The HTTP API as a plain FastAPI app, built around a Supervisor actor handle.

``create_app(fleet_or_handle, settings)`` is all Ray Serve needs (see :mod:`serve.deployment`)
and all tests need (FastAPI's TestClient). Every supervisor call is awaited
(``await handle.method.remote(...)``) so no route blocks the event loop.

Shapes follow Claude's Managed Agents API: a session is a task (session id = task id), its
status is the task's state, its events are the task's events numbered by ``seq``.
"""

import asyncio
import datetime as dt
import decimal
import hashlib
import hmac
import json
import math
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import pydantic_core
import ray
from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.routing import APIRoute
from fastapi.security import APIKeyQuery, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import Field, SecretStr, TypeAdapter, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from actors.registry import SpecConflict
from actors.supervisor import TERMINAL_EVENTS
from fleet import analytics
from fleet.events import Event, EventType
from fleet.policy import (
    SECRET_MASK,
    OperatorSpecs,
    PolicyError,
    client_task,
    masked_environment,
    masked_task,
)
from fleet.records import TaskRecord
from fleet.settings import FleetSettings
from fleet.specs import AgentSpec, EnvironmentSpec, TaskSpec, TaskState
from serve import models as m
from serve.dashboard import PAGE


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


@dataclass(frozen=True)
class Caller:
    """Who sent a request: the operator (admin token) or an API client, and a key for the
    token (its hash) to count its tasks by."""

    operator: bool
    key: str


# -- plumbing ----------------------------------------------------------------------------
class BodyTooLarge(StarletteHTTPException):
    """413; an HTTPException so that FastAPI's own body parsing passes it on."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"body over {max_bytes} bytes")


class BodyLimit:
    """Refuse bodies over ``max_bytes`` (413), by Content-Length or as they stream in."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for key, value in scope.get("headers", []):
            if key == b"content-length":
                try:
                    too_large = int(value) > self.max_bytes
                except ValueError:
                    await _send_json(send, 400, "bad Content-Length header")
                    return
                if too_large:
                    await _send_json(send, 413, f"body over {self.max_bytes} bytes")
                    return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, limited, send)


async def _send_json(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class EventStreamResponse(StreamingResponse):
    media_type = "text/event-stream"


JSON_MAX_DEPTH = 200
"""Deepest nesting a JSON body may have (the limit of pydantic-core's parser)."""


JSON_ERRORS = {
    "recursion limit exceeded": f"nested more than {JSON_MAX_DEPTH} levels deep",
    "unexpected end of hex escape": "unpaired surrogate in a \\u escape",
    "lone leading surrogate in hex escape": "unpaired surrogate in a \\u escape",
}


def loads_strict(raw: bytes | str) -> Any:
    """Parse JSON as RFC 8259 has it, or raise ValueError with a clear message: no NaN or
    Infinity (nor 1e400), no unpaired surrogates or invalid UTF-8, at most
    ``JSON_MAX_DEPTH`` levels of nesting, integers of at most 4300 digits. Never
    RecursionError, whatever the input."""
    try:
        value = pydantic_core.from_json(raw, allow_inf_nan=False)
    except ValueError as exc:
        message = str(exc)
        for theirs, ours in JSON_ERRORS.items():
            message = message.replace(theirs, ours)
        raise ValueError(message) from None
    stack = [value]
    while stack:  # 1e400 parses as inf: refuse it like Infinity
        item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            raise ValueError("a number is too large: not a finite number")
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return value


class StrictJSONRequest(Request):
    """A request whose ``json()`` is :func:`loads_strict` (FastAPI parses bodies with it)."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            try:
                self._json = loads_strict(await self.body())
            except ValueError as exc:  # FastAPI answers 422 with the message in ctx.error
                raise json.JSONDecodeError(str(exc), "", 0) from None
        return self._json


class StrictJSONRoute(APIRoute):
    """Routes whose JSON bodies are parsed strictly (see :class:`StrictJSONRequest`)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            return await handler(StrictJSONRequest(request.scope, request.receive))

        return strict


def _json_safe(value: Any) -> Any:
    """Client input echoed in an error, made encodable (no NaN, no lone surrogates)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_json_safe(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _field_error(loc: tuple[str | int, ...], msg: str) -> RequestValidationError:
    return RequestValidationError([{"loc": loc, "msg": msg, "type": "value_error"}])


def _validation_error(exc: ValidationError, prefix: tuple[str, ...]) -> RequestValidationError:
    errors = [
        {"loc": (*prefix, *e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()
    ]
    return RequestValidationError(errors)


def _plain(value: Any) -> Any:
    """DuckDB values as JSON values."""
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    return value


def _sse(event: Event) -> bytes:
    data = event.model_dump_json()
    return f"id: {event.seq}\nevent: {event.type.value}\ndata: {data}\n\n".encode()


def _sse_schema(
    about: str, id_means: str, event_means: str, required: list[str], control: dict[str, Any]
) -> dict[str, Any]:
    """The OpenAPI schema of one server-sent event: a fleet Event, or a ``control`` one."""
    return {
        "type": "object",
        "description": about,
        "required": required,
        "properties": {
            "id": {"type": "string", "description": id_means},
            "event": {"type": "string", "description": event_means},
            "data": {
                "type": "string",
                "contentMediaType": "application/json",
                "contentSchema": {
                    "anyOf": [{"$ref": "#/components/schemas/Event"}, {"type": "object", **control}]
                },
            },
            "retry": {"type": "integer"},
        },
    }


SSE_EVENT_SCHEMA = _sse_schema(
    "One server-sent event.",
    "The event's seq (resume after it).",
    "The event type, or session.end.",
    ["data", "event"],
    {
        "description": "session.end: the session's final status.",
        "required": ["status"],
        "properties": {"status": {"type": "string"}},
    },
)
FLEET_SSE_SCHEMA = _sse_schema(
    "One server-sent event of the fleet-wide stream.",
    "The event's global index (resume after it).",
    "Absent for fleet events; stream.open or stream.gap otherwise.",
    ["data"],
    {
        "description": "stream.open: where the stream starts; stream.gap: "
        "how many events this client missed.",
        "properties": {"next": {"type": "integer"}, "missed": {"type": "integer"}},
    },
)
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


_Default = TypeVar("_Default", int, None)


def _resume_point(last_event_id: str | None, default: _Default) -> int | _Default:
    """Where a stream resumes: after ``Last-Event-ID`` when the client sent one."""
    if last_event_id is None or not last_event_id.strip():
        return default
    try:
        return max(-1, int(last_event_id.strip()))
    except ValueError:
        raise _field_error(("header", "last-event-id"), "must be an integer") from None


VALIDATION = {
    "description": "Validation Error",
    "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}}
    },
}
NOT_FOUND = {404: {"model": m.ErrorBody, "description": "Unknown id"}}
CONFLICT = {409: {"model": m.ErrorBody, "description": "Conflict with the current state"}}
TOO_MANY = {429: {"model": m.ErrorBody, "description": "Too many unfinished tasks"}}
REPORTS = ("overview", "tasks", "tools", "durations")


# -- the app -----------------------------------------------------------------------------
def create_app(fleet: Any, settings: ServeSettings | None = None) -> FastAPI:
    """The API over a fleet: a :class:`fleet.api.Fleet` or a Supervisor actor handle."""
    settings = settings or ServeSettings()
    expected = settings.resolve_token().encode()
    admin = settings.resolve_admin_token()
    expected_admin = admin.encode() if admin is not None else None
    sup = getattr(fleet, "supervisor", fleet)
    fleet_settings_cache: list[FleetSettings] = []  # filled on first use (one remote call)
    unfinished: dict[str, set[str]] = {}  # per client token: tasks it submitted, not yet ended
    quota_lock = asyncio.Lock()

    app = FastAPI(
        title="agent-fleet",
        version="1",
        description="Run coding agents on a Ray fleet: agents, environments, sessions, events, "
        "streams, tasks and reports. Every /v1 route needs `Authorization: Bearer <token>`: "
        "the API token (clients) or the admin token (the operator: it alone may create, "
        "update or archive agents and environments, and send full agent and environment "
        "specs; a client's inline ones are limited and built on the operator's defaults).",
        separate_input_output_schemas=False,
    )
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 405:  # Allow: every method of the path, not one route's
            methods: set[str] = set()
            for route in app.router.routes:
                if isinstance(route, Route) and route.matches(request.scope)[0] != Match.NONE:
                    methods |= route.methods or set()
            exc.headers = {**(exc.headers or {}), "Allow": ", ".join(sorted(methods))}
        return await http_exception_handler(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        # As FastAPI's own handler, but the echoed input cannot make it fail (a 500).
        return JSONResponse({"detail": _json_safe(jsonable_encoder(exc.errors()))}, 422)

    @app.exception_handler(ray.exceptions.RayActorError)
    @app.exception_handler(ray.exceptions.ActorUnavailableError)
    async def _fleet_down(_: Request, exc: Exception) -> JSONResponse:
        line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return JSONResponse({"detail": f"fleet unavailable: {line}"}, 503)

    bearer = HTTPBearer(auto_error=False, description="The fleet's API token.")

    def check(given: str | None) -> Caller:
        if given is None:
            raise HTTPException(401, "missing bearer token", {"WWW-Authenticate": "Bearer"})
        raw = given.encode("utf-8", "surrogateescape")
        is_client = hmac.compare_digest(raw, expected)
        is_admin = expected_admin is not None and hmac.compare_digest(raw, expected_admin)
        if not (is_client or is_admin):
            raise HTTPException(403, "wrong token")
        return Caller(operator=is_admin, key=hashlib.sha256(raw).hexdigest()[:16])

    async def authorized(
        creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> Caller:
        return check(creds.credentials if creds else None)

    async def operator_only(caller: Annotated[Caller, Depends(authorized)]) -> Caller:
        if not caller.operator:
            raise HTTPException(
                403,
                "operator only: agents and environments are created, updated and archived "
                "with the admin token (or in the fleet's config file)",
            )
        return caller

    query_token = APIKeyQuery(
        name="token",
        auto_error=False,
        description="The API token in the query, for clients that cannot send headers "
        "(EventSource); streams only. Prefer the header: URLs get logged.",
    )

    async def stream_authorized(
        creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
        token: Annotated[str | None, Depends(query_token)],
    ) -> Caller:
        return check(creds.credentials if creds else token)

    errors: dict[int | str, dict[str, Any]] = {
        400: {"model": m.ErrorBody, "description": "The body cannot be parsed"},
        401: {"model": m.ErrorBody, "description": "No bearer token"},
        403: {"model": m.ErrorBody, "description": "Wrong token, or operator only"},
        413: {"model": m.ErrorBody, "description": "Body too large"},
        503: {"model": m.ErrorBody, "description": "The fleet does not answer"},
    }
    v1 = APIRouter(
        prefix="/v1",
        dependencies=[Depends(authorized)],
        responses=errors,
        route_class=StrictJSONRoute,
    )
    # Streams also take the token as a query parameter: EventSource cannot set headers.
    streams = APIRouter(
        prefix="/v1",
        dependencies=[Depends(stream_authorized)],
        responses=errors,
        route_class=StrictJSONRoute,
    )
    Limit = Annotated[int, Query(ge=1, le=settings.max_page)]

    async def record_of(task_id: str) -> TaskRecord:
        [record] = await sup.get.remote([task_id])
        if record is None:
            raise HTTPException(404, f"no session or task {task_id!r}")
        return record

    async def fleet_settings() -> FleetSettings:
        if not fleet_settings_cache:
            fleet_settings_cache.append(await sup.get_settings.remote())
        return fleet_settings_cache[0]

    async def operator_specs() -> OperatorSpecs:
        """The operator's agents, default environment and caps, as they are now."""
        agents = await sup.list_specs.remote("agent", False)
        environment = await sup.get_spec.remote("environment", "default")
        return OperatorSpecs(
            agents={v["name"]: AgentSpec.model_validate(v["spec"]) for v in agents},
            environment=EnvironmentSpec.model_validate(environment["spec"]),
            settings=await fleet_settings(),
        )

    def admit(spec: TaskSpec, caller: Caller, operator: OperatorSpecs | None) -> TaskSpec:
        """The task as the caller may submit it; PolicyError names what is not allowed."""
        if operator is not None:
            return client_task(spec, operator)
        if spec.repo is not None and not settings.allow_repo:
            raise PolicyError("repo", "server-side repo paths are not accepted (allow_repo is off)")
        return spec

    async def submit(specs: list[TaskSpec], batch: str, caller: Caller) -> dict[str, Any]:
        payload = [s.model_dump(mode="json", exclude_none=True) for s in specs]
        if caller.operator:
            return await sup.submit.remote(payload, batch)
        # A client token may have at most max_queued_per_token unfinished tasks (counted by
        # this replica, over the tasks it took since it started).
        async with quota_lock:
            cap = (await fleet_settings()).max_queued_per_token
            mine = unfinished.setdefault(caller.key, set())
            ids = sorted(mine)
            for task_id, record in zip(ids, await sup.get.remote(ids) if ids else [], strict=True):
                if record is None or record.state.terminal:
                    mine.discard(task_id)
            if len(mine) + len(specs) > cap:
                raise HTTPException(
                    429,
                    f"this token has {len(mine)} unfinished tasks; {len(specs)} more would "
                    f"exceed max_queued_per_token ({cap}): wait for some to end",
                )
            out = await sup.submit.remote(payload, batch)
            mine.update(out["accepted"])
            return out

    def shown(record: TaskRecord) -> TaskRecord:
        """A record as a client sees it: no environment variable values."""
        if not isinstance(record.spec.environment, EnvironmentSpec):
            return record
        environment = record.spec.environment
        masked = environment.model_copy(update={"env": dict.fromkeys(environment.env, SECRET_MASK)})
        return record.model_copy(
            update={"spec": record.spec.model_copy(update={"environment": masked})}
        )

    def shown_event(event: Event) -> Event:
        if event.type != EventType.task_submitted or "task" not in event.payload:
            return event
        return event.model_copy(
            update={"payload": event.payload | {"task": masked_task(event.payload["task"])}}
        )

    # -- health and dashboard ------------------------------------------------------------
    @app.get("/healthz", tags=["meta"])
    async def healthz() -> m.Health:
        """Liveness (no auth): the app answers; says nothing about the fleet."""
        return m.Health(ok=True)

    @app.get("/", response_class=HTMLResponse, tags=["meta"])
    async def dashboard() -> HTMLResponse:
        """The dashboard page (it asks for the token, or reads `?token=` once)."""
        return HTMLResponse(PAGE)

    # -- agents and environments ---------------------------------------------------------
    def spec_routes(kind: str, plural: str, create: type, update: type, view: type, listing: type):
        async def get_view(name: str) -> dict[str, Any]:
            found = await sup.get_spec.remote(kind, name)
            if found is None:
                raise HTTPException(404, f"no {kind} {name!r}")
            return found

        async def put(spec: dict[str, Any], expected: int | None) -> dict[str, Any]:
            try:
                return await sup.put_spec.remote(kind, spec, expected)
            except SpecConflict as exc:
                raise HTTPException(409, str(exc).strip().splitlines()[-1]) from None

        def shown_view(found: dict[str, Any]) -> dict[str, Any]:
            if kind != "environment":
                return found
            return found | {"spec": masked_environment(found["spec"])}

        operator = [Depends(operator_only)]

        @v1.post(
            f"/{plural}", status_code=201, responses=CONFLICT, tags=[plural], dependencies=operator
        )
        async def create_spec(body: create) -> view:  # type: ignore[valid-type]
            """Create (version 1). 409 if the name is taken. Admin token only."""
            return shown_view(await put(body.model_dump(mode="json"), 0))

        @v1.get(f"/{plural}", tags=[plural])
        async def list_spec(include_archived: bool = False) -> listing:  # type: ignore[valid-type]
            """Environment variables are listed by name; their values read `***`."""
            found = await sup.list_specs.remote(kind, include_archived)
            return {"data": [shown_view(v) for v in found]}

        @v1.get(f"/{plural}/{{name}}", responses=NOT_FOUND, tags=[plural])
        async def get_spec(name: str) -> view:  # type: ignore[valid-type]
            return shown_view(await get_view(name))

        @v1.post(
            f"/{plural}/{{name}}",
            responses={**NOT_FOUND, **CONFLICT},
            tags=[plural],
            dependencies=operator,
        )
        async def update_spec(name: str, body: update) -> view:  # type: ignore[valid-type]
            """Replace the spec: it becomes the next version (409 if `version` is stale).
            Admin token only."""
            current = await get_view(name)
            if current.get("archived"):
                raise HTTPException(404, f"{kind} {name!r} is archived")
            spec = body.model_dump(mode="json", exclude={"version"}) | {"name": name}
            return shown_view(await put(spec, body.version))

        @v1.post(
            f"/{plural}/{{name}}/archive",
            responses={**NOT_FOUND, **CONFLICT},
            tags=[plural],
            dependencies=operator,
        )
        async def archive_spec(name: str) -> view:  # type: ignore[valid-type]
            """New tasks can no longer name it; it stays readable. Admin token only."""
            current = await get_view(name)
            if current.get("archived"):
                return shown_view(current)
            if not await sup.archive_spec.remote(kind, name):
                raise HTTPException(409, f"{kind} {name!r} cannot be archived")
            return shown_view(await get_view(name))

    spec_routes("agent", "agents", m.AgentCreate, m.AgentUpdate, m.AgentView, m.AgentList)
    spec_routes(
        "environment",
        "environments",
        m.EnvironmentCreate,
        m.EnvironmentUpdate,
        m.EnvironmentView,
        m.EnvironmentList,
    )

    # -- sessions ------------------------------------------------------------------------
    @v1.post("/sessions", status_code=201, responses={**CONFLICT, **TOO_MANY}, tags=["sessions"])
    async def create_session(
        body: m.SessionCreate, caller: Annotated[Caller, Depends(authorized)]
    ) -> m.SessionView:
        """Submit one task; the session id is the task id. An inline agent or environment
        from an API client may set only a few fields (see the README), within caps."""
        texts = [event.text() for event in body.events]
        prompt = body.prompt or "\n\n".join(texts)
        if not prompt:  # a blank one is refused by TaskSpec, as on every route
            raise _field_error(("body", "prompt"), "give a prompt or a user.message event")
        # Only what the client set: the policy tells its fields from the defaults.
        fields = body.model_dump(
            exclude={"events", "prompt"}, exclude_none=True, exclude_unset=True
        )
        fields["prompt"] = prompt
        try:
            spec = TaskSpec.model_validate(fields)
        except ValidationError as exc:
            raise _validation_error(exc, ("body",)) from None
        try:
            spec = admit(spec, caller, None if caller.operator else await operator_specs())
        except PolicyError as exc:
            raise _field_error(("body", *exc.loc), exc.message) from None
        out = await submit([spec], f"s-{uuid.uuid4().hex[:8]}", caller)
        if out["rejected"]:
            rejected = out["rejected"][0]
            if rejected["field"] == "id":
                raise HTTPException(409, rejected["error"])
            raise _field_error(("body", rejected["field"] or "body"), rejected["error"])
        return m.SessionView.of(await record_of(spec.id))

    @v1.get("/sessions", tags=["sessions"])
    async def list_sessions(
        status: TaskState | None = None,
        label: Annotated[str | None, Query(max_length=200)] = None,
        limit: Limit = 50,
        offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
    ) -> m.SessionList:
        """Newest first."""
        state = status.value if status else None
        records = await sup.list_tasks.remote(state, label, limit + 1, offset)
        more = len(records) > limit
        return m.SessionList(
            data=[m.SessionView.of(r) for r in records[:limit]],
            has_more=more,
            next_offset=offset + limit if more else None,
        )

    @v1.get("/sessions/{session_id}", responses=NOT_FOUND, tags=["sessions"])
    async def get_session(session_id: str) -> m.SessionView:
        return m.SessionView.of(await record_of(session_id))

    @v1.post("/sessions/{session_id}/archive", responses=NOT_FOUND, tags=["sessions"])
    async def archive_session(session_id: str) -> m.SessionView:
        """Stop the session if it is live (it is cancelled); its history stays readable."""
        record = await record_of(session_id)
        if not record.state.terminal:
            await sup.cancel.remote(session_id)
        return m.SessionView.of(await record_of(session_id))

    @v1.get("/sessions/{session_id}/events", responses=NOT_FOUND, tags=["sessions"])
    async def list_events(
        session_id: str,
        after_seq: Annotated[int, Query(ge=-1, le=2**62)] = -1,
        limit: Limit = 100,
    ) -> m.EventPage:
        """The full history, oldest first, a page at a time (by `seq`)."""
        await record_of(session_id)
        events = await sup.events_since.remote(session_id, after_seq, 0.0, limit + 1)
        page = events[:limit]
        return m.EventPage(
            data=[shown_event(e) for e in page],
            has_more=len(events) > limit,
            next_after_seq=page[-1].seq if page else after_seq,
        )

    @v1.post(
        "/sessions/{session_id}/events", responses={**NOT_FOUND, **CONFLICT}, tags=["sessions"]
    )
    async def post_events(session_id: str, body: m.EventsIn) -> m.EventsPosted:
        """Steer (`user.message`), interrupt, or answer a tool confirmation, in order.
        Stops at the first event the session cannot take (409)."""
        record = await record_of(session_id)
        for n, event in enumerate(body.events):
            if isinstance(event, m.UserMessageIn):
                done = await sup.steer.remote(session_id, event.text())
                why = f"session is {record.state.value}"
            elif isinstance(event, m.UserInterruptIn):
                done = await sup.interrupt.remote(session_id)
                why = "session is not running"
            else:
                pending = (await record_of(session_id)).pending_approval or {}
                call_id = event.tool_use_id or pending.get("call_id")
                done = bool(call_id) and await sup.decide_approval.remote(
                    session_id, call_id, event.result == "allow", event.deny_message
                )
                why = "no tool call waits for approval" + (
                    f" with id {call_id!r}" if call_id else ""
                )
            if not done:
                raise HTTPException(409, f"events[{n}] ({event.type}) refused: {why}")
        return m.EventsPosted(
            accepted=len(body.events), session=m.SessionView.of(await record_of(session_id))
        )

    @streams.get(
        "/sessions/{session_id}/events/stream",
        response_class=EventStreamResponse,
        responses={
            **NOT_FOUND,
            200: {
                "description": "Server-Sent Events: `id` is the event's seq, `event` its type, "
                "`data` the event as JSON; a final `session.end` event (no id) closes it.",
                "content": {"text/event-stream": {"schema": SSE_EVENT_SCHEMA}},
            },
        },
        tags=["sessions"],
    )
    async def stream_events(
        session_id: str,
        last_event_id: Annotated[
            str | None, Header(description="Resume after this seq (sent by EventSource).")
        ] = None,
        after_seq: Annotated[int, Query(ge=-1, le=2**62)] = -1,
    ) -> EventStreamResponse:
        """Live events from `after_seq` (or `Last-Event-ID`) until the session ends."""
        after_seq = _resume_point(last_event_id, after_seq)
        await record_of(session_id)
        return EventStreamResponse(follow(session_id, after_seq), headers=STREAM_HEADERS)

    async def follow(task_id: str, last: int) -> AsyncIterator[bytes]:
        yield b"retry: 2000\n\n"
        [record] = await sup.get.remote([task_id])
        ended = record is None or (record.state.terminal and record.seq <= last)
        while not ended:
            events = await sup.events_since.remote(task_id, last, settings.stream_poll_s, 500)
            for event in events:
                if event.seq <= last:
                    continue
                last = event.seq
                yield _sse(shown_event(event))
                ended = ended or event.type in TERMINAL_EVENTS
            if not events:  # idle: has it ended without us seeing it (e.g. never started)?
                [record] = await sup.get.remote([task_id])
                ended = record is None or (record.state.terminal and record.seq <= last)
                yield b": keep-alive\n\n"
        [record] = await sup.get.remote([task_id])
        status = record.state.value if record else "unknown"
        yield f"event: session.end\ndata: {json.dumps({'status': status})}\n\n".encode()

    # -- tasks ---------------------------------------------------------------------------
    @v1.post(
        "/tasks",
        openapi_extra={
            "requestBody": {
                "required": True,
                "description": "A JSON array of tasks, or JSONL (one task per line).",
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "array",
                            "items": {"$ref": "#/components/schemas/TaskSpec"},
                        }
                    },
                    "application/x-ndjson": {"schema": {"type": "string"}},
                },
            }
        },
        responses={422: VALIDATION, **TOO_MANY},
        tags=["tasks"],
    )
    async def submit_tasks(
        request: Request,
        caller: Annotated[Caller, Depends(authorized)],
        batch: Annotated[str | None, Query(max_length=200)] = None,
    ) -> m.BatchResult:
        """Queue a batch. Bad tasks are listed in `rejected`; the others still run."""
        raw = await request.body()
        items, rejected = parse_batch(raw, settings.max_batch)
        operator = None if caller.operator else await operator_specs()
        specs: list[TaskSpec] = []
        for line, item in items:
            if not isinstance(item, dict):
                rejected.append(
                    m.Rejection(task_id="?", field="", error="not an object", line=line)
                )
                continue
            task_id = str(item.get("id", "?"))
            try:
                specs.append(admit(TaskSpec.model_validate(item), caller, operator))
            except ValidationError as exc:
                first = exc.errors()[0]
                field = ".".join(str(p) for p in first["loc"])
                rejected.append(
                    m.Rejection(task_id=task_id, field=field, error=first["msg"], line=line)
                )
            except PolicyError as exc:
                rejected.append(
                    m.Rejection(task_id=task_id, field=exc.field, error=exc.message, line=line)
                )
        batch = batch or f"b-{uuid.uuid4().hex[:8]}"
        out = await submit(specs, batch, caller) if specs else {"accepted": [], "rejected": []}
        rejected += [m.Rejection(**r) for r in out["rejected"]]
        return m.BatchResult(batch=batch, accepted=out["accepted"], rejected=rejected)

    @v1.get("/tasks/{task_id}", responses=NOT_FOUND, tags=["tasks"])
    async def get_task(task_id: str) -> TaskRecord:
        """The task's full record (spec, attempts, history, plan); environment variables
        of an inline environment are shown by name only."""
        return shown(await record_of(task_id))

    @v1.post("/tasks/{task_id}/cancel", responses={**NOT_FOUND, **CONFLICT}, tags=["tasks"])
    async def cancel_task(task_id: str) -> TaskRecord:
        record = await record_of(task_id)
        if not await sup.cancel.remote(task_id):
            raise HTTPException(409, f"task {task_id!r} is {record.state.value}: cannot cancel")
        return shown(await record_of(task_id))

    @v1.post("/tasks/{task_id}/review", responses={**NOT_FOUND, **CONFLICT}, tags=["tasks"])
    async def review_task(task_id: str, body: m.ReviewIn) -> TaskRecord:
        """A person's verdict on a result awaiting review: approve (it succeeds) or reject
        (a new attempt, told why)."""
        record = await record_of(task_id)
        if not await sup.review.remote(task_id, body.approve, body.message):
            raise HTTPException(409, f"task {task_id!r} is {record.state.value}: not in review")
        return shown(await record_of(task_id))

    # -- fleet ---------------------------------------------------------------------------
    @v1.get("/fleet/status", tags=["fleet"])
    async def fleet_status() -> m.FleetStatus:
        """Counts by state, the queue head, running sessions, tasks waiting on a person
        (`blocked`: a tool call to allow, a result to review, paused), recent outcomes."""
        return await sup.status.remote()

    @streams.get(
        "/events/stream",
        response_class=EventStreamResponse,
        responses={
            200: {
                "description": "Server-Sent Events of every task: `id` is the event's global "
                "index (resume after it with `Last-Event-ID`), `data` the event as JSON (its "
                "`task_id`, `seq` and `type` inside); no `event` field, so EventSource's "
                "`onmessage` gets them all. Control events: `stream.open` first (its id is "
                "the position the stream starts after) and `stream.gap` when events were "
                "dropped before this client read them (`missed`: how many). Never ends.",
                "content": {"text/event-stream": {"schema": FLEET_SSE_SCHEMA}},
            },
        },
        tags=["fleet"],
    )
    async def stream_fleet(
        last_event_id: Annotated[
            str | None, Header(description="Resume after this index (sent by EventSource).")
        ] = None,
        after: Annotated[
            int | None,
            Query(
                ge=-1,
                le=2**62,
                description="Resume after this event index (-1: from the oldest event the "
                "fleet still holds). Default: only events from now on.",
            ),
        ] = None,
    ) -> EventStreamResponse:
        """The fleet's live event stream: every event of every task as it is recorded (for
        dashboards). Resumable: a client that reconnects with `Last-Event-ID` misses
        nothing the fleet still holds (its last few thousand events) and sees nothing twice."""
        resume = _resume_point(last_event_id, after)  # None: from now on
        return EventStreamResponse(
            follow_fleet(-1 if resume is None else resume + 1), headers=STREAM_HEADERS
        )

    async def follow_fleet(cursor: int) -> AsyncIterator[bytes]:
        """``cursor``: the index of the first event wanted (negative: from now)."""
        _, start = await sup.stream_since.remote(cursor, 0.0, 0)
        missed = max(0, start - cursor) if cursor >= 0 else 0
        opened = json.dumps({"next": start, "missed": missed})
        yield f"retry: 2000\nid: {start - 1}\nevent: stream.open\ndata: {opened}\n\n".encode()
        cursor = start
        while True:
            events, after = await sup.stream_since.remote(cursor, settings.stream_poll_s, 500)
            first = after - len(events)
            if first > cursor:  # they left the fleet's ring before we read them
                gap = json.dumps({"missed": first - cursor})
                yield f"event: stream.gap\ndata: {gap}\n\n".encode()
            chunks = [
                f"id: {first + n}\ndata: {shown_event(event).model_dump_json()}\n\n"
                for n, event in enumerate(events)
            ]
            yield "".join(chunks).encode() if chunks else b": keep-alive\n\n"
            cursor = after

    @v1.get("/reports/{name}", responses=NOT_FOUND, tags=["fleet"])
    async def get_report(
        name: str,
        batch: Annotated[str | None, Query(max_length=200)] = None,
        fresh: Annotated[
            bool,
            Query(
                description="Roll buffered events into Parquet first, so the report includes "
                "the last second too (writes a file: do not poll with it)."
            ),
        ] = False,
    ) -> m.Report:
        """DuckDB reports over the event log: overview, tasks, tools, durations. The log is
        rolled into Parquet every `flush_interval_s` (1 s by default); `fresh` forces it.
        Empty rows while the log has no events yet."""
        if name not in REPORTS:
            raise HTTPException(404, f"no report {name!r} (known: {', '.join(REPORTS)})")
        events_dir = (await fleet_settings()).events_dir
        if fresh:
            await sup.flush.remote()
        try:
            table = await asyncio.to_thread(run_report, events_dir, name, batch)
        except analytics.AnalyticsError:
            table = analytics.Table(name, [], [])
        rows = [{k: _plain(v) for k, v in row.items()} for row in table.as_dicts()]
        return m.Report(name=name, title=table.title or name, columns=table.columns, rows=rows)

    app.include_router(v1)
    app.include_router(streams)
    install_openapi(app)
    return app


def parse_batch(raw: bytes, max_batch: int) -> tuple[list[tuple[int, Any]], list[m.Rejection]]:
    """A JSON array, or JSONL: (line, item) pairs plus the lines that are not JSON."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _field_error(("body",), "not UTF-8 text") from None
    items: list[tuple[int, Any]] = []
    rejected: list[m.Rejection] = []
    if text.lstrip().startswith("["):
        try:
            parsed = loads_strict(text)
        except ValueError as exc:
            raise _field_error(("body",), f"invalid JSON: {exc}") from None
        items = list(enumerate(parsed, start=1))
    else:
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                items.append((n, loads_strict(line)))
            except ValueError as exc:
                rejected.append(
                    m.Rejection(task_id="?", field="", error=f"bad JSON: {exc}", line=n)
                )
    if not text.strip():
        raise _field_error(("body",), "no tasks")
    if len(items) > max_batch:
        raise _field_error(("body",), f"more than {max_batch} tasks")
    return items, rejected


DURATIONS_SQL = """
SELECT task_id, state, round(duration_s, 3) AS duration_s,
       CAST(finished_at AS VARCHAR) AS finished_at
FROM tasks WHERE finished_at IS NOT NULL {where}
ORDER BY finished_at DESC LIMIT 200
"""


def run_report(events_dir: str, name: str, batch: str | None) -> analytics.Table:
    if name == "durations":
        con = analytics.connect(events_dir)
        where = "AND batch = ?" if batch else ""
        table = analytics.query(con, DURATIONS_SQL.format(where=where), [batch] if batch else [])
        table.title = "Durations of finished tasks (newest first)"
        return table
    overview, tasks, tools = analytics.report(events_dir, batch=batch, task_limit=500)
    return {"overview": overview, "tasks": tasks, "tools": tools}[name]


def install_openapi(app: FastAPI) -> None:
    """Add TaskSpec (the raw-body batch route refers to it) to the generated schema."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        extra = TypeAdapter(TaskSpec).json_schema(ref_template="#/components/schemas/{model}")
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for name, sub in extra.pop("$defs", {}).items():
            components.setdefault(name, sub)
        components.setdefault("TaskSpec", extra)
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                for status, response in operation.get("responses", {}).items():
                    content = response.get("content", {})
                    if not status.startswith("2") and "text/event-stream" in content:
                        response["content"] = {"application/json": content["text/event-stream"]}
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
