"""Results on a real local Ray: a task parked and resumed on another worker still diffs
against its starting workspace, through ``Fleet`` and the ``fleet diff`` / ``fleet files``
commands (``--out`` refuses paths and links out of the directory)."""

from __future__ import annotations

import gzip
import io
import os
import signal
import tarfile
from pathlib import Path
from typing import Any

import pytest
import ray

from actors.results import NoResults, UnsafePath
from core.specs import FleetConfig, TaskState
from tests.conftest import script, wait_state
from tests.test_cli import fleet as fleet_cli

pytestmark = pytest.mark.ray

ASKING = FleetConfig.model_validate(
    {"agents": {"careful": {"approvals": {"shell": {"ask_if": {"command": "rm "}}}}}}
)


def test_a_parked_and_resumed_task_diffs_against_its_start(fleet_factory: Any) -> None:
    fleet = fleet_factory(workers=2, config=ASKING, approval_wait_s=0.3)
    steps = script(
        ("write_file", {"path": "seed.txt", "content": "changed before the park\n"}),
        ("write_file", {"path": "junk.txt", "content": "x"}),
        ("shell", {"command": "rm junk.txt && echo removed"}),  # parks: waits for a person
        ("write_file", {"path": "after.txt", "content": "written after the resume\n"}),
        ("finish", {"summary": "done"}),
    )
    task = {
        "id": "pr",
        "prompt": "p",
        "agent": "careful",
        "files": {"seed.txt": "at the start\n", "kept.txt": "same\n"},
        "script": steps,
    }
    fleet.submit([task])
    parked = wait_state(fleet, "pr", TaskState.awaiting_approval)
    # Mid-task results: the parked session's workspace and its diff so far.
    assert "+changed before the park" in fleet.diff("pr")
    first_worker = parked.worker
    os.kill(ray.get(fleet.supervisor.worker_pid.remote(first_worker)), signal.SIGKILL)
    assert fleet.approve("pr", parked.pending_approval["call_id"], allow=True)
    record = fleet.wait(["pr"], timeout_s=60)[0]
    assert record.state == TaskState.succeeded, record.reason

    diff = fleet.diff("pr")
    # The work before the park is in the resumed session's diff: it is against the start.
    assert "-at the start\n+changed before the park\n" in diff
    assert "+++ b/after.txt\n" in diff and "+written after the resume" in diff
    assert "junk.txt" not in diff  # made and removed within the task
    assert "kept.txt" not in diff

    paths = {f["path"] for f in fleet.files("pr")}
    assert {"seed.txt", "after.txt", "kept.txt"} <= paths and "junk.txt" not in paths
    assert fleet.file("pr", "after.txt") == b"written after the resume\n"
    with pytest.raises(UnsafePath, match=r"\('\.\.'\)"):
        fleet.file("pr", "../pr/seed.txt")
    with pytest.raises(NoResults, match="no session or task 'nope'"):
        fleet.diff("nope")
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(fleet.archive("pr")))) as tar:
        assert "after.txt" in {m.name.removeprefix("./") for m in tar.getmembers()}


def test_fleet_diff_and_files_from_the_command_line(fleet_factory: Any, tmp_path: Path) -> None:
    fleet = fleet_factory(workers=1, events_dir=str(tmp_path / "ev"))
    steps = script(
        ("write_file", {"path": "notes/a.md", "content": "# a\n"}),
        ("shell", {"command": "ln -s /etc/passwd passwd && ln -s notes/a.md link"}),
        ("finish", {"summary": "ok"}),
    )
    fleet.submit([{"id": "c", "prompt": "p", "files": {"x.txt": "1\n"}, "script": steps}])
    assert fleet.wait(["c"], timeout_s=60)[0].state == TaskState.succeeded
    where = ["--address", ray.get_runtime_context().gcs_address, "--name", fleet.settings.name]
    env = {"FLEET_NAMESPACE": fleet.settings.namespace}

    proc = fleet_cli("diff", "c", *where, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "+++ b/notes/a.md\n@@ -0,0 +1 @@\n+# a\n" in proc.stdout

    proc = fleet_cli("files", "c", *where, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "notes/a.md" in proc.stdout and "/etc/passwd" in proc.stdout

    out = tmp_path / "out"
    proc = fleet_cli("files", "c", "--out", str(out), *where, cwd=tmp_path, env=env)
    assert proc.returncode == 1  # one link was refused: said, and the rest written
    assert "refused passwd" in proc.stderr
    assert (out / "notes" / "a.md").read_text() == "# a\n"
    assert (out / "x.txt").read_text() == "1\n"
    assert (out / "link").is_symlink() and (out / "link").read_text() == "# a\n"
    assert not (out / "passwd").exists() and not (out / "passwd").is_symlink()

    proc = fleet_cli("diff", "nope", *where, cwd=tmp_path, env=env)
    assert proc.returncode == 2 and "no session or task 'nope'" in proc.stderr
