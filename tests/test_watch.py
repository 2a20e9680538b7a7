"""The watcher (fleet/watch.py): rows of a SQL table (SQLite and a real PostgreSQL) become
tasks on a fleet, their outcomes go back to the rows; withdrawals cancel, edits re-prompt,
restarts (even SIGKILL between claim and submit) neither lose nor double anything, an
unreachable source is retried and shown; ``fleet watch`` stops on SIGTERM with exit 0."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from actors.scheduler import Scheduler
from actors.status import fleet_status
from core.events import EventType, source_task_id
from core.settings import FleetSettings
from core.specs import FleetConfig, SourceSpec, TaskSpec
from fleet.watch import Watcher, WatcherThread, WatchSettings, repo_of, task_id_for
from sources import build_sources
from tests.conftest import script
from tests.test_sources_sql import COLUMNS, Table

ROOT = Path(__file__).resolve().parent.parent
FINAL = {"succeeded", "failed", "needs_human", "cancelled", "rejected"}
QUICK = script(("finish", {"summary": "done by the fleet"}))
SLOW = script(("shell", {"command": "sleep 60"}), ("finish", {"summary": "too late"}))


@pytest.fixture(params=["sqlite", "postgresql"])
def table(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Table:
    name = f"work_{uuid.uuid4().hex[:10]}"
    if request.param == "sqlite":
        made = Table("sqlite", f"sqlite://{tmp_path / 'work.db'}", name, monkeypatch)
        ddl = COLUMNS.format(priority="priority INTEGER", updated="updated_at TEXT")
        made.sql(f"CREATE TABLE {name} (id INTEGER PRIMARY KEY, {ddl})")
    else:
        made = Table("postgresql", request.getfixturevalue("postgres_dsn"), name, monkeypatch)
        ddl = COLUMNS.format(priority="priority INTEGER", updated="updated_at TIMESTAMPTZ")
        made.sql(f"CREATE TABLE {name} (id SERIAL PRIMARY KEY, {ddl})")
    return made


def config_for(table: Table, task: dict[str, Any], **options: Any) -> FleetConfig:
    env = f"FLEET_TEST_DSN_{uuid.uuid4().hex[:8]}"
    table.monkeypatch.setenv(env, table.dsn)
    opts = {"dsn_env": env, "table": table.name, "poll_interval_s": 0.2, **options}
    if table.backend == "postgresql":
        opts["install_trigger"] = True
    spec = SourceSpec(name="tickets", kind="sql", options=opts, task=task)
    return FleetConfig(sources=[spec])


def wait_for(check: Callable[[], Any], timeout: float = 60, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what or check}")


def final_row(table: Table, item_id: str, timeout: float = 60) -> dict[str, Any]:
    return wait_for(
        lambda: (row := table.row(item_id))["state"] in FINAL and row,
        timeout,
        f"row {item_id} to end",
    )


@pytest.fixture
def watching(fleet_factory: Any) -> Iterator[Callable[..., tuple[Any, WatcherThread]]]:
    """Start a fleet with a config and a watcher over its sources; stop them after."""
    started: list[WatcherThread] = []

    def start(config: FleetConfig, **fleet_settings: Any) -> tuple[Any, WatcherThread]:
        fleet = fleet_factory(config=config, **fleet_settings)
        watcher = Watcher(fleet, build_sources(config), WatchSettings(track_interval_s=0.1), config)
        thread = WatcherThread(watcher).start()
        started.append(thread)
        return fleet, thread

    yield start
    for thread in started:
        thread.watcher.settings.drain_timeout_s = 0
        thread.stop(30)


# -- without Ray -------------------------------------------------------------------------


def test_task_ids_are_deterministic_and_distinct_for_awkward_item_ids() -> None:
    assert task_id_for("tickets", "42") == "tickets-42"
    awkward = ("a/b", "a_b", "a b", "x" * 300)
    ids = [task_id_for("tickets", item_id) for item_id in awkward]
    assert len(set(ids)) == 4 and ids[1] == "tickets-a_b"
    assert ids == [task_id_for("tickets", item_id) for item_id in awkward]  # deterministic
    for task_id in ids:
        assert TaskSpec(id=task_id, prompt="x").id == task_id  # a valid task id
        assert len(task_id) <= 200 and "/" not in task_id and " " not in task_id


def test_an_items_repo_text_is_a_git_repository_or_a_directory() -> None:
    assert repo_of("/srv/app") == "/srv/app"
    assert repo_of("/srv/remote.git") == {"url": "/srv/remote.git"}
    assert repo_of("https://example.com/acme/api") == {"url": "https://example.com/acme/api"}
    assert repo_of("git@example.com:acme/api") == {"url": "git@example.com:acme/api"}
    assert repo_of("/srv/app", {"url": "/x.git", "ref": "main"}) == {
        "url": "/srv/app",
        "ref": "main",
    }
    assert TaskSpec(prompt="x", repo=repo_of("/srv/remote.git")).repo.url == "/srv/remote.git"


def test_a_queued_prompt_is_replaced_only_before_the_task_starts() -> None:
    sched = Scheduler(FleetConfig(), FleetSettings())
    for task_id in ("a", "b"):
        sched.apply(sched.submit(TaskSpec(id=task_id, prompt="old")))
    (event,) = sched.update_prompt("a", "new", "edited")
    sched.apply(event)
    assert event.type == EventType.task_updated and sched.tasks["a"].spec.prompt == "new"
    assignment, started = sched.assign("w1")
    assert assignment is not None and assignment.prompt == "new"
    sched.apply(started)
    assert sched.update_prompt("a", "newer") == []  # started: refused
    assert sched.update_prompt("b", "  ") == []  # blank: refused
    assert sched.update_prompt("missing", "x") == []


def test_source_errors_are_numbered_per_source_and_shown_in_the_status() -> None:
    settings = FleetSettings(name="f")
    sched = Scheduler(FleetConfig(), settings)
    for n in range(3):
        event = sched.source_error("tickets", f"source 'tickets': down {n}", n + 1, 2.0)
        assert event.task_id == source_task_id("tickets") == "source:tickets"
        event.seq = sched.next_seq(event.task_id)
        sched.apply(event)
        assert event.seq == n
    view = fleet_status(sched, {}, 1, settings, 0.0, 1.0)
    assert view["sources"]["tickets"]["error"] == "source 'tickets': down 2"
    assert view["sources"]["tickets"]["failures"] == 3
    assert len(sched.tasks) == 0  # no task was made of it
    with pytest.raises(ValueError, match="ids of sources"):
        sched.submit(TaskSpec(id="source:x", prompt="x"))


def test_list_claimed_returns_the_running_rows_of_this_owner(table: Table) -> None:
    import asyncio

    table.sql(f"ALTER TABLE {table.name} ADD COLUMN claimed_by TEXT")
    ids = [table.insert(f"task {n}") for n in range(4)]
    table.insert(None, state="running")  # no prompt: cannot become a task, left out
    mine, theirs, anyone = (
        table.source("mine", columns={"claimed_by": "claimed_by"}),
        table.source("theirs", columns={"claimed_by": "claimed_by"}),
        table.source("anyone"),
    )
    mine.owner, theirs.owner = "fleet-a", "fleet-b"

    async def scenario() -> tuple[list[str], list[str], list[str]]:
        try:
            assert await mine.claim(ids[0]) and await mine.claim(ids[2])
            assert await theirs.claim(ids[1])
            assert not await theirs.claim(ids[0])  # one owner per row
            return (
                [i.id for i in await mine.list_claimed()],
                [i.id for i in await theirs.list_claimed()],
                [i.id for i in await anyone.list_claimed()],
            )
        finally:
            for source in (mine, theirs, anyone):
                await source.close()

    held_a, held_b, held_all = asyncio.run(scenario())
    assert (held_a, held_b, held_all) == ([ids[0], ids[2]], [ids[1]], ids[:3])
    owners = table.sql(f"SELECT claimed_by FROM {table.name} WHERE id = ?", (ids[0],))
    assert owners == [("fleet-a",)]


# -- with a fleet ------------------------------------------------------------------------


@pytest.mark.ray
def test_a_ready_row_runs_and_ends_succeeded_with_the_summary(table: Table, watching) -> None:
    fleet, _ = watching(config_for(table, {"script": QUICK}))
    item = table.insert("write the changelog", labels="docs", priority=3)
    row = final_row(table, item)
    assert (row["state"], row["summary"], row["reason"]) == ("succeeded", "done by the fleet", None)
    assert row["branch"] is None and row["pr_url"] is None
    record = fleet.get(f"tickets-{item}")
    assert record.spec.source == f"tickets:{item}" and record.spec.prompt == "write the changelog"
    assert record.spec.labels == ["docs", "source:tickets"] and record.spec.priority == 3
    types = [e.type for e in fleet.events(record.id)]
    assert EventType.session_started in types and types.count(EventType.task_submitted) == 1


@pytest.mark.ray
def test_rows_the_fleet_refuses_are_rejected_with_the_reason_and_the_next_row_runs(
    table: Table, watching
) -> None:
    watching(config_for(table, {"script": QUICK}))
    no_prompt = table.insert(None)
    bad_agent = table.insert("fix it", agent="nobody")
    no_repo = table.insert("fix it there", repo="file:///nonexistent-fleet-test/missing.git")
    good = table.insert("fix it too")
    assert final_row(table, no_prompt)["reason"] == "no prompt"
    rejected = final_row(table, bad_agent)
    assert rejected["state"] == "rejected" and "unknown agent 'nobody'" in rejected["reason"]
    unclonable = final_row(table, no_repo)
    assert unclonable["state"] == "rejected"
    assert unclonable["reason"].startswith("repo: cannot be cloned: git ls-remote failed")
    assert "missing.git" in unclonable["reason"]
    assert final_row(table, good)["state"] == "succeeded"
    table.sql(f"UPDATE {table.name} SET state = 'ready' WHERE id = ?", (good,))
    again = final_row(table, good)
    assert again["state"] == "rejected" and "already exists" in again["reason"]


@pytest.mark.ray
def test_a_row_withdrawn_while_its_task_runs_cancels_it_with_the_reason(
    table: Table, watching
) -> None:
    fleet, _ = watching(config_for(table, {"script": SLOW}))
    item = table.insert("a long job")
    task_id = f"tickets-{item}"
    wait_for(lambda: table.row(item)["summary"] == f"task {task_id} running", what="running")
    table.sql(f"UPDATE {table.name} SET state = 'ready_later' WHERE id = ?", (item,))
    record = wait_for(
        lambda: (r := fleet.get(task_id)) is not None and r.state.terminal and r, what="cancel"
    )
    assert record.state == "cancelled" and "withdrawn at source 'tickets'" in record.reason
    cancelled = [e for e in fleet.events(task_id) if e.type == EventType.task_cancelled]
    assert (
        len(cancelled) == 1
        and f"item {item} is no longer claimed" in cancelled[0].payload["reason"]
    )
    time.sleep(0.5)
    assert table.row(item)["state"] == "ready_later"  # the person's state is left as it is


@pytest.mark.ray
def test_a_row_edited_while_its_task_is_queued_changes_the_task_prompt(
    table: Table, watching
) -> None:
    fleet, _ = watching(config_for(table, {"script": QUICK}), max_running=0)  # paused
    item = table.insert("first wording")
    task_id = f"tickets-{item}"
    wait_for(lambda: table.row(item)["summary"] == f"task {task_id} queued", what="queued")
    table.sql(f"UPDATE {table.name} SET prompt = ? WHERE id = ?", ("second wording", item))
    wait_for(lambda: fleet.get(task_id).spec.prompt == "second wording", what="new prompt")
    updated = [e for e in fleet.events(task_id) if e.type == EventType.task_updated]
    assert [e.payload["prompt"] for e in updated] == ["second wording"]
    assert fleet.get(task_id).state == "queued" and table.row(item)["state"] == "running"


@pytest.mark.ray
def test_an_unreachable_source_is_retried_logged_and_shown_then_recovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, watching
) -> None:
    name = "work"
    made = Table("sqlite", f"sqlite://{tmp_path / 'work.db'}", name, monkeypatch)
    ddl = COLUMNS.format(priority="priority INTEGER", updated="updated_at TEXT")
    made.sql(f"CREATE TABLE {name} (id INTEGER PRIMARY KEY, {ddl})")
    fleet, thread = watching(config_for(made, {"script": QUICK}))
    thread.watcher.settings.backoff_s = 0.2
    thread.watcher.settings.backoff_max_s = 0.5
    first = made.insert("before the outage")
    assert final_row(made, first)["state"] == "succeeded"
    (tmp_path / "work.db").rename(tmp_path / "away.db")  # the database is gone for a while
    errors = wait_for(
        lambda: len(e := fleet.events("source:tickets")) >= 2 and e, what="source.error events"
    )
    assert {e.type for e in errors} == {EventType.source_error}
    assert [e.seq for e in errors] == list(range(len(errors)))
    assert "cannot open the SQLite database" in errors[0].payload["error"]
    shown = fleet.status()["sources"]["tickets"]
    assert shown["failures"] >= 2 and "SQLite" in shown["error"]
    assert "tickets" in thread.watcher.errors
    (tmp_path / "away.db").rename(tmp_path / "work.db")
    second = made.insert("after the outage")
    assert final_row(made, second)["state"] == "succeeded"


# -- fleet watch, killed and restarted ------------------------------------------------------


def _watch_cmd(config: Path, events: Path, name: str, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "fleet.cli", "watch", "--config", str(config), "--workers", "2",
        "--sandbox", "local", "--events", str(events), "--name", name, *extra,
    ]  # fmt: skip


@pytest.mark.ray
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_fleet_watch_killed_between_claim_and_submit_resumes_without_loss_or_doubles(
    backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    name = f"work_{uuid.uuid4().hex[:8]}"
    if backend == "sqlite":
        made = Table("sqlite", f"sqlite://{tmp_path / 'work.db'}", name, monkeypatch)
        ddl = COLUMNS.format(priority="priority INTEGER", updated="updated_at TEXT")
        made.sql(f"CREATE TABLE {name} (id INTEGER PRIMARY KEY, {ddl})")
    else:
        made = Table("postgresql", request.getfixturevalue("postgres_dsn"), name, monkeypatch)
        ddl = COLUMNS.format(priority="priority INTEGER", updated="updated_at TIMESTAMPTZ")
        made.sql(f"CREATE TABLE {name} (id SERIAL PRIMARY KEY, {ddl})")
    steps = script(("shell", {"command": "sleep 1"}), ("finish", {"summary": "done"}))
    config = tmp_path / "fleet.yaml"
    source = {
        "name": "tickets",
        "kind": "sql",
        "options": {"dsn_env": "WORK_DSN", "table": name, "poll_interval_s": 0.3},
        "task": {"script": steps},
    }
    config.write_text(json.dumps({"sources": [source]}))  # YAML is a superset of JSON
    env = {**os.environ, "WORK_DSN": made.dsn, "PYTHONPATH": str(ROOT)}
    events = tmp_path / "events"
    fleet_name = f"w{uuid.uuid4().hex[:6]}"
    ids = [made.insert(f"task {n}") for n in range(3)]

    crashed = subprocess.run(
        _watch_cmd(config, events, fleet_name, "--crash-after-claims", "1"),
        env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    states = sorted(made.row(i)["state"] for i in ids)
    assert states == ["ready", "ready", "running"]  # claimed, never submitted

    watcher = subprocess.Popen(
        _watch_cmd(config, events, fleet_name), env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        for item in ids:
            assert final_row(made, item, timeout=120)["state"] == "succeeded"
        last = made.insert("one more, running at SIGTERM")
        wait_for(lambda: made.row(last)["summary"] == f"task tickets-{last} running", 60)
        watcher.send_signal(signal.SIGTERM)
        _out, err = watcher.communicate(timeout=120)
    finally:
        if watcher.poll() is None:
            watcher.kill()
    assert watcher.returncode == 0, err[-2000:]
    assert made.row(last)["state"] == "succeeded"  # it finished and was reported before exit

    from core.analytics import sql

    counts = sql(
        str(events),
        "select task_id, count(*) from events where type = 'task.submitted' group by 1",
    ).rows
    assert sorted(counts) == sorted((f"tickets-{i}", 1) for i in [*ids, last])


@pytest.mark.ray
def test_fleet_serve_runs_the_config_sources_beside_the_api(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import httpx

    from tests.test_serve_cli import AUTH, serve_cmd, serve_env
    from tests.test_serve_http import free_port

    made = Table("sqlite", f"sqlite://{tmp_path / 'work.db'}", "work", monkeypatch)
    ddl = COLUMNS.format(priority="priority INTEGER", updated="updated_at TEXT")
    made.sql(f"CREATE TABLE work (id INTEGER PRIMARY KEY, {ddl})")
    source = {
        "name": "tickets",
        "kind": "sql",
        "options": {"dsn_env": "WORK_DSN", "table": "work", "poll_interval_s": 0.3},
        "task": {"script": QUICK},
    }
    config = tmp_path / "fleet.yaml"
    config.write_text(json.dumps({"sources": [source]}))
    port = free_port()
    env = serve_env(WORK_DSN=made.dsn, PYTHONPATH=str(ROOT))
    cmd = serve_cmd(port, tmp_path, "--sandbox", "local", "--config", str(config))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        item = made.insert("picked up by the server")
        row = final_row(made, item, timeout=180)
        assert (row["state"], row["summary"]) == ("succeeded", "done by the fleet")
        status = wait_for(
            lambda: _get(httpx, f"http://127.0.0.1:{port}/v1/fleet/status", AUTH), 60, "status"
        )
        assert status["sources"] == {}  # the source never failed
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


def _get(httpx: Any, url: str, headers: dict[str, str]) -> Any:
    try:
        answer = httpx.get(url, headers=headers, timeout=5)
    except httpx.HTTPError:
        return None
    return answer.json() if answer.status_code == 200 else None
