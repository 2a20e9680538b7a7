import asyncio
import json

from core.events import EventType
from core.specs import ScriptStep
from harness.loop import AgentLoop
from harness.models.base import ModelTurn, ToolCall
from harness.models.scripted import ScriptedModel
from harness.tools import ToolBox, ToolContext, truncate
from sandboxes.local import LocalSandbox


def steps(*pairs):
    return [ScriptStep(tool=t, args=a) for t, a in pairs]


def run_loop(model, max_turns=20, time_limit_s=30.0, tools=None, output_limit=10_000):
    async def go():
        box = LocalSandbox()
        await box.start()
        events = []
        try:
            loop = AgentLoop(
                instructions="be good",
                model=model,
                toolbox=ToolBox(tools or ["shell", "read_file", "write_file", "finish"]),
                ctx=ToolContext(sandbox=box, output_limit=output_limit),
                emit=lambda t, p=None, **kw: events.append((t, p or {}, kw)),
                max_turns=max_turns,
                time_limit_s=time_limit_s,
            )
            outcome = await loop.run("do the task")
            return outcome, events, loop
        finally:
            await box.close()

    return asyncio.run(go())


def test_scripted_session_runs_tools_and_finishes():
    model = ScriptedModel(
        steps(
            ("write_file", {"path": "a.txt", "content": "hi"}),
            ("shell", {"command": "cat a.txt; exit 3"}),
            ("finish", {"summary": "done"}),
        )
    )
    outcome, events, loop = run_loop(model)
    assert outcome.status == "finished" and outcome.summary == "done"
    assert outcome.turns == 3 and outcome.tool_calls == 3
    results = [e for e in events if e[0] == EventType.agent_tool_result]
    assert results[1][2]["exit_code"] == 3 and results[1][1]["stdout"] == "hi"
    assert results[1][1]["is_error"] is True
    # the history is plain JSON (serialisable) and carries the tool results
    json.dumps(loop.messages)
    assert loop.messages[-1]["role"] == "tool"


def test_bad_arguments_and_unknown_tools_are_results_the_model_can_fix():
    model = ScriptedModel(
        steps(
            ("shell", {"cmd": "ls"}),
            ("teleport", {}),
            ("read_file", {"path": "../../etc/passwd"}),
            ("finish", {}),
        )
    )
    outcome, events, _ = run_loop(model)
    assert outcome.status == "finished"
    outputs = [e[1]["output"] for e in events if e[0] == EventType.agent_tool_result]
    assert outputs[0].startswith("error: bad arguments for shell")
    assert "unknown tool 'teleport'" in outputs[1]
    assert "outside the workspace" in outputs[2]


def test_limits_end_the_session_with_an_outcome():
    many = ScriptedModel(steps(*[("shell", {"command": "true"})] * 10))
    outcome, _, _ = run_loop(many, max_turns=3)
    assert outcome.status == "max_turns" and outcome.turns == 3

    slow = ScriptedModel(steps(("shell", {"command": "sleep 20"}), ("finish", {})))
    outcome, _, _ = run_loop(slow, time_limit_s=0.5)
    assert outcome.status == "timeout" and "0.5s" in outcome.reason

    short = ScriptedModel(steps(("shell", {"command": "true"})))
    outcome, _, _ = run_loop(short)
    assert outcome.status == "error" and "script ended" in outcome.reason


def test_scripted_steps_can_be_tied_to_an_attempt():
    script = [
        ScriptStep(tool="shell", args={"command": "echo one"}, attempt=1),
        ScriptStep(tool="shell", args={"command": "echo two"}, attempt=2),
        ScriptStep(tool="finish"),
    ]
    _outcome, events, _ = run_loop(ScriptedModel(script, attempt=2))
    uses = [e[1]["args"] for e in events if e[0] == EventType.agent_tool_use]
    assert uses == ['{"command": "echo two"}', "{}"]


class TalkingModel:
    name = "talker"

    def __init__(self):
        self.calls = 0

    async def complete(self, messages, tools):
        self.calls += 1
        if self.calls == 1:
            return ModelTurn(text="thinking out loud")
        assert messages[-1]["role"] == "user" and "No tool was called" in messages[-1]["content"]
        return ModelTurn(text=None, tool_calls=[ToolCall("c1", "finish", '{"summary": "ok"}')])


def test_a_turn_without_tool_calls_is_nudged_not_fatal():
    outcome, events, _ = run_loop(TalkingModel())
    assert outcome.status == "finished" and outcome.turns == 2
    assert [e[0] for e in events[:2]] == [EventType.usage, EventType.agent_message]
    assert [e[1]["turn"] for e in events if e[0] == EventType.usage] == [1, 2]


def test_truncate_keeps_head_and_tail_and_says_how_much_went():
    text = "a" * 50 + "b" * 100 + "c" * 50
    out = truncate(text, 100)
    assert out.startswith("a" * 50) and out.endswith("c" * 50)
    assert "[... 100 characters elided ...]" in out
    assert truncate("short", 100) == "short"


def test_tool_schemas_come_from_type_hints():
    schemas = {s["name"]: s for s in ToolBox(["shell", "write_file"]).schemas()}
    assert set(schemas) == {"shell", "write_file", "finish"}
    shell = schemas["shell"]["parameters"]
    assert shell["required"] == ["command"]
    assert shell["properties"]["timeout_s"]["type"] == "number"
    assert shell["additionalProperties"] is False
