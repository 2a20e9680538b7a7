"""The session runner (no Ray): checkpoints that match their state and cost nothing between
them, a decision that arrives as the session parks, skills on every session and out of the
diff, and a sandbox lost mid-session."""

from __future__ import annotations

import asyncio
import io
import json
import tarfile
from pathlib import Path
from typing import Any

from actors.session import Checkpointer, SessionRunner
from core.events import EventType
from core.specs import AgentSpec
from harness.hooks import Decision, InboxHooks
from harness.loop import AgentLoop
from harness.skills import load_skills
from harness.tools import ToolBox, ToolContext
from sandboxes.base import tar_files
from sandboxes.local import LocalSandbox
from tests.test_harness_support import (
    Box,
    Events,
    assignment,
    factory,
    run_session,
    scripted,
    settings,
    tool_results,
)


def file_in(archive: bytes, name: str) -> bytes | None:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        try:
            member = tar.extractfile(name)
        except KeyError:
            return None
        return member.read() if member else None


# --- checkpoints ------------------------------------------------------------------------


def test_a_checkpoints_workspace_matches_its_state_even_when_the_snapshot_is_slow() -> None:
    """The loop waits for the snapshot: the next command cannot land in it, so a resume from
    the checkpoint never runs a command twice."""
    saved: list[tuple[dict[str, Any], bytes]] = []

    async def sink(
        task_id: str, session_id: str, state: dict[str, Any], ws: bytes, base: bytes | None
    ) -> None:
        saved.append((state, ws))

    runner = SessionRunner(
        settings(checkpoint_interval_s=1e-6), "w1", factory(Box(0.05)), checkpoints=sink
    )
    script = [("shell", {"command": "echo x >> log"})] * 4
    result, _ = run_session(runner, assignment(AgentSpec(), *script, ("finish", {})))
    assert result.status == "succeeded"
    assert len(saved) >= 3
    for state, workspace in saved:
        ran = sum(m["role"] == "tool" for m in state["messages"])
        assert (file_in(workspace, "log") or b"").count(b"x") == ran, state["turns"]


class CountingLoop(AgentLoop):
    built = 0

    def state(self) -> dict[str, Any]:
        self.built += 1
        return super().state()


def test_the_state_is_built_only_when_a_checkpoint_is_taken() -> None:
    async def go(interval_s: float) -> tuple[int, int]:
        box = LocalSandbox()
        await box.start()
        try:

            async def sink(*_: Any) -> None:
                pass

            checkpointer = Checkpointer(sink, "t", "s", box, interval_s)
            loop = CountingLoop(
                "be good",
                scripted(*[("shell", {"command": "true"})] * 5, ("finish", {})),
                ToolBox(["shell", "finish"]),
                ToolContext(sandbox=box),
                Events(),
                max_turns=10,
                time_limit_s=30,
                checkpoint=checkpointer,
            )
            assert (await loop.run("x")).status == "finished"
            return loop.built, checkpointer.taken
        finally:
            await box.close()

    assert asyncio.run(go(3600.0)) == (0, 0)  # none due: no state built at all
    built, taken = asyncio.run(go(1e-6))
    assert built == taken >= 3


# --- a decision that arrives as the session parks -----------------------------------------


def test_a_decision_delivered_as_the_session_parks_travels_with_the_parked_state() -> None:
    hooks = InboxHooks()
    careful = AgentSpec(name="careful", approvals={"shell": "always_ask"})
    script = [
        ("write_file", {"path": "junk", "content": "x"}),
        ("shell", {"command": "rm junk"}),
        ("finish", {"summary": "cleaned"}),
    ]

    def deliver_late(n: int) -> None:
        if n == 2:  # the snapshot taken after the loop parked: the decision lands now
            hooks.push_decision("call_2", Decision(allow=True, message="go"))

    runner = SessionRunner(settings(), "w1", factory(Box(after_snapshot=deliver_late)))
    parked, _ = run_session(runner, assignment(careful, *script), hooks)
    assert parked.outcome is not None and parked.outcome.status == "parked"
    state = json.loads(json.dumps(parked.outcome.state))
    assert state["pending_approval"]["decision"] == {"allow": True, "message": "go"}
    assert not hooks.decisions  # taken, not left behind

    # Resumed where nobody has the decision any more: the state's is used, none is asked for.
    resume = assignment(careful, *script, loop_state=state, workspace=parked.workspace)
    runner = SessionRunner(settings(approval_wait_s=0), "w2", factory())
    result, events = run_session(runner, resume)
    assert result.status == "succeeded", result.reason
    assert result.outcome is not None and result.outcome.summary == "cleaned"
    assert result.changed_files == ["junk"]  # removed by the approved call
    decided = [e.payload for e in events if e.type == EventType.approval_decided]
    assert decided == [{"call_id": "call_2", "allow": True, "message": "go", "by": ""}]
    assert not [e for e in events if e.type == EventType.approval_requested]


# --- skills --------------------------------------------------------------------------------


def lint_skill(root: Path) -> Path:
    (root / "lint").mkdir()
    (root / "lint" / "SKILL.md").write_text("---\nname: lint\ndescription: Lint it.\n---\n")
    (root / "lint" / "run.sh").write_text("echo linted\n")
    return root


