"""Every route of the HTTP API through FastAPI's TestClient, against an in-process fleet
(tests/fake_supervisor.py: the real scheduler, registry, event log and session runner, no
Ray); tests/test_serve_http.py covers the app over a real fleet, on Ray Serve."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from core.settings import FleetSettings
from serve import deps
from serve.app import ServeSettings, create_app
from tests.conftest import script
from tests.fake_supervisor import FakeSupervisor

TOKEN = "test-token-123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ADMIN_TOKEN = "admin-token-456"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
HELLO = script(
    ("write_file", {"path": "hello.txt", "content": "hi"}),
    ("shell", {"command": "cat hello.txt"}),
    ("finish", {"summary": "wrote hello.txt"}),
)
SLOW = script(("shell", {"command": "sleep 30"}), ("finish", {"summary": "slept"}))


def fake_fleet(events_dir: Any, **settings: Any) -> FakeSupervisor:
    defaults: dict[str, Any] = {
        "name": f"serve-app-{time.monotonic_ns() % 10**8}",
        "sandbox": "local",
        "workers": 2,
        "retry_backoff_s": 0.1,
        "approval_wait_s": 1.0,  # park sessions waiting on a tool confirmation quickly
    }
    return FakeSupervisor(FleetSettings(events_dir=str(events_dir), **(defaults | settings)))


def app_over(fake: Any, settings: ServeSettings) -> Any:
    """The app as ``fleet serve`` builds it, its supervisor dependency overridden by a fake."""
    app = create_app(settings=settings)
    app.dependency_overrides[deps.supervisor] = lambda: fake
    return app


def run(call: Any) -> Any:
    """A fake supervisor's call, from a test."""
    return asyncio.run(call)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeSupervisor]:
    started = fake_fleet(tmp_path_factory.mktemp("serve-events"))
    yield started
    started.close()


@pytest.fixture(scope="module")
def app(fleet: Any) -> Any:
    settings = ServeSettings(
        token=TOKEN, admin_token=ADMIN_TOKEN, max_body_bytes=64 * 1024, max_page=500
    )
    return app_over(fleet, settings)


@pytest.fixture(scope="module")
def client(app: Any) -> Iterator[TestClient]:
    """An API client (the API token)."""
    with TestClient(app, headers=AUTH) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def admin(app: Any) -> Iterator[TestClient]:
    """The operator (the admin token)."""
    with TestClient(app, headers=ADMIN) as test_client:
        yield test_client


def wait_status(client: TestClient, session_id: str, done: set[str], timeout_s: float = 60) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        body = client.get(f"/v1/sessions/{session_id}").json()
        if body["status"] in done:
            return body
        if time.monotonic() > deadline:
            status = client.get("/v1/fleet/status").json()
            raise AssertionError(f"{session_id} still {body['status']}; fleet: {status}")
        time.sleep(0.1)


TERMINAL = {"succeeded", "failed", "needs_human", "cancelled"}


def sse_events(lines: Iterator[str]) -> list[dict[str, str]]:
    """Parse an SSE body into its events (id, event, data)."""
    out: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in lines:
        if not line:
            if "data" in current:
                out.append(current)
            current = {}
            continue
        if line.startswith(":"):
            continue
        key, _, value = line.partition(":")
        current[key] = value.removeprefix(" ")
    return out


# -- auth and meta -------------------------------------------------------------------------
def test_auth_is_required_except_for_health_and_page(client: TestClient) -> None:
    assert client.get("/healthz", headers={"Authorization": ""}).json() == {"ok": True}
    page = client.get("/", headers={"Authorization": ""})
    assert page.status_code == 200 and "agent-fleet" in page.text
    missing = client.get("/v1/fleet/status", headers={"Authorization": ""})
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    for bad in (b"Bearer nope", b"Basic dXNlcjpwYXNz", "Bearer t\u00e9st".encode("latin-1")):
        status = client.get("/v1/fleet/status", headers={"Authorization": bad}).status_code
        assert status == (401 if bad.startswith(b"Basic") else 403), bad
    ok = client.get("/v1/fleet/status")
    assert ok.status_code == 200 and ok.json()["workers"] == 2
    assert (
        "access-control-allow-origin"
        not in client.options("/v1/fleet/status", headers={"Origin": "http://evil.example"}).headers
    )


def test_token_file_and_no_token(tmp_path: Any, fleet: Any) -> None:
    path = tmp_path / "token"
    path.write_text("from-file\n")
    app = app_over(fleet, ServeSettings(token_file=str(path)))
    with TestClient(app) as c:
        assert c.get("/v1/agents", headers={"Authorization": "Bearer from-file"}).status_code == 200
    with pytest.raises(ValueError, match="no API token"):
        app_over(fleet, ServeSettings(token=None, token_file=None))


