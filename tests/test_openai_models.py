"""The real-model clients, driven through the real openai client against a local fake API."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from typing import Any

import pytest

from core.specs import AgentSpec, ScriptStep
from harness.models import make_model
from harness.models.base import ModelError, ModelTurn, Usage
from harness.models.openai_client import (
    PLACEHOLDER_API_KEY,
    ChatCompletionsModel,
    ResponsesModel,
    RetryPolicy,
)
from harness.models.pricing import cost_usd
from harness.models.scripted import ScriptedModel
from tests.fake_openai import ErrorReply, FakeOpenAI, Reply
from tests.fake_openai import fake_server_fixture as fake_server_fixture

KEY = "sk-test-abc123-secret"
FAST = RetryPolicy(max_retries=2, base_delay_s=0.01, max_delay_s=0.05, max_total_wait_s=5.0)
TOOLS = [
    {
        "name": "shell",
        "description": "Run a command.",
        "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}},
    },
    {"name": "finish", "description": "Done.", "parameters": {"type": "object", "properties": {}}},
]
HELLO = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]


class Sleeps:
    """Records backoff delays instead of sleeping."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "FLEET_PRICES", "FLEET_SECRETS_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FAKE_KEY", KEY)


def chat(server: FakeOpenAI, **kw: Any) -> ChatCompletionsModel:
    kw.setdefault("retry", FAST)
    return ChatCompletionsModel(
        kw.pop("model", "gpt-4o"), base_url=server.base_url, api_key_env="FAKE_KEY", **kw
    )


def responses(server: FakeOpenAI, **kw: Any) -> ResponsesModel:
    kw.setdefault("retry", FAST)
    return ResponsesModel(
        kw.pop("model", "gpt-4o"), base_url=server.base_url, api_key_env="FAKE_KEY", **kw
    )


def run(model: Any, messages: list[dict[str, Any]] = HELLO, tools: list[Any] = TOOLS) -> ModelTurn:
    """One turn in a fresh event loop, closing the client's connections after it."""

    async def turn() -> ModelTurn:
        try:
            return await model.complete(messages, tools)
        finally:
            if hasattr(model, "aclose"):
                await model.aclose()

    return asyncio.run(turn())


def test_chat_non_streamed_text(fake_server: FakeOpenAI) -> None:
    fake_server.queue(Reply(text="Hello there."))
    turn = run(chat(fake_server, temperature=0.2))
    assert turn.text == "Hello there."
    assert turn.tool_calls == []
    [request] = fake_server.requests
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.body["model"] == "gpt-4o"
    assert request.body["messages"] == HELLO
    assert request.body["temperature"] == 0.2
    assert "stream" not in request.body
    assert request.body["tools"][0] == {
        "type": "function",
        "function": {
            "name": "shell",
            "description": "Run a command.",
            "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}},
        },
    }


def test_chat_streamed_parallel_tool_calls(fake_server: FakeOpenAI) -> None:
    calls = [
        ("call_a", "shell", '{"cmd": "ls -la /tmp"}'),
        ("call_b", "shell", '{"cmd": "cat README.md"}'),
        ("call_c", "finish", "{}"),
    ]
    fake_server.queue(Reply(text="Looking.", tool_calls=calls, input_tokens=50, output_tokens=7))
    turn = run(chat(fake_server, stream=True))
    assert [(c.id, c.name, c.arguments) for c in turn.tool_calls] == calls
    assert turn.text == "Looking."
    assert (turn.usage.input_tokens, turn.usage.output_tokens) == (50, 7)
    body = fake_server.requests[0].body
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    # The assistant message replays to the same wire shape.
    assert turn.as_message()["tool_calls"][1]["function"]["arguments"] == calls[1][2]


def test_responses_non_streamed_tool_call(fake_server: FakeOpenAI) -> None:
    fake_server.queue(Reply(tool_calls=[("call_9", "shell", '{"cmd": "pytest -q"}')]))
    turn = run(responses(fake_server))
    assert turn.text is None
    assert [(c.id, c.name, c.arguments) for c in turn.tool_calls] == [
        ("call_9", "shell", '{"cmd": "pytest -q"}')
    ]
    [request] = fake_server.requests
    assert request.path == "/v1/responses"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.body["instructions"] == "Be brief."
    assert request.body["input"] == [{"type": "message", "role": "user", "content": "hi"}]
    assert request.body["store"] is False
    assert request.body["tools"][1] == {
        "type": "function",
        "name": "finish",
        "description": "Done.",
        "parameters": {"type": "object", "properties": {}},
        "strict": False,
    }


