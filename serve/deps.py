"""Dependencies of the routes: what :func:`serve.app.create_app` put in ``app.state``
(the supervisor port, the settings, the admission of tasks), and a task's record or 404."""

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError

from core.records import TaskRecord
from core.settings import FleetSettings
from serve.clients import Admission
from serve.ports import SupervisorPort
from serve.settings import ServeSettings


def supervisor(request: Request) -> SupervisorPort:
    """The fleet's supervisor, as :func:`serve.app.create_app` was given it (tests override
    this dependency with an in-process fake)."""
    sup = request.app.state.supervisor
    if sup is None:
        raise HTTPException(503, "fleet unavailable: this app was created without a fleet")
    return sup


def settings(request: Request) -> ServeSettings:
    return request.app.state.settings


Sup = Annotated[SupervisorPort, Depends(supervisor)]
Settings = Annotated[ServeSettings, Depends(settings)]


def admission(request: Request, sup: Sup, config: Settings) -> Admission:
    return Admission(sup, config, request.app.state.quotas)


Admit = Annotated[Admission, Depends(admission)]


async def record_of(sup: SupervisorPort, task_id: str) -> TaskRecord:
    """The task's record; 404 when the fleet has no such task."""
    [record] = await sup.get([task_id])
    if record is None:
        raise HTTPException(404, f"no session or task {task_id!r}")
    return record


def page_limit(default: int) -> Callable[..., int]:
    """A ``limit`` query parameter of a list route: 1 to ``max_page`` (a setting, so it is
    checked here; :func:`serve.openapi.install_openapi` documents it as the maximum)."""

    def limit(config: Settings, limit: Annotated[int, Query(ge=1)] = default) -> int:
        if limit > config.max_page:  # as FastAPI words it for a Query(le=...)
            msg = f"Input should be less than or equal to {config.max_page}"
            error = {"type": "less_than_equal", "loc": ("query", "limit"), "msg": msg}
            raise RequestValidationError(
                [error | {"input": str(limit), "ctx": {"le": config.max_page}}]
            )
        return limit

    return limit


async def fleet_settings(admit: Admit) -> FleetSettings:
    """The fleet's settings (asked once per app, then cached)."""
    return await admit.fleet_settings()


Fleet = Annotated[FleetSettings, Depends(fleet_settings)]