def test_openapi_documents_every_route(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    for path in (
        "/v1/agents/{name}/archive",
        "/v1/sessions/{session_id}/events/stream",
        "/v1/events/stream",
        "/v1/tasks",
        "/v1/reports/{name}",
    ):
        assert path in paths
    schemas = spec["components"]["schemas"]
    assert {"TaskSpec", "SessionView", "EventPage", "FleetStatus", "Event"} <= set(schemas)
    assert schemas["FleetStatus"]["properties"]["blocked"]["items"]["$ref"].endswith("BlockedItem")
    # Streams take the token in the query too (EventSource cannot send headers); nothing else.
    assert paths["/v1/events/stream"]["get"]["security"] == [
        {"HTTPBearer": []},
        {"APIKeyQuery": []},
    ]
    assert paths["/v1/fleet/status"]["get"]["security"] == [{"HTTPBearer": []}]
    get_session = paths["/v1/sessions/{session_id}"]["get"]["responses"]
    assert {"200", "401", "403", "404"} <= set(get_session)
    assert get_session["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "SessionView"
    )


# -- agents and environments -----------------------------------------------------------
@pytest.mark.parametrize(
    ("plural", "field", "value"), [("agents", "max_turns", 7), ("environments", "cpus", 2.0)]
)
def test_spec_crud_with_versions(admin: TestClient, plural: str, field: str, value: Any) -> None:
    client = admin  # editing agents and environments is the operator's
    name = f"x-{plural}"
    created = client.post(f"/v1/{plural}", json={"name": name, field: value})
    assert created.status_code == 201, created.text
    assert created.json()["version"] == 1 and created.json()["spec"][field] == value
    assert client.post(f"/v1/{plural}", json={"name": name}).status_code == 409
    assert client.get(f"/v1/{plural}/{name}").json()["version"] == 1
    assert name in [v["name"] for v in client.get(f"/v1/{plural}").json()["data"]]

    updated = client.post(f"/v1/{plural}/{name}", json={"version": 1})
    assert updated.status_code == 200 and updated.json()["version"] == 2
    stale = client.post(f"/v1/{plural}/{name}", json={"version": 1})
    assert stale.status_code == 409 and "version 2" in stale.json()["detail"]
    bad_type = client.post(f"/v1/{plural}/{name}", json={field: "lots"})
    assert bad_type.status_code == 422 and bad_type.json()["detail"][0]["loc"] == ["body", field]
    unknown_field = client.post(f"/v1/{plural}", json={"name": "y", "bogus": 1})
    assert unknown_field.status_code == 422
    assert unknown_field.json()["detail"][0]["loc"] == ["body", "bogus"]
    bad_name = client.post(f"/v1/{plural}", json={"name": "a/b"})
    assert bad_name.status_code == 422 and bad_name.json()["detail"][0]["loc"] == ["body", "name"]
    assert client.get(f"/v1/{plural}/nope").status_code == 404
    assert client.post(f"/v1/{plural}/nope", json={}).status_code == 404

    archived = client.post(f"/v1/{plural}/{name}/archive")
    assert archived.status_code == 200 and archived.json()["archived"] is True
    assert name not in [v["name"] for v in client.get(f"/v1/{plural}").json()["data"]]
    listed = client.get(f"/v1/{plural}", params={"include_archived": True}).json()["data"]
    assert name in [v["name"] for v in listed]
    assert client.post(f"/v1/{plural}/{name}", json={}).status_code == 404
    assert client.post(f"/v1/{plural}/default/archive").status_code == 409
    assert client.post(f"/v1/{plural}/nope/archive").status_code == 404


# -- two roles: the operator (admin token) and API clients ------------------------------
def test_only_the_operator_edits_agents_and_environments(
    client: TestClient, admin: TestClient
) -> None:
    for plural in ("agents", "environments"):
        for path, body in (
            (f"/v1/{plural}", {"name": f"c-{plural}"}),
            (f"/v1/{plural}/default", {}),
            (f"/v1/{plural}/default/archive", None),
        ):
            refused = client.post(path, json=body)
            assert refused.status_code == 403, (path, refused.text)
            assert (
                "operator only" in refused.json()["detail"]
                and "admin token" in refused.json()["detail"]
            )
        assert client.get(f"/v1/{plural}/default").status_code == 200  # reading is for all
        assert f"c-{plural}" not in [v["name"] for v in client.get(f"/v1/{plural}").json()["data"]]
    agent = {"name": "op-agent", "base_url": "http://models.internal/v1", "api_key_env": "OP_KEY"}
    created = admin.post("/v1/agents", json=agent)
    assert created.status_code == 201 and created.json()["spec"]["base_url"] == agent["base_url"]
    # The admin token works wherever the client token does.
    assert admin.get("/v1/fleet/status").status_code == 200
    bad_key = admin.post("/v1/agents", json={"name": "op-2", "api_key_env": "../x"})
    assert bad_key.status_code == 422
    assert bad_key.json()["detail"][0]["loc"] == ["body", "api_key_env"]


def test_admin_token_settings(fleet: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_ADMIN_TOKEN", "from-env")
    assert ServeSettings(token=TOKEN).resolve_admin_token() == "from-env"
    monkeypatch.delenv("FLEET_ADMIN_TOKEN")
    assert ServeSettings(token=TOKEN).resolve_admin_token() is None
    with pytest.raises(ValueError, match="must differ"):
        app_over(fleet, ServeSettings(token=TOKEN, admin_token=TOKEN))
    # No admin token configured: nobody is operator over HTTP.
    with TestClient(app_over(fleet, ServeSettings(token=TOKEN)), headers=AUTH) as c:
        assert c.post("/v1/agents", json={"name": "nobody"}).status_code == 403
        wrong = c.post("/v1/agents", json={"name": "x"}, headers=ADMIN)
        assert wrong.status_code == 403 and wrong.json()["detail"] == "wrong token"


def field_refused(client: TestClient, task: dict[str, Any], loc: list[str], why: str) -> None:
    """The task is refused on both submit routes, naming the same field for the same reason."""
    session = client.post("/v1/sessions", json=task)
    assert session.status_code == 422, session.text
    [error] = session.json()["detail"]
    assert error["loc"] == ["body", *loc] and why in error["msg"], error
    batch = client.post("/v1/tasks", json=[task])
    assert batch.status_code == 200 and batch.json()["accepted"] == [], batch.text
    [rejection] = batch.json()["rejected"]
    assert rejection["field"] == ".".join(loc) and why in rejection["error"], rejection


@pytest.mark.parametrize(
    ("agent", "field"),
    [
        ({"name": "mine", "base_url": "http://attacker.example/v1"}, "base_url"),
        ({"name": "mine", "api_key_env": "AWS_SECRET_ACCESS_KEY"}, "api_key_env"),
        ({"name": "mine", "model": "gpt-mine"}, "model"),
    ],
)
def test_a_client_cannot_point_an_agent_elsewhere(
    client: TestClient, agent: dict[str, Any], field: str
) -> None:
    field_refused(
        client,
        {"prompt": "x", "agent": agent},
        ["agent", field],
        f"agent.{field}: set by the operator; API clients may not set it",
    )


@pytest.mark.parametrize(
    ("environment", "loc", "why"),
    [
        ({"network": "full"}, ["environment", "network"], "set by the operator"),
        ({"network": ["attacker.example"]}, ["environment", "network"], "set by the operator"),
        ({"apt": ["-o", "x"]}, ["environment", "apt"], "set by the operator"),
        ({"pip": ["--index-url=http://x", "y"]}, ["environment", "pip"], "set by the operator"),
        ({"image": "attacker/image"}, ["environment", "image"], "set by the operator"),
        ({"env": {"LD_PRELOAD": "/x.so"}}, ["environment", "env"], "set by the operator"),
        ({"memory_mb": 100_000}, ["environment", "memory_mb"], "cap 8192 (max_memory_mb)"),
        ({"cpus": 64}, ["environment", "cpus"], "cap 4 (max_cpus)"),
    ],
)
def test_a_client_environment_stays_within_the_operators(
    client: TestClient, environment: dict[str, Any], loc: list[str], why: str
) -> None:
    field_refused(client, {"prompt": "x", "environment": environment}, loc, why)


@pytest.mark.parametrize("path", ["../x", "/etc/x", "a/../../x"])
def test_task_files_outside_the_workspace_are_refused_everywhere(
    client: TestClient, admin: TestClient, path: str
) -> None:
    for caller in (client, admin):  # validated on TaskSpec: the operator's tasks too
        field_refused(caller, {"prompt": "x", "files": {path: "y"}}, ["files"], "file path")


def test_blank_prompts_and_bad_ids_are_refused_alike(client: TestClient) -> None:
    field_refused(client, {"prompt": "  \n "}, ["prompt"], "must not be blank")
    field_refused(client, {"id": "a b", "prompt": "x"}, ["id"], "printable ASCII")
    empty = client.post("/v1/sessions", json={"events": [{"type": "user.message", "content": " "}]})
    assert empty.status_code == 422 and empty.json()["detail"][0]["loc"] == ["body", "prompt"]


def test_client_limits_and_operator_fields(client: TestClient, admin: TestClient) -> None:
    field_refused(client, {"prompt": "x", "time_limit_s": 7200}, ["time_limit_s"], "cap 3600")
    field_refused(client, {"prompt": "x", "max_attempts": 50}, ["max_attempts"], "cap 10")
    field_refused(client, {"prompt": "x", "max_turns": 1000}, ["max_turns"], "cap 200")
    field_refused(
        client, {"prompt": "x", "agent": {"max_turns": 1000}}, ["agent", "max_turns"], "cap 200"
    )
    tool = {"prompt": "x", "agent": {"tools": ["shell", "create_followup"]}}
    field_refused(client, tool, ["agent", "tools"], "not one of the default agent's tools")
    repo = client.post("/v1/tasks", json=[{"prompt": "x", "repo": "/"}]).json()["rejected"]
    assert [(r["field"], r["error"]) for r in repo] == [
        ("repo", "repo: set by the operator; API clients may not set it")
    ]
    # The operator's token is not limited by the client policy (allow_repo still applies).
    op_repo = admin.post("/v1/tasks", json=[{"prompt": "x", "repo": "/"}]).json()["rejected"]
    assert [r["field"] for r in op_repo] == ["repo"] and "allow_repo" in op_repo[0]["error"]
    full = {"name": "op-inline", "model": "scripted", "context_window": 4000}
    created = admin.post("/v1/sessions", json={"prompt": "x", "agent": full, "script": HELLO})
    assert created.status_code == 201, created.text
    assert wait_status(admin, created.json()["id"], TERMINAL)["status"] == "succeeded"


def test_a_client_inline_agent_and_environment_run_on_the_operators_defaults(
    client: TestClient,
) -> None:
    seeded = script(("shell", {"command": "cat seed.txt"}), ("finish", {"summary": "read"}))
    created = client.post(
        "/v1/sessions",
        json={
            "prompt": "read the seed",
            "agent": {"name": "reader", "instructions": "read files", "max_turns": 5},
            "environment": {"memory_mb": 512, "files": {"seed.txt": "grain"}},
            "script": seeded,
        },
    )
    assert created.status_code == 201, created.text
    sid = created.json()["id"]
    assert wait_status(client, sid, TERMINAL)["status"] == "succeeded"
    spec = client.get(f"/v1/tasks/{sid}").json()["spec"]
    default = client.get("/v1/agents/default").json()["spec"]
    assert spec["agent"]["name"] == "reader" and spec["agent"]["max_turns"] == 5
    assert (spec["agent"]["model"], spec["agent"]["api_key_env"]) == (
        default["model"],
        default["api_key_env"],
    )
    assert spec["environment"]["memory_mb"] == 512 and spec["environment"]["network"] == "none"
    events = client.get(f"/v1/sessions/{sid}/events").json()["data"]
    results = [e for e in events if e["type"] == "agent.tool_result" and e["tool"] == "shell"]
    assert results and "grain" in json.dumps(results[-1]["payload"])


def test_clients_see_environment_variable_names_not_values(
    client: TestClient, admin: TestClient
) -> None:
    env = {"name": "with-secret", "env": {"DEPLOY_TOKEN": "s3cret-value"}}
    created = admin.post("/v1/environments", json=env)
    assert created.status_code == 201
    assert created.json()["spec"]["env"] == {"DEPLOY_TOKEN": "***"}
    for response in (
        client.get("/v1/environments"),
        client.get("/v1/environments/with-secret"),
        admin.get("/v1/environments"),
    ):
        assert response.status_code == 200 and "s3cret-value" not in response.text
        assert "DEPLOY_TOKEN" in response.text
    # An operator's inline environment: its values stay out of records and events too.
    inline = {"env": {"DEPLOY_TOKEN": "s3cret-value"}}
    sid = admin.post(
        "/v1/sessions", json={"prompt": "x", "environment": inline, "script": HELLO}
    ).json()["id"]
    wait_status(client, sid, TERMINAL)
    for path in (f"/v1/tasks/{sid}", f"/v1/sessions/{sid}/events"):
        text = client.get(path).text
        assert "s3cret-value" not in text and "DEPLOY_TOKEN" in text, path
    with client.stream("GET", f"/v1/sessions/{sid}/events/stream") as r:
        streamed = "".join(r.iter_lines())
    assert "task.submitted" in streamed and "s3cret-value" not in streamed


# -- sessions ----------------------------------------------------------------------------
def test_session_runs_and_its_events_page_and_stream(client: TestClient) -> None:
    created = client.post(
        "/v1/sessions",
        json={
            "id": "s-hello",
            "prompt": "hello",
            "gate": "test -s hello.txt",
            "script": HELLO,
            "labels": ["web"],
        },
    )
    assert created.status_code == 201, created.text
    assert created.json()["id"] == "s-hello" and created.json()["status"] in {"queued", "running"}
    done = wait_status(client, "s-hello", TERMINAL)
    assert done["status"] == "succeeded" and done["summary"] == "wrote hello.txt"

    # Full history, paged.
    seen: list[dict] = []
    after = -1
    while True:
        page = client.get("/v1/sessions/s-hello/events", params={"after_seq": after, "limit": 3})
        body = page.json()
        seen += body["data"]
        after = body["next_after_seq"]
        if not body["has_more"]:
            break
    assert [e["seq"] for e in seen] == list(range(len(seen)))
    assert seen[0]["type"] == "task.submitted" and seen[-1]["type"] == "task.succeeded"
    too_many = client.get("/v1/sessions/s-hello/events", params={"limit": 501})
    assert too_many.status_code == 422  # max_page is 500 here
    assert too_many.json()["detail"][0]["loc"] == ["query", "limit"]
    assert client.get("/v1/sessions", params={"limit": 500}).status_code == 200
    parameters = client.get("/openapi.json").json()["paths"]["/v1/sessions"]["get"]["parameters"]
    assert next(p["schema"] for p in parameters if p["name"] == "limit") == {
        "type": "integer",
        "maximum": 500,
        "minimum": 1,
        "default": 50,
        "title": "Limit",
    }

    # The stream of an ended session: every event, then the end marker.
    with client.stream("GET", "/v1/sessions/s-hello/events/stream") as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        streamed = sse_events(r.iter_lines())
    assert [int(e["id"]) for e in streamed[:-1]] == [e["seq"] for e in seen]
    assert streamed[-1]["event"] == "session.end"
    assert json.loads(streamed[-1]["data"]) == {"status": "succeeded"}
    # Resumed with Last-Event-ID: only what follows.
    with client.stream(
        "GET", "/v1/sessions/s-hello/events/stream", headers={"Last-Event-ID": "4"}
    ) as r:
        rest = sse_events(r.iter_lines())
    assert [int(e["id"]) for e in rest[:-1]] == [e["seq"] for e in seen if e["seq"] > 4]
    bad = client.get("/v1/sessions/s-hello/events/stream", headers={"Last-Event-ID": "x"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["header", "last-event-id"]

    listed = client.get("/v1/sessions", params={"label": "web", "status": "succeeded"}).json()
    assert [s["id"] for s in listed["data"]] == ["s-hello"]
    assert client.get("/v1/sessions", params={"status": "bogus"}).status_code == 422
    assert client.post("/v1/sessions", json={"id": "s-hello", "prompt": "again"}).status_code == 409
    for path in ("", "/events", "/events/stream"):
        assert client.get(f"/v1/sessions/missing{path}").status_code == 404


def test_session_create_validation(client: TestClient) -> None:
    neither = client.post("/v1/sessions", json={"labels": ["x"]})
    assert neither.status_code == 422 and neither.json()["detail"][0]["loc"] == ["body", "prompt"]
    agent = client.post("/v1/sessions", json={"prompt": "x", "agent": "no-such-agent"})
    assert agent.status_code == 422 and agent.json()["detail"][0]["loc"] == ["body", "agent"]
    typed = client.post("/v1/sessions", json={"prompt": "x", "max_attempts": "many"})
    assert typed.status_code == 422 and typed.json()["detail"][0]["loc"] == ["body", "max_attempts"]
    assert client.post("/v1/sessions", content=b"{not json").status_code == 422
    assert client.post("/v1/sessions", json=[1, 2]).status_code == 422
    # Initial user events make the prompt.
    from_events = client.post(
        "/v1/sessions",
        json={
            "events": [{"type": "user.message", "content": [{"type": "text", "text": "hi"}]}],
            "script": HELLO,
        },
    )
    assert from_events.status_code == 201 and from_events.json()["prompt"] == "hi"
    wait_status(client, from_events.json()["id"], TERMINAL)


def test_steer_interrupt_and_confirmation(client: TestClient) -> None:
    sid = client.post("/v1/sessions", json={"prompt": "slow", "script": SLOW}).json()["id"]
    wait_status(client, sid, {"running"})
    steer = client.post(
        f"/v1/sessions/{sid}/events",
        json={"events": [{"type": "user.message", "content": "also do y"}]},
    )
    assert steer.status_code == 200 and steer.json()["accepted"] == 1
    confirm = client.post(
        f"/v1/sessions/{sid}/events",
        json={"events": [{"type": "user.tool_confirmation", "result": "allow"}]},
    )
    assert confirm.status_code == 409 and "approval" in confirm.json()["detail"]
    bad = client.post(f"/v1/sessions/{sid}/events", json={"events": [{"type": "user.dance"}]})
    assert bad.status_code == 422
    empty = client.post(f"/v1/sessions/{sid}/events", json={"events": []})
    assert empty.status_code == 422 and empty.json()["detail"][0]["loc"] == ["body", "events"]
    interrupt = client.post(
        f"/v1/sessions/{sid}/events", json={"events": [{"type": "user.interrupt"}]}
    )
    assert interrupt.status_code == 200
    types = [e["type"] for e in client.get(f"/v1/sessions/{sid}/events").json()["data"]]
    assert "user.message" in types and "user.interrupt" in types
    archived = client.post(f"/v1/sessions/{sid}/archive")
    assert archived.status_code == 200
    wait_status(client, sid, TERMINAL | {"paused"})
    archived = client.post(f"/v1/sessions/{sid}/archive").json()
    assert archived["status"] in TERMINAL
    late = client.post(
        f"/v1/sessions/{sid}/events",
        json={"events": [{"type": "user.message", "content": "too late"}]},
    )
    assert late.status_code == 409


def test_tool_confirmation_allows_a_waiting_call(client: TestClient) -> None:
    agent = {"name": "asker", "approvals": {"shell": "always_ask"}}
    sid = client.post(
        "/v1/sessions", json={"prompt": "needs ok", "agent": agent, "script": HELLO}
    ).json()["id"]
    waiting = wait_status(client, sid, {"awaiting_approval"} | TERMINAL)
    types = [e["type"] for e in client.get(f"/v1/sessions/{sid}/events").json()["data"]]
    assert waiting["status"] == "awaiting_approval", types  # shell must wait for a person
    assert "approval.requested" in types and "task.parked" in types
    pending = waiting["pending_approval"]
    assert pending["tool"] == "shell" and pending["args"]["command"] == "cat hello.txt"
    call_id = pending["call_id"]
    listed = client.get("/v1/sessions", params={"status": "awaiting_approval"}).json()["data"]
    assert sid in [s["id"] for s in listed]
    blocked = client.get("/v1/fleet/status").json()["blocked"]
    assert {
        "task_id": sid,
        "state": "awaiting_approval",
        "call_id": call_id,
        "tool": "shell",
    }.items() <= next(b for b in blocked if b["task_id"] == sid).items()
    wrong = client.post(
        f"/v1/sessions/{sid}/events",
        json={
            "events": [{"type": "user.tool_confirmation", "result": "allow", "tool_use_id": "nope"}]
        },
    )
    assert wrong.status_code == 409
    ok = client.post(
        f"/v1/sessions/{sid}/events",
        json={
            "events": [
                {"type": "user.tool_confirmation", "result": "allow", "tool_use_id": call_id}
            ]
        },
    )
    assert ok.status_code == 200, ok.text
    assert wait_status(client, sid, TERMINAL)["status"] == "succeeded"
    events = client.get(f"/v1/sessions/{sid}/events").json()["data"]
    decided = [e["payload"] for e in events if e["type"] == "approval.decided"]
    assert decided[0] == {"call_id": call_id, "allow": True, "message": "", "by": "user"}
    assert all(d["call_id"] == call_id and d["allow"] for d in decided)
    ran = [e for e in events if e["type"] == "agent.tool_result" and e["tool"] == "shell"]
    assert ran and ran[-1]["exit_code"] == 0  # the allowed call ran after the decision
    assert sid not in [b["task_id"] for b in client.get("/v1/fleet/status").json()["blocked"]]


# -- tasks -------------------------------------------------------------------------------
def test_batch_submit_get_and_cancel(client: TestClient) -> None:
    tasks = [{"id": f"b{i}", "prompt": "hello", "script": HELLO} for i in range(3)]
    out = client.post("/v1/tasks", params={"batch": "web-1"}, json=tasks)
    assert out.status_code == 200, out.text
    assert out.json() == {"batch": "web-1", "accepted": ["b0", "b1", "b2"], "rejected": []}

    jsonl = "\n".join(
        [
            json.dumps({"id": "slow1", "prompt": "x", "script": SLOW}),
            "{bad json",
            "",
            json.dumps({"id": "b0", "prompt": "dup"}),
            json.dumps({"id": "r", "prompt": "x", "repo": "/"}),
            json.dumps({"prompt": "x", "max_attempts": 0}),
            json.dumps({"prompt": "x", "agent": "ghost"}),
            "[]",
        ]
    )
    out = client.post(
        "/v1/tasks", content=jsonl, headers={"Content-Type": "application/x-ndjson"}
    ).json()
    assert out["accepted"] == ["slow1"]
    rejected = {(r["line"], r["field"]) for r in out["rejected"]}
    assert {(2, ""), (5, "repo"), (6, "max_attempts"), (8, "")} <= rejected
    assert {r["field"] for r in out["rejected"] if r["line"] is None} == {"id", "agent"}

    record = client.get("/v1/tasks/b0").json()
    assert (
        record["id"] == "b0" and record["batch"] == "web-1" and record["spec"]["prompt"] == "hello"
    )
    wait_status(client, "slow1", {"running", "queued"})
    cancelled = client.post("/v1/tasks/slow1/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert client.post("/v1/tasks/slow1/cancel").status_code == 409
    assert client.post("/v1/tasks/nope/cancel").status_code == 404
    assert client.get("/v1/tasks/nope").status_code == 404
    for body in (b"", b"   ", b"[1,", b"\xff\xfe"):
        assert client.post("/v1/tasks", content=body).status_code == 422, body
    huge = json.dumps([{"prompt": "x" * 70_000}])
    assert client.post("/v1/tasks", content=huge).status_code == 413
    for i in range(3):
        wait_status(client, f"b{i}", TERMINAL)


def test_status_and_reports(client: TestClient) -> None:
    sid = client.post("/v1/sessions", json={"prompt": "x", "script": HELLO}).json()["id"]
    wait_status(client, sid, TERMINAL)
    status = client.get("/v1/fleet/status").json()
    assert status["counts"]["succeeded"] >= 1 and sid in [r["task_id"] for r in status["recent"]]
    # Reports read the Parquet files; fresh=true rolls what is buffered into them first.
    overview = client.get("/v1/reports/overview", params={"fresh": "true"}).json()
    assert overview["rows"][0]["tasks"] >= 1 and "success_pct" in overview["columns"]
    durations = client.get("/v1/reports/durations").json()["rows"]
    assert sid in [r["task_id"] for r in durations]
    assert isinstance(durations[0]["duration_s"], float)
    tasks = client.get("/v1/reports/tasks").json()["rows"]
    assert sid in [r["task_id"] for r in tasks]
    tools = client.get("/v1/reports/tools").json()["rows"]
    assert "shell" in [r["tool"] for r in tools]
    batch = client.get("/v1/reports/overview", params={"batch": "no-such"}).json()
    assert batch["rows"][0]["tasks"] == 0
    assert client.get("/v1/reports/nope").status_code == 404


class _DeadSupervisor:
    """Every call fails as a call to a supervisor actor that is restarting does."""

    def __getattr__(self, name: str) -> Any:
        async def call(*args: Any) -> Any:
            import ray

            raise ray.exceptions.ActorUnavailableError("supervisor restarting", None)

        return call


def test_unreachable_fleet_is_503_and_streamed_bodies_are_limited() -> None:
    app = app_over(_DeadSupervisor(), ServeSettings(token=TOKEN, max_body_bytes=2048))
    with TestClient(app, headers=AUTH) as c:
        down = c.get("/v1/fleet/status")
        assert down.status_code == 503 and "fleet unavailable" in down.json()["detail"]

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
            for _ in range(10):
                yield b"x" * 1000

        assert c.post("/v1/tasks", content=chunks()).status_code == 413
        json_body = {"Content-Type": "application/json"}  # parsed by FastAPI, not by the route
        assert c.post("/v1/sessions", content=chunks(), headers=json_body).status_code == 413
        assert c.post("/v1/tasks", content=b"x" * 3000).status_code == 413


def test_review_route_approves_a_result_awaiting_review(fleet: FakeSupervisor) -> None:
    client = TestClient(app_over(fleet, ServeSettings(token="t0k")))
    auth = {"Authorization": "Bearer t0k"}
    task = {"id": "rv", "prompt": "x", "require_approval": True}
    task["script"] = script(("finish", {"summary": "done"}))
    assert client.post("/v1/tasks", json=[task], headers=auth).json()["accepted"] == ["rv"]
    deadline = time.time() + 30
    while run(fleet.get(["rv"]))[0].state != "awaiting_review":
        assert time.time() < deadline
        time.sleep(0.05)
    blocked = client.get("/v1/fleet/status", headers=auth).json()["blocked"]
    [item] = [b for b in blocked if b["task_id"] == "rv"]
    assert (item["state"], item["call_id"], item["tool"]) == ("awaiting_review", None, None)
    early = client.post("/v1/tasks/nope/review", json={"approve": True}, headers=auth)
    assert early.status_code == 404
    bad = client.post("/v1/tasks/rv/review", json={"approve": "perhaps"}, headers=auth)
    assert bad.status_code == 422
    ok = client.post("/v1/tasks/rv/review", json={"approve": True, "message": "ok"}, headers=auth)
    assert ok.status_code == 200 and ok.json()["state"] == "succeeded"
    again = client.post("/v1/tasks/rv/review", json={"approve": True}, headers=auth)
    assert again.status_code == 409


# -- hostile input: never a 500 -----------------------------------------------------------
DEEP = "[" * 20_000 + "]" * 20_000  # Python's json recurses out of stack long before this


@pytest.mark.parametrize(
    ("path", "body", "why"),
    [
        ("/v1/tasks", DEEP, "nested more than 200 levels deep"),
        ("/v1/tasks", '[{"prompt": "x", "time_limit_s": NaN}]', "expected value"),
        ("/v1/tasks", '[{"prompt": "x", "time_limit_s": Infinity}]', "expected value"),
        ("/v1/tasks", '[{"prompt": "x", "priority": 1' + "0" * 5000 + "}]", "number out of range"),
        ("/v1/tasks", '[{"prompt": "x", "script": [{"tool": "t", "args": {"a": "\\ud800"}}]}]', ""),
        ("/v1/sessions", '{"prompt": ' + DEEP + "}", "nested more than 200 levels deep"),
        ("/v1/sessions", '{"prompt": "x", "time_limit_s": NaN}', "expected value"),
        ("/v1/sessions", '{"prompt": "\\ud800"}', "unpaired surrogate"),
        ("/v1/sessions", '{"prompt": "x", "priority": 1' + "0" * 5000 + "}", "out of range"),
        ("/v1/agents", '{"name": "a", "instructions": "\\udc00"}', "surrogate"),
        ("/v1/agents", '{"name": "a", "approvals": ' + '{"a": ' * 5000 + "1" + "}" * 5001, ""),
        ("/v1/sessions/x/events", '{"events": ' + DEEP + "}", "nested"),
        ("/v1/tasks/x/review", '{"approve": true, "message": "\\ud800x"}', "unpaired surrogate"),
        ("/v1/sessions", '{"prompt": "x", "time_limit_s": 1e400}', "not a finite number"),
        ("/v1/tasks", '[{"prompt": "x", "time_limit_s": -1e400}]', "not a finite number"),
    ],
)
def test_hostile_json_bodies_are_client_errors(
    client: TestClient, path: str, body: str, why: str
) -> None:
    response = client.post(path, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text[:300]
    assert why in response.text


def test_hostile_input_elsewhere_is_never_a_500(client: TestClient) -> None:
    # JSONL: a bad line is rejected on its own, with the reason; the others still count.
    jsonl = json.dumps({"prompt": "x", "agent": "ghost"}) + "\n" + DEEP + '\n{"prompt": NaN}'
    out = client.post("/v1/tasks", content=jsonl)
    assert out.status_code == 200, out.text[:300]
    errors = {r["line"]: r["error"] for r in out.json()["rejected"]}
    assert "nested more than 200 levels deep" in errors[2] and "expected value" in errors[3]
    # Input echoed in a validation error: deep, non-finite or not text, it still encodes.
    deep_ok = "[" * 150 + "]" * 150
    for body in ('{"prompt": ' + deep_ok + "}", '{"prompt": "x", "max_turns": 1e400}'):
        response = client.post("/v1/sessions", content=body)
        assert response.status_code == 422, response.text[:300]
    for path in (
        "/v1/sessions?label=%ff%fe&status=%ed%a0%80",
        "/v1/sessions/%ed%a0%80",
        "/v1/sessions?limit=" + "9" * 5000,
        "/v1/sessions/x/events?after_seq=" + "9" * 5000,
        "/v1/reports/%ff",
    ):
        assert client.get(path).status_code in (404, 422), path
    headers = {"Last-Event-ID": "9" * 5000}
    assert client.get("/v1/sessions/x/events/stream", headers=headers).status_code in (404, 422)
    assert client.get("/v1/events/stream", headers=headers).status_code == 422


@pytest.fixture
def held(tmp_path: Any) -> Iterator[FakeSupervisor]:
    """A paused fleet (``max_running=0``): every task stays queued."""
    sup = fake_fleet(tmp_path / "events", max_running=0, max_queued_per_token=3)
    yield sup
    sup.close()


def test_a_client_token_has_a_queue_quota(held: FakeSupervisor) -> None:
    sup = held
    app = app_over(sup, ServeSettings(token=TOKEN, admin_token=ADMIN_TOKEN))
    with TestClient(app, headers=AUTH) as c:
        assert c.post("/v1/sessions", json={"id": "q1", "prompt": "x"}).status_code == 201
        batch = c.post("/v1/tasks", json=[{"id": "q2", "prompt": "x"}, {"id": "q3", "prompt": "x"}])
        assert batch.json()["accepted"] == ["q2", "q3"]
        over = c.post("/v1/sessions", json={"id": "q4", "prompt": "x"})
        assert over.status_code == 429
        assert "3 unfinished tasks" in over.json()["detail"]
        assert "max_queued_per_token (3)" in over.json()["detail"]
        assert c.post("/v1/tasks", json=[{"id": "q4", "prompt": "x"}]).status_code == 429
        assert run(sup.get(["q4"])) == [None]  # refused whole, nothing queued
        assert run(sup.cancel("q1"))  # one ends: room for one more, not two
        two = [{"id": "q5", "prompt": "x"}, {"id": "q6", "prompt": "x"}]
        assert c.post("/v1/tasks", json=two).status_code == 429
        assert c.post("/v1/sessions", json={"id": "q5", "prompt": "x"}).status_code == 201
        # The operator is not counted.
        admin = c.post("/v1/sessions", json={"id": "op", "prompt": "x"}, headers=ADMIN)
        assert admin.status_code == 201


def test_reports_read_parquet_without_forcing_a_flush(held: FakeSupervisor) -> None:
    sup = held
    with TestClient(app_over(sup, ServeSettings(token=TOKEN)), headers=AUTH) as c:
        for _ in range(3):  # a dashboard polling: no flush, so no new Parquet file each time
            assert c.get("/v1/reports/overview").status_code == 200
        assert sup.calls["flush"] == 0
        assert c.get("/v1/reports/durations", params={"fresh": True}).status_code == 200
        assert sup.calls["flush"] == 1


# -- the fleet-wide stream -----------------------------------------------------------------
@pytest.fixture(scope="module")
def live_client(fleet: Any) -> Iterator[TestClient]:
    """Short long-polls, so a stream that waits in vain shows up as keep-alives."""
    app = app_over(fleet, ServeSettings(token=TOKEN, stream_poll_s=0.5))
    with TestClient(app, headers=AUTH) as test_client:
        yield test_client


def read_until(lines: Iterator[str], done: Any, timeout_s: float = 60) -> list[dict[str, str]]:
    """SSE events from ``lines`` until ``done(events)``; keep-alives let the deadline act."""
    deadline = time.monotonic() + timeout_s
    seen: list[str] = []
    for line in lines:
        seen.append(line)
        if not line:
            events = sse_events(iter(seen))
            if done(events):
                return events
        assert time.monotonic() < deadline, f"stream stalled after {sse_events(iter(seen))[-3:]}"
    raise AssertionError("the stream ended")


def ended(task_id: str) -> Any:
    def check(events: list[dict[str, str]]) -> bool:
        return any(
            json.loads(e["data"]).get("task_id") == task_id
            and json.loads(e["data"])["type"] == "task.succeeded"
            for e in events
            if "event" not in e
        )

    return check


def test_fleet_stream_is_live_and_resumable(live_client: TestClient) -> None:
    c = live_client
    with c.stream("GET", "/v1/events/stream") as r:  # from now
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = r.iter_lines()
        [opened] = read_until(lines, lambda events: bool(events))
        assert opened["event"] == "stream.open" and json.loads(opened["data"])["missed"] == 0
        start = int(opened["id"]) + 1
        created = c.post("/v1/sessions", json={"id": "fs-1", "prompt": "x", "script": HELLO})
        assert created.status_code == 201
        live = read_until(lines, ended("fs-1"))
    assert "event" not in live[0]  # fleet events are plain messages (EventSource onmessage)
    ids = [int(e["id"]) for e in live]
    assert ids == list(range(start, start + len(live)))  # one global, gapless index
    mine = [json.loads(e["data"]) for e in live if json.loads(e["data"])["task_id"] == "fs-1"]
    history = c.get("/v1/sessions/fs-1/events").json()["data"]
    assert [(e["seq"], e["type"]) for e in mine] == [(e["seq"], e["type"]) for e in history]

    # Reconnect after the 3rd event: the rest, nothing twice, nothing missed.
    resume = live[2]["id"]
    with c.stream("GET", "/v1/events/stream", headers={"Last-Event-ID": resume}) as r:
        lines = r.iter_lines()
        again = read_until(lines, lambda events: any(e.get("id") == live[-1]["id"] for e in events))
    assert again[0]["event"] == "stream.open" and again[0]["id"] == resume
    assert [(e["id"], e["data"]) for e in again[1:]] == [(e["id"], e["data"]) for e in live[3:]]
    # ?after= is the same, for clients that cannot set headers.
    with c.stream("GET", "/v1/events/stream", params={"after": resume}) as r:
        first = read_until(r.iter_lines(), lambda events: len(events) >= 2)
    assert first[1]["id"] == live[3]["id"]
    assert c.get("/v1/events/stream", headers={"Last-Event-ID": "x"}).status_code == 422


def test_fleet_stream_token_in_query_only_for_streams(live_client: TestClient) -> None:
    c = live_client
    bare = {"Authorization": ""}
    with c.stream("GET", "/v1/events/stream", params={"token": TOKEN}, headers=bare) as r:
        assert r.status_code == 200
        assert read_until(r.iter_lines(), bool)[0]["event"] == "stream.open"
    wrong = c.get("/v1/events/stream", params={"token": "nope"}, headers=bare)
    assert wrong.status_code == 403
    assert c.get("/v1/events/stream", headers=bare).status_code == 401
    # Other routes take the header only: a token in a URL is a token in someone's log.
    assert c.get("/v1/fleet/status", params={"token": TOKEN}, headers=bare).status_code == 401
    session = c.get("/v1/sessions/fs-none/events/stream", params={"token": TOKEN}, headers=bare)
    assert session.status_code == 404  # authorized: the session stream takes it too


# -- the supervisor actor's side of the fleet-wide stream (real Ray) -------------------------
@pytest.mark.ray
def test_supervisor_stream_since_long_polls_a_global_cursor(fleet_factory: Any) -> None:
    import ray

    fleet = fleet_factory(workers=1)
    sup = fleet.supervisor
    events, now = ray.get(sup.stream_since.remote(-1, 0.0, 10))  # negative: from now
    assert events == [] and now >= 0
    for _ in range(20):  # idle: the call waits its whole timeout and returns nothing
        t0 = time.monotonic()
        events, after = ray.get(sup.stream_since.remote(now, 0.5, 10))
        if not events:
            assert after == now and time.monotonic() - t0 >= 0.4
            break
        now = after  # a late event of an earlier test
    else:
        raise AssertionError("the fleet never went idle")
    waiting = sup.stream_since.remote(now, 30.0, 1000)  # asked before the event exists
    t0 = time.monotonic()
    fleet.submit([{"id": "fs-2", "prompt": "x", "script": HELLO}])
    events, after = ray.get(waiting)
    assert time.monotonic() - t0 < 10  # woken by the event, not by the timeout
    assert events and after == now + len(events)  # contiguous from the cursor
    assert next(e.type.value for e in events if e.task_id == "fs-2") == "task.submitted"
    one, next_one = ray.get(sup.stream_since.remote(now, 0.0, 1))
    assert one == events[:1] and next_one == now + 1
    ahead, position = ray.get(sup.stream_since.remote(now + 10**6, 0.0, 5))
    assert ahead == [] and position < now + 10**6  # a cursor from another life: from now


class _GappyStream:
    """A fleet stream that lost events: the first batch starts above the cursor."""

    def __init__(self) -> None:
        self.batches: list[tuple[list[Any], int]] = [([], 100)]

    async def stream_since(self, cursor: int, timeout_s: float, limit: int) -> Any:
        if self.batches:
            return self.batches.pop(0)
        await asyncio.sleep(3600)


def test_fleet_stream_reports_a_gap() -> None:
    from core.events import Event, EventType

    sup = _GappyStream()
    events = [Event(task_id="t", type=EventType.task_submitted, seq=n) for n in range(2)]
    sup.batches.append((events, 205))  # asked for 100 on: 100..202 already left the ring
    app = app_over(sup, ServeSettings(token=TOKEN))
    with (
        TestClient(app, headers=AUTH) as c,
        c.stream("GET", "/v1/events/stream", params={"after": 99}) as r,
    ):
        got = read_until(r.iter_lines(), lambda events: len(events) >= 4, timeout_s=10)
    assert [e.get("event") for e in got] == ["stream.open", "stream.gap", None, None]
    assert json.loads(got[1]["data"]) == {"missed": 103}
    assert [e.get("id") for e in got] == ["99", None, "203", "204"]


@pytest.mark.ray
def test_fleet_stream_index_survives_a_supervisor_restart(fleet_factory: Any) -> None:
    """The index goes on from the log's length: a client's Last-Event-ID stays meaningful."""
    import ray

    from tests.conftest import wait_state

    fleet = fleet_factory(workers=1)
    fleet.submit([{"id": "rs", "prompt": "x", "script": HELLO}])
    wait_state(fleet, "rs", "succeeded")
    _, before = ray.get(fleet.supervisor.stream_since.remote(-1, 0.0, 0))
    assert before >= 5
    ray.kill(fleet.supervisor, no_restart=False)  # Ray restarts it; it replays the log
    deadline = time.monotonic() + 60
    while True:
        try:
            _, after = ray.get(fleet.supervisor.stream_since.remote(-1, 0.0, 0), timeout=10)
            break
        except (
            ray.exceptions.RayActorError,
            ray.exceptions.ActorUnavailableError,
            ray.exceptions.GetTimeoutError,
        ):
            assert time.monotonic() < deadline
            time.sleep(0.5)
    assert after >= before


def test_an_app_without_a_fleet_answers_503_until_one_is_given(fleet: FakeSupervisor) -> None:
    app = create_app(settings=ServeSettings(token=TOKEN))
    with TestClient(app, headers=AUTH) as c:
        down = c.get("/v1/fleet/status")
        assert down.status_code == 503 and "without a fleet" in down.json()["detail"]
        app.dependency_overrides[deps.supervisor] = lambda: fleet
        assert c.get("/v1/fleet/status").json()["workers"] == 2
