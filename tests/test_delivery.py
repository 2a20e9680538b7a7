"""Tasks on git repositories without Ray: the host-side checkout on the task's branch, the
commit and push of a result that passed (author, message, trailer), nothing pushed for a
failure (unless a work-in-progress push is asked for), a refused push sent to a person with
git's error, a retry after a crash that adopts the delivered commit, and a token that never
reaches an event, a log line, an error or the agent."""

from __future__ import annotations

import asyncio
import io
import logging
import socket
import subprocess
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

from actors import delivery
from actors.artifacts import ArtifactStore
from actors.commands import Commands
from actors.delivery import Auth, GitError, branch_name, checkout, commit_message
from actors.dispatch import Dispatcher
from actors.journal import Journal
from actors.manager import Manager
from actors.pool import WorkerPool
from actors.scheduler import Scheduler
from actors.session import SessionRunner
from actors.streams import LiveStreams
from core.eventlog import EventLog
from core.events import Event, EventType
from core.settings import FleetSettings, PoolSpec
from core.specs import EnvironmentSpec, FleetConfig, RepoSpec, TaskSpec, TaskState
from sandboxes.base import Sandbox, tar_files
from sandboxes.local import LocalSandbox

TOKEN = "tok-s3cr3t-4d9f0a"


def sh(*args: str, cwd: Path | None = None) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


def bare_remote(tmp_path: Path) -> Path:
    """A bare repository with one commit on ``main`` (README.md, app.py)."""
    seed, bare = tmp_path / "seed", tmp_path / "remote.git"
    seed.mkdir()
    sh("init", "-q", "-b", "main", cwd=seed)
    (seed / "README.md").write_text("# app\n")
    (seed / "app.py").write_text("print('hi')\n")
    sh("add", "-A", cwd=seed)
    sh("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first", cwd=seed)
    sh("clone", "-q", "--bare", str(seed), str(bare))
    return bare


def refuse_pushes(bare: Path, message: str) -> None:
    hook = bare / "hooks" / "pre-receive"
    hook.write_text(f"#!/bin/sh\necho '{message}' >&2\nexit 1\n")
    hook.chmod(0o755)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def files_of(archive: bytes) -> dict[str, bytes]:
    out = {}
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        for member in tar:
            handle = tar.extractfile(member) if member.isfile() else None
            if handle is not None:
                out[member.name.removeprefix("./")] = handle.read()
    return out


def settings(tmp_path: Path, **overrides: Any) -> FleetSettings:
    values: dict[str, Any] = {
        "events_dir": str(tmp_path / "events"),
        "memory": False,
        "idle_recheck_s": 30,
        "sandbox": "local",
        "retry_backoff_s": 0.0,
        "default_max_attempts": 1,
        "git_author_name": "Fleet Bot",
        "git_author_email": "bot@example.com",
    } | overrides
    return FleetSettings(**values)


# --- the git module alone -------------------------------------------------------------


def test_checkout_is_a_real_checkout_on_the_task_branch(tmp_path: Path) -> None:
    bare = bare_remote(tmp_path)
    s = settings(tmp_path)
    got = asyncio.run(checkout(RepoSpec(url=str(bare), ref="main"), "t-1", s))
    main = sh("rev-parse", "main", cwd=bare)
    assert (got.branch, got.base_commit) == ("fleet/t-1", main)
    files = files_of(got.archive)
    assert files["app.py"] == b"print('hi')\n"
    assert files[".git/HEAD"] == b"ref: refs/heads/fleet/t-1\n"
    assert f"url = {bare}".encode() in files[".git/config"]  # origin: the plain URL


def test_probe_names_why_a_repository_cannot_be_cloned(tmp_path: Path) -> None:
    bare = bare_remote(tmp_path)
    s = settings(tmp_path)
    main = sh("rev-parse", "main", cwd=bare)
    for fine in (None, "main", main[:12]):
        asyncio.run(delivery.probe(RepoSpec(url=str(bare), ref=fine), s))
    with pytest.raises(GitError, match="has no branch or tag 'nope'"):
        asyncio.run(delivery.probe(RepoSpec(url=str(bare), ref="nope"), s))
    with pytest.raises(GitError, match="ls-remote failed"):
        asyncio.run(delivery.probe(RepoSpec(url=str(tmp_path / "missing.git")), s))
    empty = tmp_path / "empty.git"
    sh("init", "-q", "--bare", str(empty))
    with pytest.raises(GitError, match="has no commits"):
        asyncio.run(delivery.probe(RepoSpec(url=str(empty)), s))


