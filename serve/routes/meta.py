"""No token needed: liveness, the dashboard page and each task's page (the pages call the
API with the token)."""

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from serve import models as m
from serve.dashboard import PAGE, REPORTS_PAGE, SESSION_PAGE

router = APIRouter(tags=["meta"])


@router.get("/healthz")
async def healthz() -> m.Health:
    """Liveness (no auth): the app answers; says nothing about the fleet."""
    return m.Health(ok=True)


@router.get("/", response_class=HTMLResponse)
async def dashboard() -> HTMLResponse:
    """The dashboard page (it asks for the token, or reads `?token=` once)."""
    return HTMLResponse(PAGE)


@router.get("/sessions/{session_id}", response_class=HTMLResponse)
async def session_page(session_id: str) -> HTMLResponse:
    """One task's page: prompt, state, live transcript, diff, files, steering (the page
    asks the API with the token the dashboard keeps)."""
    return HTMLResponse(SESSION_PAGE)


@router.get("/reports", response_class=HTMLResponse)
async def reports_page() -> HTMLResponse:
    """The reports page: the charts over the history (it asks `/v1/charts` with the token)."""
    return HTMLResponse(REPORTS_PAGE)
