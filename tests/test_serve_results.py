"""A session's results over HTTP, on the in-process fake (no Ray): the diff against the
task's start, the files of its final workspace, one file, the tar.gz; paths kept inside the
workspace (400), 404s that say what is missing; and the retention that removes workspaces."""

from __future__ import annotations

import gzip
import io
import tarfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from actors import results
from actors.artifacts import ArtifactStore
from core.records import SessionResult
from serve.app import ServeSettings, create_app
from tests.conftest import script
from tests.fake_supervisor import FakeSupervisor
from tests.test_serve_app import AUTH, TOKEN, fake_fleet, wait_status

TERMINAL = {"succeeded", "failed", "needs_human", "cancelled"}
MAKE = script(
    ("write_file", {"path": "seed.txt", "content": "new\n"}),
    ("write_file", {"path": "src/app.py", "content": "print('hi')\n"}),
    ("shell", {"command": "chmod 755 src/app.py"}),
    ("shell", {"command": "ln -s /etc/passwd passwd && ln -s .. up && ln -s src/app.py link"}),
    ("shell", {"command": "ln -s / root && ln -s src inner"}),
    ("finish", {"summary": "made files"}),
)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeSupervisor]:
    started = fake_fleet(tmp_path_factory.mktemp("results-events"))
    yield started
    started.close()


@pytest.fixture(scope="module")
def client(fleet: FakeSupervisor) -> Iterator[TestClient]:
    app = create_app(fleet, ServeSettings(token=TOKEN))
    with TestClient(app, headers=AUTH) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def made(client: TestClient) -> str:
    """A finished task that changed a seeded file, added some and made symlinks."""
    task = {"id": "made", "prompt": "make files", "files": {"seed.txt": "old\n"}, "script": MAKE}
    assert client.post("/v1/sessions", json=task).status_code == 201
    assert wait_status(client, "made", TERMINAL)["status"] == "succeeded"
    return "made"


def test_the_diff_is_against_the_tasks_start(client: TestClient, made: str) -> None:
    answer = client.get(f"/v1/sessions/{made}/diff")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/x-diff")
    assert "--- a/seed.txt\n+++ b/seed.txt\n" in answer.text
    assert "-old\n+new\n" in answer.text
    assert "+++ b/src/app.py\n" in answer.text and "+print('hi')" in answer.text


def test_files_list_and_read(client: TestClient, made: str) -> None:
    listing = client.get(f"/v1/sessions/{made}/files")
    assert listing.status_code == 200, listing.text
    entries = {e["path"]: e for e in listing.json()["data"]}
    assert entries["seed.txt"] == {
        "path": "seed.txt",
        "size": 4,
        "mode": entries["seed.txt"]["mode"],
        "type": "file",
        "target": None,
    }
    assert entries["src/app.py"]["mode"] == "755"
    assert entries["passwd"]["type"] == "symlink" and entries["passwd"]["target"] == "/etc/passwd"

    one = client.get(f"/v1/sessions/{made}/files/src/app.py")
    assert one.status_code == 200 and one.content == b"print('hi')\n"
    assert one.headers["content-type"] == "application/octet-stream"
    assert one.headers["x-content-type-options"] == "nosniff"
    # A symlink inside the workspace is followed, to a file or through a folder.
    assert client.get(f"/v1/sessions/{made}/files/link").content == b"print('hi')\n"
    assert client.get(f"/v1/sessions/{made}/files/inner/app.py").content == b"print('hi')\n"


