"""Where the supervisor keeps what sessions leave behind: diffs, workspace snapshots, parked
loop states, handoff histories, checkpoints. Beside the events by default
(``<events_dir>/_artifacts``), on any filesystem pyarrow supports. Refs are paths relative to
the root, safe to put in events.

Per task (``<task_id>/``): ``<session>.diff`` and ``<session>.tar`` (each session's diff
against the task's start and its final workspace), ``base.tar`` (the task's starting
workspace, once a later session may need it), ``result.json`` (which session's diff and
workspace are the task's latest results: what ``GET /v1/sessions/{id}/diff|files|archive``
serve), checkpoints, parked states and handoff histories.

:class:`ArtifactStore` reads and writes; the functions below say what of a session's result
or checkpoint is kept, under which name, and the events that tell of it.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from core.events import Event, EventType
from core.records import Assignment, SessionResult, TaskRecord


class ArtifactStore:
    def __init__(self, root: str) -> None:
        try:
            self.fs, self.root = pafs.FileSystem.from_uri(root)
        except (pa.ArrowInvalid, ValueError):
            self.fs, self.root = pafs.LocalFileSystem(), os.path.abspath(root)

    def put(self, task_id: str, name: str, data: bytes) -> str:
        ref = f"{task_id}/{name}"
        path = f"{self.root}/{ref}"
        self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with self.fs.open_output_stream(path) as out:
            out.write(data)
        return ref

    def get(self, ref: str) -> bytes:
        with self.fs.open_input_stream(f"{self.root}/{ref}") as src:
            return src.read()

    def put_json(self, task_id: str, name: str, value: Any) -> str:
        return self.put(task_id, name, json.dumps(value).encode())

    def get_json(self, ref: str) -> Any:
        return json.loads(self.get(ref))

    def path(self, ref: str) -> str:
        return f"{self.root}/{ref}"

    def exists(self, ref: str) -> bool:
        return self.fs.get_file_info(f"{self.root}/{ref}").type == pafs.FileType.File

    def delete(self, ref: str) -> None:
        self.fs.delete_file(f"{self.root}/{ref}")

    def names(self, task_id: str) -> list[str]:
        """The names of a task's artifacts (none when it has none)."""
        found = self.fs.get_file_info(
            pafs.FileSelector(f"{self.root}/{task_id}", allow_not_found=True)
        )
        return sorted(i.base_name for i in found if i.type == pafs.FileType.File)


BASE = "base.tar"
"""A task's starting workspace, under the task's folder."""
RESULT = "result.json"
"""The pointer to a task's latest results, under the task's folder."""


def has_artifacts(result: SessionResult) -> bool:
    """Does the result carry anything to keep (a diff, a workspace, a loop state to resume,
    a handoff's history)?"""
    outcome = result.outcome
    return bool(
        result.diff
        or result.workspace is not None
        or result.base is not None
        or (outcome is not None and (outcome.state or outcome.handoff_history))
    )


def store_result(store: ArtifactStore, result: SessionResult) -> dict[str, str]:
    """Write a session's diff, workspace, parked (idle) loop state and handoff history (and the
    task's starting workspace, when the session sends it); return their refs
    (``diff_ref``, ``workspace_ref``, ``loop_state_ref``, ``history_ref``). A session that
    left a workspace becomes the task's latest results (``result.json``)."""
    refs: dict[str, str] = {}
    sid, task_id = result.session_id, result.task_id
    if result.base is not None:
        store.put(task_id, BASE, result.base)
    if result.diff:  # an empty diff (nothing changed) is not worth a file
        refs["diff_ref"] = store.put(task_id, f"{sid}.diff", result.diff.encode())
    if result.workspace is not None:
        refs["workspace_ref"] = store.put(task_id, f"{sid}.tar", result.workspace)
        latest = {
            "session_id": sid,
            "attempt": result.attempt,
            "status": result.status,
            "diff_ref": refs.get("diff_ref"),
            "workspace_ref": refs["workspace_ref"],
            "changed_files": result.changed_files,
        }
        store.put_json(task_id, RESULT, latest)
    outcome = result.outcome
    resumed = ("parked", "interrupted", "idle")  # an interactive task's turn goes on anyhow
    if outcome is not None and outcome.state and (outcome.status in resumed or result.interactive):
        refs["loop_state_ref"] = store.put_json(task_id, f"{sid}.state.json", outcome.state)
    if outcome is not None and outcome.status == "handoff" and outcome.handoff_history:
        refs["history_ref"] = store.put_json(
            task_id, f"{sid}.history.json", outcome.handoff_history
        )
    return refs


def diff_event(store: ArtifactStore, result: SessionResult, diff_ref: str) -> Event:
    """``artifact.saved`` for a session's diff."""
    return Event(
        task_id=result.task_id,
        type=EventType.artifact_saved,
        session_id=result.session_id,
        attempt=result.attempt,
        worker=result.worker,
        payload={
            "kind": "diff",
            "ref": diff_ref,
            "path": store.path(diff_ref),
            "changed_files": result.changed_files[:200],
            "bytes": len(result.diff or ""),
        },
    )


def load_into(
    store: ArtifactStore,
    assignment: Assignment,
    workspace_ref: str | None,
    loop_state_ref: str | None,
    history_ref: str | None,
) -> None:
    """Give an assignment what it starts from: a workspace, a loop state, a history, and
    (when it starts from a workspace) the task's starting one to diff against."""
    if workspace_ref:
        assignment.workspace = store.get(workspace_ref)
        base = f"{assignment.task.id}/{BASE}"
        if store.exists(base):
            assignment.base = store.get(base)
    if loop_state_ref:
        assignment.loop_state = store.get_json(loop_state_ref)
    if history_ref:
        assignment.history = store.get_json(history_ref)


def store_checkpoint(
    store: ArtifactStore,
    task_id: str,
    session_id: str,
    state: dict[str, Any],
    workspace: bytes,
    base: bytes | None = None,
) -> dict[str, str]:
    """Write a running session's resume point (and the task's starting workspace, when the
    session sends it); return ``workspace_ref`` and ``loop_state_ref``."""
    if base is not None:
        store.put(task_id, BASE, base)
    return {
        "workspace_ref": store.put(task_id, f"{session_id}.ckpt.tar", workspace),
        "loop_state_ref": store.put_json(task_id, f"{session_id}.ckpt.json", state),
    }


def checkpoint_event(
    record: TaskRecord, session_id: str, refs: dict[str, str], turns: Any, size: int
) -> Event:
    """``session.checkpointed``: the task's new resume point."""
    return Event(
        task_id=record.id,
        type=EventType.session_checkpointed,
        session_id=session_id,
        attempt=record.attempts,
        payload={**refs, "turns": turns, "bytes": size},
    )