def test_every_session_installs_its_skills_and_they_stay_out_of_the_diff(tmp_path: Path) -> None:
    """A handed-over session (it starts from a workspace) gets its agent's skills too; the
    skills from settings.skill_dirs come with the built-in ones; .skills/ is not a change."""
    runner = SessionRunner(settings(skill_dirs=[str(lint_skill(tmp_path))]), "w1", factory())
    agent = AgentSpec(name="docs", skills=["lint", "repo-summary"])
    script = [
        ("shell", {"command": "bash .skills/lint/run.sh"}),
        ("shell", {"command": "python3 .skills/repo-summary/summarize.py"}),
        ("write_file", {"path": "README.md", "content": "docs"}),
        ("finish", {}),
    ]
    for workspace in (None, tar_files({"app.py": b"print(1)\n"})):
        result, events = run_session(runner, assignment(agent, *script, workspace=workspace))
        assert result.status == "succeeded", result.reason
        lint, summary = tool_results(events)[:2]
        assert not lint["is_error"] and lint["stdout"].strip() == "linted"
        assert not summary["is_error"] and "files under" in summary["stdout"]
        assert result.changed_files == ["README.md"]
        assert ".skills" not in (result.diff or "")


def test_skill_dirs_are_searched_before_the_built_in_library(tmp_path: Path) -> None:
    lint_skill(tmp_path)
    lint, builtin = load_skills(["lint", "repo-summary"], [tmp_path])
    assert lint.path == tmp_path / "lint" and builtin.path.parent.name == "skill_library"
    mine = tmp_path / "repo-summary"
    mine.mkdir()
    (mine / "SKILL.md").write_text("---\nname: repo-summary\ndescription: Mine.\n---\n")
    [override] = load_skills(["repo-summary"], [tmp_path])
    assert override.path == mine and override.description == "Mine."


# --- a lost sandbox ------------------------------------------------------------------------


def test_a_sandbox_lost_mid_session_fails_the_attempt_with_its_reason() -> None:
    box = Box()
    runner = SessionRunner(settings(), "w1", factory(box))
    script = [
        ("write_file", {"path": "a", "content": "1"}),
        ("shell", {"command": 'rm -rf "$PWD"'}),
        ("shell", {"command": "echo never"}),
        ("finish", {}),
    ]
    result, events = run_session(runner, assignment(AgentSpec(), *script))
    assert result.status == "failed" and result.reason.startswith("sandbox lost: workspace ")
    assert result.outcome is not None and result.outcome.turns == 3
    assert result.outcome.state is None  # nothing to resume from
    assert len(tool_results(events)) == 2
    ended = [e.payload for e in events if e.type == EventType.session_ended]
    assert ended[0]["reason"] == result.reason


# --- the task's base: what every session's diff is against ---------------------------------


def test_a_session_given_the_tasks_base_diffs_against_it_and_skills_stay_out(
    tmp_path: Path,
) -> None:
    """A resumed or handed-over session starts from a workspace, but its diff (and so the
    task's results) shows every change since the task started; its own skills are left out."""
    runner = SessionRunner(settings(skill_dirs=[str(lint_skill(tmp_path))]), "w1", factory())
    agent = AgentSpec(name="docs", skills=["lint"])
    base = tar_files({"app.py": b"print(0)\n"})
    resumed_from = tar_files({"app.py": b"print(1)\n"})  # changed by an earlier session
    step = ("write_file", {"path": "new.txt", "content": "n"})
    a = assignment(agent, step, ("finish", {}), workspace=resumed_from, base=base)
    result, _ = run_session(runner, a)
    assert result.status == "succeeded", result.reason
    assert result.changed_files == ["app.py", "new.txt"]
    assert "-print(0)\n+print(1)\n" in (result.diff or "")
    assert result.base is None  # it did not seed: the task's base is already kept
    assert file_in(result.workspace or b"", "new.txt") == b"n"
    # Without a base (an older task's resume point), the session's start is the baseline.
    result, _ = run_session(runner, assignment(agent, step, ("finish", {}), workspace=resumed_from))
    assert result.changed_files == ["new.txt"]


def test_a_seeding_session_sends_the_tasks_base_once_to_checkpoints_and_when_kept() -> None:
    sent: list[bytes | None] = []

    async def sink(task_id: str, session_id: str, state: Any, ws: bytes, base: Any) -> None:
        sent.append(base)

    runner = SessionRunner(
        settings(checkpoint_interval_s=1e-6), "w1", factory(Box()), checkpoints=sink
    )
    script = [("shell", {"command": "echo x >> log"})] * 3
    task = assignment(AgentSpec(), *script, ("finish", {}), keep_workspace=True)
    task.task = task.task.model_copy(update={"files": {"seed.txt": "s"}})
    result, _ = run_session(runner, task)
    assert result.status == "succeeded", result.reason
    assert len(sent) >= 2 and sent[0] is not None and sent[1:] == [None] * (len(sent) - 1)
    assert file_in(sent[0], "seed.txt") == b"s" and file_in(sent[0], "log") is None
    assert result.base == sent[0]  # kept for a later stage: it carries the base too
    # A last stage's result that is not continued carries no base (no tar for nothing).
    result, _ = run_session(runner, assignment(AgentSpec(), ("finish", {})))
    assert result.base is None and result.workspace is not None


def test_a_session_hands_its_sandbox_to_release_after_its_result_is_complete() -> None:
    """A worker removes the container behind its next session: the runner gives the used
    sandbox to ``release`` instead of closing it, once the workspace is in the result."""
    released: list[Any] = []

    async def release(sandbox: Any) -> None:
        released.append(sandbox)
        assert (await sandbox.read_file("f.txt")) == b"1"  # still open: not closed by the run

    box = Box()
    runner = SessionRunner(settings(), "w1", factory(box), release=release)
    write = ("write_file", {"path": "f.txt", "content": "1"})
    result, _ = run_session(runner, assignment(AgentSpec(), write, ("finish", {})))
    assert result.status == "succeeded" and result.workspace is not None
    assert released == [box]  # the pool's own sandbox (not the session's wrapper of it)
    assert Path(box.workdir).is_dir()  # the release closes it, not the runner
