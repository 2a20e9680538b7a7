"""The HTTP API as a plain FastAPI app over a fleet's supervisor.

``create_app(fleet, settings)`` is all Ray Serve needs (see :mod:`serve.deployment`). It
puts the supervisor (as a :class:`SupervisorPort`), the settings, the tokens and the client
quotas in ``app.state``, where the routes' dependencies (:mod:`serve.deps`,
:mod:`serve.auth`) find them, and includes one router per resource (:mod:`serve.routes`).
Tests build the app without a fleet and override the :func:`serve.deps.supervisor`
dependency with an in-process fake (``app.dependency_overrides``).

Shapes follow Claude's Managed Agents API: a session is a task (session id = task id), its
status is the task's state, its events are the task's events numbered by ``seq``.
"""

from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from serve.auth import Tokens
from serve.clients import Quotas
from serve.openapi import install_openapi
from serve.plumbing import BodyLimit, install_error_handlers
from serve.ports import port_of
from serve.routes import files, meta, reports, results, secrets, sessions, specs, tasks
from serve.routes import fleet as fleet_routes
from serve.settings import ServeSettings

__all__ = ["ServeSettings", "create_app"]  # ServeSettings lives in serve.settings

DESCRIPTION = (
    "Run coding agents on a Ray fleet: agents, environments, files, sessions, events, "
    "streams, tasks and reports. Every /v1 route needs `Authorization: Bearer <token>`: "
    "the API token (clients) or the admin token (the operator: it alone may create, "
    "update or archive agents and environments, and send full agent and environment "
    "specs; a client's inline ones are limited and built on the operator's defaults). "
    "Secrets are write-only: no route ever answers a value."
)


def create_app(fleet: Any = None, settings: ServeSettings | None = None) -> FastAPI:
    """The API over a fleet: a :class:`fleet.api.Fleet`, a Supervisor actor handle, or any
    :class:`serve.ports.SupervisorPort`. The routes reach it through the
    :func:`serve.deps.supervisor` dependency (tests override it with an in-process fake)."""
    settings = settings or ServeSettings()
    sup = port_of(fleet) if fleet is not None else None
    app = FastAPI(
        title="agent-fleet",
        version="1",
        description=DESCRIPTION,
        separate_input_output_schemas=False,
    )
    app.state.settings = settings
    app.state.tokens = Tokens(settings)  # raises if no API token is configured
    app.state.supervisor = sup
    app.state.quotas = Quotas()

    # Uploads are limited by the fleet's max_file_bytes, in their route.
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, own_limit=("/v1/files",))
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT"],
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
        )
    install_error_handlers(app)

    app.include_router(meta.router)
    app.include_router(specs.router)
    app.include_router(secrets.router)
    app.include_router(sessions.router)
    app.include_router(results.router)
    app.include_router(files.router)
    app.include_router(tasks.router)
    app.include_router(fleet_routes.router)
    app.include_router(reports.router)
    app.include_router(sessions.streams)  # the streams last, as they always were
    app.include_router(fleet_routes.streams)
    install_openapi(app)
    return app
