"""A stdio MCP server (tests/mcp_server.py, the ``mcp`` package installed in the
environment's image) inside a docker sandbox: it runs in the container's workspace, under
its network policy, and outlives the commands run meanwhile, whose leftovers the exec agent
still kills."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from actors.session import SessionRunner
from core.events import EventType
from core.specs import AgentSpec, EnvironmentSpec
from sandboxes import docker_available
from sandboxes.docker import DockerSandbox
from tests.test_harness_support import assignment, run_session, settings

pytestmark = [
    pytest.mark.docker,
    pytest.mark.skipif(not docker_available(), reason="no Docker engine"),
]

SERVER = Path(__file__).with_name("mcp_server.py").read_text()
ENVIRONMENT = EnvironmentSpec(
    name="mcp", pip=["mcp==2.3.0"], files={"mcp_server.py": SERVER}, network="none"
)
PROCESS_NAMES = "cat /proc/[0-9]*/comm"


def docker_runner() -> SessionRunner:
    async def make(environment: EnvironmentSpec, name: str) -> DockerSandbox:
        sandbox = DockerSandbox(environment, name=name)
        await sandbox.start()
        return sandbox

    return SessionRunner(settings(mcp_start_timeout_s=120), "w1", make)


def server(*args: str) -> dict[str, Any]:
    return {"name": "files", "command": "python3", "args": ["mcp_server.py", *args]}


def test_a_stdio_server_in_the_container_sees_the_workspace_and_outlives_commands() -> None:
    agent = AgentSpec(name="in-docker", mcp_servers=[server()])
    a = assignment(
        agent,
        ("write_file", {"path": "notes.txt", "content": "seen from the container"}),
        ("mcp__files__read_text", {"path": "notes.txt"}),
        ("mcp__files__whereami", {}),
        ("shell", {"command": "sleep 300 & echo left running"}),
        ("shell", {"command": PROCESS_NAMES}),
        ("mcp__files__echo", {"text": "still serving"}),
        ("mcp__files__reach", {"host": "1.1.1.1", "port": 443}),
        ("finish", {"summary": "done"}),
    )
    a = a.model_copy(update={"environment": ENVIRONMENT})
    result, events = run_session(docker_runner(), a)
    assert result.status == "succeeded", result.reason
    read, where, echo, reach = [
        e.payload["output"] for e in events if e.type == EventType.agent_mcp_tool_result
    ]
    assert read == "seen from the container"
    assert json.loads(where)["cwd"] == "/workspace" and json.loads(where)["host"] == "sandbox"
    assert echo == "still serving"  # the commands in between did not end it
    assert reach.startswith("unreachable")  # network: none, as for commands
    shells = [e.payload for e in events if e.tool == "shell" and "stdout" in e.payload]
    assert shells[0]["stdout"].strip() == "left running"
    names = shells[1]["stdout"].split()
    assert "sleep" not in names  # what a command leaves running is still killed
    assert "python3" in names  # the server (and the exec agent) live on


def test_a_server_that_does_not_start_in_the_container_fails_the_session_with_its_stderr() -> None:
    agent = AgentSpec(name="in-docker", mcp_servers=[server("fail")])
    a = assignment(agent, ("finish", {})).model_copy(update={"environment": ENVIRONMENT})
    result, _ = run_session(docker_runner(), a)
    assert result.status == "failed"
    assert "MCP server 'files' (the sandbox) did not start" in result.reason
    assert "exited with code 1" in result.reason
    assert "cannot start: missing FLEET_TEST_CONFIG" in result.reason
