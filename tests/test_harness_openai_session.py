"""Whole sessions through the SessionRunner on the real openai client against the local fake
API, Chat Completions and Responses: a skill installed and run, compaction of a long tool
output, a handoff to another agent on the same workspace, a parked session resumed from its
JSON state, and a task budget (what is left of it) ending a session."""

from __future__ import annotations

import json
from typing import Any

import pytest

from actors.session import SessionRunner
from core.events import Event, EventType
from core.specs import BUILTIN_TOOLS, AgentSpec
from tests.fake_openai import FakeOpenAI, Reply
from tests.fake_openai import fake_server_fixture as fake_server_fixture
from tests.test_harness_support import assignment, factory, run_session, settings

APIS = [
    pytest.param("chat", False, id="chat"),
    pytest.param("chat", True, id="chat-stream"),
    pytest.param("responses", False, id="responses"),
    pytest.param("responses", True, id="responses-stream"),
]
BIG = 8000
"""Characters of the long tool output (under the tool output limit)."""


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "FLEET_PRICES", "FLEET_SECRETS_DIR"):
        monkeypatch.delenv(name, raising=False)


def agent(server: FakeOpenAI, api: str, stream: bool, **fields: Any) -> AgentSpec:
    return AgentSpec(
        model="gpt-4o",
        api=api,  # type: ignore[arg-type]
        stream=stream,
        base_url=server.base_url,
        api_key_env="NO_KEY_SET",
        **fields,
    )


def call(cid: str, tool: str, **args: Any) -> tuple[str, str, str]:
    return (cid, tool, json.dumps(args))


def body_text(server: FakeOpenAI, n: int) -> str:
    """Request ``n`` as JSON text (to look for what it carried, in either wire format)."""
    return json.dumps(server.requests[n].body)


def compactions(events: list[Event]) -> list[dict[str, Any]]:
    return [
        e.payload["compaction"]
        for e in events
        if e.type == EventType.agent_message and "compaction" in e.payload
    ]


@pytest.mark.parametrize(("api", "stream"), APIS)
def test_skill_compaction_handoff_and_resume_on_the_real_client(
    fake_server: FakeOpenAI, api: str, stream: bool
) -> None:
    coder = agent(
        fake_server,
        api,
        stream,
        name="coder",
        tools=[*BUILTIN_TOOLS, "handoff"],
        handoffs=["docs"],
        skills=["repo-summary"],
        context_window=4000,
    )
    docs = agent(fake_server, api, stream, name="docs", approvals={"write_file": "always_ask"})
    runner = SessionRunner(settings(tool_output_limit=20_000), "w1", factory())

    # 1. The coder makes a long output, runs its skill, and hands over (compacting first).
    fake_server.queue(
        Reply(
            tool_calls=[
                call("c1", "shell", command=f"python3 -c \"print('x' * {BIG})\" | tee big")
            ],
            input_tokens=500,
        ),
        Reply(
            tool_calls=[call("c2", "shell", command="python3 .skills/repo-summary/summarize.py")],
            input_tokens=3400,  # the server's count: past 75% of the window
        ),
        Reply(tool_calls=[call("c3", "handoff", agent="docs", note="big is made; document it")]),
    )
    first, events = run_session(runner, assignment(coder, prompt="make big, then docs"))
    assert first.status == "succeeded", first.reason
    outcome = first.outcome
    assert outcome is not None and outcome.status == "handoff" and outcome.handoff_to == "docs"
    assert "## Skills" in body_text(fake_server, 0) and "repo-summary" in body_text(fake_server, 0)
    assert "files under" in body_text(fake_server, 2)  # the skill's script ran
    [compaction] = compactions(events)
    assert compaction["turn"] == 3 and compaction["estimated_before"] > 3000
    assert "x" * BIG in body_text(fake_server, 1)
    assert "x" * BIG not in body_text(fake_server, 2)  # elided before the third request

    # 2. The docs agent continues on the same workspace with the coder's digest; it parks.
    fake_server.queue(
        Reply(tool_calls=[call("c4", "shell", command="wc -c < big")]),
        Reply(tool_calls=[call("c5", "write_file", path="README.md", content="big: x's")]),
    )
    handed = assignment(
        docs,
        prompt="make big, then docs",
        workspace=first.workspace,
        history=json.loads(json.dumps(outcome.handoff_history)),
    )
    second, _ = run_session(runner, handed)
    assert second.outcome is not None and second.outcome.status == "parked"
    sent = body_text(fake_server, 3)
    assert "[handoff] Agent 'coder'" in sent and "big is made; document it" in sent
    assert f"{BIG + 1}" in body_text(fake_server, 4)  # the file made by the coder is there

    # 3. A new runner and client resume it from its JSON state with the decision.
    fake_server.queue(Reply(tool_calls=[call("c6", "finish", summary="documented")]))
    resumed = assignment(
        docs,
        prompt="make big, then docs",
        workspace=second.workspace,
        loop_state=json.loads(json.dumps(second.outcome.state)),
        decision={"call_id": "c5", "allow": True, "message": "ok"},
    )
    third, _ = run_session(SessionRunner(settings(), "w2", factory()), resumed)
    assert third.status == "succeeded", third.reason
    assert third.outcome is not None and third.outcome.summary == "documented"
    assert third.outcome.turns == 3 and third.changed_files == ["README.md"]
    assert len(fake_server.requests) == 6
    last = body_text(fake_server, 5)  # the whole history came through the state
    assert "[handoff] Agent 'coder'" in last and f"{BIG + 1}" in last
    assert "wrote 8 bytes to README.md" in last


def test_a_session_stops_at_what_is_left_of_the_task_budget(fake_server: FakeOpenAI) -> None:
    spec = agent(fake_server, "responses", False, max_tokens=100_000)
    shell = call("c", "shell", command="true")
    fake_server.queue(*[Reply(tool_calls=[shell], input_tokens=100, output_tokens=20)] * 5)
    runner = SessionRunner(settings(), "w1", factory())
    result, events = run_session(runner, assignment(spec, max_tokens=250))
    assert result.status == "failed" and result.reason == "token budget of 250 reached (360 used)"
    assert result.outcome is not None and result.outcome.status == "budget"
    assert len(fake_server.requests) == 3
    assert sum(e.tokens_in or 0 for e in events if e.type == EventType.usage) == 300
