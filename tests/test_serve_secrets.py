"""The secrets routes (serve/routes/secrets.py) over the in-process fleet: write-only, who
may create and rotate what, and what a client's inline environment may name; no answer of
any route holds a value."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from serve.app import ServeSettings
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

OPS_VALUE = "ops-value-7f3a9c"
CLIENT_VALUE = "client-value-2b8e41"
ECHO = script(("shell", {"command": "echo token=$MY_TOKEN"}), ("finish", {"summary": "ok"}))


@pytest.fixture
def fleet(tmp_path: Any) -> Iterator[FakeSupervisor]:
    started = fake_fleet(tmp_path / "events")
    yield started
    started.close()


def clients(fleet: FakeSupervisor, **settings: Any) -> tuple[TestClient, TestClient]:
    app = app_over(fleet, ServeSettings(token=TOKEN, admin_token=ADMIN_TOKEN, **settings))
    return TestClient(app, headers=AUTH), TestClient(app, headers=ADMIN)


def test_the_operator_creates_and_rotates_and_no_answer_holds_a_value(
    fleet: FakeSupervisor,
) -> None:
    client, admin = clients(fleet)
    created = admin.post("/v1/secrets/DEPLOY_TOKEN", json={"value": OPS_VALUE})
    assert created.status_code == 201, created.text
    assert created.json()["scope"] == "operator" and created.json()["rotated_at"] is None
    again = admin.post("/v1/secrets/DEPLOY_TOKEN", json={"value": OPS_VALUE})
    assert again.status_code == 409 and "rotate it with PUT" in again.text
    rotated = admin.put("/v1/secrets/DEPLOY_TOKEN", json={"value": OPS_VALUE + "-2"})
    assert rotated.status_code == 200 and rotated.json()["rotated_at"] is not None
    listed = admin.get("/v1/secrets")
    assert [s["name"] for s in listed.json()["data"]] == ["DEPLOY_TOKEN"]
    one = admin.get("/v1/secrets/DEPLOY_TOKEN")
    assert one.status_code == 200 and set(one.json()) == {
        "name",
        "scope",
        "origin",
        "created_at",
        "rotated_at",
    }
    assert admin.get("/v1/secrets/NOPE").status_code == 404
    for answer in (created, again, rotated, listed, one):
        assert OPS_VALUE not in answer.text
    # Bad input: refused without echoing what was sent.
    for body in ({"value": "abc"}, {"value": 12345678}, {"value": OPS_VALUE, "x": 1}):
        bad = admin.put("/v1/secrets/OTHER", json=body)
        assert bad.status_code == 422 and "abc" not in bad.text and OPS_VALUE not in bad.text
        assert "12345678" not in bad.text
    assert admin.put("/v1/secrets/_mine", json={"value": OPS_VALUE}).status_code == 422
    # Clients may not, unless the operator allows it; they never see operator secrets.
    refused = client.post("/v1/secrets/MINE", json={"value": CLIENT_VALUE})
    assert refused.status_code == 403 and "FLEET_API_CLIENT_SECRETS" in refused.text
    assert client.get("/v1/secrets").json() == {"data": []}
    assert client.get("/v1/secrets/DEPLOY_TOKEN").status_code == 404


def test_clients_allowed_make_their_own_and_name_only_those(fleet: FakeSupervisor) -> None:
    client, admin = clients(fleet, client_secrets=True)
    assert admin.post("/v1/secrets/OPS", json={"value": OPS_VALUE}).status_code == 201
    mine = client.post("/v1/secrets/MINE", json={"value": CLIENT_VALUE})
    assert mine.status_code == 201 and mine.json()["scope"] == "client"
    assert client.put("/v1/secrets/MINE", json={"value": CLIENT_VALUE}).status_code == 200
    assert client.put("/v1/secrets/OPS", json={"value": "overwrite"}).status_code == 403
    assert [s["name"] for s in client.get("/v1/secrets").json()["data"]] == ["MINE"]
    assert {s["name"] for s in admin.get("/v1/secrets").json()["data"]} == {"MINE", "OPS"}

    def session(env: dict[str, Any]) -> Any:
        body = {"prompt": "x", "environment": {"env": env}, "script": ECHO}
        return client.post("/v1/sessions", json=body)

    for env, field in (
        ({"MY_TOKEN": {"secret": "OPS"}}, "not one of this client's secrets"),
        ({"MY_TOKEN": "plain"}, "set by the operator"),
    ):
        refused = session(env)
        assert refused.status_code == 422 and field in refused.text, refused.text
    created = session({"MY_TOKEN": {"secret": "MINE"}})
    assert created.status_code == 201, created.text
    sid = created.json()["id"]
    assert wait_status(client, sid, TERMINAL)["status"] == "succeeded"
    events = client.get(f"/v1/sessions/{sid}/events")
    assert "token=[secret:MINE]" in events.text and CLIENT_VALUE not in events.text
    record = client.get(f"/v1/tasks/{sid}")
    assert record.json()["spec"]["environment"]["env"]["MY_TOKEN"] == {"secret": "MINE"}
    # The log itself: the fleet's redactor ran before anything was written.
    asyncio.run(fleet.flush())
    for path in fleet.log.files():
        assert CLIENT_VALUE.encode() not in Path(path).read_bytes()


def test_environments_show_references_and_mask_plain_values(fleet: FakeSupervisor) -> None:
    client, admin = clients(fleet)
    admin.post("/v1/secrets/OPS", json={"value": OPS_VALUE})
    env = {"name": "secure", "env": {"TOKEN": {"secret": "OPS"}, "PLAIN": "plain-value"}}
    assert admin.post("/v1/environments", json=env).status_code == 201
    for answer in (client.get("/v1/environments"), admin.get("/v1/environments/secure")):
        shown = {e["name"]: e for e in answer.json().get("data", [answer.json()])}
        assert shown["secure"]["spec"]["env"] == {"TOKEN": {"secret": "OPS"}, "PLAIN": "***"}
        assert "plain-value" not in answer.text and OPS_VALUE not in answer.text
