"""An agent's MCP servers, with a real server written with the ``mcp`` package
(tests/mcp_server.py): stdio in the local sandbox and on the worker's side, streamable HTTP,
a server that crashes mid-session, one that does not start, approvals and schemas. Sessions
run through the SessionRunner on a local sandbox (no Ray); tests/test_docker_mcp.py runs the
stdio server in a container."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from actors.session import SessionRunner
from core.events import Event, EventType
from core.specs import AgentSpec, EnvironmentSpec, McpServerSpec
from harness.hooks import Decision, InboxHooks
from harness.mcp import McpError, McpTools, tool_name
from harness.models.scripted import ScriptedModel
from harness.tools import ToolBox, ToolContext, approval_needed
from sandboxes.local import LocalSandbox
from tests.test_harness_support import assignment, factory, run_session, settings

SERVER = str(Path(__file__).with_name("mcp_server.py"))


def stdio(name: str = "files", *args: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "command": sys.executable, "args": [SERVER, *args], **fields}


def agent(*servers: dict[str, Any], **fields: Any) -> AgentSpec:
    return AgentSpec(name="mcp-agent", mcp_servers=list(servers), **fields)


def mcp_events(events: list[Event], kind: EventType) -> list[Event]:
    return [e for e in events if e.type == kind]


def runner(**kw: Any) -> SessionRunner:
    return SessionRunner(settings(**kw), "w1", factory())


class ToolsSeen(ScriptedModel):
    """The scripted model, keeping the tool schemas each turn was offered."""

    offered: list[list[dict[str, Any]]] = []

    async def complete(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> Any:
        ToolsSeen.offered.append(tools)
        return await super().complete(messages, tools)


# --- specs ------------------------------------------------------------------------------


def test_tool_and_server_names_are_checked_and_the_error_names_the_field() -> None:
    with pytest.raises(ValidationError) as built_in:
        AgentSpec(custom_tools=[{"name": "lookup"}, {"name": "shell"}])
    assert built_in.value.errors()[0]["loc"] == ("custom_tools", 1, "name")
    assert "'shell' is the name of a built-in tool" in str(built_in.value)
    with pytest.raises(ValidationError) as prefixed:
        AgentSpec(custom_tools=[{"name": "mcp__files__echo"}])
    assert prefixed.value.errors()[0]["loc"] == ("custom_tools", 0, "name")
    with pytest.raises(ValidationError) as twice:
        AgentSpec(mcp_servers=[stdio("a"), {"name": "a", "url": "http://h/mcp"}])
    assert "two MCP servers are named 'a'" in str(twice.value)
    with pytest.raises(ValidationError) as separator:
        AgentSpec(mcp_servers=[stdio("my__server")])
    assert separator.value.errors()[0]["loc"] == ("mcp_servers", 0, "name")
    with pytest.raises(ValidationError, match="reached from the harness"):
        McpServerSpec(name="web", url="http://h/mcp", where="sandbox")
    with pytest.raises(ValidationError, match="either command"):
        McpServerSpec(name="none")
    with pytest.raises(ValidationError, match="not a valid JSON Schema"):
        AgentSpec(custom_tools=[{"name": "x", "input_schema": {"type": "object", "required": 1}}])
    assert tool_name("files", "read.text") == "mcp__files__read_text"
    with pytest.raises(McpError, match="over 64 characters"):
        tool_name("files", "x" * 60)


# --- stdio in the sandbox, on the worker, over HTTP ---------------------------------------


def test_a_stdio_server_runs_in_the_sandboxs_workspace_and_its_tools_sit_next_to_the_builtins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ToolsSeen.offered = []
    monkeypatch.setattr(
        "actors.session.make_model",
        lambda agent, script=None, attempt=1, settings=None, api_key=None: ToolsSeen(
            script, attempt
        ),
    )
    a = assignment(
        agent(stdio(env={"FLEET_MCP_MARK": "from the spec"})),
        ("write_file", {"path": "notes.txt", "content": "written by the agent"}),
        ("mcp__files__read_text", {"path": "notes.txt"}),
        ("mcp__files__whereami", {}),
        ("mcp__files__add", {"a": 2, "b": 3}),
        ("finish", {"summary": "read it"}),
    )
    result, events = run_session(runner(), a)
    assert result.status == "succeeded", result.reason
    uses = mcp_events(events, EventType.agent_mcp_tool_use)
    results = mcp_events(events, EventType.agent_mcp_tool_result)
    assert [e.tool for e in uses] == [
        "mcp__files__read_text",
        "mcp__files__whereami",
        "mcp__files__add",
    ]
    assert uses[0].payload["server"] == "files" and uses[0].payload["name"] == "read_text"
    assert [r.payload["call_id"] for r in results] == [u.payload["call_id"] for u in uses]
    assert results[0].payload["output"] == "written by the agent"  # it sees the workspace
    where = json.loads(results[1].payload["output"])
    assert where["mark"] == "from the spec"
    assert Path(where["cwd"]).name.startswith("fleet-")  # the sandbox's workspace
    assert results[2].payload["output"] == "5" and not results[2].payload["is_error"]
    builtin_uses = [e.tool for e in events if e.type == EventType.agent_tool_use]
    assert builtin_uses == ["write_file", "finish"]
    offered = {t["name"]: t for t in ToolsSeen.offered[0]}
    assert {"shell", "write_file", "finish", "mcp__files__echo"} <= set(offered)
    add = offered["mcp__files__add"]["parameters"]
    assert add["required"] == ["a", "b"] and add["properties"]["a"]["type"] == "integer"
    assert offered["mcp__files__add"]["description"] == "Add two integers."


def test_a_harness_side_server_runs_on_the_worker_outside_the_workspace() -> None:
    a = assignment(
        agent(stdio("host", where="harness", env={"FLEET_MCP_MARK": "worker side"})),
        ("write_file", {"path": "notes.txt", "content": "in the workspace"}),
        ("mcp__host__whereami", {}),
        ("mcp__host__read_text", {"path": "notes.txt"}),
        ("finish", {}),
    )
    result, events = run_session(runner(), a)
    assert result.status == "succeeded", result.reason
    where, read = [e.payload for e in mcp_events(events, EventType.agent_mcp_tool_result)]
    assert json.loads(where["output"])["cwd"].split("/")[-1].startswith("fleet-mcp-host-")
    assert json.loads(where["output"])["mark"] == "worker side"
    assert read["is_error"] and "read_text" in read["output"]  # not in the workspace


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def http_server() -> Iterator[str]:
    """tests/mcp_server.py over streamable HTTP; yields its URL."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, SERVER, "http", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            assert server.poll() is None and time.monotonic() < deadline, "server did not start"
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        server.kill()
        server.wait()