def test_responses_streamed_text_and_parallel_calls(fake_server: FakeOpenAI) -> None:
    calls = [("c1", "shell", '{"cmd": "make test"}'), ("c2", "finish", '{"summary": "ok"}')]
    fake_server.queue(
        Reply(
            text="Running the tests now.",
            tool_calls=calls,
            input_tokens=80,
            cached_tokens=64,
            output_tokens=12,
        )
    )
    turn = run(responses(fake_server, stream=True))
    assert turn.text == "Running the tests now."
    assert [(c.id, c.name, c.arguments) for c in turn.tool_calls] == calls
    assert (turn.usage.input_tokens, turn.usage.cached_input_tokens) == (80, 64)
    assert turn.usage.output_tokens == 12
    assert fake_server.requests[0].body["stream"] is True


def test_429_is_retried_after_retry_after(
    fake_server: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    fake_server.queue(
        ErrorReply(429, "slow down", headers={"retry-after": "7"}, echo_auth=True),
        Reply(text="ok"),
    )
    sleeps = Sleeps()
    model = chat(fake_server, retry=RetryPolicy(max_retries=3, max_total_wait_s=60), sleep=sleeps)
    with caplog.at_level(logging.DEBUG):
        turn = run(model)
    assert turn.text == "ok"
    assert sleeps.delays == [7.0]
    assert (model.retries, model.requests, len(fake_server.requests)) == (1, 2, 2)
    assert "429" in caplog.text
    assert KEY not in caplog.text


def test_retry_after_ms_header_is_preferred(fake_server: FakeOpenAI) -> None:
    fake_server.queue(
        ErrorReply(503, headers={"retry-after-ms": "250", "retry-after": "9"}), Reply(text="ok")
    )
    sleeps = Sleeps()
    assert run(responses(fake_server, sleep=sleeps)).text == "ok"
    assert sleeps.delays == [0.25]


def test_500_exhausting_the_budget_raises(fake_server: FakeOpenAI) -> None:
    fake_server.queue(*[ErrorReply(500, "boom")] * 3, Reply(text="too late"))
    sleeps = Sleeps()
    policy = RetryPolicy(max_retries=2, base_delay_s=0.5, max_delay_s=10, jitter=0.5)
    model = chat(fake_server, retry=policy, sleep=sleeps)
    with pytest.raises(ModelError, match="gave up after 3 attempts") as err:
        run(model)
    assert "HTTP 500" in str(err.value) and "boom" in str(err.value)
    assert len(fake_server.requests) == 3
    # Exponential backoff with jitter in [1 - jitter, 1] of 0.5s, then 1s.
    assert 0.25 <= sleeps.delays[0] <= 0.5
    assert 0.5 <= sleeps.delays[1] <= 1.0
    assert model.retries == 2


def test_retry_after_beyond_the_wait_budget_gives_up_at_once(fake_server: FakeOpenAI) -> None:
    fake_server.queue(ErrorReply(429, headers={"retry-after": "600"}), Reply(text="never"))
    sleeps = Sleeps()
    model = chat(fake_server, retry=RetryPolicy(max_retries=5, max_total_wait_s=30), sleep=sleeps)
    with pytest.raises(ModelError, match="retry budget"):
        run(model)
    assert sleeps.delays == []
    assert len(fake_server.requests) == 1


def test_400_raises_at_once(fake_server: FakeOpenAI) -> None:
    fake_server.queue(ErrorReply(400, "bad tool schema"), Reply(text="unused"))
    sleeps = Sleeps()
    with pytest.raises(ModelError, match=r"HTTP 400.*bad tool schema"):
        run(responses(fake_server, sleep=sleeps))
    assert len(fake_server.requests) == 1
    assert sleeps.delays == []


def test_connection_errors_are_retried_then_raise() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    sleeps = Sleeps()
    model = ChatCompletionsModel(
        "m",
        base_url=f"http://127.0.0.1:{port}/v1",
        api_key_env="FAKE_KEY",
        retry=FAST,
        sleep=sleeps,
    )
    with pytest.raises(ModelError, match="connection error"):
        run(model)
    assert model.requests == 3 and len(sleeps.delays) == 2


def test_timeouts_are_retried(fake_server: FakeOpenAI) -> None:
    fake_server.queue(Reply(text="slow", delay_s=2.0), Reply(text="fast"))
    model = chat(fake_server, timeout_s=0.3, retry=FAST)
    assert run(model).text == "fast"
    assert model.retries == 1


@pytest.mark.parametrize("api", ["chat", "responses"])
@pytest.mark.parametrize("stream", [False, True])
def test_malformed_arguments_pass_through_raw(
    fake_server: FakeOpenAI, api: str, stream: bool
) -> None:
    raw = '{"cmd": "echo \\"unterminated'
    fake_server.queue(Reply(tool_calls=[("call_x", "shell", raw)]))
    factory = chat if api == "chat" else responses
    turn = run(factory(fake_server, stream=stream))
    assert [(c.id, c.name, c.arguments) for c in turn.tool_calls] == [("call_x", "shell", raw)]


@pytest.mark.parametrize("api", ["chat", "responses"])
@pytest.mark.parametrize("stream", [False, True])
def test_usage_cached_tokens_and_cost(fake_server: FakeOpenAI, api: str, stream: bool) -> None:
    fake_server.queue(Reply(text="x", input_tokens=1000, cached_tokens=400, output_tokens=100))
    factory = chat if api == "chat" else responses
    turn = run(factory(fake_server, stream=stream, model="gpt-4o"))
    # gpt-4o: $2.50 / 1M input, $1.25 cached, $10 output.
    expected = (600 * 2.50 + 400 * 1.25 + 100 * 10.00) / 1e6
    assert turn.usage.input_tokens == 1000
    assert turn.usage.cached_input_tokens == 400
    assert turn.usage.output_tokens == 100
    assert turn.usage.cost_usd == pytest.approx(expected)


def test_prices(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    usage = Usage(input_tokens=2_000_000, cached_input_tokens=1_000_000, output_tokens=1_000_000)
    assert cost_usd("my-local-llama", usage) == 0.0
    assert cost_usd("gpt-4o-mini-2024-07-18", usage) == pytest.approx(0.15 + 0.075 + 0.60)
    assert cost_usd("openai/gpt-4o", usage) == pytest.approx(2.50 + 1.25 + 10.00)
    assert cost_usd("gpt-4o-audio-preview", usage) == 0.0
    prices = tmp_path / "prices.json"
    prices.write_text(
        json.dumps(
            {
                "my-local-llama": {"input": 1, "output": 3},
                "gpt-4o": {"input": 1, "cached_input": 0, "output": 0},
            }
        )
    )
    monkeypatch.setenv("FLEET_PRICES", str(prices))
    assert cost_usd("my-local-llama", usage) == pytest.approx(2 + 3)
    assert cost_usd("gpt-4o", usage) == pytest.approx(1)
    prices.write_text("[1, 2]")
    prices.touch()
    import os

    os.utime(prices, ns=(1, 1))  # a new mtime: the file is read again
    with pytest.raises(ValueError, match="bad price file"):
        cost_usd("gpt-4o", usage)


def test_key_is_sent_as_bearer_and_kept_out_of_errors(fake_server: FakeOpenAI) -> None:
    fake_server.queue(ErrorReply(401, "invalid key", echo_auth=True))
    model = chat(fake_server)
    with pytest.raises(ModelError) as err:
        run(model)
    assert fake_server.requests[0].headers["authorization"] == f"Bearer {KEY}"
    assert "HTTP 401" in str(err.value) and "invalid key" in str(err.value)
    assert KEY not in str(err.value) and KEY not in repr(err.value) and KEY not in repr(model)
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_missing_key_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    agent = AgentSpec(model="gpt-4o", api_key_env="NO_SUCH_KEY")
    with pytest.raises(ModelError, match="NO_SUCH_KEY"):
        make_model(agent)


def test_keyless_local_server_gets_a_placeholder(fake_server: FakeOpenAI) -> None:
    fake_server.queue(Reply(text="local"))
    agent = AgentSpec(model="qwen", base_url=fake_server.base_url, api_key_env="NO_SUCH_KEY")
    assert run(make_model(agent)).text == "local"
    assert fake_server.requests[0].headers["authorization"] == f"Bearer {PLACEHOLDER_API_KEY}"


def test_key_from_secrets_dir(
    fake_server: FakeOpenAI, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "VAULT_KEY").write_text("sk-from-file\n")
    monkeypatch.setenv("FLEET_SECRETS_DIR", str(tmp_path))
    fake_server.queue(Reply(text="ok"))
    agent = AgentSpec(
        model="gpt-4o", api="responses", base_url=fake_server.base_url, api_key_env="VAULT_KEY"
    )
    run(make_model(agent))
    assert fake_server.requests[0].headers["authorization"] == "Bearer sk-from-file"


HISTORY: list[dict[str, Any]] = [
    {"role": "system", "content": "You are a coding agent."},
    {"role": "user", "content": "Fix the test."},
    {
        "role": "assistant",
        "content": "Let me look.",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "shell", "arguments": '{"cmd": "ls"}'},
            },
            {
                "id": "call_2",
                "type": "function",
                "function": {"name": "read_file", "arguments": '{"path": "t.py"}'},
            },
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "t.py\nsrc.py"},
    {"role": "tool", "tool_call_id": "call_2", "content": "assert 1 == 2"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_3",
                "type": "function",
                "function": {"name": "write_file", "arguments": "{bad json"},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_3", "content": "error: arguments are not JSON"},
    {"role": "user", "content": [{"type": "text", "text": "Keep going."}]},
]


def test_history_to_chat_wire_format(fake_server: FakeOpenAI) -> None:
    fake_server.queue(Reply(text="ok"))
    bookkept = [{**message, "turn": n} for n, message in enumerate(HISTORY)]
    run(chat(fake_server), bookkept, TOOLS)
    assert fake_server.requests[0].body["messages"] == HISTORY


def test_history_to_responses_wire_format(fake_server: FakeOpenAI) -> None:
    fake_server.queue(Reply(text="ok"))
    run(responses(fake_server), HISTORY, TOOLS)
    body = fake_server.requests[0].body
    assert body["instructions"] == "You are a coding agent."
    assert body["input"] == [
        {"type": "message", "role": "user", "content": "Fix the test."},
        {"type": "message", "role": "assistant", "content": "Let me look."},
        {
            "type": "function_call",
            "call_id": "call_1",
            "name": "shell",
            "arguments": '{"cmd": "ls"}',
        },
        {
            "type": "function_call",
            "call_id": "call_2",
            "name": "read_file",
            "arguments": '{"path": "t.py"}',
        },
        {"type": "function_call_output", "call_id": "call_1", "output": "t.py\nsrc.py"},
        {"type": "function_call_output", "call_id": "call_2", "output": "assert 1 == 2"},
        {
            "type": "function_call",
            "call_id": "call_3",
            "name": "write_file",
            "arguments": "{bad json",
        },
        {
            "type": "function_call_output",
            "call_id": "call_3",
            "output": "error: arguments are not JSON",
        },
        {"type": "message", "role": "user", "content": "Keep going."},
    ]


def test_make_model_picks_the_client(fake_server: FakeOpenAI) -> None:
    script = [ScriptStep(tool="finish", args={"summary": "done"})]
    scripted = make_model(AgentSpec(model="scripted"), script)
    assert isinstance(scripted, ScriptedModel)
    base = {"base_url": fake_server.base_url, "api_key_env": "FAKE_KEY"}
    chat_model = make_model(AgentSpec(model="m1", api="chat", stream=True, temperature=0.5, **base))
    assert isinstance(chat_model, ChatCompletionsModel)
    assert (chat_model.name, chat_model.stream, chat_model.temperature) == ("m1", True, 0.5)
    resp_model = make_model(AgentSpec(model="m2", api="responses", **base))
    assert isinstance(resp_model, ResponsesModel) and resp_model.name == "m2"


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_an_error_in_the_stream_raises(fake_server: FakeOpenAI, api: str) -> None:
    fake_server.queue(Reply(text="partial", stream_error="the model crashed"))
    factory = chat if api == "chat" else responses
    with pytest.raises(ModelError, match="the model crashed"):
        run(factory(fake_server, stream=True))
    assert len(fake_server.requests) == 1