def test_branch_names_are_safe_refs_and_follow_the_pattern(tmp_path: Path) -> None:
    s = settings(tmp_path, branch_pattern="agents/{task_id}/work")
    assert branch_name(s, "t-1") == "agents/t-1/work"
    assert branch_name(s, "a..b~1^:c") == "agents/a.b-1-c/work"
    with pytest.raises(ValueError, match="bad template"):
        settings(tmp_path, branch_pattern="fleet/{nope}")


def test_repo_urls_with_a_password_or_options_are_refused() -> None:
    with pytest.raises(ValueError, match="password"):
        RepoSpec(url="https://me:hunter2@example.com/r.git")
    with pytest.raises(ValueError, match="'-'"):
        RepoSpec(url="--upload-pack=touch /tmp/x")
    with pytest.raises(ValueError, match="transport"):
        RepoSpec(url="ext::sh%-c%touch%/tmp/x")
    with pytest.raises(ValueError, match="branch, tag or commit"):
        RepoSpec(url="/r.git", ref="--force")
    assert RepoSpec(url="git@github.com:org/r.git", ref="v1.2").ref == "v1.2"
    assert TaskSpec(prompt="x", repo="/src/app").repo == "/src/app"  # a directory, as before


def test_the_message_names_the_task_and_its_summary(tmp_path: Path) -> None:
    s = settings(tmp_path)
    text = commit_message(s, "t-9", "Add greeting\nand a test", wip=False)
    assert text.startswith("Add greeting\n\nAdd greeting\nand a test\n\nTask t-9")
    assert text.endswith("\n\nFleet-Task: t-9\n")
    assert "Fleet-WIP: true" in commit_message(s, "t-9", "half", wip=True)


def test_deliver_commits_the_workspace_on_the_base_and_pushes_the_branch(
    tmp_path: Path,
) -> None:
    bare = bare_remote(tmp_path)
    s = settings(tmp_path)
    repo = RepoSpec(url=str(bare), ref="main")
    got = asyncio.run(checkout(repo, "t-2", s))
    files = files_of(got.archive)
    files.pop("README.md")  # the agent deleted it...
    files["hello.txt"] = b"hello\n"  # ...added a file...
    files[".git/hooks/post-commit"] = b"#!/bin/sh\ntouch /tmp/pwned\n"  # ...and its .git
    files[".skills/tool/SKILL.md"] = b"installed by the fleet\n"
    result = asyncio.run(
        delivery.deliver(s, "t-2", repo, got.base_commit, tar_files(files), "Say hello")
    )
    assert not result.refused and not result.adopted and result.branch == "fleet/t-2"
    assert sh("rev-parse", "fleet/t-2", cwd=bare) == result.commit
    assert sh("rev-parse", "fleet/t-2^", cwd=bare) == got.base_commit
    assert sh("ls-tree", "--name-only", "fleet/t-2", cwd=bare).split() == ["app.py", "hello.txt"]
    author = sh("log", "-1", "--format=%an <%ae>|%cn", "fleet/t-2", cwd=bare)
    assert author == "Fleet Bot <bot@example.com>|Fleet Bot"
    message = sh("log", "-1", "--format=%B", "fleet/t-2", cwd=bare)
    assert message.startswith("Say hello") and "t-2" in message
    assert "Fleet-Task: t-2" in message.splitlines()


def test_a_retry_after_a_crash_adopts_the_delivered_commit_and_pushes_nothing(
    tmp_path: Path,
) -> None:
    bare = bare_remote(tmp_path)
    s = settings(tmp_path)
    repo = RepoSpec(url=str(bare), ref="main")
    base = sh("rev-parse", "main", cwd=bare)
    first = asyncio.run(delivery.deliver(s, "t", repo, base, tar_files({"a": b"1"}), "one"))
    again = asyncio.run(delivery.deliver(s, "t", repo, base, tar_files({"a": b"2"}), "two"))
    assert again.adopted and again.commit == first.commit
    assert sh("rev-parse", "fleet/t", cwd=bare) == first.commit
    other = asyncio.run(delivery.deliver(s, "u", repo, base, tar_files({"a": b"1"}), "one"))
    assert other.commit != first.commit  # another task's branch is its own


