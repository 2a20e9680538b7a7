"""A session's results: its diff against the task's starting workspace, the files of its
final workspace (a listing, one file), and the whole workspace as a tar.gz. The latest
session that ended is the task's results (a finished task's are its final ones).

Paths are confined to the workspace: absolute ones, ``..`` and symlinks pointing out are
refused (400, naming the path). 404: an unknown task, a task with no ended session yet, a
file not in the workspace, or a workspace removed by the retention (``keep_workspaces_days``).
"""

from typing import Any

from fastapi import HTTPException
from fastapi.responses import Response

from actors.results import NoResults, ResultKind, UnsafePath
from core.errors import root_cause
from serve import models as m
from serve.deps import Sup, record_of
from serve.openapi import NOT_FOUND
from serve.ports import SupervisorPort
from serve.routes import v1_router

router = v1_router(tags=["results"])

BYTES = {"schema": {"type": "string", "format": "binary"}}
NOSNIFF = {"X-Content-Type-Options": "nosniff"}
"""Files are served as bytes, never as a page the browser would run."""


async def fetch(sup: SupervisorPort, session_id: str, what: ResultKind, path: str = "") -> Any:
    """One result of a task, or the HTTP error that says why there is none."""
    await record_of(sup, session_id)
    try:
        return await sup.results(session_id, what, path)
    except Exception as exc:
        cause = root_cause(exc)
        if isinstance(cause, NoResults):
            raise HTTPException(404, str(cause)) from None
        if isinstance(cause, UnsafePath):
            raise HTTPException(400, str(cause)) from None
        raise


@router.get(
    "/sessions/{session_id}/diff",
    response_class=Response,
    responses={
        **NOT_FOUND,
        200: {
            "description": "A unified diff (empty when nothing changed).",
            "content": {"text/x-diff": {"schema": {"type": "string"}}},
        },
    },
)
async def get_diff(sup: Sup, session_id: str) -> Response:
    """The task's diff against its starting workspace, across checkpoints, parks and
    resumes (binary files are named only)."""
    text = await fetch(sup, session_id, "diff")
    return Response(text, media_type="text/x-diff; charset=utf-8")


@router.get("/sessions/{session_id}/files", responses=NOT_FOUND)
async def list_files(sup: Sup, session_id: str) -> m.FileList:
    """The files and symlinks of the final workspace, by path."""
    return m.FileList(data=await fetch(sup, session_id, "files"))


@router.get(
    "/sessions/{session_id}/files/{path:path}",
    response_class=Response,
    responses={
        **NOT_FOUND,
        200: {"description": "The file's bytes.", "content": {"application/octet-stream": BYTES}},
    },
)
async def get_file(sup: Sup, session_id: str, path: str) -> Response:
    """One file of the final workspace (a symlink inside the workspace is followed)."""
    data = await fetch(sup, session_id, "file", path)
    return Response(data, media_type="application/octet-stream", headers=NOSNIFF)


@router.get(
    "/sessions/{session_id}/archive",
    response_class=Response,
    responses={
        **NOT_FOUND,
        200: {"description": "The final workspace.", "content": {"application/gzip": BYTES}},
    },
)
async def get_archive(sup: Sup, session_id: str) -> Response:
    """The final workspace as a tar.gz."""
    data = await fetch(sup, session_id, "archive")
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in session_id)[:100]
    disposition = f'attachment; filename="{name}.tar.gz"'
    return Response(
        data, media_type="application/gzip", headers={"Content-Disposition": disposition}
    )
