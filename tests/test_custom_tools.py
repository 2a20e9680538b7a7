"""Custom tools the API client runs: the loop emits ``agent.custom_tool_use`` and waits, then
parks like an approval; the client's ``user.custom_tool_result`` (HTTP, through the real
scheduler and commands of tests/fake_supervisor.py) goes to the model as the tool's result.
The Ray end to end (a parked session resumed on another worker) is in
tests/test_tools_ray.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from actors.commands import Commands
from actors.scheduler import Scheduler
from core.events import Event, EventType
from core.records import SessionResult
from core.settings import FleetSettings
from core.specs import AgentSpec, FleetConfig, TaskSpec, TaskState
from harness.hooks import InboxHooks, ToolResult
from harness.loop import AgentLoop, carry_tool_result
from harness.tools import ToolBox, ToolContext, custom_tool
from sandboxes.local import LocalSandbox
from serve.app import ServeSettings
from tests.conftest import script
from tests.test_harness_support import Events, Recording, scripted
from tests.test_serve_app import AUTH, TERMINAL, TOKEN, app_over, fake_fleet, wait_status

LOOKUP = {
    "name": "lookup",
    "description": "Look a customer up in the CRM.",
    "input_schema": {
        "type": "object",
        "properties": {"customer": {"type": "string"}},
        "required": ["customer"],
    },
    "output_schema": {
        "type": "object",
        "properties": {"plan": {"type": "string"}},
        "required": ["plan"],
    },
}


def loop_with_lookup(model: Any, sandbox: LocalSandbox, events: Events, **kw: Any) -> AgentLoop:
    agent = AgentSpec(custom_tools=[LOOKUP])
    return AgentLoop(
        instructions="be good",
        model=model,
        toolbox=ToolBox(["shell"], extra=[custom_tool(t) for t in agent.custom_tools]),
        ctx=ToolContext(sandbox=sandbox),
        emit=events,
        max_turns=10,
        time_limit_s=30,
        **kw,
    )


def on_sandbox(body: Any) -> Any:
    async def run() -> Any:
        sandbox = LocalSandbox()
        await sandbox.start()
        try:
            return await body(sandbox)
        finally:
            await sandbox.close()

    return asyncio.run(run())


def test_a_custom_call_goes_out_and_the_clients_result_goes_to_the_model() -> None:
    events = Events()
    model = Recording(
        scripted(("lookup", {"customer": "acme"}), ("finish", {"summary": "acme is on pro"}))
    )

    async def body(sandbox: LocalSandbox) -> Any:
        hooks = InboxHooks()
        loop = loop_with_lookup(model, sandbox, events, hooks=hooks, approval_wait_s=10)
        running = asyncio.create_task(loop.run("which plan is acme on?"))
        while not events.of(EventType.agent_custom_tool_use):
            await asyncio.sleep(0.01)
        hooks.push_tool_result("call_1", ToolResult('{"plan": "pro"}'))
        return await running

    outcome = on_sandbox(body)
    assert outcome.status == "finished" and outcome.tool_calls == 2
    assert events.of(EventType.agent_custom_tool_use) == [
        {"call_id": "call_1", "name": "lookup", "input": {"customer": "acme"}, "turn": 1}
    ]
    assert events.typed(EventType.agent_custom_tool_use) == [{"tool": "lookup"}]
    assert not [p for p in events.of(EventType.agent_tool_use) if p["call_id"] == "call_1"]
    assert not [p for p in events.of(EventType.agent_tool_result) if p["call_id"] == "call_1"]
    answer = model.sent[1][-1]
    assert answer == {"role": "tool", "tool_call_id": "call_1", "content": '{"plan": "pro"}'}
    box = ToolBox(
        ["shell"], extra=[custom_tool(t) for t in AgentSpec(custom_tools=[LOOKUP]).custom_tools]
    )
    lookup = next(t for t in box.schemas() if t["name"] == "lookup")
    assert lookup == {
        "name": "lookup",
        "description": LOOKUP["description"],
        "parameters": LOOKUP["input_schema"],
    }


def test_without_a_result_the_session_parks_and_resumes_with_the_result_it_missed() -> None:
    first = Events()
    steps = (("lookup", {"customer": "acme"}), ("finish", {"summary": "done"}))

    async def park(sandbox: LocalSandbox) -> Any:
        loop = loop_with_lookup(scripted(*steps), sandbox, first, approval_wait_s=0.05)
        return await loop.run("which plan?")

    parked = on_sandbox(park)
    assert parked.status == "parked" and "awaits the client's result" in parked.reason
    state = parked.state
    assert state["pending_custom_tool"] == {
        "call_id": "call_1",
        "tool": "lookup",
        "input": {"customer": "acme"},
    }
    assert carry_tool_result(state, "call_1", ToolResult("timeout", is_error=True))
    assert not carry_tool_result(state, "call_9", ToolResult("x"))
    second = Events()
    model = Recording(scripted(*steps))

    async def resume(sandbox: LocalSandbox) -> Any:
        loop = loop_with_lookup(model, sandbox, second, approval_wait_s=0.05)
        return await loop.resume(state)

    resumed = on_sandbox(resume)
    assert resumed.status == "finished" and resumed.tool_calls == 2
    assert not second.of(EventType.agent_custom_tool_use)  # not asked twice
    assert model.sent[0][-1] == {"role": "tool", "tool_call_id": "call_1", "content": "timeout"}


def test_a_call_whose_input_does_not_match_the_schema_is_an_error_and_never_goes_out() -> None:
    events = Events()
    model = scripted(("lookup", {"customer": 42}), ("finish", {}))

    async def body(sandbox: LocalSandbox) -> Any:
        return await loop_with_lookup(model, sandbox, events, approval_wait_s=5).run("x")

    assert on_sandbox(body).status == "finished"
    assert not events.of(EventType.agent_custom_tool_use)
    bad = events.of(EventType.agent_tool_result)[0]
    assert bad["is_error"] and "42 is not of type 'string'" in bad["output"]


class Link:
    """A session link with nobody running: pushes are kept."""

    def __init__(self) -> None:
        self.pushed: list[tuple[str, Any]] = []

    def worker_of(self, task_id: str) -> str | None:
        return None

    def deliver(self, worker_id: str, session_id: str | None, kind: str, data: Any) -> None:
        self.pushed.append((kind, data))

    def stop(self, worker_id: str, session_id: str | None, reason: str = "") -> None:
        pass


def test_the_scheduler_parks_for_the_client_and_a_result_resumes_the_task_with_it() -> None:
    config = FleetConfig(agents={"crm": AgentSpec(custom_tools=[LOOKUP])})
    sched = Scheduler(config, FleetSettings())
    log: list[Event] = []

    async def record(events: list[Event]) -> None:
        for event in events:
            sched.apply(event)
            log.append(event)

    commands = Commands(sched, record, Link())
    run = asyncio.run
    run(record([sched.submit(TaskSpec(id="t", prompt="x", agent="crm"))]))
    assignment, assigned = sched.assign("w1")
    run(record([assigned]))
    use = Event(
        task_id="t",
        type=EventType.agent_custom_tool_use,
        session_id=assignment.session_id,
        tool="lookup",
        payload={"call_id": "c1", "name": "lookup", "input": {"customer": "acme"}},
    )
    run(record([use]))
    state = {"pending_custom_tool": {"call_id": "c1", "tool": "lookup", "input": {}}}
    outcome = {"status": "parked", "state": state}
    result = SessionResult.model_validate(
        {
            "task_id": "t",
            "session_id": assignment.session_id,
            "attempt": 1,
            "worker": "w1",
            "status": "failed",
            "outcome": outcome,
        }
    )
    run(record(sched.conclude(result)))
    record_ = sched.tasks["t"]
    assert record_.state == TaskState.awaiting_tool_result
    unknown = run(commands.custom_tool_result("t", "c9", '{"plan": "pro"}'))
    assert not unknown and unknown.refusal == "unknown"
    invalid = run(commands.custom_tool_result("t", "c1", '{"tier": "pro"}'))
    assert not invalid and invalid.refusal == "invalid"
    assert "'plan' is a required property" in invalid.reason
    not_json = run(commands.custom_tool_result("t", "c1", "pro"))
    assert not not_json and not_json.refusal == "invalid"
    blocks = [{"type": "image", "data": "..."}]
    assert run(commands.custom_tool_result("t", "c1", blocks)).refusal == "invalid"
    assert record_.state == TaskState.awaiting_tool_result  # nothing recorded for those
    done = run(
        commands.custom_tool_result("t", "c1", [{"type": "text", "text": '{"plan": "pro"}'}])
    )
    assert done
    assert record_.state == TaskState.queued  # any worker may resume it
    again = run(commands.custom_tool_result("t", "c1", "{}", is_error=True))
    assert not again and again.refusal == "state"
    resumed, _ = sched.assign("w2")
    assert resumed.tool_result == {
        "call_id": "c1",
        "content": [{"type": "text", "text": '{"plan": "pro"}'}],
        "is_error": False,
    }
    posted = [e for e in log if e.type == EventType.user_custom_tool_result]
    assert [e.payload["custom_tool_use_id"] for e in posted] == ["c1"]
    errors_skip_the_schema = Commands(sched, record, Link())
    sched.tasks["t"].pending_custom_tool = {"call_id": "c2", "tool": "lookup", "input": {}}
    assert run(errors_skip_the_schema.custom_tool_result("t", "c2", "CRM down", is_error=True))


# --- over HTTP ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    fleet = fake_fleet(tmp_path_factory.mktemp("custom-tools"), approval_wait_s=0.5)
    app = app_over(fleet, ServeSettings(token=TOKEN, max_page=500))
    with TestClient(app, headers=AUTH) as test_client:
        yield test_client
    fleet.close()


def result_event(call_id: str, content: Any, is_error: bool = False) -> dict[str, Any]:
    return {
        "events": [
            {
                "type": "user.custom_tool_result",
                "custom_tool_use_id": call_id,
                "content": content,
                "is_error": is_error,
            }
        ]
    }


def test_a_client_answers_a_custom_tool_call_over_http(client: TestClient) -> None:
    agent = {"name": "crm-agent", "custom_tools": [LOOKUP]}
    steps = script(("lookup", {"customer": "acme"}), ("finish", {"summary": "acme: pro"}))
    sid = client.post(
        "/v1/sessions", json={"prompt": "which plan?", "agent": agent, "script": steps}
    ).json()["id"]
    waiting = wait_status(client, sid, {"awaiting_tool_result"} | TERMINAL)
    assert waiting["status"] == "awaiting_tool_result"
    pending = waiting["pending_custom_tool"]
    assert pending == {"call_id": "call_1", "tool": "lookup", "input": {"customer": "acme"}}
    blocked = client.get("/v1/fleet/status").json()["blocked"]
    assert {"task_id": sid, "state": "awaiting_tool_result", "call_id": "call_1"}.items() <= (
        next(b for b in blocked if b["task_id"] == sid).items()
    )
    events = f"/v1/sessions/{sid}/events"
    unknown = client.post(events, json=result_event("call_404", '{"plan": "pro"}'))
    assert unknown.status_code == 404 and "call_404" in unknown.json()["detail"]
    invalid = client.post(events, json=result_event("call_1", '{"plan": 3}'))
    assert invalid.status_code == 422
    assert invalid.json()["detail"][0]["loc"] == ["body", "events", 0, "content"]
    assert "output_schema" in invalid.json()["detail"][0]["msg"]
    shape = client.post(events, json=result_event("call_1", [{"type": "image"}]))
    assert shape.status_code == 422
    ok = client.post(
        events, json=result_event("call_1", [{"type": "text", "text": '{"plan": "pro"}'}])
    )
    assert ok.status_code == 200, ok.text
    assert wait_status(client, sid, TERMINAL)["status"] == "succeeded"
    history = client.get(events).json()["data"]
    types = [e["type"] for e in history]
    assert types.count("agent.custom_tool_use") == 1 and types.count("user.custom_tool_result") == 1
    assert types.index("task.parked") < types.index("user.custom_tool_result")
    given = next(e for e in history if e["type"] == "user.custom_tool_result")
    assert given["payload"]["custom_tool_use_id"] == "call_1" and given["tool"] == "lookup"
    late = client.post(events, json=result_event("call_1", '{"plan": "pro"}'))
    assert late.status_code == 409


def test_a_result_given_while_the_session_still_waits_is_delivered_to_it(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    fleet = fake_fleet(tmp_path_factory.mktemp("custom-live"), approval_wait_s=30)
    app = app_over(fleet, ServeSettings(token=TOKEN, max_page=500))
    agent = {"name": "crm-agent", "custom_tools": [{"name": "ping"}]}
    steps = script(("ping", {}), ("finish", {"summary": "pinged"}))
    try:
        with TestClient(app, headers=AUTH) as client:
            sid = client.post(
                "/v1/sessions", json={"prompt": "ping", "agent": agent, "script": steps}
            ).json()["id"]
            deadline = time.monotonic() + 60
            while not client.get(f"/v1/sessions/{sid}").json()["pending_custom_tool"]:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            answer = result_event("call_1", "pong")
            assert client.post(f"/v1/sessions/{sid}/events", json=answer).status_code == 200
            done = wait_status(client, sid, TERMINAL)
            assert done["status"] == "succeeded"
            types = [e["type"] for e in client.get(f"/v1/sessions/{sid}/events").json()["data"]]
            assert "task.parked" not in types  # it never stopped waiting
    finally:
        fleet.close()


def test_a_result_that_reaches_the_worker_as_the_session_parks_rides_with_the_parked_state() -> (
    None
):
    from actors.session import carry_late_decision

    state = {"pending_approval": None, "pending_custom_tool": {"call_id": "c1", "tool": "t"}}
    parked = SessionResult.model_validate(
        {
            "task_id": "t",
            "session_id": "s",
            "attempt": 1,
            "worker": "w",
            "status": "failed",
            "outcome": {"status": "parked", "state": state},
        }
    )
    hooks = InboxHooks()
    assert not carry_late_decision(parked, hooks)  # nothing came
    hooks.push_tool_result("c1", ToolResult("late but here"))
    assert carry_late_decision(parked, hooks)
    assert parked.outcome.state["pending_custom_tool"]["result"] == {
        "text": "late but here",
        "is_error": False,
    }
    assert hooks.take_tool_result("c1") is None  # taken: it goes with the state only