def test_a_branch_holding_other_work_refuses_the_push(tmp_path: Path) -> None:
    bare = bare_remote(tmp_path)
    s = settings(tmp_path)
    repo = RepoSpec(url=str(bare), ref="main")
    sh("branch", "fleet/t", "main", cwd=bare)
    base = sh("rev-parse", "main", cwd=bare)
    (tmp_path / "w").mkdir()
    sh("clone", "-q", str(bare), str(tmp_path / "w"))
    sh("checkout", "-q", "fleet/t", cwd=tmp_path / "w")
    sh("-c", "user.name=p", "-c", "user.email=p@p", "commit", "-q", "--allow-empty", "-m",
       "someone's work", cwd=tmp_path / "w")  # fmt: skip
    sh("push", "-q", "origin", "fleet/t", cwd=tmp_path / "w")
    theirs = sh("rev-parse", "fleet/t", cwd=bare)
    got = asyncio.run(delivery.deliver(s, "t", repo, base, tar_files({"a": b"1"}), "one"))
    assert got.refused and "rejected" in got.error
    assert sh("rev-parse", "fleet/t", cwd=bare) == theirs


def test_nothing_changed_pushes_nothing(tmp_path: Path) -> None:
    bare = bare_remote(tmp_path)
    s = settings(tmp_path)
    repo = RepoSpec(url=str(bare), ref="main")
    got = asyncio.run(checkout(repo, "t", s))
    done = asyncio.run(delivery.deliver(s, "t", repo, got.base_commit, got.archive, "nothing"))
    assert done.commit is None and not done.refused
    assert "fleet/t" not in sh("branch", "--list", cwd=bare)


def test_the_token_goes_in_a_header_for_that_host_and_is_scrubbed_everywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("MY_GIT_TOKEN", TOKEN)
    s = settings(tmp_path, git_token_env="MY_GIT_TOKEN")
    auth = Auth.from_settings(s)
    config = auth.config("https://git.example.com/org/r.git")
    assert config["GIT_CONFIG_KEY_0"] == "http.https://git.example.com/.extraHeader"
    assert auth.config(str(tmp_path)) == {}  # never for a file or ssh remote
    assert auth.scrub(f"x {TOKEN} {config['GIT_CONFIG_VALUE_0']}").count("***") == 2
    url = f"http://127.0.0.1:{closed_port()}/org/r.git"
    caplog.set_level(logging.DEBUG)
    with pytest.raises(GitError) as failed:
        asyncio.run(checkout(RepoSpec(url=url, ref="main"), "t", s))
    assert "127.0.0.1" in str(failed.value) and TOKEN not in str(failed.value)
    pushed = asyncio.run(delivery.deliver(s, "t", RepoSpec(url=url), None, b"", "x"))
    assert pushed.refused and TOKEN not in pushed.error
    assert TOKEN not in caplog.text


def test_a_token_file_is_read_when_the_variable_is_unset(tmp_path: Path) -> None:
    (tmp_path / "token").write_text(f"{TOKEN}\n")
    s = settings(tmp_path, git_token_env="UNSET_VAR_XYZ", git_token_file=str(tmp_path / "token"))
    assert Auth.from_settings(s).token == TOKEN
    missing = settings(tmp_path, git_token_file=str(tmp_path / "nope"))
    with pytest.raises(GitError, match="git_token_file"):
        Auth.from_settings(missing)


# --- the whole path: worker, session, dispatcher, journal --------------------------------


