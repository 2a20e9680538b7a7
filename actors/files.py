"""Uploaded files (``POST /v1/files``, ``Fleet.upload``): content-addressed, kept in the
artifact store so that the supervisor can hand them to a session on any worker.

A file's id is the SHA-256 of its bytes (64 hex digits): the same bytes uploaded twice are
one file, and the first upload's name and media type stay. A task's ``resources`` (``[{file_id,
path}]``) name files placed in its workspace before the agent starts (``actors/session.py``
seeds them after the task's text ``files``). Files are kept in ``_files/`` of the artifact
store (``<id>`` holds the bytes, ``<id>.json`` what was said of them); none is deleted.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

from actors.artifacts import ArtifactStore
from core.errors import InputError, StateError
from core.specs import FILE_ID, TaskSpec

FOLDER = "_files"
"""Where files live in the artifact store (beside the tasks' folders; pruning, which
removes ``*.tar`` snapshots of finished tasks, never matches a file's name)."""
MAX_NAME_CHARS = 255


class FileTooLarge(InputError):
    """An upload over the ``max_file_bytes`` setting (HTTP 413). One message argument, so
    that it crosses Ray (an actor's error is rebuilt from its arguments)."""


class NoSuchFile(StateError, LookupError):
    """No uploaded file has that id."""


def file_id(data: bytes) -> str:
    """The id a file of these bytes has."""
    return hashlib.sha256(data).hexdigest()


class FileStore:
    def __init__(self, store: ArtifactStore, max_bytes: int) -> None:
        self.store = store
        self.max_bytes = max_bytes

    def put(
        self, data: bytes, filename: str = "", media_type: str = "application/octet-stream"
    ) -> dict[str, Any]:
        """Keep ``data`` (FileTooLarge over ``max_bytes``); return its metadata (``id``,
        ``filename``, ``media_type``, ``size_bytes``, ``created_at``). Bytes kept already are
        not written again and keep their first metadata."""
        if len(data) > self.max_bytes:
            raise FileTooLarge(
                f"file of {len(data)} bytes is over max_file_bytes ({self.max_bytes})"
            )
        found = file_id(data)
        known = self.info(found)
        if known is not None:
            return known
        meta = {
            "id": found,
            "type": "file",
            "filename": filename[:MAX_NAME_CHARS],
            "media_type": media_type[:MAX_NAME_CHARS] or "application/octet-stream",
            "size_bytes": len(data),
            "created_at": datetime.now(UTC).isoformat(),
        }
        self.store.put(FOLDER, found, data)  # the bytes first: metadata says they are there
        self.store.put_json(FOLDER, f"{found}.json", meta)
        return meta

    def info(self, file_id: str) -> dict[str, Any] | None:
        """A file's metadata, or None when there is no such file."""
        if not FILE_ID.fullmatch(file_id) or not self.store.exists(f"{FOLDER}/{file_id}.json"):
            return None
        return self.store.get_json(f"{FOLDER}/{file_id}.json")

    def exists(self, file_id: str) -> bool:
        return FILE_ID.fullmatch(file_id) is not None and self.store.exists(
            f"{FOLDER}/{file_id}.json"
        )

    def read(self, file_id: str) -> bytes:
        """A file's bytes; NoSuchFile when there is none of that id."""
        if not self.exists(file_id):
            raise NoSuchFile(f"no file {file_id!r}")
        return self.store.get(f"{FOLDER}/{file_id}")

    def resources(self, task: TaskSpec) -> dict[str, bytes]:
        """The task's uploaded files by the workspace path they go to."""
        return {r.path: self.read(r.file_id) for r in task.resources}