def test_a_streamable_http_server(http_server: str) -> None:
    a = assignment(
        agent({"name": "web", "url": http_server}),
        ("mcp__web__echo", {"text": "over http"}),
        ("mcp__web__add", {"a": 40, "b": 2}),
        ("finish", {}),
    )
    result, events = run_session(runner(), a)
    assert result.status == "succeeded", result.reason
    outputs = [e.payload["output"] for e in mcp_events(events, EventType.agent_mcp_tool_result)]
    assert outputs == ["over http", "42"]


# --- failures -----------------------------------------------------------------------------


def test_a_server_that_crashes_mid_session_gives_the_model_an_error_and_the_session_goes_on() -> (
    None
):
    a = assignment(
        agent(stdio()),
        ("mcp__files__echo", {"text": "before"}),
        ("mcp__files__crash", {}),
        ("mcp__files__echo", {"text": "after"}),
        ("shell", {"command": "echo still working"}),
        ("finish", {"summary": "went on"}),
    )
    result, events = run_session(runner(), a)
    assert result.status == "succeeded" and result.outcome.summary == "went on"
    before, crashed, after = [
        e.payload for e in mcp_events(events, EventType.agent_mcp_tool_result)
    ]
    assert before == {
        "call_id": "call_1",
        "output": "before",
        "is_error": False,
        "server": "files",
        "name": "echo",
    }
    for failed in (crashed, after):
        assert failed["is_error"]
        assert "exited with code 3" in failed["output"]
        assert "crashing on purpose" in failed["output"]  # its stderr
    shell = [e for e in events if e.type == EventType.agent_tool_result]
    assert shell[0].payload["stdout"].strip() == "still working"