class Fleet:
    """The plain parts wired as the supervisor wires them, and one in-process worker that
    runs sessions in local sandboxes."""

    def __init__(self, root: Path, **overrides: Any) -> None:
        self.settings = settings(root, **overrides)
        self.sched = Scheduler(FleetConfig(), self.settings)
        self.pool = WorkerPool()
        self.log = EventLog(self.settings.events_dir, writer="test")
        self.streams = LiveStreams(100, 100)
        self.journal = Journal(
            self.sched, self.log, self.streams, self.pool, self.settings, lambda c: None
        )
        self.store = ArtifactStore(f"{self.settings.events_dir}/_artifacts")

        async def nothing(*_: Any) -> None:
            return None

        manager = Manager(
            self.settings, FleetConfig(), self.sched, self.pool, nothing, nothing, lambda *_: None
        )
        self.dispatch = Dispatcher(
            self.sched, self.pool, self.journal, self.store, manager, self.settings
        )
        link: Any = None  # no session is running when a review comes
        self.commands = Commands(
            self.sched, self.journal.record, link, None, self.dispatch.deliver_reviewed
        )
        self.runner = SessionRunner(self.settings, "w1", self._sandbox)
        self.workspaces: list[bytes] = []

    async def _sandbox(self, environment: EnvironmentSpec, name: str) -> Sandbox:
        box = LocalSandbox(env=environment.env, name=name)
        await box.start()
        return box

    async def run(self, task: dict[str, Any]) -> None:
        """Submit the task and run sessions until none is assigned."""
        self.pool.open()
        self.streams.open()
        self.journal.open()
        self.pool.add("w1", object(), PoolSpec(), time.time())
        await self.journal.record([self.sched.submit(TaskSpec.model_validate(task))])
        while self.sched.queue and (a := await self.dispatch.assign("w1")) is not None:
            session: list[Event] = []
            result = await self.runner.run(a, session.append)
            result.events = session
            if result.workspace is not None:
                self.workspaces.append(result.workspace)
            await self.dispatch.take_result("w1", result)


def write_and_finish(summary: str = "Wrote hello.txt") -> list[dict[str, Any]]:
    return [
        {"tool": "write_file", "args": {"path": "hello.txt", "content": "hello\n"}},
        {"tool": "shell", "args": {"command": "env > seen-env.txt"}},
        {"tool": "finish", "args": {"summary": summary}},
    ]


def git_task(bare: Path, task_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "id": task_id,
        "prompt": "say hello",
        "repo": {"url": str(bare), "ref": "main"},
        "script": write_and_finish(),
        "gate": "test -f hello.txt && git rev-parse --abbrev-ref HEAD | grep -qx fleet/" + task_id,
    } | fields


def run_fleet(fleet: Fleet, task: dict[str, Any]) -> list[Event]:
    async def scenario() -> list[Event]:
        await fleet.run(task)
        return await fleet.journal.task_events(task["id"])

    return asyncio.run(scenario())


def test_a_task_that_passes_its_gate_is_pushed_to_its_branch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("MY_GIT_TOKEN", TOKEN)
    caplog.set_level(logging.DEBUG)
    bare = bare_remote(tmp_path)
    fleet = Fleet(tmp_path, git_token_env="MY_GIT_TOKEN")
    events = run_fleet(fleet, git_task(bare, "t-ok"))
    record = fleet.sched.tasks["t-ok"]
    assert record.state == TaskState.succeeded, record.reason
    commit = sh("rev-parse", "fleet/t-ok", cwd=bare)
    assert (record.branch, record.commit, record.pr_url) == ("fleet/t-ok", commit, None)
    assert record.base_commit == sh("rev-parse", "main", cwd=bare)
    assert sh("show", "fleet/t-ok:hello.txt", cwd=bare) == "hello"
    assert sh("log", "-1", "--format=%an <%ae>", "fleet/t-ok", cwd=bare) == (
        "Fleet Bot <bot@example.com>"
    )
    message = sh("log", "-1", "--format=%B", "fleet/t-ok", cwd=bare)
    assert message.startswith("Wrote hello.txt") and "Fleet-Task: t-ok" in message
    types = [e.type for e in events]
    assert types[-2:] == [EventType.task_delivered, EventType.task_succeeded]
    delivered = events[-2].payload
    assert (delivered["branch"], delivered["commit"], delivered["wip"]) == (
        "fleet/t-ok",
        commit,
        False,
    )
    # The diff is the work, not git's files.
    saved = next(e for e in events if e.type == EventType.artifact_saved)
    assert saved.payload["changed_files"] == ["hello.txt", "seen-env.txt"]
    # The token: not in any event, log line, nor anything the agent could see.
    assert not any(TOKEN in e.model_dump_json() for e in events)
    assert TOKEN not in caplog.text
    workspace = fleet.workspaces[-1]
    assert TOKEN.encode() not in workspace  # its env (seen-env.txt) and its files (.git too)
    assert b"MY_GIT_TOKEN" not in files_of(workspace)["seen-env.txt"]


