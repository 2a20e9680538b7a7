"""Pull requests for delivered branches without Ray (actors/pulls.py through the dispatcher):
a task on a local bare remote mapped to the fake GitHub gets a pull request from its branch
into its ref with the prompt's first line as title and the summary, gate, attempts and cost in
its body; an existing one is adopted; GitHub failing leaves the task succeeded with the error
in its delivered event; the token reaches no event, log line or error. On Ray: a SQL row
watched by ``fleet watch`` ends with its branch and pull request written back."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from actors import pulls
from core.events import Event, EventType
from core.settings import FleetSettings
from core.specs import FleetConfig, RepoSpec, SourceSpec, TaskState
from fleet.watch import Watcher, WatcherThread, WatchSettings
from sources import build_sources
from tests.conftest import script
from tests.fake_github import FakeGitHub, fake_github
from tests.test_delivery import TOKEN, Fleet, bare_remote, git_task, run_fleet, sh
from tests.test_sources_sql import COLUMNS, Table
from tests.test_watch import final_row

PROMPT = "Say hello in hello.txt\n\nThe file must end with a newline."
GATE = "echo gate-says-all-green && test -f hello.txt"


@pytest.fixture
def github() -> Iterator[FakeGitHub]:
    with fake_github(TOKEN) as fake:
        fake.add_repo("acme/app")
        yield fake


def on_github(bare: Path, task_id: str, **fields: Any) -> dict[str, Any]:
    """A task on the bare remote, which the fake GitHub knows as acme/app."""
    repo = {"url": str(bare), "ref": "main", "github": "acme/app"}
    return git_task(bare, task_id, prompt=PROMPT, gate=GATE, repo=repo) | fields


def github_fleet(
    tmp_path: Path, github: FakeGitHub, monkeypatch: pytest.MonkeyPatch, **overrides: Any
) -> Fleet:
    monkeypatch.setenv("MY_GIT_TOKEN", TOKEN)
    return Fleet(tmp_path, git_token_env="MY_GIT_TOKEN", github_api_url=github.url, **overrides)


def delivered(events: list[Event]) -> dict[str, Any]:
    found = [e for e in events if e.type == EventType.task_delivered]
    assert len(found) == 1, [e.type for e in events]
    return found[0].payload


def pull_requests(github: FakeGitHub) -> list[dict[str, Any]]:
    repo = github.repos["acme/app"]
    with github.lock:
        return [github._pull_json(repo, number) for number in sorted(repo.pulls)]


# --- which repositories are on GitHub, and what a pull request says ---------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://github.com/acme/app.git", "acme/app"),
        ("https://github.com/acme/app", "acme/app"),
        ("https://GitHub.com/acme/app/", "acme/app"),
        ("git@github.com:acme/app.git", "acme/app"),
        ("ssh://git@github.com/acme/app.git", "acme/app"),
        ("https://ghe.example/acme/app.git", "acme/app"),
        ("https://gitlab.com/acme/app.git", None),
        ("https://github.com/acme/app/tree/main", None),
        ("/srv/git/app.git", None),
        ("file:///srv/git/app.git", None),
    ],
)
def test_a_repository_is_on_github_by_its_host_or_by_name(url: str, expected: str | None) -> None:
    settings = FleetSettings(github_hosts=["github.com", "ghe.example"])
    assert pulls.github_repo(settings, RepoSpec(url=url)) == expected
    named = RepoSpec(url=url, github="other/name")
    assert pulls.github_repo(settings, named) == "other/name"


def test_a_github_name_must_be_owner_and_name() -> None:
    for bad in ("acme", "acme/app/x", "-x/app", "acme/a b"):
        with pytest.raises(ValueError, match="owner/name"):
            RepoSpec(url="/srv/app", github=bad)
    with pytest.raises(ValueError, match="credentials"):
        FleetSettings(github_api_url="https://user:pw@api.github.com")


def test_the_title_is_the_prompts_first_line_and_the_body_quotes_the_gate_safely() -> None:
    assert pulls.pull_title("\n  Fix the login  \nmore") == "Fix the login"
    long = pulls.pull_title("x" * 200)
    assert len(long) == pulls.TITLE_LIMIT and long.endswith("…")
    output = "start\n" + "y" * 5000 + "\n```\nends with a fence"
    body = pulls.pull_body("t-1", "Did it", "make test", output, 3, 0.25, "abc123")
    assert body.startswith("Did it\n\n**Gate** `make test` passed.")
    assert "start" not in body and body.count("ends with a fence") == 1
    assert "\n````\n" in body  # a longer fence than the output's own
    assert "Task `t-1`: 3 attempts, $0.2500, commit abc123." in body


# --- the whole path: push, then the pull request ------------------------------------------


def test_a_delivered_task_gets_a_pull_request_from_its_branch_into_its_ref(
    tmp_path: Path,
    github: FakeGitHub,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    bare = bare_remote(tmp_path)
    fleet = github_fleet(tmp_path, github, monkeypatch)
    events = run_fleet(fleet, on_github(bare, "t-pr"))
    record = fleet.sched.tasks["t-pr"]
    assert record.state == TaskState.succeeded, record.reason
    [pull] = pull_requests(github)
    assert (pull["head"]["ref"], pull["base"]["ref"]) == ("fleet/t-pr", "main")
    assert pull["title"] == "Say hello in hello.txt"
    body = pull["body"]
    assert body.startswith("Wrote hello.txt\n\n**Gate** `" + GATE + "` passed.")
    assert "gate-says-all-green" in body
    commit = sh("rev-parse", "fleet/t-pr", cwd=bare)
    assert f"Task `t-pr`: 1 attempt, $0.0000, commit {commit}." in body
    assert record.pr_url == pull["html_url"] and record.branch == "fleet/t-pr"
    payload = delivered(events)
    assert payload["pr_url"] == pull["html_url"] and "pr_error" not in payload
    assert [e.type for e in events][-2:] == [EventType.task_delivered, EventType.task_succeeded]
    post = next(r for r in github.requests if r.method == "POST")
    headers = {k.lower(): v for k, v in post.headers.items()}
    assert headers["authorization"] == f"token {TOKEN}"
    assert not any(TOKEN in e.model_dump_json() for e in events)
    assert TOKEN not in caplog.text


def test_an_open_pull_request_for_the_branch_is_adopted(
    tmp_path: Path, github: FakeGitHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    bare = bare_remote(tmp_path)
    with github.lock:
        github.handle(
            "POST",
            "/repos/acme/app/pulls",
            {},
            {"title": "opened by a person", "head": "fleet/t-again", "base": "main"},
        )
    [existing] = pull_requests(github)
    fleet = github_fleet(tmp_path, github, monkeypatch)
    events = run_fleet(fleet, on_github(bare, "t-again"))
    assert fleet.sched.tasks["t-again"].state == TaskState.succeeded
    assert fleet.sched.tasks["t-again"].pr_url == existing["html_url"]
    assert delivered(events)["pr_url"] == existing["html_url"]
    assert pull_requests(github) == [existing]
    assert github.count("POST", "/pulls") == 0


def test_a_pull_request_opened_meanwhile_is_adopted_after_githubs_422(
    tmp_path: Path, github: FakeGitHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another run opened it between the lookup and the creation: GitHub answers 422."""
    bare = bare_remote(tmp_path)
    looked = 0
    find = pulls._find

    async def racing(api: Any, full_name: str, branch: str) -> dict[str, Any] | None:
        nonlocal looked
        looked += 1
        if looked == 1:
            with github.lock:
                body = {"title": "the other run's", "head": branch, "base": "main"}
                github.handle("POST", "/repos/acme/app/pulls", {}, body)
            return None
        return await find(api, full_name, branch)

    monkeypatch.setattr(pulls, "_find", racing)
    fleet = github_fleet(tmp_path, github, monkeypatch)
    events = run_fleet(fleet, on_github(bare, "t-race"))
    [pull] = pull_requests(github)
    assert pull["title"] == "the other run's"
    assert delivered(events)["pr_url"] == pull["html_url"]
    assert [r.status for r in github.requests if r.method == "POST"] == [422]