def test_the_archive_is_the_final_workspace(client: TestClient, made: str) -> None:
    answer = client.get(f"/v1/sessions/{made}/archive")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/gzip"
    assert 'filename="made.tar.gz"' in answer.headers["content-disposition"]
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(answer.content))) as tar:
        names = {m.name.removeprefix("./") for m in tar.getmembers()}
        handle = tar.extractfile("seed.txt")
        assert handle is not None and handle.read() == b"new\n"
    assert {"seed.txt", "src/app.py", "passwd", "up"} <= names


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("%2E%2E/%2E%2E/etc/passwd", "'..'"),
        ("src/%2E%2E/%2E%2E/x", "'..'"),
        ("%2Fetc%2Fpasswd", "not a relative path"),
        ("/etc/passwd", "not a relative path"),
        ("passwd", "symlink pointing out"),
        ("up/made/seed.txt", "symlink pointing out"),
        ("root/etc/passwd", "symlink pointing out"),
    ],
)
def test_paths_out_of_the_workspace_are_400(
    client: TestClient, made: str, path: str, why: str
) -> None:
    answer = client.get(f"/v1/sessions/{made}/files/{path}")
    assert answer.status_code == 400, answer.text
    detail = answer.json()["detail"]
    assert why in detail and "path '" in detail


def test_missing_things_are_404_and_say_which(client: TestClient, made: str) -> None:
    unknown = client.get("/v1/sessions/nope/diff")
    assert unknown.status_code == 404 and "'nope'" in unknown.json()["detail"]
    for what in ("diff", "files", "archive", "files/a.txt"):
        assert client.get(f"/v1/sessions/nope/{what}").status_code == 404
    missing = client.get(f"/v1/sessions/{made}/files/src/none.py")
    assert missing.status_code == 404 and "'src/none.py'" in missing.json()["detail"]
    folder = client.get(f"/v1/sessions/{made}/files/src")
    assert folder.status_code == 404  # a folder is not a file


def test_a_task_without_results_yet_is_404(fleet: FakeSupervisor, client: TestClient) -> None:
    slow = {"id": "slow", "prompt": "wait", "script": script(("shell", {"command": "sleep 30"}))}
    assert client.post("/v1/sessions", json=slow).status_code == 201
    try:
        for what in ("diff", "files", "archive", "files/x"):
            answer = client.get(f"/v1/sessions/slow/{what}")
            assert answer.status_code == 404
            assert "task 'slow' has no results yet" in answer.json()["detail"]
    finally:
        client.post("/v1/sessions/slow/archive")  # cancels it


def test_an_unchanged_workspace_has_an_empty_diff(client: TestClient) -> None:
    task = {"id": "idle", "prompt": "look", "script": script(("finish", {"summary": "ok"}))}
    assert client.post("/v1/sessions", json=task).status_code == 201
    wait_status(client, "idle", TERMINAL)
    answer = client.get("/v1/sessions/idle/diff")
    assert answer.status_code == 200 and answer.text == ""


def test_results_need_the_token(fleet: FakeSupervisor, made: str) -> None:
    with TestClient(create_app(fleet, ServeSettings(token=TOKEN))) as anonymous:
        for what in ("diff", "files", "files/seed.txt", "archive"):
            assert anonymous.get(f"/v1/sessions/{made}/{what}").status_code == 401


# -- the store: retention --------------------------------------------------------------------
def tar_of(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def stored(store: ArtifactStore, task_id: str) -> None:
    from actors.artifacts import store_result

    result = SessionResult(
        task_id=task_id,
        session_id=f"s-{task_id}",
        attempt=1,
        worker="w",
        status="succeeded",
        diff="--- a/x\n+++ b/x\n",
        workspace=tar_of({"x": b"1"}),
        base=tar_of({"x": b"0"}),
    )
    store_result(store, result)


def test_old_finished_workspaces_are_removed_and_say_so(tmp_path: Any) -> None:
    store = ArtifactStore(str(tmp_path))
    for task_id in ("old", "new"):
        stored(store, task_id)
    now = datetime.now(UTC)
    finished = [("old", now - timedelta(days=8)), ("new", now - timedelta(days=6))]
    assert results.prune(store, finished, 0, now) == []  # 0: forever
    assert results.prune(store, finished, 7, now) == ["old"]
    assert store.names("old") == ["result.json", "s-old.diff"]  # the diff stays
    assert "s-new.tar" in store.names("new") and "base.tar" in store.names("new")
    assert results.diff(store, "old") == "--- a/x\n+++ b/x\n"
    with pytest.raises(results.NoResults, match="removed"):
        results.files(store, "old")
    assert results.read_file(store, "new", "x") == b"1"
