"""Interactive sessions over HTTP (``interactive: true``): idle between turns, resumed by a
``user.message``, closed by ``POST /v1/sessions/{id}/close``. Against the in-process fleet
(tests/fake_supervisor.py: the real scheduler, session runner and artifact store, no Ray);
tests/test_interactive_ray.py runs the same on Ray."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from serve.app import ServeSettings
from tests.conftest import script
from tests.fake_supervisor import FakeSupervisor
from tests.test_serve_app import AUTH, TOKEN, app_over, fake_fleet, wait_status

CHAT = script(
    ("write_file", {"path": "notes.txt", "content": "one\n"}),
    ("finish", {"summary": "wrote notes.txt"}),
    ("shell", {"command": "cat notes.txt"}),
    ("write_file", {"path": "more.txt", "content": "two\n"}),
    ("finish", {"summary": "read notes.txt, wrote more.txt"}),
)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeSupervisor]:
    started = fake_fleet(tmp_path_factory.mktemp("interactive-events"))
    yield started
    started.close()


@pytest.fixture(scope="module")
def client(fleet: FakeSupervisor) -> Iterator[TestClient]:
    with TestClient(app_over(fleet, ServeSettings(token=TOKEN)), headers=AUTH) as test_client:
        yield test_client


def types(client: TestClient, sid: str) -> list[str]:
    return [e["type"] for e in client.get(f"/v1/sessions/{sid}/events").json()["data"]]


def wait_idle(client: TestClient, sid: str, turns: int, timeout_s: float = 60) -> dict[str, Any]:
    """Until the session is idle after its ``turns``-th turn."""
    deadline = time.monotonic() + timeout_s
    while True:
        body = wait_status(client, sid, {"idle"}, timeout_s)
        if types(client, sid).count("session.idle") >= turns:
            return body
        assert time.monotonic() < deadline, f"{sid} never idle after turn {turns}"
        time.sleep(0.05)


def say(client: TestClient, sid: str, text: str) -> Any:
    return client.post(
        f"/v1/sessions/{sid}/events", json={"events": [{"type": "user.message", "content": text}]}
    )


def test_a_conversation_goes_idle_resumes_on_a_message_and_is_gated_at_close(
    client: TestClient, fleet: FakeSupervisor
) -> None:
    gate = "grep -qx one notes.txt && grep -qx two more.txt"
    body = {"id": "chat", "prompt": "take notes", "interactive": True, "gate": gate}
    created = client.post("/v1/sessions", json=body | {"script": CHAT})
    assert created.status_code == 201, created.text
    assert created.json()["interactive"] is True

    first = wait_idle(client, "chat", 1)
    assert first["summary"] == "wrote notes.txt" and first["idle_since"] is not None
    assert fleet.worker_of("chat") is None  # no worker holds it while idle
    assert "gate.passed" not in types(client, "chat")  # the gate waits for the close
    assert client.get("/v1/sessions/chat/files/notes.txt").content == b"one\n"

    assert say(client, "chat", "now read your notes back").status_code == 200
    second = wait_idle(client, "chat", 2)
    assert second["summary"] == "read notes.txt, wrote more.txt"
    events = client.get("/v1/sessions/chat/events").json()["data"]
    read = [e for e in events if e["type"] == "agent.tool_result" and e["tool"] == "shell"]
    assert read[0]["payload"]["stdout"] == "one\n"  # turn 2 saw turn 1's file
    said = [e for e in events if e["type"] == "user.message" and e["worker"]]
    assert [e["payload"]["text"] for e in said] == ["now read your notes back"]
    assert [e["payload"]["resumed"] for e in events if e["type"] == "session.started"] == [
        False,
        True,
    ]
    assert second["turns"] == 5  # each session counts its own turns (2 + 3, not 2 + 5)
    diff = client.get("/v1/sessions/chat/diff").text
    assert "+one" in diff and "+two" in diff  # against the start, across turns

    closed = client.post("/v1/sessions/chat/close")
    assert closed.status_code == 200 and closed.json()["closed"] is True
    done = wait_status(client, "chat", {"succeeded", "failed", "needs_human"})
    assert done["status"] == "succeeded", done["reason"]
    assert done["attempts"] == 1  # turns and the close are one attempt
    after = types(client, "chat")
    assert after.count("gate.passed") == 1 and after.count("session.started") == 3
    assert after.count("agent.tool_use") == 5  # the close ran no model turn
    late = say(client, "chat", "one more thing")
    assert late.status_code == 409 and "ended" in late.json()["detail"]
    again = client.post("/v1/sessions/chat/close")
    assert again.status_code == 409 and "closed already" in again.json()["detail"]


def test_a_failed_gate_at_close_is_retried_in_the_same_conversation(
    client: TestClient,
) -> None:
    steps = script(
        ("write_file", {"path": "answer.txt", "content": "41\n"}),
        ("finish", {"summary": "answered"}),
        ("shell", {"command": "cat answer.txt"}),
        ("write_file", {"path": "answer.txt", "content": "42\n"}),
        ("finish", {"summary": "fixed the answer"}),
    )
    body = {"id": "fix", "prompt": "answer", "interactive": True, "gate": "grep -qx 42 answer.txt"}
    assert client.post("/v1/sessions", json=body | {"script": steps}).status_code == 201
    wait_idle(client, "fix", 1)
    assert client.post("/v1/sessions/fix/close").status_code == 200
    done = wait_status(client, "fix", {"succeeded", "failed", "needs_human"})
    assert done["status"] == "succeeded", done["reason"]
    events = client.get("/v1/sessions/fix/events").json()["data"]
    kinds = [e["type"] for e in events]
    assert kinds.count("gate.failed") == 1 and kinds.count("gate.passed") == 1
    # The agent was told why, in its conversation, and went on from its own history.
    told = [e["payload"]["text"] for e in events if e["type"] == "user.message" and e["worker"]]
    assert len(told) == 1 and "gate `grep -qx 42 answer.txt` failed" in told[0]
    read = next(e for e in events if e["type"] == "agent.tool_result" and e["tool"] == "shell")
    assert read["payload"]["stdout"] == "41\n"
    assert done["attempts"] == 2


def test_gate_each_turn_checks_every_turn(client: TestClient) -> None:
    steps = script(
        ("write_file", {"path": "a.txt", "content": "a"}),
        ("finish", {"summary": "turn 1"}),
        ("write_file", {"path": "b.txt", "content": "b"}),
        ("finish", {"summary": "turn 2"}),
    )
    body = {"id": "each", "prompt": "p", "interactive": True, "gate_each_turn": True}
    created = client.post("/v1/sessions", json=body | {"gate": "test -s a.txt", "script": steps})
    assert created.status_code == 201, created.text
    wait_idle(client, "each", 1)
    assert types(client, "each").count("gate.passed") == 1
    say(client, "each", "next")
    wait_idle(client, "each", 2)
    assert types(client, "each").count("gate.passed") == 2
    refused = client.post("/v1/sessions", json={"prompt": "p", "gate_each_turn": True})
    assert refused.status_code == 422 and "only for an interactive" in refused.text


def test_close_refusals_and_a_batch_session_is_unchanged(client: TestClient) -> None:
    assert client.post("/v1/sessions/nope/close").status_code == 404
    steps = script(("finish", {"summary": "done"}))
    created = client.post("/v1/sessions", json={"id": "batch", "prompt": "p", "script": steps})
    assert created.json()["interactive"] is False
    done = wait_status(client, "batch", {"succeeded", "failed"})
    assert done["status"] == "succeeded" and "session.idle" not in types(client, "batch")
    refused = client.post("/v1/sessions/batch/close")
    assert refused.status_code == 409 and "not interactive" in refused.json()["detail"]


def test_a_message_to_an_expired_session_is_409_with_the_reason(
    client: TestClient, fleet: FakeSupervisor
) -> None:
    steps = script(("write_file", {"path": "kept.txt", "content": "k"}), ("finish", {}))
    body = {"id": "old", "prompt": "p", "interactive": True, "script": steps}
    assert client.post("/v1/sessions", json=body).status_code == 201
    wait_idle(client, "old", 1)
    fleet._record(fleet.sched.expire("old", "idle for 90s (idle_timeout_s 60)"))
    expired = client.get("/v1/sessions/old").json()
    assert expired["status"] == "expired" and expired["finished_at"] is not None
    late = say(client, "old", "hello?")
    assert late.status_code == 409
    assert "expired: idle for 90s (idle_timeout_s 60); it takes no more messages" in late.text
    assert client.get("/v1/sessions/old/files/kept.txt").content == b"k"  # results stay
    assert client.post("/v1/sessions/old/close").status_code == 409
