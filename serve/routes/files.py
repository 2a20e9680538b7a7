"""Files: upload one, read what is known of it, download it. A session's ``resources``
(``[{file_id, path}]``) place uploaded files in its workspace.

An upload is ``multipart/form-data`` with the file in a part named ``file`` (as the
managed-agents APIs take it), or the raw bytes as the body (any other content type; the
name in ``?filename=``). Files are content-addressed: the id is the SHA-256 of the bytes, so
the same bytes are one file. Over the fleet's ``max_file_bytes``: 413. Any token may upload
and read files.
"""

import email.parser
import email.policy
from typing import Annotated, Any

from fastapi import HTTPException, Query, Request
from fastapi.responses import Response

from actors.files import FileTooLarge, NoSuchFile
from core.errors import root_cause
from serve import models as m
from serve.deps import Fleet, Sup
from serve.openapi import NOT_FOUND
from serve.routes import v1_router

router = v1_router(tags=["files"])

MULTIPART_SLACK = 64 * 1024
"""Bytes a multipart body may have beyond the file (boundaries, part headers)."""
NOSNIFF = {"X-Content-Type-Options": "nosniff"}

UPLOAD_BODY = {
    "required": True,
    "description": "The file as the `file` part of a form, or the raw bytes.",
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {"file": {"type": "string", "format": "binary"}},
            }
        },
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    },
}


async def read_limited(request: Request, limit: int) -> bytes:
    """The body, or 413 as soon as it grows past ``limit`` (never buffered beyond it)."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise HTTPException(413, f"body over {limit} bytes")
    chunks: list[bytes] = []
    seen = 0
    async for chunk in request.stream():
        seen += len(chunk)
        if seen > limit:
            raise HTTPException(413, f"body over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def form_file(body: bytes, content_type: str) -> tuple[bytes, str, str]:
    """The ``file`` part of a multipart/form-data body: bytes, file name, media type; 400
    when the body is no such form."""
    head = f"Content-Type: {content_type}\r\n\r\n".encode("latin-1", "replace")
    form = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not form.is_multipart():
        raise HTTPException(400, "a multipart/form-data body needs a boundary and parts")
    for part in form.iter_parts():
        if part.get_param("name", header="content-disposition") == "file":
            data = part.get_payload(decode=True)
            if not isinstance(data, bytes):
                break
            return data, part.get_filename() or "", part.get_content_type()
    raise HTTPException(400, "the form has no part named 'file'")


@router.post(
    "/files",
    status_code=201,
    openapi_extra={"requestBody": UPLOAD_BODY},
)
async def upload_file(
    request: Request,
    sup: Sup,
    fleet: Fleet,
    filename: Annotated[str, Query(max_length=255)] = "",
) -> m.FileView:
    """Keep a file (201 with its id: the SHA-256 of its bytes); the same bytes again give
    the same file. 413 over the fleet's `max_file_bytes`."""
    content_type = request.headers.get("content-type", "")
    limit = fleet.max_file_bytes
    multipart = content_type.lower().startswith("multipart/form-data")
    body = await read_limited(request, limit + (MULTIPART_SLACK if multipart else 0))
    if multipart:
        data, name, media_type = form_file(body, content_type)
    else:
        data, name = body, filename
        media_type = content_type.split(";", 1)[0].strip() or "application/octet-stream"
    if len(data) > limit:
        raise HTTPException(413, f"file of {len(data)} bytes is over max_file_bytes ({limit})")
    try:
        meta = await sup.put_file(data, name or filename, media_type)
    except Exception as exc:
        cause = root_cause(exc)
        if isinstance(cause, FileTooLarge):
            raise HTTPException(413, str(cause)) from None
        raise
    return m.FileView.model_validate(meta)


async def file_info(sup: Any, file_id: str) -> dict[str, Any]:
    found = await sup.get_file(file_id)
    if found is None:
        raise HTTPException(404, f"no file {file_id!r}")
    return found


@router.get("/files/{file_id}", responses=NOT_FOUND)
async def get_file(sup: Sup, file_id: str) -> m.FileView:
    """What is known of a file: its name, media type, size, when it was first uploaded."""
    return m.FileView.model_validate(await file_info(sup, file_id))


@router.get(
    "/files/{file_id}/content",
    response_class=Response,
    responses={
        **NOT_FOUND,
        200: {"description": "The file's bytes.", "content": {"application/octet-stream": {}}},
    },
)
async def download_file(sup: Sup, file_id: str) -> Response:
    """The file's bytes (served as `application/octet-stream`, never as a page)."""
    await file_info(sup, file_id)
    try:
        data = await sup.file_content(file_id)
    except Exception as exc:
        if isinstance(root_cause(exc), NoSuchFile):
            raise HTTPException(404, f"no file {file_id!r}") from None
        raise
    return Response(data, media_type="application/octet-stream", headers=NOSNIFF)
