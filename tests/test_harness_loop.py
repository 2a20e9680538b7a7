"""The agent loop's harness features with the scripted model on a LocalSandbox: approvals,
parking and resuming from JSON state on a new sandbox, interrupts, steering, handoffs,
follow-ups, skills, compaction, budgets."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from core.events import EventType
from core.specs import AgentSpec
from harness.compaction import estimate_tokens
from harness.hooks import Decision, InboxHooks, SessionHooks
from harness.loop import AgentLoop, handoff_history
from harness.models.base import ModelError, ModelTurn, ToolCall, Usage
from harness.models.scripted import ScriptedModel
from harness.skills import SkillError, install_skills, load_skills, parse_skill_md
from harness.tools import ToolContext
from sandboxes.local import LocalSandbox
from tests.test_harness_support import Events, Priced, Recording, make_loop, scripted, steps


async def new_sandbox() -> LocalSandbox:
    box = LocalSandbox()
    await box.start()
    return box


def roundtrip(state: dict[str, Any] | None) -> dict[str, Any]:
    assert state is not None
    return json.loads(json.dumps(state))


# --- approvals -----------------------------------------------------------------------


RM_POLICY = {"shell": {"ask_if": {"command": r"\brm\b"}}}


def rm_script() -> ScriptedModel:
    return scripted(
        ("write_file", {"path": "x.txt", "content": "x"}),
        ("shell", {"command": "echo safe"}),
        ("shell", {"command": "rm x.txt"}),
        ("finish", {"summary": "done"}),
    )


@pytest.mark.parametrize("allow", [True, False])
def test_approval_allow_and_deny(allow: bool) -> None:
    async def go() -> None:
        box = await new_sandbox()
        try:
            hooks = InboxHooks()
            hooks.push_decision("call_3", Decision(allow=allow, message="not today"))
            events = Events()
            loop = make_loop(rm_script(), box, events, hooks=hooks, approvals=RM_POLICY)
            outcome = await loop.run("clean up")
            assert outcome.status == "finished"
            # only the rm call asked, with its call id, tool and validated arguments
            requested = events.of(EventType.approval_requested)
            assert requested == [
                {
                    "call_id": "call_3",
                    "tool": "shell",
                    "args": {"command": "rm x.txt", "timeout_s": 60.0},
                }
            ]
            decided = events.of(EventType.approval_decided)
            assert decided == [
                {"call_id": "call_3", "allow": allow, "message": "not today", "by": ""}
            ]
            files = (await box.exec("ls")).stdout.split()
            result = events.of(EventType.agent_tool_result)[2]
            if allow:
                assert "x.txt" not in files and result["is_error"] is False
            else:
                assert "x.txt" in files
                assert result["denied"] is True and "not today" in result["output"]
                assert loop.messages[-3]["content"].startswith("denied:")
        finally:
            await box.close()

    asyncio.run(go())


def test_parked_session_resumes_from_json_state_in_a_new_loop_on_a_restored_sandbox() -> None:
    async def go() -> None:
        first = await new_sandbox()
        events = Events()
        try:
            loop = make_loop(rm_script(), first, events, approvals=RM_POLICY)
            outcome = await loop.run("clean up")  # SessionHooks: nobody decides -> parked
            assert outcome.status == "parked" and "call_3" in outcome.reason
            state = roundtrip(outcome.state)
            assert state["pending_approval"]["call_id"] == "call_3"
            assert [c["id"] for c in state["pending_calls"]] == ["call_3"]
            assert state["model_position"] == 3 and state["turns"] == 3
            archive = await first.snapshot()
        finally:
            await first.close()

        second = await new_sandbox()  # "another worker"
        try:
            await second.restore(archive)
            hooks = InboxHooks()
            hooks.push_decision("call_3", Decision(allow=True))
            resumed = make_loop(rm_script(), second, events, hooks=hooks, approvals=RM_POLICY)
            outcome = await resumed.resume(state)
            assert outcome.status == "finished" and outcome.summary == "done"
            assert outcome.turns == 4 and outcome.tool_calls == 4
            assert "x.txt" not in (await second.exec("ls")).stdout.split()
            # asked once, decided once, and the model was not asked again for the parked turn
            assert len(events.of(EventType.approval_requested)) == 1
            assert len(events.of(EventType.approval_decided)) == 1
            assert [m["role"] for m in resumed.messages[-4:]] == [
                "assistant",
                "tool",
                "assistant",
                "tool",
            ]
        finally:
            await second.close()

    asyncio.run(go())


def test_a_parked_session_that_still_has_no_decision_parks_again() -> None:
    async def go() -> None:
        box = await new_sandbox()
        try:
            loop = make_loop(rm_script(), box, Events(), approvals={"shell": "always_ask"})
            outcome = await loop.run("x")
            assert outcome.status == "parked" and outcome.turns == 2
            again = make_loop(rm_script(), box, Events(), approvals={"shell": "always_ask"})
            outcome = await again.resume(roundtrip(outcome.state))
            assert outcome.status == "parked" and outcome.turns == 2
            assert outcome.state["pending_approval"]["call_id"] == "call_2"
        finally:
            await box.close()

    asyncio.run(go())


def test_approval_policy_from_the_agent_spec_and_default_key() -> None:
    spec = AgentSpec(approvals={"*": "always_ask", "read_file": "always_allow"})

    async def go() -> None:
        box = await new_sandbox()
        try:
            hooks = InboxHooks()
            hooks.push_decision("call_2", Decision(allow=True))
            events = Events()
            model = scripted(
                ("read_file", {"path": "nope"}),
                ("write_file", {"path": "a", "content": "1"}),
                ("finish", {}),
            )
            loop = AgentLoop.from_spec(
                spec,
                model=model,
                ctx=ToolContext(sandbox=box),
                emit=events,
                max_turns=5,
                time_limit_s=10,
                hooks=hooks,
                approval_wait_s=0.05,
            )
            outcome = await loop.run("x")
            # write_file approved; finish falls under "*" and nobody answered in time
            assert (
                outcome.status == "parked" and outcome.state["pending_approval"]["tool"] == "finish"
            )
            assert [p["tool"] for p in events.of(EventType.approval_requested)] == [
                "write_file",
                "finish",
            ]
        finally:
            await box.close()

    asyncio.run(go())


# --- interrupts and steering -----------------------------------------------------------


class TwoCallsThenFinish:
    """Turn 1 makes two calls at once; turn 2 finishes. Keeps its place (position/seek)."""

    name = "two-calls"

    def __init__(self) -> None:
        self.position = 0

    def seek(self, position: int) -> None:
        self.position = position

    async def complete(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
    ) -> ModelTurn:
        self.position += 1
        if self.position == 1:
            calls = [
                ToolCall("a", "write_file", '{"path": "one.txt", "content": "1"}'),
                ToolCall("b", "write_file", '{"path": "two.txt", "content": "2"}'),
            ]
            return ModelTurn(text=None, tool_calls=calls)
        return ModelTurn(text=None, tool_calls=[ToolCall("c", "finish", '{"summary": "ok"}')])


def test_interrupt_between_tool_calls_then_resume_runs_the_rest_of_the_turn() -> None:
    async def go() -> None:
        box = await new_sandbox()
        try:
            hooks = InboxHooks()
            events = Events()

            def emit(type_: EventType, payload: dict[str, Any] | None = None, **kw: Any) -> None:
                events(type_, payload, **kw)
                if type_ == EventType.agent_tool_result:
                    hooks.push_interrupt()  # arrives while call "a" runs

            loop = make_loop(TwoCallsThenFinish(), box, Events(), hooks=hooks)
            loop.emit = emit
            outcome = await loop.run("x")
            assert outcome.status == "interrupted" and "before tool call b" in outcome.reason
            state = roundtrip(outcome.state)
            assert [c["id"] for c in state["pending_calls"]] == ["b"]
            assert (await box.exec("ls")).stdout.split() == ["one.txt"]

            model = Recording(TwoCallsThenFinish())
            resumed = make_loop(model, box, events, hooks=InboxHooks())
            outcome = await resumed.resume(state)
            assert outcome.status == "finished" and outcome.turns == 2 and outcome.tool_calls == 3
            assert (await box.exec("ls")).stdout.split() == ["one.txt", "two.txt"]
            # the model was asked once more (turn 2), with both results of turn 1 in order
            assert len(model.sent) == 1
            assert [m.get("tool_call_id") for m in model.sent[0][-2:]] == ["a", "b"]
        finally:
            await box.close()

    asyncio.run(go())


def test_interrupt_before_a_model_turn_and_resume() -> None:
    async def go() -> None:
        box = await new_sandbox()
        try:
            hooks = InboxHooks()
            script = [("shell", {"command": "echo 1 >> log"})] * 3 + [("finish", {})]
            loop = make_loop(
                scripted(*script),
                box,
                Events(),
                hooks=hooks,
                checkpoint=lambda state: hooks.push_interrupt() if state()["turns"] == 2 else None,
            )
            outcome = await loop.run("x")
            assert outcome.status == "interrupted" and outcome.reason == "interrupted before turn 3"
            assert outcome.turns == 2
            resumed = make_loop(scripted(*script), box, Events(), hooks=SessionHooks())
            outcome = await resumed.resume(roundtrip(outcome.state))
            assert outcome.status == "finished" and outcome.turns == 4
            assert (await box.read_file("log")) == b"1\n1\n1\n"  # no step ran twice or was skipped
        finally:
            await box.close()

    asyncio.run(go())


def test_steering_message_is_delivered_at_the_next_turn() -> None:
    async def go() -> None:
        box = await new_sandbox()
        try:
            hooks = InboxHooks()
            events = Events()
            model = Recording(
                scripted(
                    ("shell", {"command": "true"}), ("shell", {"command": "true"}), ("finish", {})
                )
            )

            def emit(type_: EventType, payload: dict[str, Any] | None = None, **kw: Any) -> None:
                events(type_, payload, **kw)
                if type_ == EventType.agent_tool_use and payload and payload["turn"] == 1:
                    hooks.push_message("use tabs, not spaces")

            loop = make_loop(model, box, Events(), hooks=hooks)
            loop.emit = emit
            outcome = await loop.run("x")
            assert outcome.status == "finished"
            assert events.of(EventType.user_message) == [
                {"text": "use tabs, not spaces", "delivered_at_turn": 2}
            ]
            assert model.sent[0][-1]["content"] == "x"  # turn 1 did not see it
            assert model.sent[1][-1] == {"role": "user", "content": "use tabs, not spaces"}
            assert sum(m["content"] == "use tabs, not spaces" for m in model.sent[2]) == 1
        finally:
            await box.close()

    asyncio.run(go())


# --- handoff and follow-ups --------------------------------------------------------------


def test_handoff_ends_the_session_and_the_target_continues_with_a_digest() -> None:
    async def go() -> None:
        box = await new_sandbox()
        try:
            events = Events()
            coder = scripted(
                ("write_file", {"path": "app.py", "content": "print('hi')\n"}),
                ("shell", {"command": "python3 app.py"}),
                ("handoff", {"agent": "reviewer", "note": "app.py written; please review"}),
                ("finish", {"summary": "never reached"}),
            )
            loop = make_loop(coder, box, events, agent_name="coder")
            loop.ctx.handoff_targets = ["reviewer"]
            outcome = await loop.run("write app.py")
            assert outcome.status == "handoff" and outcome.handoff_to == "reviewer"
            assert outcome.handoff_note == "app.py written; please review"
            assert outcome.turns == 3 and outcome.state is None
            [digest] = outcome.handoff_history
            assert digest["role"] == "user"
            assert "'coder'" in digest["content"] and "please review" in digest["content"]
            assert "python3 app.py" in digest["content"] and "hi" in digest["content"]

            reviewer = Recording(
                scripted(("read_file", {"path": "app.py"}), ("finish", {"summary": "lgtm"}))
            )
            second = make_loop(reviewer, box, Events(), agent_name="reviewer")
            outcome = await second.run(
                "write app.py", history=json.loads(json.dumps(outcome.handoff_history))
            )
            assert outcome.status == "finished" and outcome.summary == "lgtm"
            assert [m["role"] for m in reviewer.sent[0]] == ["system", "user", "user"]
            assert reviewer.sent[0][2] == digest
        finally:
            await box.close()

    asyncio.run(go())


def test_handoff_to_an_agent_not_allowed_is_an_error_result() -> None:
    async def go() -> None:
        box = await new_sandbox()
        try:
            events = Events()
            model = scripted(("handoff", {"agent": "intern", "note": "?"}), ("finish", {}))
            loop = make_loop(model, box, events)
            loop.ctx.handoff_targets = ["reviewer"]
            outcome = await loop.run("x")
            assert outcome.status == "finished"
            assert (
                "cannot hand off to 'intern'; agents: reviewer"
                in events.of(EventType.agent_tool_result)[0]["output"]
            )
        finally:
            await box.close()

    asyncio.run(go())


def test_followup_requests_are_recorded_and_the_session_goes_on() -> None:
    async def go() -> None:
        box = await new_sandbox()
        try:
            model = scripted(
                ("create_followup", {"prompt": "flaky test in test_io.py", "labels": ["tests"]}),
                ("create_followup", {"prompt": "bump deps", "agent": "maint", "priority": 2}),
                ("create_followup", {"prompt": "one too many"}),
                ("finish", {"summary": "done"}),
            )
            events = Events()
            loop = make_loop(model, box, events)
            loop.ctx.max_followups = 2
            outcome = await loop.run("x")
            assert outcome.status == "finished" and outcome.turns == 4
            assert outcome.followups == [
                {"prompt": "flaky test in test_io.py", "labels": ["tests"], "priority": 0},
                {"prompt": "bump deps", "labels": [], "priority": 2, "agent": "maint"},
            ]
            assert events.of(EventType.agent_tool_result)[2]["is_error"] is True
        finally:
            await box.close()

    asyncio.run(go())


# --- skills ------------------------------------------------------------------------------


def test_skill_is_installed_described_and_its_script_run_by_the_agent() -> None:
    spec = AgentSpec(name="coder", skills=["repo-summary"], instructions="Be careful.")

    async def go() -> None:
        box = await new_sandbox()
        try:
            skills = load_skills(spec.skills)
            await install_skills(box, skills)
            await box.write_file("src/main.py", b"print(1)\n")
            events = Events()
            model = Recording(
                scripted(
                    ("list_files", {"path": ".skills"}),
                    ("shell", {"command": "python3 .skills/repo-summary/summarize.py"}),
                    ("shell", {"command": "./.skills/repo-summary/summarize.py src"}),
                    ("finish", {}),
                )
            )
            loop = AgentLoop.from_spec(
                spec,
                model=model,
                ctx=ToolContext(sandbox=box),
                emit=events,
                max_turns=10,
                time_limit_s=30,
                skills=skills,
            )
            outcome = await loop.run("map the repo")
            assert outcome.status == "finished"
            system = model.sent[0][0]["content"]
            assert system.startswith("Be careful.") and "## Skills" in system
            assert "- repo-summary: Get a quick map of an unfamiliar repository" in system
            assert ".skills/repo-summary/" in system
            listing, run1, run2 = events.of(EventType.agent_tool_result)[:3]
            assert (
                "repo-summary/SKILL.md" in listing["output"]
                and "repo-summary/summarize.py" in listing["output"]
            )
            assert run1["stdout"].startswith("1 files under .") and "src/main.py" in run1["stdout"]
            assert run2["is_error"] is False  # kept its executable bit
            assert (await box.read_file(".skills/repo-summary/SKILL.md")) == skills[0].files[
                "SKILL.md"
            ]
        finally:
            await box.close()

    asyncio.run(go())


def test_skill_lookup_errors_and_a_skill_without_front_matter(tmp_path) -> None:
    (tmp_path / "lint").mkdir()
    (tmp_path / "lint" / "SKILL.md").write_text(
        "# lint\n\nRun the linters\nthe project uses.\n\n## How\n..."
    )
    (tmp_path / "lint" / "run.sh").write_text("echo lint\n")
    [skill] = load_skills(["lint"], [tmp_path])
    assert skill.description == "Run the linters the project uses."
    assert set(skill.files) == {"SKILL.md", "run.sh"}
    with pytest.raises(SkillError, match="skills not found: nope"):
        load_skills(["lint", "nope"], [tmp_path])
    with pytest.raises(SkillError, match="no description"):
        parse_skill_md("---\nname: x\n---\nbody", "x")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "SKILL.md").write_text("---\nname: else\ndescription: d\n---\n")
    with pytest.raises(SkillError, match="names itself 'else'"):
        load_skills(["other"], [tmp_path])


# --- compaction -------------------------------------------------------------------------


def test_a_long_session_compacts_and_every_request_fits_the_window() -> None:
    window = 6000
    n = 60
    script = [("shell", {"command": f"python3 -c \"print('{i}' * 2000)\""}) for i in range(n)]
    model = Recording(scripted(*script, ("finish", {"summary": "ok"})))

    async def go() -> None:
        box = await new_sandbox()
        try:
            events = Events()
            loop = make_loop(model, box, events, max_turns=n + 5, context_window=window)
            outcome = await loop.run("print many things")
            assert outcome.status == "finished" and outcome.turns == n + 1
            compactions = [
                p["compaction"] for p in events.of(EventType.agent_message) if "compaction" in p
            ]
            assert len(compactions) >= 2
            assert all(c["estimated_after"] <= window * 0.5 for c in compactions)
            schema_tokens = loop._schema_tokens
            for sent in model.sent:
                assert estimate_tokens(sent) + schema_tokens <= window
                # the prefix is never rewritten, so provider prompt caches keep hitting
                assert sent[:2] == [
                    {"role": "system", "content": "be good"},
                    {"role": "user", "content": "print many things"},
                ]
            last = model.sent[-1]
            assert last[2]["content"].startswith("[context compacted:")
            # the most recent result is whole; old ones were dropped or elided
            assert last[-1]["content"].count(str(n - 1)) >= 2000
            assert loop.state()["compaction"]["count"] == len(compactions)
        finally:
            await box.close()

    asyncio.run(go())


def test_compaction_uses_the_models_reported_input_tokens() -> None:
    """A tokenizer denser than chars/4: the reported count triggers compaction earlier."""

    class Dense:
        name = "dense"

        def __init__(self) -> None:
            self.turn = 0

        async def complete(
            self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
        ) -> ModelTurn:
            self.turn += 1
            reported = 3 * estimate_tokens(messages)
            call = ToolCall(
                f"c{self.turn}", "shell", json.dumps({"command": "printf 'a%.0s' {1..2000}"})
            )
            if self.turn == 8:
                call = ToolCall("end", "finish", "{}")
            return ModelTurn(text=None, tool_calls=[call], usage=Usage(input_tokens=reported))

    async def go() -> None:
        box = await new_sandbox()
        try:
            events = Events()
            loop = make_loop(Dense(), box, events, context_window=10_000)
            assert (await loop.run("x")).status == "finished"
            compactions = [
                p["compaction"] for p in events.of(EventType.agent_message) if "compaction" in p
            ]
            # chars/4 alone would stay near 4000 tokens, under the 7500 trigger
            assert estimate_tokens(loop.messages) < 7500
            assert compactions and compactions[0]["estimated_before"] > 7500
        finally:
            await box.close()

    asyncio.run(go())


# --- budgets, crashes, state ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "turns", "reason"),
    [
        ({"max_tokens": 300}, 3, "token budget of 300 reached (330 used)"),
        ({"max_cost_usd": 0.05}, 5, "cost budget of $0.05 reached ($0.0500 used)"),
    ],
)
def test_budget_stops_the_session_cleanly(kwargs: dict[str, Any], turns: int, reason: str) -> None:
    async def go() -> None:
        box = await new_sandbox()
        try:
            events = Events()
            outcome = await make_loop(Priced(), box, events, **kwargs).run("x")
            assert outcome.status == "budget" and outcome.reason == reason
            assert outcome.turns == turns and outcome.tool_calls == turns
            usage = events.of(EventType.usage)
            assert len(usage) == turns and usage[0]["cached_input_tokens"] == 40
            assert outcome.state is not None and outcome.state["usage"]["tokens_in"] == 100 * turns
        finally:
            await box.close()

    asyncio.run(go())


def test_model_failure_midway_resumes_from_the_outcome_state() -> None:
    script = [
        ("shell", {"command": "echo a >> log"}),
        ("shell", {"command": "echo b >> log"}),
        ("finish", {}),
    ]

    class Flaky(ScriptedModel):
        async def complete(self, messages, tools):  # type: ignore[no-untyped-def]
            if self.position == 1:
                raise ModelError("upstream down")
            return await super().complete(messages, tools)

    async def go() -> None:
        box = await new_sandbox()
        try:
            states: list[dict[str, Any]] = []
            outcome = await make_loop(
                Flaky(steps(*script)),
                box,
                Events(),
                checkpoint=lambda state: states.append(state()),
            ).run("x")
            assert outcome.status == "error" and "upstream down" in outcome.reason
            assert [s["turns"] for s in states] == [0, 1]
            assert all(json.loads(json.dumps(s)) == s for s in states)
            resumed = make_loop(ScriptedModel(steps(*script)), box, Events())
            outcome = await resumed.resume(roundtrip(outcome.state))
            assert outcome.status == "finished" and outcome.turns == 3
            assert (await box.read_file("log")) == b"a\nb\n"
        finally:
            await box.close()

    asyncio.run(go())


def test_time_limit_counts_across_resumes() -> None:
    async def go() -> None:
        box = await new_sandbox()
        try:
            state = None
            loop = make_loop(
                scripted(("shell", {"command": "sleep 0.3"}), ("finish", {})),
                box,
                Events(),
                time_limit_s=0.5,
                approvals={"finish": "always_ask"},
            )
            outcome = await loop.run("x")
            assert outcome.status == "parked"
            state = roundtrip(outcome.state)
            assert 0.3 <= state["elapsed_s"] < 0.5
            state["elapsed_s"] = 0.6
            later = make_loop(
                scripted(("shell", {}), ("finish", {})), box, Events(), time_limit_s=0.5
            )
            outcome = await later.resume(state)
            assert outcome.status == "timeout"
        finally:
            await box.close()

    asyncio.run(go())


def test_handoff_history_keeps_the_newest_steps_when_long() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "t"},
    ]
    for i in range(500):
        call = {
            "id": f"c{i}",
            "type": "function",
            "function": {"name": "shell", "arguments": json.dumps({"command": f"step {i}"})},
        }
        messages += [
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": f"c{i}", "content": f"out {i}"},
        ]
    [message] = handoff_history(messages, "a", "n", limit_chars=2000)
    assert len(message["content"]) < 2600
    assert "step 499" in message["content"] and "step 0 " not in message["content"]
    assert "earlier steps left out" in message["content"]