@pytest.mark.parametrize(
    ("server", "said"),
    [
        (stdio("broken", "fail"), "cannot start: missing FLEET_TEST_CONFIG"),
        ({"name": "broken", "command": "no-such-mcp-server"}, "No such file or directory"),
        ({"name": "broken", "url": "http://127.0.0.1:9/mcp"}, "ConnectError"),
    ],
)
def test_a_server_that_does_not_start_fails_the_sessions_start_with_its_stderr(
    server: dict[str, Any], said: str
) -> None:
    result, events = run_session(runner(), assignment(agent(server), ("finish", {})))
    assert result.status == "failed"
    assert result.reason.startswith("agent 'mcp-agent' cannot start: MCP server 'broken'")
    assert "did not start" in result.reason and said in result.reason
    assert not any(e.type.value.startswith("agent.") for e in events)  # no turn was taken


def test_the_start_is_bounded_by_the_start_timeout() -> None:
    a = assignment(agent({"name": "mute", "command": "sleep", "args": ["30"]}), ("finish", {}))
    started = time.monotonic()
    result, _ = run_session(runner(mcp_start_timeout_s=1), a)
    assert time.monotonic() - started < 15
    assert "did not start: no answer within 1s" in result.reason


def test_a_sandbox_that_cannot_spawn_is_an_error_never_the_worker_instead() -> None:
    class NoSpawn(LocalSandbox):
        kind = "limited"
        spawn = None  # type: ignore[assignment]

    async def start() -> str:
        sandbox = NoSpawn()
        await sandbox.start()
        try:
            async with McpTools([McpServerSpec(**stdio())], sandbox, 10):
                return "started"
        except McpError as exc:
            return str(exc)
        finally:
            await sandbox.close()

    said = asyncio.run(start())
    assert "the limited sandbox cannot run a stdio MCP server" in said


# --- approvals and schemas ----------------------------------------------------------------


def test_mcp_tools_follow_the_approval_rules_of_builtins() -> None:
    policy = {"mcp__files__*": "always_ask", "mcp__files__echo": {"ask_if": {"text": "secret"}}}
    assert approval_needed(policy, "mcp__files__add", {"a": 1})  # the server's wildcard
    assert not approval_needed(policy, "mcp__files__echo", {"text": "hello"})  # its own rule
    assert approval_needed(policy, "mcp__files__echo", {"text": "the secret"})
    assert not approval_needed(policy, "mcp__other__add", {})

    hooks = InboxHooks()
    hooks.push_decision("call_2", Decision(False, "no arithmetic today"))
    a = assignment(
        agent(stdio(), approvals=policy),
        ("mcp__files__echo", {"text": "hello"}),
        ("mcp__files__add", {"a": 1, "b": 2}),
        ("finish", {}),
    )
    result, events = run_session(runner(approval_wait_s=5), a, hooks)
    assert result.status == "succeeded", result.reason
    asked = [e.payload for e in events if e.type == EventType.approval_requested]
    assert asked == [{"call_id": "call_2", "tool": "mcp__files__add", "args": {"a": 1, "b": 2}}]
    echo, add = [e.payload for e in mcp_events(events, EventType.agent_mcp_tool_result)]
    assert echo["output"] == "hello"
    assert add["denied"] and "no arithmetic today" in add["output"]

    parked, _ = run_session(runner(approval_wait_s=0.05), a)  # nobody decides: it parks
    assert parked.outcome.status == "parked"
    assert parked.outcome.state["pending_approval"]["tool"] == "mcp__files__add"


