"""MCP and custom tools in a fleet on a real local Ray, with the real OpenAI client against
tests/fake_openai.py: the model is offered an MCP server's tools next to the built-ins and a
custom tool; the custom call parks the session, whose worker is then killed; the client's
result (``Fleet.tool_result``) resumes it on another worker and reaches the model."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest
import ray

from core import analytics
from core.events import EventType
from core.specs import FleetConfig, TaskState
from tests.conftest import wait_state
from tests.fake_openai import FakeOpenAI, Reply
from tests.fake_openai import fake_server_fixture as fake_server_fixture

pytestmark = pytest.mark.ray

SERVER = str(Path(__file__).with_name("mcp_server.py"))
LOOKUP = {
    "name": "lookup",
    "description": "Look a customer up in the CRM.",
    "input_schema": {
        "type": "object",
        "properties": {"customer": {"type": "string"}},
        "required": ["customer"],
    },
    "output_schema": {"type": "object", "required": ["plan"]},
}


def crm_config(server: FakeOpenAI) -> FleetConfig:
    return FleetConfig.model_validate(
        {
            "agents": {
                "crm": {
                    "model": "gpt-4o",
                    "base_url": server.base_url,
                    "api_key_env": "NO_KEY_SET",
                    "mcp_servers": [{"name": "files", "command": sys.executable, "args": [SERVER]}],
                    "custom_tools": [LOOKUP],
                }
            }
        }
    )


def test_a_custom_tool_call_parks_and_the_clients_result_resumes_it_on_another_worker(
    fleet_factory, fake_server: FakeOpenAI
) -> None:
    fake_server.queue(
        Reply(tool_calls=[("c1", "mcp__files__add", json.dumps({"a": 2, "b": 3}))]),
        Reply(tool_calls=[("c2", "lookup", json.dumps({"customer": "acme"}))]),
        Reply(tool_calls=[("c3", "finish", json.dumps({"summary": "acme is on pro"}))]),
    )
    fleet = fleet_factory(workers=2, config=crm_config(fake_server), approval_wait_s=0.3)
    fleet.submit([{"id": "crm", "prompt": "which plan is acme on?", "agent": "crm"}])
    parked = wait_state(fleet, "crm", TaskState.awaiting_tool_result, timeout=90)
    assert parked.pending_custom_tool == {
        "call_id": "c2",
        "tool": "lookup",
        "input": {"customer": "acme"},
    }
    assert fleet.status()["blocked"][0]["call_id"] == "c2"
    first_worker = parked.worker
    os.kill(ray.get(fleet.supervisor.worker_pid.remote(first_worker)), signal.SIGKILL)
    unknown = fleet.tool_result("crm", "c9", '{"plan": "pro"}')
    assert not unknown and unknown.refusal == "unknown"
    invalid = fleet.tool_result("crm", "c2", '{"tier": "pro"}')
    assert not invalid and invalid.refusal == "invalid"
    assert fleet.tool_result("crm", "c2", '{"plan": "pro"}')

    record = fleet.wait(["crm"], timeout_s=90)[0]
    assert record.state == TaskState.succeeded, record.reason
    assert record.summary == "acme is on pro" and record.attempts == 1
    events = fleet.events("crm")
    types = [e.type for e in events]
    assert types.count(EventType.agent_custom_tool_use) == 1
    assert types.count(EventType.user_custom_tool_result) == 1
    assert types.index(EventType.task_parked) < types.index(EventType.user_custom_tool_result)
    added = next(e for e in events if e.type == EventType.agent_mcp_tool_result)
    assert added.tool == "mcp__files__add" and added.payload["output"] == "5"
    started = [e for e in events if e.type == EventType.session_started]
    assert started[-1].payload["resumed"] is True and started[-1].worker != first_worker

    fleet.flush()
    events_dir = ray.get(fleet.supervisor.get_settings.remote()).events_dir
    [tasks] = analytics.sql(events_dir, "SELECT tool_calls FROM tasks WHERE task_id = 'crm'").rows
    assert tasks == (3,)  # MCP, custom and built-in calls all count
    tools = analytics.report(events_dir)[2]
    assert ("mcp__files__add", 1) in [row[:2] for row in tools.rows]
    offered = {t["function"]["name"] for t in fake_server.requests[0].body["tools"]}
    assert {"shell", "finish", "lookup", "mcp__files__add", "mcp__files__echo"} <= offered
    resumed = fake_server.requests[-1].body["messages"]
    answers = {m.get("tool_call_id"): m.get("content") for m in resumed if m["role"] == "tool"}
    assert answers == {"c1": "5", "c2": '{"plan": "pro"}'}  # the client's result, to the model
