"""Files and versions over HTTP, against the in-process fleet (tests/fake_supervisor.py):
uploads (multipart and raw, content-addressed, size-limited), a session's `resources`
mounted in its workspace, versions of agents read back, a session pinned to the agent's
version it was created with, and an archived agent refusing new sessions (409)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from core.events import EventType
from serve.app import ServeSettings
from serve.clients import shown_event
from serve.policy import SECRET_MASK
from tests.conftest import script
from tests.fake_supervisor import FakeSupervisor
from tests.test_serve_app import (
    ADMIN,
    ADMIN_TOKEN,
    AUTH,
    TERMINAL,
    TOKEN,
    app_over,
    fake_fleet,
    wait_status,
)

MAX_FILE = 100_000
MAX_BODY = 64 * 1024  # below MAX_FILE: uploads have their own limit


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeSupervisor]:
    started = fake_fleet(tmp_path_factory.mktemp("files-events"), max_file_bytes=MAX_FILE)
    yield started
    started.close()


@pytest.fixture(scope="module")
def app(fleet: Any) -> Any:
    settings = ServeSettings(token=TOKEN, admin_token=ADMIN_TOKEN, max_body_bytes=MAX_BODY)
    return app_over(fleet, settings)


@pytest.fixture(scope="module")
def client(app: Any) -> Iterator[TestClient]:
    with TestClient(app, headers=AUTH) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def admin(app: Any) -> Iterator[TestClient]:
    with TestClient(app, headers=ADMIN) as test_client:
        yield test_client


def test_files_upload_as_a_form_or_raw_bytes_and_read_back(client: TestClient) -> None:
    data = bytes(range(256)) * 300  # 76,800 bytes: over the body limit, under max_file_bytes
    digest = hashlib.sha256(data).hexdigest()
    form = client.post("/v1/files", files={"file": ("table.bin", data, "application/x-table")})
    assert form.status_code == 201, form.text
    meta = form.json()
    assert meta["id"] == digest and meta["size_bytes"] == len(data)
    assert meta["filename"] == "table.bin" and meta["media_type"] == "application/x-table"
    raw = client.post(
        "/v1/files",
        params={"filename": "again.bin"},
        content=data,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert raw.status_code == 201 and raw.json()["id"] == digest  # the same bytes: one file
    assert client.get(f"/v1/files/{digest}").json() == meta
    content = client.get(f"/v1/files/{digest}/content")
    assert content.status_code == 200 and content.content == data
    assert content.headers["content-type"] == "application/octet-stream"
    assert client.get(f"/v1/files/{'0' * 64}").status_code == 404
    assert client.get("/v1/files/not-an-id/content").status_code == 404
    assert client.post("/v1/files", content=b"x", headers={"Authorization": ""}).status_code == 401


def test_a_file_over_max_file_bytes_is_413(client: TestClient) -> None:
    too_big = b"x" * (MAX_FILE + 1)
    raw = client.post("/v1/files", content=too_big)
    assert raw.status_code == 413 and str(MAX_FILE) in raw.json()["detail"]
    form = client.post("/v1/files", files={"file": ("big", too_big)})
    assert form.status_code == 413
    no_part = client.post("/v1/files", files={"other": ("x", b"x")})
    assert no_part.status_code == 400 and "'file'" in no_part.json()["detail"]


def test_resources_are_mounted_in_the_workspace_before_the_agent_starts(
    client: TestClient,
) -> None:
    data = b"\x00\x01binary\xff" * 50
    file_id = client.post("/v1/files", content=data).json()["id"]
    check = f'test "$(sha256sum data/in.bin | cut -c1-64)" = {file_id}'
    created = client.post(
        "/v1/sessions",
        json={
            "prompt": "use the data",
            "files": {"notes.txt": "text files still work"},
            "resources": [{"file_id": file_id, "path": "data/in.bin"}],
            "gate": f"{check} && grep -q still notes.txt",
            "script": script(("finish", {"summary": "read it"})),
        },
    )
    assert created.status_code == 201, created.text
    done = wait_status(client, created.json()["id"], TERMINAL)
    assert done["status"] == "succeeded", done


def test_bad_resources_are_422_naming_the_field(client: TestClient) -> None:
    file_id = client.post("/v1/files", content=b"some bytes").json()["id"]
    for path in ("../escape.bin", "/etc/passwd"):
        refused = client.post(
            "/v1/sessions",
            json={"prompt": "x", "resources": [{"file_id": file_id, "path": path}]},
        )
        assert refused.status_code == 422, refused.text
        assert refused.json()["detail"][0]["loc"] == ["body", "resources", 0, "path"]
    unknown = client.post(
        "/v1/sessions",
        json={"prompt": "x", "resources": [{"file_id": "f" * 64, "path": "in.bin"}]},
    )
    assert unknown.status_code == 422
    detail = unknown.json()["detail"][0]
    assert detail["loc"] == ["body", "resources.0.file_id"] and "no file" in detail["msg"]


def test_versions_are_readable_and_a_session_keeps_the_version_it_started_with(
    admin: TestClient,
) -> None:
    assert admin.post("/v1/agents", json={"name": "writer", "max_turns": 5}).status_code == 201
    assert admin.post("/v1/agents/writer", json={"max_turns": 6}).json()["version"] == 2
    versions = admin.get("/v1/agents/writer/versions").json()["data"]
    assert [(v["version"], v["spec"]["max_turns"]) for v in versions] == [(1, 5), (2, 6)]
    assert admin.get("/v1/agents/writer/versions/1").json()["spec"]["max_turns"] == 5
    assert admin.get("/v1/agents/writer/versions/3").status_code == 404
    assert admin.get("/v1/agents/nobody/versions").status_code == 404

    session = admin.post(
        "/v1/sessions",
        json={"prompt": "x", "agent": "writer", "script": script(("finish", {}))},
    ).json()
    assert session["agent_version"] == 2 and session["environment_version"] == 1
    admin.post("/v1/agents/writer", json={"max_turns": 7})
    done = wait_status(admin, session["id"], TERMINAL)
    assert done["status"] == "succeeded" and done["agent_version"] == 2


def test_an_archived_agent_refuses_new_sessions_with_409(admin: TestClient) -> None:
    assert admin.post("/v1/agents", json={"name": "retired"}).status_code == 201
    assert admin.post("/v1/agents/retired/archive").json()["archived"] is True
    refused = admin.post("/v1/sessions", json={"prompt": "x", "agent": "retired"})
    assert refused.status_code == 409
    assert refused.json()["detail"] == "agent 'retired' is archived: new tasks may not name it"
    unknown = admin.post("/v1/sessions", json={"prompt": "x", "agent": "never-was"})
    assert unknown.status_code == 422  # an unknown name is bad input, as before
    # Its versions stay readable.
    assert admin.get("/v1/agents/retired/versions/1").json()["archived"] is True


def test_the_fleet_stream_shows_a_put_environments_variable_names_not_values(
    admin: TestClient, fleet: FakeSupervisor
) -> None:
    created = admin.post("/v1/environments", json={"name": "keyed", "env": {"KEY": "s3cret"}})
    assert created.status_code == 201
    [put] = [e for e in fleet.stream if e.task_id == "registry:environment/keyed"]
    assert put.type == EventType.registry_put and put.payload["spec"]["env"] == {"KEY": "s3cret"}
    shown = shown_event(put)  # what /v1/events/stream sends
    assert shown.payload["spec"]["env"] == {"KEY": SECRET_MASK}
    assert put.payload["spec"]["env"] == {"KEY": "s3cret"}  # the logged event is as it was
