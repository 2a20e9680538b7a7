"""The agent loop on the real openai client against the local fake API (Chat Completions and
Responses, plain and streamed): parallel calls, a malformed argument, a 429, approvals parked
and resumed from JSON state in a new loop on a restored sandbox, and a token budget."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from core.events import EventType
from harness.hooks import Decision, InboxHooks
from harness.models.openai_client import ChatCompletionsModel, ResponsesModel, RetryPolicy
from sandboxes.local import LocalSandbox
from tests.fake_openai import ErrorReply, FakeOpenAI, Reply
from tests.fake_openai import fake_server_fixture as fake_server_fixture
from tests.test_harness_support import Events, make_loop

FAST = RetryPolicy(max_retries=2, base_delay_s=0.01, max_delay_s=0.05, max_total_wait_s=5.0)
CLIENTS = [
    pytest.param(ChatCompletionsModel, False, id="chat"),
    pytest.param(ChatCompletionsModel, True, id="chat-stream"),
    pytest.param(ResponsesModel, False, id="responses"),
    pytest.param(ResponsesModel, True, id="responses-stream"),
]


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "FLEET_PRICES", "FLEET_SECRETS_DIR"):
        monkeypatch.delenv(name, raising=False)


def client(cls: type, stream: bool, server: FakeOpenAI, model: str = "gpt-4o") -> Any:
    return cls(model, base_url=server.base_url, api_key_env="NO_KEY_SET", stream=stream, retry=FAST)


def tool_outputs(body: dict[str, Any]) -> list[tuple[str, str]]:
    """``(call_id, output)`` of each tool result a request carried, in order."""
    if "messages" in body:
        return [(m["tool_call_id"], m["content"]) for m in body["messages"] if m["role"] == "tool"]
    return [
        (i["call_id"], i["output"])
        for i in body["input"]
        if i.get("type") == "function_call_output"
    ]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def sandbox() -> LocalSandbox:
    box = LocalSandbox()
    await box.start()
    return box


@pytest.mark.parametrize(("cls", "stream"), CLIENTS)
def test_parallel_calls_run_in_order_and_a_malformed_argument_is_fixed(
    fake_server: FakeOpenAI, cls: type, stream: bool
) -> None:
    fake_server.queue(
        Reply(
            text="Two things at once.",
            tool_calls=[
                ("call_w", "write_file", json.dumps({"path": "a.txt", "content": "hello"})),
                ("call_c", "shell", json.dumps({"command": "cat a.txt"})),
            ],
        ),
        Reply(tool_calls=[("call_bad", "shell", '{"command": "echo fixed"')]),  # cut short
        Reply(tool_calls=[("call_ok", "shell", '{"command": "echo fixed"}')]),
        Reply(tool_calls=[("call_f", "finish", '{"summary": "all good"}')]),
    )

    async def go() -> None:
        box = await sandbox()
        try:
            events = Events()
            model = client(cls, stream, fake_server)
            outcome = await make_loop(model, box, events).run("write and read")
            await model.aclose()
            assert outcome.status == "finished" and outcome.summary == "all good"
            assert outcome.turns == 4 and outcome.tool_calls == 5
            bodies = [r.body for r in fake_server.requests]
            first = tool_outputs(bodies[1])
            assert [cid for cid, _ in first] == ["call_w", "call_c"]
            assert "hello" in first[1][1]  # the write ran before the cat
            bad = tool_outputs(bodies[2])[-1]
            assert bad[0] == "call_bad" and bad[1].startswith("error: bad arguments for shell")
            assert "fixed" in tool_outputs(bodies[3])[-1][1]
            assert events.of(EventType.agent_message)[0]["text"] == "Two things at once."
            # every request starts with the same instructions and task: a stable prefix
            for body in bodies:
                if "messages" in body:
                    assert body["messages"][:2] == [
                        {"role": "system", "content": "be good"},
                        {"role": "user", "content": "write and read"},
                    ]
                else:
                    assert body["instructions"] == "be good"
                    assert body["input"][0] == {
                        "type": "message",
                        "role": "user",
                        "content": "write and read",
                    }
        finally:
            await box.close()

    run(go())


def test_a_429_then_success_inside_a_session(fake_server: FakeOpenAI) -> None:
    fake_server.queue(
        ErrorReply(429, "slow down", headers={"retry-after-ms": "10"}),
        Reply(
            tool_calls=[("c1", "finish", '{"summary": "ok"}')], input_tokens=50, cached_tokens=20
        ),
    )

    async def go() -> None:
        box = await sandbox()
        try:
            events = Events()
            model = client(ChatCompletionsModel, False, fake_server)
            outcome = await make_loop(model, box, events).run("x")
            await model.aclose()
            assert outcome.status == "finished" and model.retries == 1
            [usage] = events.of(EventType.usage)
            assert usage == {"cached_input_tokens": 20, "model": "gpt-4o", "turn": 1}
            assert events.typed(EventType.usage)[0]["tokens_in"] == 50
            assert outcome.tokens_in == 50 and outcome.cost_usd > 0
        finally:
            await box.close()

    run(go())


@pytest.mark.parametrize(("cls", "stream"), [CLIENTS[0], CLIENTS[3]])
def test_parked_mid_turn_then_resumed_on_another_sandbox_from_json(
    fake_server: FakeOpenAI, cls: type, stream: bool
) -> None:
    """Turn 1 makes three calls; the second needs approval and nobody answers: the session
    parks. A new loop, on a sandbox restored from the snapshot, with the state through JSON,
    gets the decision, runs the second and third calls, then asks the model for turn 2."""
    policy = {"shell": {"ask_if": {"command": r"rm -rf"}}}
    fake_server.queue(
        Reply(
            tool_calls=[
                ("c1", "write_file", json.dumps({"path": "build/out.o", "content": "obj"})),
                ("c2", "shell", json.dumps({"command": "rm -rf build"})),
                ("c3", "write_file", json.dumps({"path": "after.txt", "content": "z"})),
            ]
        )
    )

    async def go() -> None:
        first = await sandbox()
        events = Events()
        try:
            hooks = InboxHooks()
            model = client(cls, stream, fake_server)
            loop = make_loop(
                model, first, events, hooks=hooks, approvals=policy, approval_wait_s=0.05
            )
            outcome = await loop.run("clean the build")
            await model.aclose()
            assert outcome.status == "parked"
            state = json.loads(json.dumps(outcome.state))
            archive = await first.snapshot()
        finally:
            await first.close()
        assert [c["id"] for c in state["pending_calls"]] == ["c2", "c3"]
        assert state["pending_approval"] == {
            "call_id": "c2",
            "tool": "shell",
            "args": {"command": "rm -rf build", "timeout_s": 60.0},
        }
        assert len(fake_server.requests) == 1

        fake_server.queue(Reply(tool_calls=[("c4", "finish", '{"summary": "clean"}')]))
        second = await sandbox()
        try:
            await second.restore(archive)
            assert (await second.read_file("build/out.o")) == b"obj"
            hooks = InboxHooks()
            hooks.push_decision("c2", Decision(allow=True, message="ok"))
            model = client(cls, stream, fake_server)
            resumed = make_loop(model, second, events, hooks=hooks, approvals=policy)
            outcome = await resumed.resume(state)
            await model.aclose()
            assert outcome.status == "finished" and outcome.summary == "clean"
            assert outcome.turns == 2 and outcome.tool_calls == 4
            ls = (await second.exec("ls")).stdout.split()
            assert "build" not in ls and "after.txt" in ls
            assert [cid for cid, _ in tool_outputs(fake_server.requests[1].body)] == [
                "c1",
                "c2",
                "c3",
            ]
            assert [p["call_id"] for p in events.of(EventType.approval_requested)] == ["c2"]
            assert events.of(EventType.approval_decided)[0]["allow"] is True
        finally:
            await second.close()

    run(go())


def test_token_budget_with_reported_usage(fake_server: FakeOpenAI) -> None:
    shell = ("c", "shell", '{"command": "true"}')
    fake_server.queue(*[Reply(tool_calls=[shell], input_tokens=1000, output_tokens=100)] * 5)

    async def go() -> None:
        box = await sandbox()
        try:
            model = client(ResponsesModel, False, fake_server)
            outcome = await make_loop(model, box, Events(), max_tokens=2500).run("x")
            await model.aclose()
            assert outcome.status == "budget" and outcome.turns == 3
            assert outcome.tokens_in == 3000 and outcome.tokens_out == 300
            assert len(fake_server.requests) == 3
        finally:
            await box.close()

    run(go())