def test_a_failing_gate_pushes_nothing(tmp_path: Path) -> None:
    bare = bare_remote(tmp_path)
    fleet = Fleet(tmp_path)
    events = run_fleet(fleet, git_task(bare, "t-bad", gate="false"))
    assert fleet.sched.tasks["t-bad"].state == TaskState.needs_human
    assert "fleet" not in sh("branch", cwd=bare)
    assert EventType.task_delivered not in [e.type for e in events]
    assert fleet.sched.tasks["t-bad"].branch is None


def test_a_failed_task_can_leave_its_work_in_progress_on_its_branch(tmp_path: Path) -> None:
    bare = bare_remote(tmp_path)
    fleet = Fleet(tmp_path, git_push_wip=True)
    events = run_fleet(fleet, git_task(bare, "t-wip", gate="false"))
    record = fleet.sched.tasks["t-wip"]
    assert record.state == TaskState.needs_human
    assert record.commit == sh("rev-parse", "fleet/t-wip", cwd=bare)
    message = sh("log", "-1", "--format=%B", "fleet/t-wip", cwd=bare)
    assert message.startswith("WIP: ") and "Fleet-WIP: true" in message
    last = events[-1]
    assert last.type == EventType.task_delivered and last.payload["wip"] is True
    assert sh("show", "fleet/t-wip:hello.txt", cwd=bare) == "hello"


def test_a_push_refused_by_a_hook_sends_the_task_to_a_person_with_the_hook_message(
    tmp_path: Path,
) -> None:
    bare = bare_remote(tmp_path)
    refuse_pushes(bare, "branch fleet/* is protected here")
    fleet = Fleet(tmp_path, git_push_wip=True)
    events = run_fleet(fleet, git_task(bare, "t-hook"))
    record = fleet.sched.tasks["t-hook"]
    assert record.state == TaskState.needs_human
    assert "delivery refused" in record.reason and "is protected here" in record.reason
    assert "fleet" not in sh("branch", cwd=bare)
    ended = events[-1]
    assert ended.type == EventType.task_needs_human
    ref = ended.payload["workspace_ref"]  # the workspace is kept
    assert files_of(fleet.store.get(ref))["hello.txt"] == b"hello\n"
    assert EventType.task_delivered not in [e.type for e in events]  # and no WIP push


def test_an_approved_review_delivers_the_result(tmp_path: Path) -> None:
    bare = bare_remote(tmp_path)
    fleet = Fleet(tmp_path)

    async def scenario() -> list[Event]:
        await fleet.run(git_task(bare, "t-rev", require_approval=True))
        assert fleet.sched.tasks["t-rev"].state == TaskState.awaiting_review
        assert "fleet" not in sh("branch", cwd=bare)  # not before a person approves
        assert await fleet.commands.review("t-rev", True, "ship it")
        return await fleet.journal.task_events("t-rev")

    events = asyncio.run(scenario())
    record = fleet.sched.tasks["t-rev"]
    assert record.state == TaskState.succeeded
    assert record.commit == sh("rev-parse", "fleet/t-rev", cwd=bare)
    assert sh("log", "-1", "--format=%s", "fleet/t-rev", cwd=bare) == "Wrote hello.txt"
    assert [e.type for e in events][-3:] == [
        EventType.review_decided,
        EventType.task_delivered,
        EventType.task_succeeded,
    ]


def test_a_checkout_that_fails_fails_the_attempt_with_the_reason(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    missing = tmp_path / "missing.git"
    run_fleet(fleet, git_task(missing, "t-none"))
    record = fleet.sched.tasks["t-none"]
    assert record.state == TaskState.needs_human
    assert "repository checkout failed" in record.reason
