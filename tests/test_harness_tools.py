"""The coding tools (edit_file, list_files, search), tool errors, a lost sandbox, approval
rules and compaction passes."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from core.events import EventType
from harness.compaction import CompactionPolicy, compact, estimate_tokens
from harness.tools import BUILTINS, ToolBox, ToolContext, ToolOutput, approval_needed, tool
from sandboxes.base import SandboxLost
from sandboxes.local import LocalSandbox
from tests.test_harness_support import Events, make_loop, scripted


def call_tools(files: dict[str, str], calls: list[tuple[str, dict[str, Any]]]) -> list[ToolOutput]:
    async def go() -> list[ToolOutput]:
        box = LocalSandbox()
        await box.start()
        try:
            for path, text in files.items():
                await box.write_file(path, text.encode())
            ctx = ToolContext(sandbox=box)
            toolbox = ToolBox(["edit_file", "list_files", "search", "read_file"])
            return [await toolbox.call(ctx, name, json.dumps(args)) for name, args in calls]
        finally:
            await box.close()

    return asyncio.run(go())


def test_edit_file_replaces_one_exact_match_and_explains_misses() -> None:
    src = "def f():\n    return 1\n\ndef g():\n    return 1\n"
    outs = call_tools(
        {"m.py": src},
        [
            ("edit_file", {"path": "m.py", "old_str": "return 1", "new_str": "return 2"}),
            (
                "edit_file",
                {
                    "path": "m.py",
                    "old_str": "def g():\n    return 1",
                    "new_str": "def g():\n    return 3",
                },
            ),
            ("edit_file", {"path": "m.py", "old_str": "return 9", "new_str": ""}),
            ("edit_file", {"path": "m.py", "old_str": "  def f():", "new_str": ""}),
            ("edit_file", {"path": "none.py", "old_str": "a", "new_str": "b"}),
            ("read_file", {"path": "m.py"}),
        ],
    )
    assert outs[0].is_error and "occurs 2 times in m.py (lines 2, 5)" in outs[0].text
    assert not outs[1].is_error and "at line 4" in outs[1].text
    assert outs[2].is_error and outs[2].text == "error: old_str not found in m.py"
    assert "different leading/trailing whitespace" in outs[3].text
    assert outs[4].is_error and "no such file" in outs[4].text
    assert outs[5].text == "def f():\n    return 1\n\ndef g():\n    return 3\n"


def test_list_files_is_bounded_and_skips_noise() -> None:
    files = {f"pkg/m{i:02}.py": "" for i in range(30)}
    files |= {
        ".git/config": "",
        "pkg/__pycache__/x.pyc": "",
        "README.md": "",
        "a/b/c/d/deep.txt": "",
    }
    full, bounded, sub, outside = call_tools(
        files,
        [
            ("list_files", {"depth": 3}),
            ("list_files", {"limit": 5}),
            ("list_files", {"path": "a", "depth": 10}),
            ("list_files", {"path": "/etc"}),
        ],
    )
    lines = full.text.splitlines()
    assert "README.md" in lines and "pkg/" in lines and "pkg/m29.py" in lines and "a/b/c/" in lines
    assert "a/b/c/d/deep.txt" not in lines  # deeper than 3
    assert not any(".git" in line or "__pycache__" in line for line in lines)
    assert bounded.text.splitlines()[-1].startswith("[more than 5 entries")
    assert len(bounded.text.splitlines()) == 6
    assert sub.text.splitlines() == ["b/", "b/c/", "b/c/d/", "b/c/d/deep.txt"]
    assert outside.is_error and "outside the workspace" in outside.text


def test_search_finds_lines_bounded_and_reports_no_match_and_bad_patterns() -> None:
    files = {"src/a.py": "import os\nx = os.getcwd()\n", "src/b.txt": "os here\n", ".git/x": "os\n"}
    files |= {f"many/f{i}.py": "needle\n" for i in range(20)}
    hits, glob, fixed, none, capped, bad = call_tools(
        files,
        [
            ("search", {"pattern": r"os\.", "path": "src"}),
            ("search", {"pattern": "os", "glob": "*.py", "path": "src"}),
            ("search", {"pattern": "os.get", "fixed_strings": True}),
            ("search", {"pattern": "nothing-like-this"}),
            ("search", {"pattern": "needle", "max_results": 3}),
            ("search", {"pattern": "(unclosed"}),
        ],
    )
    assert hits.text == "src/a.py:2:x = os.getcwd()"
    assert glob.text.splitlines() == ["src/a.py:1:import os", "src/a.py:2:x = os.getcwd()"]
    assert fixed.text == "src/a.py:2:x = os.getcwd()"
    assert not none.is_error and none.text.startswith("no matches")
    assert len(capped.text.splitlines()) == 4 and "more than 3 matches" in capped.text
    assert bad.is_error and bad.text.startswith("error: search failed")


@pytest.mark.parametrize(
    ("policy", "tool", "args", "ask"),
    [
        ({}, "shell", {"command": "rm -rf /"}, False),
        ({"shell": "always_ask"}, "shell", {"command": "ls"}, True),
        ({"*": "always_ask", "read_file": "always_allow"}, "read_file", {"path": "a"}, False),
        ({"*": "always_ask"}, "write_file", {"path": "a"}, True),
        (
            {"shell": {"ask_if": {"command": r"\bgit\s+push\b"}}},
            "shell",
            {"command": "git push -f"},
            True,
        ),
        (
            {"shell": {"ask_if": {"command": r"\bgit\s+push\b"}}},
            "shell",
            {"command": "git status"},
            False,
        ),
        (
            {"write_file": {"ask_if": {"path": r"^\.github/"}}},
            "write_file",
            {"path": ".github/ci.yml"},
            True,
        ),
        (
            {"create_followup": {"ask_if": {"labels": "urgent"}}},
            "create_followup",
            {"labels": ("urgent",)},
            True,
        ),
    ],
)
def test_approval_rules(policy: dict[str, Any], tool: str, args: dict[str, Any], ask: bool) -> None:
    assert approval_needed(policy, tool, args) is ask


def test_bad_approval_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="bad approval policy"):
        approval_needed({"shell": "sometimes"}, "shell", {})


def long_history(turns: int, output_chars: int = 4000) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "task"},
    ]
    for i in range(turns):
        args = json.dumps({"path": f"f{i}.txt", "content": "w" * 3000})
        call = {
            "id": f"c{i}",
            "type": "function",
            "function": {"name": "write_file", "arguments": args},
        }
        messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        messages.append(
            {"role": "tool", "tool_call_id": f"c{i}", "content": f"{i}:" + "o" * output_chars}
        )
        if i == 3:
            messages.append({"role": "user", "content": "steer: keep it short"})
    return messages


def test_compaction_keeps_prefix_and_recent_turns_and_pairs_calls_with_results() -> None:
    messages = long_history(40)
    prefix = [dict(m) for m in messages[:2]]
    recent = json.loads(json.dumps(messages[-6:]))
    policy = CompactionPolicy(window_tokens=20_000)
    report = compact(messages, policy)
    assert messages[:2] == prefix
    assert messages[-6:] == recent  # the last 3 turns untouched
    assert report["tokens_after"] == estimate_tokens(messages) <= policy.target_tokens
    assert messages[2]["content"].startswith("[context compacted:")
    assert "steer: keep it short" in messages[2]["content"]
    # every tool result still follows the assistant message that called it
    open_calls: set[str] = set()
    for message in messages[3:]:
        if message["role"] == "assistant":
            assert not open_calls
            open_calls = {c["id"] for c in message["tool_calls"]}
        elif message["role"] == "tool":
            open_calls.remove(message["tool_call_id"])
    for message in messages:
        for call in message.get("tool_calls") or ():
            json.loads(call["function"]["arguments"])  # still valid JSON after eliding
    # compacting again extends the one summary rather than stacking summaries
    messages += long_history(30)[2:]
    compact(messages, policy)
    assert (
        sum(m["content"].startswith("[context compacted:") for m in messages if m["role"] == "user")
        == 1
    )


def test_compaction_elides_before_it_drops() -> None:
    messages = long_history(10)
    policy = CompactionPolicy(window_tokens=14_000)
    report = compact(messages, policy)
    assert report["elided"] > 0 and report["dropped"] == 0
    elided = [m for m in messages if m["role"] == "tool" and m["content"].startswith("[elided")]
    assert elided and "4002 characters" in elided[0]["content"]
    assert estimate_tokens(messages) <= policy.target_tokens


# --- tool errors -----------------------------------------------------------------------


def test_any_exception_in_a_tool_is_an_error_result_and_the_session_goes_on() -> None:
    @tool
    async def flaky(ctx: ToolContext, key: str) -> ToolOutput:
        """Look a key up (raises on a miss)."""
        return ToolOutput(text={"a": "found a"}[key])

    registry = {**BUILTINS, "flaky": flaky}

    async def go() -> None:
        box = LocalSandbox()
        await box.start()
        try:
            events = Events()
            model = scripted(("flaky", {"key": "zz"}), ("flaky", {"key": "a"}), ("finish", {}))
            loop = make_loop(model, box, events)
            loop.toolbox = ToolBox(["flaky", "finish"], registry)
            outcome = await loop.run("x")
            assert outcome.status == "finished" and outcome.turns == 3
            miss, hit = events.of(EventType.agent_tool_result)[:2]
            assert miss["is_error"] is True and miss["output"] == "error: KeyError: 'zz'"
            assert hit["output"] == "found a"
        finally:
            await box.close()

    asyncio.run(go())


def test_cancellation_and_a_lost_sandbox_are_not_turned_into_results() -> None:
    @tool
    async def cancelled(ctx: ToolContext) -> ToolOutput:
        """Cancelled midway."""
        raise asyncio.CancelledError

    @tool
    async def lost(ctx: ToolContext) -> ToolOutput:
        """The sandbox died."""
        raise SandboxLost("container exited")

    toolbox = ToolBox(["cancelled", "lost"], {**BUILTINS, "cancelled": cancelled, "lost": lost})
    ctx = ToolContext(sandbox=LocalSandbox())
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(toolbox.call(ctx, "cancelled", "{}"))
    with pytest.raises(SandboxLost):
        asyncio.run(toolbox.call(ctx, "lost", "{}"))


def test_edit_file_refuses_a_file_that_is_not_utf8_and_leaves_it_alone() -> None:
    latin1 = "caf\u00e9 = 1\n".encode("latin-1")

    async def go() -> None:
        box = LocalSandbox()
        await box.start()
        try:
            await box.write_file("legacy.py", latin1)
            out = await ToolBox(["edit_file"]).call(
                ToolContext(sandbox=box),
                "edit_file",
                json.dumps({"path": "legacy.py", "old_str": "= 1", "new_str": "= 2"}),
            )
            assert out.is_error
            assert out.text.startswith("error: legacy.py is not UTF-8 text (byte 0xe9 at offset 3)")
            assert (await box.read_file("legacy.py")) == latin1
        finally:
            await box.close()

    asyncio.run(go())


# --- a lost sandbox ---------------------------------------------------------------------


def test_a_lost_sandbox_ends_the_session_at_once_with_its_reason() -> None:
    async def go() -> None:
        box = LocalSandbox()
        await box.start()
        try:
            events = Events()
            model = scripted(
                ("shell", {"command": f"rm -rf {box.workdir}"}),
                ("shell", {"command": "echo 1"}),
                ("write_file", {"path": "a", "content": "b"}),
                ("shell", {"command": "echo 2"}),
                ("finish", {}),
            )
            outcome = await make_loop(model, box, events).run("x")
            assert outcome.status == "error"
            assert outcome.reason.startswith("sandbox lost: workspace ")
            assert outcome.turns == 2  # the first call that met the lost sandbox ended it
            assert len(events.of(EventType.agent_tool_result)) == 1
            with pytest.raises(SandboxLost):
                await box.write_file("a", b"b")  # and a write does not bring it back
        finally:
            await box.close()

    asyncio.run(go())