def test_arguments_that_do_not_match_the_servers_schema_are_an_error_the_model_reads() -> None:
    async def call() -> list[str]:
        sandbox = LocalSandbox()
        await sandbox.start()
        try:
            async with McpTools([McpServerSpec(**stdio())], sandbox, 60) as servers:
                box = ToolBox(["shell"], extra=servers.tools)
                ctx = ToolContext(sandbox=sandbox)
                missing = await box.call(ctx, "mcp__files__add", '{"a": 1}')
                typed = await box.call(ctx, "mcp__files__add", '{"a": 1, "b": "two"}')
                right = await box.call(ctx, "mcp__files__add", '{"a": 1, "b": 2}')
                return [missing.text, typed.text, right.text]
        finally:
            await sandbox.close()

    missing, typed, right = asyncio.run(call())
    assert missing == "error: bad arguments for mcp__files__add: 'b' is a required property"
    assert typed.startswith("error: bad arguments") and "(at b)" in typed
    assert right == "3"


def test_environment_variables_of_the_sandbox_reach_a_server_in_it() -> None:
    async def call() -> dict[str, Any]:
        sandbox = LocalSandbox(env={"FLEET_MCP_MARK": "the environment's"})
        await sandbox.start()
        try:
            async with McpTools([McpServerSpec(**stdio())], sandbox, 60) as servers:
                ctx = ToolContext(sandbox=sandbox)
                out = await ToolBox([], extra=servers.tools).call(ctx, "mcp__files__whereami", "{}")
                return json.loads(out.text) | {"workdir": sandbox.workdir}
        finally:
            await sandbox.close()

    seen = asyncio.run(call())
    assert seen["mark"] == "the environment's" and seen["cwd"] == seen["workdir"]
    assert EnvironmentSpec(env={"A": "b"}).env == {"A": "b"}


# --- creating an agent over HTTP ------------------------------------------------------------


def test_creating_an_agent_whose_worker_side_server_does_not_start_is_a_422(
    tmp_path: Path,
) -> None:
    from fastapi.testclient import TestClient

    from serve.app import ServeSettings
    from tests.test_serve_app import ADMIN, ADMIN_TOKEN, TOKEN, app_over, fake_fleet

    fleet = fake_fleet(tmp_path, mcp_start_timeout_s=30)
    app = app_over(fleet, ServeSettings(token=TOKEN, admin_token=ADMIN_TOKEN))
    try:
        with TestClient(app, headers=ADMIN) as admin:
            broken = stdio("host", "fail", where="harness")
            refused = admin.post("/v1/agents", json={"name": "a1", "mcp_servers": [broken]})
            assert refused.status_code == 422
            [detail] = refused.json()["detail"]
            assert detail["loc"] == ["body", "mcp_servers", 0]
            assert "cannot start: missing FLEET_TEST_CONFIG" in detail["msg"]
            assert admin.get("/v1/agents/a1").status_code == 404
            servers = [stdio("host", where="harness", env={"TOKEN": "s3cret"}), stdio("box")]
            made = admin.post("/v1/agents", json={"name": "a2", "mcp_servers": servers})
            assert made.status_code == 201, made.text
            shown = admin.get("/v1/agents/a2").json()["spec"]["mcp_servers"]
            assert shown[0]["env"] == {"TOKEN": "***"}  # values never shown over HTTP
            # A server in the sandbox is checked when a session starts (it needs one).
            in_box = admin.post(
                "/v1/agents", json={"name": "a3", "mcp_servers": [stdio("b", "fail")]}
            )
            assert in_box.status_code == 201
    finally:
        fleet.close()
