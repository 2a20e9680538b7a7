"""No token needed: liveness and the dashboard page."""

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from serve import models as m
from serve.dashboard import PAGE

router = APIRouter(tags=["meta"])


@router.get("/healthz")
async def healthz() -> m.Health:
    """Liveness (no auth): the app answers; says nothing about the fleet."""
    return m.Health(ok=True)


@router.get("/", response_class=HTMLResponse)
async def dashboard() -> HTMLResponse:
    """The dashboard page (it asks for the token, or reads `?token=` once)."""
    return HTMLResponse(PAGE)
