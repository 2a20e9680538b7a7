"""HTTP plumbing shared by every route: strict JSON bodies, the body-size limit, and error
answers that never fail themselves (a 4xx that names the problem, never a 500)."""

import json
import math
from collections.abc import Callable, Coroutine
from typing import Any

import pydantic_core
import ray
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.errors import FleetError, one_line, root_cause


# -- body size ----------------------------------------------------------------------------
class BodyTooLarge(FleetError, StarletteHTTPException):
    """413; an HTTPException (and not a ValueError) so that FastAPI's own body parsing
    passes it on."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"body over {max_bytes} bytes")


class BodyLimit:
    """Refuse bodies over ``max_bytes`` (413), by Content-Length or as they stream in.
    Requests to the ``own_limit`` paths pass: their routes enforce a limit of their own
    (file uploads, up to the fleet's ``max_file_bytes``)."""

    def __init__(self, app: ASGIApp, max_bytes: int, own_limit: tuple[str, ...] = ()) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.own_limit = frozenset(own_limit)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in self.own_limit:
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


# -- strict JSON --------------------------------------------------------------------------
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


# -- errors -------------------------------------------------------------------------------
def field_error(loc: tuple[str | int, ...], msg: str) -> RequestValidationError:
    """A 422 naming one field, shaped like FastAPI's own."""
    return RequestValidationError([{"loc": loc, "msg": msg, "type": "value_error"}])


def validation_error(exc: ValidationError, prefix: tuple[str, ...]) -> RequestValidationError:
    """A pydantic error as a 422, its locations under ``prefix`` (e.g. ``("body",)``)."""
    errors = [
        {"loc": (*prefix, *e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()
    ]
    return RequestValidationError(errors)


def json_safe(value: Any) -> Any:
    """Client input echoed in an error, made encodable (no NaN, no lone surrogates)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {json_safe(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def install_error_handlers(app: FastAPI) -> None:
    """405 with the path's every method in ``Allow``; 422 that always encodes; 503 when the
    supervisor actor does not answer."""

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
        return JSONResponse({"detail": json_safe(jsonable_encoder(exc.errors()))}, 422)

    @app.exception_handler(ray.exceptions.RayActorError)
    @app.exception_handler(ray.exceptions.ActorUnavailableError)
    async def _fleet_down(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": f"fleet unavailable: {one_line(root_cause(exc))}"}, 503)
