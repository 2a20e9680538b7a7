"""The GitHub Issues source (sources/github.py) against a local fake GitHub
(tests/fake_github.py): listing, claims (also two watchers racing for the same issues),
progress and outcomes as comments and labels, withdrawals and edits, taking claims up after a
restart, rate limits and outages, errors that name the repository and never the token; and
one run through a real fleet."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from gidgethub import BadRequest
from gidgethub import httpx as gh_httpx

from core.specs import FleetConfig, SourceSpec
from fleet.watch import Watcher, WatcherThread, WatchSettings, task_id_for
from sources import (
    ItemState,
    Outcome,
    SourceConfigError,
    SourceError,
    build_source,
    build_sources,
)
from sources.github import GitHubOptions, GitHubSource
from tests.conftest import script
from tests.fake_github import FakeGitHub, fake_github

TOKEN = "ghp_" + "s3cr3t" * 6
API = "acme/api"
WEB = "acme/web"


@pytest.fixture
def gh() -> Iterator[FakeGitHub]:
    with fake_github(TOKEN) as server:
        server.add_repo(API)
        server.add_repo(WEB)
        yield server


def make(
    gh: FakeGitHub,
    monkeypatch: pytest.MonkeyPatch,
    owner: str | None = "fleet-a",
    name: str = "issues",
    token: str = TOKEN,
    **options: Any,
) -> GitHubSource:
    env = f"FLEET_TEST_GH_{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv(env, token)
    opts = {"repos": [API, WEB], "token_env": env, "base_url": gh.url, **options}
    source = build_source(SourceSpec(name=name, kind="github", options=opts))
    assert isinstance(source, GitHubSource)
    source.owner = owner
    return source


def run(source: GitHubSource, coro: Any) -> Any:
    async def main() -> Any:
        try:
            return await coro
        finally:
            await source.close()

    return asyncio.run(main())


def ids(items: list[Any]) -> list[str]:
    return [item.id for item in items]


# -- listing -------------------------------------------------------------------------------


def test_ready_issues_are_listed_oldest_first_with_prompt_labels_and_agent(
    gh: FakeGitHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = gh.add_issue(
        API, "Fix the login", "It 500s on empty passwords.", ["agent-ready", "bug"]
    )
    gh.add_issue(API, "Not for agents", "x", ["bug"])
    closed = gh.add_issue(API, "Closed one", None, ["agent-ready"])
    gh.close(API, closed)
    web = gh.add_issue(WEB, "Write the docs", None, ["agent-ready", "agent:writer", "docs"])
    two = gh.add_issue(WEB, "Ambiguous", "x", ["agent-ready", "agent:a", "agent:b"])
    source = make(gh, monkeypatch, repo_urls={API: "https://git.example/acme/api.git"})

    items = run(source, source.list_ready())

    assert ids(items) == [f"{API}#{first}", f"{WEB}#{web}"]
    bug, docs = items
    assert bug.prompt == "Fix the login\n\nIt 500s on empty passwords."
    assert (bug.labels, bug.agent, bug.repo) == (["bug"], None, "https://git.example/acme/api.git")
    assert bug.raw["repository"] == API and bug.raw["number"] == first
    assert (docs.prompt, docs.labels, docs.agent, docs.repo) == (
        "Write the docs",
        ["agent:writer", "docs"],
        "writer",
        None,
    )
    # the issue with two agent labels cannot become a task: rejected with the reason
    assert "agent-rejected" in gh.labels(WEB, two) and "agent-ready" not in gh.labels(WEB, two)
    assert "more than one agent label: a, b" in gh.comments(WEB, two)[-1]
    # every request was authenticated with the token, and asked for JSON of the REST API
    assert gh.requests and all(
        r.headers.get("authorization", "").endswith(TOKEN) for r in gh.requests
    )


def test_listing_follows_the_link_header_across_pages(
    gh: FakeGitHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    numbers = [gh.add_issue(API, f"task {n}", None, ["agent-ready"]) for n in range(130)]
    source = make(gh, monkeypatch, repos=[API])

    items = run(source, source.list_ready(limit=500))

    assert ids(items) == [f"{API}#{n}" for n in numbers]
    pages = [r for r in gh.requests if r.path.endswith("/issues")]
    assert [r.query.get("page", ["1"])[0] for r in pages] == ["1", "2"]
    assert ids(run(source, source.list_ready(limit=10))) == [f"{API}#{n}" for n in numbers[:10]]


# -- claims ----------------------------------------------------------------------------------


def test_a_claim_comments_then_swaps_the_labels_and_is_won_once(
    gh: FakeGitHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    number = gh.add_issue(API, "Fix it", None, ["agent-ready", "bug"])
    closed = gh.add_issue(API, "Closed", None, ["agent-ready"])
    gh.close(API, closed)
    plain = gh.add_issue(API, "Not ready", None, ["bug"])
    source = make(gh, monkeypatch)

    async def scenario() -> list[bool]:
        return [
            await source.claim(f"{API}#{number}"),
            await source.claim(f"{API}#{number}"),  # already running
            await source.claim(f"{API}#{closed}"),
            await source.claim(f"{API}#{plain}"),
            await source.claim(f"{API}#999"),  # no such issue
            await source.claim("other/repo#1"),  # not a configured repository
        ]

    assert run(source, scenario()) == [True, False, False, False, False, False]
    assert gh.labels(API, number) == ["bug", "agent-running"]
    (comment,) = gh.comments(API, number)
    assert "<!-- agent-fleet:claim round=" in comment and "owner=fleet-a -->" in comment
    assert gh.comments(API, closed) == [] and gh.labels(API, closed) == ["agent-ready"]


def test_two_watchers_claim_each_of_30_issues_exactly_once(
    gh: FakeGitHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    numbers = [gh.add_issue(API, f"task {n}", None, ["agent-ready"]) for n in range(30)]
    gh.pair_comment_posts()  # claims that meet on an issue both post before either reads
    a = make(gh, monkeypatch, owner="fleet-a")
    b = make(gh, monkeypatch, owner="fleet-b")
    item_ids = [f"{API}#{n}" for n in numbers]

    async def watcher(source: GitHubSource, order: list[str]) -> list[str]:
        try:
            won = await asyncio.gather(*(source.claim(i) for i in order))
            return [i for i, ok in zip(order, won, strict=True) if ok]
        finally:
            await source.close()

    async def race() -> tuple[list[str], list[str]]:
        return await asyncio.gather(watcher(a, item_ids), watcher(b, item_ids[::-1]))

    won_a, won_b = asyncio.run(race())

    # the watchers did race: some claim comments were posted, found second and taken back
    assert gh.count("DELETE", "/issues/comments/") > 0
    assert sorted(won_a + won_b) == sorted(item_ids)  # every issue claimed ...
    assert not set(won_a) & set(won_b)  # ... by exactly one watcher
    for number in numbers:
        assert gh.labels(API, number) == ["agent-running"]
        (claim,) = gh.comments(API, number)  # the loser deleted its claim comment
        winner = "fleet-a" if f"{API}#{number}" in won_a else "fleet-b"
        assert f"owner={winner} -->" in claim
    assert sorted(ids(run(a, a.list_claimed()))) == sorted(won_a)
    assert sorted(ids(run(b, b.list_claimed()))) == sorted(won_b)


def test_a_watcher_that_died_between_claim_comment_and_label_swap_claims_again(
    gh: FakeGitHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    number = gh.add_issue(API, "Fix it", None, ["agent-ready"])
    item_id = f"{API}#{number}"
    dying = make(gh, monkeypatch, owner="fleet-a")

    async def die(*args: Any) -> None:
        raise SourceError("issues", "killed")

    monkeypatch.setattr(dying, "_swap", die)
    with pytest.raises(SourceError, match="killed"):
        run(dying, dying.claim(item_id))
    assert gh.labels(API, number) == ["agent-ready"]  # the claim comment is there, no swap

    other = make(gh, monkeypatch, owner="fleet-b")
    assert run(other, other.claim(item_id)) is False  # fleet-a's claim came first
    restarted = make(gh, monkeypatch, owner="fleet-a")
    assert run(restarted, restarted.claim(item_id)) is True
    assert gh.labels(API, number) == ["agent-running"]
    assert len(gh.comments(API, number)) == 1  # neither the loser's nor the repeat stays


def test_an_issue_labelled_ready_again_starts_a_new_round_of_claims(
    gh: FakeGitHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    number = gh.add_issue(API, "Fix it", None, ["agent-ready"])
    item_id = f"{API}#{number}"
    a = make(gh, monkeypatch, owner="fleet-a")
    b = make(gh, monkeypatch, owner="fleet-b")
    assert run(a, a.claim(item_id))
    assert run(a, a.report_outcome(item_id, Outcome(state=ItemState.failed, reason="flaky")))
    gh.set_labels(API, number, ["agent-ready"])  # a person asks for another run

    assert run(b, b.claim(item_id)) is True  # fleet-a's old claim does not count
    assert ids(run(b, b.list_claimed())) == [item_id]
    assert run(a, a.list_claimed()) == []


# -- progress, outcomes, withdrawals -----------------------------------------------------------


def test_progress_and_outcomes_are_comments_and_labels_while_the_issue_is_claimed(
    gh: FakeGitHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    done, human, failed, rejected, unclaimed = (
        gh.add_issue(API, f"issue {n}", None, ["agent-ready"]) for n in range(5)
    )
    source = make(gh, monkeypatch)
    url = "https://github.example/acme/api/pull/77"

    async def scenario() -> list[bool]:
        for n in (done, human, failed, rejected):
            assert await source.claim(f"{API}#{n}")
        return [
            await source.report_progress(f"{API}#{done}", "task issues-x queued"),
            await source.report_progress(f"{API}#{unclaimed}", "nope"),
            await source.report_outcome(
                f"{API}#{done}",
                Outcome(state=ItemState.succeeded, summary="fixed it", branch="fix-1", pr_url=url),
            ),
            await source.report_outcome(f"{API}#{done}", Outcome(state=ItemState.failed)),
            await source.report_outcome(
                f"{API}#{human}",
                Outcome(state=ItemState.needs_human, summary="stuck", reason="which API key?"),
            ),
            await source.report_outcome(
                f"{API}#{failed}", Outcome(state=ItemState.failed, reason="gate failed: exit 1")
            ),
            await source.report_outcome(
                f"{API}#{rejected}", Outcome(state=ItemState.rejected, reason="agent: unknown")
            ),
            await source.report_outcome(f"{API}#{unclaimed}", Outcome(state=ItemState.failed)),
        ]

    assert run(source, scenario()) == [True, False, True, False, True, True, True, False]
    claim, queued, outcome = gh.comments(API, done)
    assert "claim" in claim and "⏳ task issues-x queued" in queued
    assert "✅ Done: fixed it" in outcome and f"Pull request: {url}" in outcome
    assert "Branch: `fix-1`" in outcome
    assert gh.labels(API, done) == ["agent-done"]
    assert gh.labels(API, human) == ["agent-needs-human"]
    assert (
        "stuck" in gh.comments(API, human)[-1] and "which API key?" in gh.comments(API, human)[-1]
    )
    assert gh.labels(API, failed) == ["agent-failed"]
    assert "gate failed: exit 1" in gh.comments(API, failed)[-1]
    assert gh.labels(API, rejected) == ["agent-rejected"]
    assert "agent: unknown" in gh.comments(API, rejected)[-1]
    assert gh.labels(API, unclaimed) == ["agent-ready"] and gh.comments(API, unclaimed) == []


def test_an_outcome_whose_label_swap_failed_is_retried_without_a_second_comment(
    gh: FakeGitHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    number = gh.add_issue(API, "flaky labels", None, ["agent-ready"])
    source = make(gh, monkeypatch)
    real_add = source._add_label
    failures: list[SourceError] = []

    async def add_label_once_failing(repo: str, n: int, label: str) -> None:
        if failures:
            raise failures.pop()
        await real_add(repo, n, label)

    monkeypatch.setattr(source, "_add_label", add_label_once_failing)
    done = Outcome(state=ItemState.succeeded, summary="fixed it")

    async def scenario() -> bool:
        assert await source.claim(f"{API}#{number}")
        failures.append(SourceError("issues", "labelling failed"))
        with pytest.raises(SourceError):
            await source.report_outcome(f"{API}#{number}", done)
        return await source.report_outcome(f"{API}#{number}", done)

    assert run(source, scenario()) is True
    outcomes = [c for c in gh.comments(API, number) if "✅ Done" in c]
    assert len(outcomes) == 1
    assert gh.labels(API, number) == ["agent-done"]


def test_wanted_leaves_out_withdrawn_issues_and_gives_edited_prompts(
    gh: FakeGitHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed, unlabelled, edited, kept = (
        gh.add_issue(API, f"issue {n}", "body", ["agent-ready"]) for n in range(4)
    )
    source = make(gh, monkeypatch)
    item_ids = [f"{API}#{n}" for n in (closed, unlabelled, edited, kept)]

    async def claim_all() -> None:
        for item_id in item_ids:
            assert await source.claim(item_id)

    run(source, claim_all())
    gh.close(API, closed)
    gh.set_labels(API, unlabelled, [])  # a person took the running label off
    gh.edit(API, edited, title="issue 2, clarified", body="do it this way")

    still = run(source, source.wanted([*item_ids, f"{API}#999"]))

    assert still == {
        f"{API}#{edited}": "issue 2, clarified\n\ndo it this way",
        f"{API}#{kept}": "issue 3\n\nbody",
    }
    # a withdrawn issue is never written to again
    assert not run(source, source.report_outcome(item_ids[0], Outcome(state=ItemState.failed)))
    assert gh.labels(API, closed) == ["agent-running"] and len(gh.comments(API, closed)) == 1


def test_list_claimed_after_a_restart_returns_this_fleets_running_issues(
    gh: FakeGitHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    numbers = [gh.add_issue(repo, "x", None, ["agent-ready"]) for repo in (API, API, WEB)]
    item_ids = [f"{API}#{numbers[0]}", f"{API}#{numbers[1]}", f"{WEB}#{numbers[2]}"]
    a, b = make(gh, monkeypatch, owner="fleet-a"), make(gh, monkeypatch, owner="fleet-b")
    assert run(a, a.claim(item_ids[0])) and run(b, b.claim(item_ids[1]))
    assert run(a, a.claim(item_ids[2]))
    gh.close(API, numbers[0])  # withdrawn while the watcher was down: not taken up

    restarted = make(gh, monkeypatch, owner="fleet-a")
    anyone = make(gh, monkeypatch, owner=None)

    assert ids(run(restarted, restarted.list_claimed())) == [item_ids[2]]
    assert sorted(ids(run(anyone, anyone.list_claimed()))) == sorted(item_ids[1:])


# -- errors ---------------------------------------------------------------------------------


def test_the_token_is_in_no_error_repr_or_log_line(
    gh: FakeGitHub,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    gh.add_issue(API, "x", None, ["agent-ready"])
    wrong = "ghp_" + "wr0ng" * 7
    caplog.set_level(logging.DEBUG)
    source = make(gh, monkeypatch, token=wrong)
    with pytest.raises(SourceError) as err:
        run(source, source.list_ready())
    message = str(err.value)
    assert "401" in message and API in message and "FLEET_TEST_GH_" in message
    token_file = tmp_path / "token"
    token_file.write_text(wrong + "\n")
    from_file = build_source(
        SourceSpec(
            name="issues",
            kind="github",
            options={"repos": [API], "token_file": str(token_file), "base_url": gh.url},
        )
    )
    with pytest.raises(SourceError, match="401") as err2:
        run(from_file, from_file.claim(f"{API}#1"))  # type: ignore[arg-type]
    assert str(token_file) in str(err2.value)
    # the token went to the server, and nowhere else
    assert any(r.headers.get("authorization", "").endswith(wrong) for r in gh.requests)
    for text in (message, str(err2.value), repr(source), repr(from_file), caplog.text):
        assert wrong not in text and TOKEN not in text
    with pytest.raises(SourceConfigError, match="never written in the config") as err3:
        build_source(SourceSpec(name="x", kind="github", options={"repos": [API], "token": wrong}))
    assert wrong not in str(err3.value)


def test_a_missing_repository_or_a_missing_token_names_it(
    gh: FakeGitHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = make(gh, monkeypatch, repos=["acme/gone"])
    with pytest.raises(SourceError, match=r"repository acme/gone was not found.*404"):
        run(source, source.list_ready())
    # a deleted issue in a repository that is there is withdrawn, not an error
    present = make(gh, monkeypatch, repos=[API])
    assert run(present, present.wanted([f"{API}#404"])) == {}
    with pytest.raises(SourceError, match="repository acme/gone was not found"):
        run(source, source.wanted(["acme/gone#1"]))
    monkeypatch.delenv("NO_SUCH_GH_TOKEN", raising=False)
    with pytest.raises(SourceConfigError, match=r"options\.token_env: .*NO_SUCH_GH_TOKEN"):
        build_source(
            SourceSpec(
                name="x", kind="github", options={"repos": [API], "token_env": "NO_SUCH_GH_TOKEN"}
            )
        )
    with pytest.raises(SourceConfigError, match=r"options\.repos"):
        build_source(
            SourceSpec(name="x", kind="github", options={"repos": ["no-slash"], "token_env": "A"})
        )


def test_5xx_and_rate_limits_are_retried_after_retry_after_then_one_source_error(
    gh: FakeGitHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    gh.add_issue(API, "x", None, ["agent-ready"])
    source = make(gh, monkeypatch, repos=[API], retries=3, retry_base_s=0.01)

    gh.fail_next(2, 503)
    assert len(run(source, source.list_ready())) == 1  # two 503s, then the answer
    assert [r.status for r in gh.requests[-3:]] == [503, 503, 200]

    gh.fail_next(1, 429, retry_after=0.5)
    started = time.monotonic()
    assert len(run(source, source.list_ready())) == 1
    assert time.monotonic() - started >= 0.5  # waited as Retry-After said

    gh.fail_next(10, 503)
    before = len(gh.requests)
    with pytest.raises(SourceError, match=r"503 .*acme/api.*\(4 attempts\)"):
        run(source, source.list_ready())
    assert len(gh.requests) - before == 4
    gh.faults.clear()

    gh.fail_next(1, 429, retry_after=3600)  # longer than retry_max_wait_s: no waiting here
    started = time.monotonic()
    with pytest.raises(SourceError, match=r"429 .*retry after 3600s"):
        run(source, source.list_ready())
    assert time.monotonic() - started < 5

    # an outage never looks like a withdrawal (which would cancel the tasks)
    gh.fail_next(100, 502)
    with pytest.raises(SourceError, match="502"):
        run(source, source.wanted([f"{API}#1"]))
    gh.faults.clear()
    assert run(source, source.wanted([f"{API}#1"])) == {}  # ready, not claimed: not wanted

    down = make(gh, monkeypatch, base_url="http://127.0.0.1:9", repos=[API])
    with pytest.raises(SourceError, match=re.escape("cannot reach GitHub at http://127.0.0.1:9")):
        run(down, down.list_ready())


def test_sources_of_kind_github_are_built_from_the_config(
    gh: FakeGitHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GH_TOKEN_FOR_TEST", TOKEN)
    spec = SourceSpec(
        name="issues",
        kind="github",
        options={"repos": [API], "token_env": "GH_TOKEN_FOR_TEST", "labels": {"ready": "go"}},
    )
    (source,) = build_sources(FleetConfig(sources=[spec]))
    assert isinstance(source, GitHubSource)
    assert source.options.base_url == "https://api.github.com"
    assert source.options.labels.ready == "go" and source.options.labels.running == "agent-running"
    with pytest.raises(SourceConfigError, match="each state needs its own label"):
        build_source(
            spec.model_copy(update={"options": {**spec.options, "labels": {"ready": "agent-done"}}})
        )


def test_the_fake_opens_and_lists_pull_requests_through_gidgethub(gh: FakeGitHub) -> None:
    async def scenario() -> tuple[dict[str, Any], list[dict[str, Any]], Exception]:
        async with gh_httpx.httpx.AsyncClient() as http:
            api = gh_httpx.GitHubAPI(http, "test", oauth_token=TOKEN, base_url=gh.url)
            pull = await api.post(
                "/repos/{owner}/{repo}/pulls",
                {"owner": "acme", "repo": "api"},
                data={"title": "Fix", "head": "agent/fix-1", "base": "main", "body": "Closes #1"},
            )
            found = [
                p
                async for p in api.getiter(
                    "/repos/{owner}/{repo}/pulls{?head,state}",
                    {"owner": "acme", "repo": "api", "head": "acme:agent/fix-1", "state": "open"},
                )
            ]
            try:
                await api.post(
                    "/repos/acme/api/pulls",
                    data={"title": "Again", "head": "agent/fix-1", "base": "main"},
                )
            except BadRequest as exc:
                return pull, found, exc
            raise AssertionError("a second pull request for one branch was accepted")

    pull, found, again = asyncio.run(scenario())
    assert pull["head"]["ref"] == "agent/fix-1" and pull["base"]["ref"] == "main"
    assert pull["html_url"].endswith(f"/acme/api/pull/{pull['number']}")
    assert [p["number"] for p in found] == [pull["number"]]
    assert "A pull request already exists" in str(again)


# -- with a fleet -----------------------------------------------------------------------------


@pytest.mark.ray
def test_an_agent_ready_issue_runs_on_a_fleet_and_ends_agent_done_with_a_comment(
    gh: FakeGitHub, monkeypatch: pytest.MonkeyPatch, fleet_factory: Any
) -> None:
    monkeypatch.setenv("FLEET_TEST_GH_TOKEN", TOKEN)
    spec = SourceSpec(
        name="issues",
        kind="github",
        options={
            "repos": [API],
            "token_env": "FLEET_TEST_GH_TOKEN",
            "base_url": gh.url,
            "poll_interval_s": 0.2,
        },
        task={"script": script(("finish", {"summary": "fixed by the fleet"}))},
    )
    config = FleetConfig(sources=[spec])
    fleet = fleet_factory(config=config)
    watcher = Watcher(fleet, build_sources(config), WatchSettings(track_interval_s=0.1), config)
    thread = WatcherThread(watcher).start()
    try:
        number = gh.add_issue(API, "Fix the login", "Empty passwords 500.", ["agent-ready", "bug"])
        deadline = time.monotonic() + 90
        while "agent-done" not in gh.labels(API, number):
            assert time.monotonic() < deadline, (gh.labels(API, number), gh.comments(API, number))
            time.sleep(0.2)
    finally:
        watcher.settings.drain_timeout_s = 0
        thread.stop(30)
    assert gh.labels(API, number) == ["bug", "agent-done"]
    comments = gh.comments(API, number)
    assert "agent-fleet:claim" in comments[0]
    assert "⏳ task issues-" in comments[1] and "queued" in comments[1]  # a quick task may
    # end before the watcher sees it running: no "running" comment is asked for
    assert "✅ Done: fixed by the fleet" in comments[-1]
    (record,) = fleet.tasks(None, "source:issues", 10)
    assert record.id == task_id_for("issues", f"{API}#{number}") and record.state == "succeeded"
    assert record.spec.source == f"issues:{API}#{number}"
    assert record.spec.prompt == "Fix the login\n\nEmpty passwords 500."
    assert record.spec.labels == ["bug", "source:issues"]


def test_the_readme_example_and_option_table_match_the_options_model() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = next(b for b in re.findall(r"```yaml\n(.*?)```", readme, re.S) if "kind: github" in b)
    (spec,) = FleetConfig.model_validate(yaml.safe_load(block)).sources
    options = GitHubOptions.model_validate(spec.options)
    assert options.repos == ["acme/api", "acme/web"] and options.token_env == "GITHUB_TOKEN"
    section = readme[readme.index("**GitHub Issues**") :]
    table = section[: section.index("\n\n", section.index("| option |"))]
    first_cells = [row.split("|")[1] for row in table.splitlines() if row.startswith("| `")]
    fields = {name for cell in first_cells for name in re.findall(r"`(\w+)`", cell)}
    assert fields == set(GitHubOptions.model_fields)