def test_github_failing_leaves_the_task_succeeded_with_the_error_recorded(
    tmp_path: Path,
    github: FakeGitHub,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    bare = bare_remote(tmp_path)
    github.fail_next(10, status=500, retry_after=0)
    fleet = github_fleet(tmp_path, github, monkeypatch)
    events = run_fleet(fleet, on_github(bare, "t-down"))
    record = fleet.sched.tasks["t-down"]
    assert record.state == TaskState.succeeded
    assert record.commit == sh("rev-parse", "fleet/t-down", cwd=bare)  # the push stands
    assert record.pr_url is None and pull_requests(github) == []
    payload = delivered(events)
    assert "pr_url" not in payload
    assert payload["pr_error"].startswith("pull request on acme/app: GitHub answered 500")
    assert len(github.requests) == 1 + pulls.RETRIES  # retried, then given up
    assert not any(TOKEN in e.model_dump_json() for e in events)
    assert TOKEN not in caplog.text


def test_a_refused_token_or_none_at_all_is_the_recorded_error_never_the_token(
    tmp_path: Path, github: FakeGitHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    bare = bare_remote(tmp_path)
    github.token = "another-token"  # ours is refused: 401 Bad credentials
    fleet = github_fleet(tmp_path, github, monkeypatch)
    events = run_fleet(fleet, on_github(bare, "t-401"))
    assert fleet.sched.tasks["t-401"].state == TaskState.succeeded
    error = delivered(events)["pr_error"]
    assert "401" in error and "Bad credentials" in error and TOKEN not in error

    fleet = Fleet(tmp_path / "none", github_api_url=github.url)
    events = run_fleet(fleet, on_github(bare, "t-none"))
    assert fleet.sched.tasks["t-none"].state == TaskState.succeeded
    assert "no token" in delivered(events)["pr_error"]


def test_no_pull_request_when_turned_off_or_not_on_github(
    tmp_path: Path, github: FakeGitHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    bare = bare_remote(tmp_path)
    fleet = github_fleet(tmp_path, github, monkeypatch, github_pull_requests=False)
    events = run_fleet(fleet, on_github(bare, "t-off"))
    assert fleet.sched.tasks["t-off"].state == TaskState.succeeded
    assert set(delivered(events)) == {"branch", "commit", "url", "adopted", "wip"}

    fleet = github_fleet(tmp_path / "plain", github, monkeypatch)
    task = on_github(bare, "t-plain", repo={"url": str(bare), "ref": "main"})
    events = run_fleet(fleet, task)
    assert "pr_error" not in delivered(events) and fleet.sched.tasks["t-plain"].pr_url is None
    assert github.requests == []


def test_a_work_in_progress_push_opens_no_pull_request(
    tmp_path: Path, github: FakeGitHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    bare = bare_remote(tmp_path)
    fleet = github_fleet(tmp_path, github, monkeypatch, git_push_wip=True)
    events = run_fleet(fleet, on_github(bare, "t-wip", gate="false"))
    assert fleet.sched.tasks["t-wip"].state == TaskState.needs_human
    assert delivered(events)["wip"] is True
    assert github.requests == []


def test_an_approved_review_opens_the_pull_request_with_the_gate_command(
    tmp_path: Path, github: FakeGitHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    bare = bare_remote(tmp_path)
    fleet = github_fleet(tmp_path, github, monkeypatch)

    async def scenario() -> None:
        await fleet.run(on_github(bare, "t-rev", require_approval=True))
        assert pull_requests(github) == []  # not before a person approves
        assert await fleet.commands.review("t-rev", True, "ship it")

    asyncio.run(scenario())
    record = fleet.sched.tasks["t-rev"]
    [pull] = pull_requests(github)
    assert record.state == TaskState.succeeded and record.pr_url == pull["html_url"]
    assert pull["head"]["ref"] == "fleet/t-rev"
    assert pull["body"].startswith("Wrote hello.txt\n\n**Gate** `" + GATE + "` passed.")


def test_no_token_gives_an_error_without_asking_github() -> None:
    pull = asyncio.run(
        pulls.open_pull(FleetSettings(), "acme/app", "fleet/x", "main", "t", "b", None)
    )
    assert pull.url is None and "no token" in pull.error


# --- on Ray, from a source item to its pull request ------------------------------------------


@pytest.mark.ray
def test_a_watched_sql_row_ends_succeeded_with_its_branch_and_pull_request(
    fleet_factory: Any, github: FakeGitHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = Table("sqlite", f"sqlite://{tmp_path / 'work.db'}", "work", monkeypatch)
    ddl = COLUMNS.format(priority="priority INTEGER", updated="updated_at TEXT")
    table.sql(f"CREATE TABLE work (id INTEGER PRIMARY KEY, {ddl})")
    monkeypatch.setenv("FLEET_TEST_PR_DSN", table.dsn)
    bare = bare_remote(tmp_path)
    token_file = tmp_path / "git-token"
    token_file.write_text(TOKEN + "\n")  # a file: read by the supervisor, wherever it runs
    task = {
        "repo": {"url": str(bare), "ref": "main", "github": "acme/app"},
        "script": script(
            ("write_file", {"path": "hello.txt", "content": "hello\n"}),
            ("finish", {"summary": "Wrote hello.txt"}),
        ),
        "gate": GATE,
    }
    options = {"dsn_env": "FLEET_TEST_PR_DSN", "table": "work", "poll_interval_s": 0.2}
    config = FleetConfig(
        sources=[SourceSpec(name="tickets", kind="sql", options=options, task=task)]
    )
    fleet = fleet_factory(
        config=config, workers=1, git_token_file=str(token_file), github_api_url=github.url
    )
    watcher = Watcher(fleet, build_sources(config), WatchSettings(track_interval_s=0.1), config)
    thread = WatcherThread(watcher).start()
    try:
        item = table.insert(PROMPT)
        row = final_row(table, item, timeout=90)
    finally:
        watcher.settings.drain_timeout_s = 0
        thread.stop(30)
    [pull] = pull_requests(github)
    task_id = f"tickets-{item}"
    assert (row["state"], row["summary"]) == ("succeeded", "Wrote hello.txt")
    assert (row["branch"], row["pr_url"]) == (f"fleet/{task_id}", pull["html_url"])
    assert (pull["head"]["ref"], pull["base"]["ref"]) == (f"fleet/{task_id}", "main")
    assert pull["title"] == "Say hello in hello.txt" and "gate-says-all-green" in pull["body"]
    assert fleet.get(task_id).pr_url == pull["html_url"]
    assert not any(TOKEN in e.model_dump_json() for e in fleet.events(task_id))
