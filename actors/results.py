"""A task's results as people fetch them: its diff against its starting workspace, the files
of its final workspace, one file, the whole workspace as a tar.gz; and the retention that
removes old workspaces (``keep_workspaces_days``).

Plain functions over an :class:`ArtifactStore` (the supervisor calls them in a thread; the
route tests' fake too). The latest session that left a workspace is the task's results (see
``artifacts.RESULT``). Paths are confined to the workspace: absolute paths, ``..`` and
symlinks leading out are refused (:class:`UnsafePath`).
"""

from __future__ import annotations

import gzip
import io
import tarfile
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Literal

from actors.artifacts import RESULT, ArtifactStore
from core.errors import InputError, StateError

MAX_LINKS = 40
"""Symlinks followed while resolving one path (more: a loop)."""


class NoResults(StateError, LookupError):
    """A task, its results, or a file in them that is not there (HTTP 404)."""


class UnsafePath(InputError):
    """A path that leads out of the workspace: absolute, with ``..``, or through a symlink
    pointing out (HTTP 400)."""


def latest(store: ArtifactStore, task_id: str) -> dict[str, Any]:
    """The pointer to a task's latest results; :class:`NoResults` when no session left any."""
    ref = f"{task_id}/{RESULT}"
    if not store.exists(ref):
        raise NoResults(f"task {task_id!r} has no results yet (no session of it has ended)")
    return store.get_json(ref)


def diff(store: ArtifactStore, task_id: str) -> str:
    """The task's diff against its starting workspace ("" when nothing changed)."""
    ref = latest(store, task_id).get("diff_ref")
    return store.get(ref).decode() if ref else ""


def _workspace(store: ArtifactStore, task_id: str) -> bytes:
    ref = latest(store, task_id)["workspace_ref"]
    if not store.exists(ref):
        raise NoResults(
            f"the workspace of task {task_id!r} was removed (older than keep_workspaces_days)"
        )
    return store.get(ref)


def _members(archive: bytes) -> dict[str, tarfile.TarInfo]:
    """The archive's members by path relative to the workspace (no ``./``, no ``/`` last)."""
    out: dict[str, tarfile.TarInfo] = {}
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as tar:
        for member in tar.getmembers():
            name = member.name.removeprefix("./").strip("/")
            if name and name != ".":
                out[name] = member
    return out


def files(store: ArtifactStore, task_id: str) -> list[dict[str, Any]]:
    """The final workspace's files and symlinks: ``path``, ``size``, ``mode`` (octal text),
    ``type`` (``file`` or ``symlink``) and a symlink's ``target``."""
    listing: list[dict[str, Any]] = []
    for path, member in sorted(_members(_workspace(store, task_id)).items()):
        if member.isfile():
            entry = {"path": path, "size": member.size, "mode": f"{member.mode:o}", "type": "file"}
        elif member.issym():
            entry = {"path": path, "size": 0, "mode": f"{member.mode:o}", "type": "symlink"}
            entry["target"] = member.linkname
        else:
            continue
        listing.append(entry)
    return listing


def check_path(path: str) -> list[str]:
    """The parts of a requested path; :class:`UnsafePath` when it is absolute or has ``..``."""
    if not path or path.startswith("/") or "\\" in path or "\x00" in path:
        raise UnsafePath(f"path {path!r} is not a relative path inside the workspace")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafePath(f"path {path!r} leads out of the workspace ('..')")
    if not parts:
        raise UnsafePath(f"path {path!r} names no file")
    return parts


def resolve(members: dict[str, tarfile.TarInfo], path: str) -> tarfile.TarInfo:
    """The member ``path`` names, following symlinks (of the file and of the folders on the
    way) while they stay inside the workspace."""
    todo = check_path(path)
    done: list[str] = []
    hops = 0
    while todo:
        part = todo.pop(0)
        if part == "..":  # only from a symlink's target
            if not done:
                raise UnsafePath(f"path {path!r} goes through a symlink pointing out")
            done.pop()
            continue
        member = members.get("/".join([*done, part]))
        if member is not None and (member.issym() or member.islnk()):
            hops += 1
            if hops > MAX_LINKS:
                raise UnsafePath(f"path {path!r} goes through too many symlinks")
            target = member.linkname
            if target.startswith("/"):
                raise UnsafePath(f"path {path!r} goes through a symlink pointing out")
            if member.islnk():  # a hard link names a member from the root
                done = []
            todo = [p for p in target.split("/") if p not in ("", ".")] + todo
            continue
        done.append(part)
    found = members.get("/".join(done))
    if found is None or not found.isfile():
        raise NoResults(f"no file {path!r} in the workspace")
    return found


def read_file(store: ArtifactStore, task_id: str, path: str) -> bytes:
    """The bytes of one file of the final workspace."""
    check_path(path)  # refuse before reading anything
    archive = _workspace(store, task_id)
    member = resolve(_members(archive), path)
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as tar:
        handle = tar.extractfile(member)
        return handle.read() if handle is not None else b""


def archive(store: ArtifactStore, task_id: str) -> bytes:
    """The final workspace as a tar.gz."""
    return gzip.compress(_workspace(store, task_id), compresslevel=6)


ResultKind = Literal["diff", "files", "file", "archive"]


def fetch(store: ArtifactStore, task_id: str, what: ResultKind, path: str = "") -> Any:
    """One of a task's results: ``diff`` (str), ``files`` (a listing), ``file`` (the bytes
    at ``path``), ``archive`` (tar.gz bytes)."""
    if what == "diff":
        return diff(store, task_id)
    if what == "files":
        return files(store, task_id)
    if what == "file":
        return read_file(store, task_id, path)
    if what == "archive":
        return archive(store, task_id)
    raise ValueError(f"unknown result {what!r}")


def prune(
    store: ArtifactStore,
    finished: Iterable[tuple[str, datetime | None]],
    keep_days: float,
    now: datetime,
) -> list[str]:
    """Remove the workspace snapshots (``*.tar``) of tasks that finished more than
    ``keep_days`` ago (0: keep forever); diffs and pointers stay. Returns the tasks done
    (the caller need not look at them again)."""
    if keep_days <= 0:
        return []
    done: list[str] = []
    for task_id, finished_at in finished:
        if finished_at is None:
            continue
        if finished_at.tzinfo is None:  # the log's timestamps are UTC
            finished_at = finished_at.replace(tzinfo=UTC)
        if (now - finished_at).total_seconds() < keep_days * 86400:
            continue
        for name in store.names(task_id):
            if name.endswith(".tar"):
                store.delete(f"{task_id}/{name}")
        done.append(task_id)
    return done
