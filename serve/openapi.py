"""The OpenAPI document: responses the routes share, and the patch of the generated schema
(TaskSpec for the raw-body batch route; error answers of streams and pages are JSON)."""

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import TypeAdapter

from core.specs import TaskSpec
from serve import models as m

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": m.ErrorBody, "description": "The body cannot be parsed"},
    401: {"model": m.ErrorBody, "description": "No bearer token"},
    403: {"model": m.ErrorBody, "description": "Wrong token, or operator only"},
    413: {"model": m.ErrorBody, "description": "Body too large"},
    503: {"model": m.ErrorBody, "description": "The fleet does not answer"},
}
"""Every /v1 route may answer these."""
VALIDATION = {
    "description": "Validation Error",
    "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}}
    },
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": m.ErrorBody, "description": "Unknown id"}
}
CONFLICT: dict[int | str, dict[str, Any]] = {
    409: {"model": m.ErrorBody, "description": "Conflict with the current state"}
}
TOO_MANY: dict[int | str, dict[str, Any]] = {
    429: {"model": m.ErrorBody, "description": "Too many unfinished tasks"}
}


def install_openapi(app: FastAPI) -> None:
    """Add TaskSpec (the raw-body batch route refers to it) to the generated schema, the
    page size setting to ``limit`` parameters, and JSON as the media type of errors of
    streams and pages."""

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
        max_page = app.state.settings.max_page
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                for parameter in operation.get("parameters", []):
                    if parameter["in"] == "query" and parameter["name"] == "limit":
                        parameter["schema"]["maximum"] = max_page  # see deps.page_limit
                for status, response in operation.get("responses", {}).items():
                    content = response.get("content", {})
                    for media in ("text/event-stream", "text/html"):
                        if not status.startswith("2") and media in content:
                            response["content"] = {"application/json": content[media]}
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
