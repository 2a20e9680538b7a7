"""The SQL table source on SQLite and on a real PostgreSQL (tests/postgres.py), the source
registry and the ``sources:`` section of the fleet config."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
import uuid
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pydantic import BaseModel, ConfigDict

from core.specs import FleetConfig, SourceSpec
from core.taskfile import InputError, load_config
from sources import (
    ItemState,
    Outcome,
    Source,
    SourceConfigError,
    SourceError,
    WorkItem,
    build_source,
    build_sources,
)
from sources.sql import SqlSource

COLUMNS = (
    "prompt TEXT, repo TEXT, labels TEXT, {priority}, agent TEXT, "
    "state TEXT NOT NULL DEFAULT 'ready', summary TEXT, branch TEXT, pr_url TEXT, reason TEXT, "
    "{updated}"
)


@dataclass
class Table:
    """A fresh work table in one backend, with sync helpers to act as a person would."""

    backend: str
    dsn: str
    name: str
    monkeypatch: pytest.MonkeyPatch

    def sql(self, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run ``query`` (``?`` placeholders) in its own connection and commit."""
        if self.backend == "sqlite":
            conn = sqlite3.connect(self.dsn.removeprefix("sqlite://"), isolation_level=None)
            try:
                cur = conn.execute(query, params)
                return cur.fetchall() if cur.description else []
            finally:
                conn.close()
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            cur = conn.execute(query.replace("?", "%s").encode(), params)
            return cur.fetchall() if cur.description else []

    def insert(self, prompt: str | None, **fields: Any) -> str:
        fields["prompt"] = prompt
        names = ", ".join(fields)
        marks = ", ".join("?" for _ in fields)
        rows = self.sql(
            f"INSERT INTO {self.name} ({names}) VALUES ({marks}) RETURNING id",
            tuple(fields.values()),
        )
        return str(rows[0][0])

    def row(self, item_id: str) -> dict[str, Any]:
        cols = ["state", "prompt", "summary", "branch", "pr_url", "reason", "updated_at"]
        rows = self.sql(f"SELECT {', '.join(cols)} FROM {self.name} WHERE id = ?", (item_id,))
        return dict(zip(cols, rows[0], strict=True))

    def source(self, name: str = "tickets", **options: Any) -> SqlSource:
        env = f"FLEET_TEST_DSN_{uuid.uuid4().hex[:8]}"
        self.monkeypatch.setenv(env, self.dsn)
        spec = SourceSpec(
            name=name, kind="sql", options={"dsn_env": env, "table": self.name, **options}
        )
        source = build_source(spec)
        assert isinstance(source, SqlSource)
        return source


@pytest.fixture(params=["sqlite", "postgresql"])
def table(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Table:
    name = f"work_{uuid.uuid4().hex[:10]}"
    if request.param == "sqlite":
        dsn = f"sqlite://{tmp_path / 'work.db'}"
        ddl = COLUMNS.format(priority="priority INTEGER", updated="updated_at TEXT")
        made = Table("sqlite", dsn, name, monkeypatch)
        made.sql(f"CREATE TABLE {name} (id INTEGER PRIMARY KEY, {ddl})")
    else:
        dsn = request.getfixturevalue("postgres_dsn")
        ddl = COLUMNS.format(priority="priority INTEGER", updated="updated_at TIMESTAMPTZ")
        made = Table("postgresql", dsn, name, monkeypatch)
        made.sql(f"CREATE TABLE {name} (id SERIAL PRIMARY KEY, {ddl})")
    return made


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _closing(source: Source, coro: Any) -> Any:
    try:
        return await coro
    finally:
        await source.close()


def test_ready_rows_are_listed_highest_priority_first_with_their_fields(table: Table) -> None:
    low = table.insert("fix the login", repo="/src/app", labels="bug, ui", priority=1, agent="c")
    high = table.insert("write docs", labels='["docs"]', priority=5)
    table.insert("already done", state="succeeded")
    source = table.source()
    items = run(_closing(source, source.list_ready()))
    assert [i.id for i in items] == [high, low]
    first, second = items
    assert first == WorkItem(
        source="tickets", id=high, prompt="write docs", labels=["docs"], priority=5,
        raw=first.raw,
    )  # fmt: skip
    assert (second.repo, second.labels, second.agent) == ("/src/app", ["bug", "ui"], "c")
    assert second.raw["prompt"] == "fix the login" and second.raw["state"] == "ready"
    assert source.backend == table.backend


def test_two_watchers_claim_each_of_200_rows_exactly_once(table: Table) -> None:
    ids = {table.insert(f"task {n}") for n in range(200)}
    sources = [table.source("a"), table.source("b")]
    start = threading.Barrier(2)

    async def claim_all(source: SqlSource) -> list[str]:
        try:
            items = await source.list_ready(limit=500)
            start.wait()  # both have listed all 200 before either claims
            return [item.id for item in items if await source.claim(item.id)]
        finally:
            await source.close()

    with ThreadPoolExecutor(2) as pool:
        won_a, won_b = pool.map(lambda s: asyncio.run(claim_all(s)), sources)
    doubles = set(won_a) & set(won_b)
    misses = ids - set(won_a) - set(won_b)
    assert len(won_a) + len(won_b) == 200
    assert not doubles and not misses
    assert table.sql(f"SELECT count(*) FROM {table.name} WHERE state = 'running'") == [(200,)]
    again = table.source("c")
    assert run(_closing(again, again.claim(next(iter(ids))))) is False


def test_progress_and_outcome_are_written_to_the_row_only_while_it_is_claimed(
    table: Table,
) -> None:
    done = table.insert("add a feature")
    taken_back = table.insert("refactor")
    never_claimed = table.insert("not yet")
    source = table.source()

    async def scenario() -> None:
        assert await source.claim(done) and await source.claim(taken_back)
        assert await source.report_progress(done, "task t-1 running")
        row = table.row(done)
        assert (row["state"], row["summary"]) == ("running", "task t-1 running")
        assert row["updated_at"] is not None
        outcome = Outcome(
            state=ItemState.succeeded, summary="added it", branch="fleet/t-1",
            pr_url="https://example.test/pr/1",
        )  # fmt: skip
        assert await source.report_outcome(done, outcome)
        # A person takes a row back: the fleet no longer writes to it.
        table.sql(f"UPDATE {table.name} SET state = 'cancelled' WHERE id = ?", (taken_back,))
        assert not await source.report_progress(taken_back, "still going")
        failed = Outcome(state=ItemState.failed, reason="gate failed")
        assert not await source.report_outcome(taken_back, failed)
        assert not await source.report_outcome(never_claimed, failed)
        # An outcome that already landed is final: a second one is refused.
        assert not await source.report_outcome(done, failed)

    run(_closing(source, scenario()))
    row = table.row(done)
    assert (row["state"], row["summary"], row["branch"], row["pr_url"], row["reason"]) == (
        "succeeded", "added it", "fleet/t-1", "https://example.test/pr/1", None,
    )  # fmt: skip
    assert (table.row(taken_back)["state"], table.row(taken_back)["summary"]) == ("cancelled", None)
    assert table.row(never_claimed)["state"] == "ready"


def test_rows_that_cannot_become_tasks_are_rejected_with_the_reason(table: Table) -> None:
    no_prompt = table.insert(None)
    blank = table.insert("   ")
    bad_labels = table.insert("ok prompt", labels="[broken")
    good = table.insert("a fine task", labels="a,b")
    refused = table.insert("the fleet will refuse this one")
    source = table.source()

    async def scenario() -> list[WorkItem]:
        items = await source.list_ready()
        assert await source.claim(refused)
        reason = "unknown agent 'nobody'"
        assert await source.report_outcome(refused, Outcome(state="rejected", reason=reason))
        return items

    items = run(_closing(source, scenario()))
    assert [i.id for i in items] == [good, refused]
    assert (table.row(no_prompt)["state"], table.row(no_prompt)["reason"]) == (
        "rejected",
        "no prompt",
    )
    assert table.row(blank)["reason"] == "no prompt"
    assert table.row(bad_labels)["state"] == "rejected"
    assert "labels is not a JSON array" in table.row(bad_labels)["reason"]
    assert table.row(refused)["reason"] == "unknown agent 'nobody'"
    assert table.row(good)["state"] == "ready"


def test_sqlite_rejects_a_priority_that_is_not_a_number(table: Table) -> None:
    if table.backend != "sqlite":
        pytest.skip("a PostgreSQL integer column cannot hold text")
    bad = table.insert("x", priority="high")
    source = table.source()
    assert run(_closing(source, source.list_ready())) == []
    assert table.row(bad)["reason"] == "priority is not an integer: 'high'"


def test_wanted_reports_withdrawn_and_edited_rows(table: Table) -> None:
    keep, edited, stopped, deleted, erased = (table.insert(f"task {n}") for n in range(5))
    source = table.source()

    async def scenario() -> dict[str, str]:
        for item_id in (keep, edited, stopped, deleted, erased):
            assert await source.claim(item_id)
        table.sql(f"UPDATE {table.name} SET prompt = 'task 1, but in Rust' WHERE id = ?", (edited,))
        table.sql(f"UPDATE {table.name} SET state = 'cancelled' WHERE id = ?", (stopped,))
        table.sql(f"DELETE FROM {table.name} WHERE id = ?", (deleted,))
        table.sql(f"UPDATE {table.name} SET prompt = NULL WHERE id = ?", (erased,))
        return await source.wanted([keep, edited, stopped, deleted, erased, "999999"])

    assert run(_closing(source, scenario())) == {keep: "task 0", edited: "task 1, but in Rust"}


def test_custom_column_names_and_state_values(table: Table) -> None:
    table.sql(f"ALTER TABLE {table.name} RENAME COLUMN prompt TO body")
    table.sql(f"ALTER TABLE {table.name} RENAME COLUMN state TO status")
    table.sql(f"INSERT INTO {table.name} (body, status) VALUES ('from a todo', 'todo')")
    table.sql(f"INSERT INTO {table.name} (body, status) VALUES ('ready means nothing', 'ready')")
    source = table.source(
        columns={"prompt": "body", "state": "status", "branch": None, "updated_at": None},
        states={"ready": "todo", "running": "doing", "succeeded": "done"},
    )

    async def scenario() -> list[WorkItem]:
        items = await source.list_ready()
        assert await source.claim(items[0].id)
        assert await source.wanted([items[0].id]) == {items[0].id: "from a todo"}
        done = Outcome(state="succeeded", summary="ok", branch="not written: no column")
        assert await source.report_outcome(items[0].id, done)
        return items

    items = run(_closing(source, scenario()))
    assert [i.prompt for i in items] == ["from a todo"]
    rows = table.sql(f"SELECT status, summary, branch, updated_at FROM {table.name} ORDER BY id")
    assert rows == [("done", "ok", None, None), ("ready", None, None, None)]


def test_notify_wakes_a_waiter_long_before_the_poll_interval(table: Table) -> None:
    if table.backend != "postgresql":
        pytest.skip("SQLite has no notifications")
    source = table.source(poll_interval_s=30, install_trigger=True)
    quiet = table.source("quiet", poll_interval_s=1.0)  # the trigger is installed: same table

    async def woken_by(action: Any, waiter: Source) -> tuple[bool, float]:
        await waiter.list_ready()  # listens from here on
        task = asyncio.create_task(waiter.wait_for_work())
        await asyncio.sleep(0.3)
        started = time.monotonic()
        await asyncio.to_thread(action)
        woken = await asyncio.wait_for(task, 10)
        return woken, time.monotonic() - started

    async def scenario() -> None:
        try:
            woken, took = await woken_by(lambda: table.insert("new work"), source)
            assert woken and took < 5
            assert [i.prompt for i in await source.list_ready()] == ["new work"]
            # A row that goes back to ready (a person retries it) wakes too.
            failed = table.insert("retry me", state="failed")
            retry = f"UPDATE {table.name} SET state = 'ready' WHERE id = ?"
            woken, took = await woken_by(lambda: table.sql(retry, (failed,)), source)
            assert woken and took < 5
            # A row that is not ready wakes no one: the wait lasts the poll interval.
            woken, took = await woken_by(lambda: table.insert("x", state="running"), quiet)
            assert not woken and took >= 0.5
        finally:
            await source.close()
            await quiet.close()

    run(scenario())


def test_sqlite_waits_the_poll_interval(table: Table) -> None:
    if table.backend != "sqlite":
        pytest.skip("SQLite only")
    source = table.source(poll_interval_s=0.2)
    started = time.monotonic()
    assert run(_closing(source, source.wait_for_work())) is False
    assert time.monotonic() - started >= 0.2


SECRET = "pw-s3cret-Zq81"


def _unreachable_pg_dsn() -> str:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    return f"postgresql://fleet:{SECRET}@127.0.0.1:{port}/work?connect_timeout=3"


@pytest.mark.parametrize("via", ["env", "file"])
def test_an_unreachable_database_is_one_error_naming_the_source_never_the_dsn(
    via: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dsn = _unreachable_pg_dsn()
    if via == "env":
        monkeypatch.setenv("TICKETS_DSN", dsn)
        options: dict[str, Any] = {"dsn_env": "TICKETS_DSN", "table": "work"}
    else:
        (tmp_path / "dsn").write_text(dsn + "\n")
        options = {"dsn_file": str(tmp_path / "dsn"), "table": "work"}
    source = build_source(SourceSpec(name="tickets", kind="sql", options=options))
    for shown in (repr(source), str(source.options), repr(source.options)):
        assert SECRET not in shown and dsn not in shown
    for call in (source.list_ready(), source.claim("1"), source.wanted(["1"])):
        with pytest.raises(SourceError) as caught:
            run(_closing(source, call))
        message = str(caught.value)
        assert message.startswith("source 'tickets': cannot connect to PostgreSQL")
        assert SECRET not in message and dsn not in message
        assert caught.value.source == "tickets" and caught.value.__suppress_context__


def test_a_missing_sqlite_file_is_the_same_error(tmp_path: Path) -> None:
    (tmp_path / "dsn").write_text(f"sqlite://{tmp_path}/missing.db")
    spec = SourceSpec(
        name="local", kind="sql", options={"dsn_file": str(tmp_path / "dsn"), "table": "work"}
    )
    source = build_source(spec)
    with pytest.raises(SourceError, match=r"^source 'local': cannot open the SQLite database"):
        run(source.list_ready())
    assert not (tmp_path / "missing.db").exists()  # never created by a typo


def test_a_missing_table_is_a_source_error(table: Table) -> None:
    broken = table.source(table="no_such_table")
    with pytest.raises(SourceError, match=r"^source 'tickets': query failed"):
        run(_closing(broken, broken.list_ready()))


def test_a_dropped_connection_is_a_source_error_then_the_source_reconnects(table: Table) -> None:
    if table.backend != "postgresql":
        pytest.skip("SQLite opens a connection per operation")
    item = table.insert("survive a restart")
    source = table.source(poll_interval_s=30)
    kill = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid <> pg_backend_pid()"
    kill += " AND datname = current_database() AND backend_type = 'client backend'"

    async def scenario() -> None:
        assert [i.id for i in await source.list_ready()] == [item]  # both connections open
        await asyncio.to_thread(table.sql, kill)  # as a restart or a network cut would
        with pytest.raises(SourceError, match=r"^source 'tickets': query failed"):
            await source.list_ready()
        assert [i.id for i in await source.list_ready()] == [item]
        assert await source.claim(item)
        # The listening connection was cut too: it comes back, and NOTIFY still wakes.
        with pytest.raises(SourceError, match="waiting for notifications failed"):
            await source.wait_for_work()
        waiter = asyncio.create_task(source.wait_for_work())
        await asyncio.sleep(0.3)
        await asyncio.to_thread(table.sql, f"NOTIFY agent_fleet_{table.name}")
        assert await asyncio.wait_for(waiter, 10) is True

    run(_closing(source, scenario()))


class MemoryOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompts: list[str]


class MemorySource(Source):
    """A source a user might write: items kept in a list (stands in for Jira and the like)."""

    Options = MemoryOptions
    options: MemoryOptions

    def __init__(self, name: str, options: MemoryOptions) -> None:  # type: ignore[override]
        super().__init__(name, options)
        self.states = {str(n): ItemState.ready for n in range(len(options.prompts))}

    async def list_ready(self, limit: int = 100) -> list[WorkItem]:
        ready = [i for i, s in self.states.items() if s is ItemState.ready][:limit]
        return [
            WorkItem(source=self.name, id=i, prompt=self.options.prompts[int(i)]) for i in ready
        ]

    async def claim(self, item_id: str) -> bool:
        if self.states.get(item_id) is not ItemState.ready:
            return False
        self.states[item_id] = ItemState.running
        return True

    async def report_progress(self, item_id: str, note: str | None = None) -> bool:
        return self.states.get(item_id) is ItemState.running

    async def report_outcome(self, item_id: str, outcome: Outcome) -> bool:
        if self.states.get(item_id) is not ItemState.running:
            return False
        self.states[item_id] = outcome.state
        return True

    async def wanted(self, item_ids: Collection[str]) -> dict[str, str]:
        running = [i for i in item_ids if self.states.get(i) is ItemState.running]
        return {i: self.options.prompts[int(i)] for i in running}


def test_sources_in_the_config_file_are_built_by_kind_and_import_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TICKETS_DSN", f"sqlite://{tmp_path}/work.db")
    path = tmp_path / "fleet.yaml"
    path.write_text(
        "sources:\n"
        "  - name: tickets\n"
        "    kind: sql\n"
        "    options: {dsn_env: TICKETS_DSN, table: work, states: {ready: todo}}\n"
        "  - name: mine\n"
        "    kind: tests.test_sources_sql:MemorySource\n"
        "    options: {prompts: [first, second]}\n"
    )
    config = load_config(path)
    tickets, mine = build_sources(config)
    assert isinstance(tickets, SqlSource) and tickets.options.states.ready == "todo"
    assert tickets.poll_interval_s == 10.0 and tickets.backend == "sqlite"
    assert isinstance(mine, MemorySource) and mine.name == "mine"

    async def use() -> tuple[list[WorkItem], bool, bool]:
        async with mine:
            items = await mine.list_ready()
            return items, await mine.claim("0"), await mine.claim("0")

    items, first, second = run(use())
    assert [i.prompt for i in items] == ["first", "second"] and first and not second


def test_a_source_kind_from_an_entry_point(monkeypatch: pytest.MonkeyPatch) -> None:
    import sources.registry

    point = EntryPoint("memory", "tests.test_sources_sql:MemorySource", "agent_fleet.sources")
    monkeypatch.setattr(
        sources.registry, "entry_points", lambda group: [point] if group == point.group else []
    )
    source = build_source(SourceSpec(name="m", kind="memory", options={"prompts": ["p"]}))
    assert isinstance(source, MemorySource)


@pytest.mark.parametrize(
    ("kind", "options", "message"),
    [
        ("sql", {"dsn": "postgresql://u:p@h/db", "table": "t"}, "never written in the config"),
        ("sql", {"table": "t"}, "exactly one of dsn_env and dsn_file"),
        ("sql", {"dsn_env": "NOT_SET_ANYWHERE_X", "table": "t"}, "NOT_SET_ANYWHERE_X is not set"),
        ("sql", {"dsn_env": "X", "table": "t; drop"}, "options.table: .*not a plain SQL name"),
        ("sql", {"dsn_env": "X", "table": "t", "colums": {}}, "options.colums: unknown field"),
        ("sql", {"dsn_env": "X", "table": "t", "states": {"ready": "running"}}, "its own value"),
        ("tests.test_sources_sql:MemorySource", {"prompts": 3}, "options.prompts"),
        ("tests.test_sources_sql:Nope", {}, "has no 'Nope'"),
        ("tests.test_sources_sql:MemoryOptions", {}, "not a subclass of sources.base.Source"),
        ("no_such_module_x:Thing", {}, "cannot import 'no_such_module_x'"),
        ("jira", {}, "neither a known kind"),
    ],
)
def test_bad_source_entries_name_the_source_and_field(
    kind: str, options: dict[str, Any], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("X", "sqlite:///tmp/x.db")
    with pytest.raises(SourceConfigError, match=r"^source 'tickets': ") as caught:
        build_source(SourceSpec(name="tickets", kind=kind, options=options))
    assert caught.match(message)
    assert "u:p@h" not in str(caught.value)


def test_the_config_refuses_two_sources_of_one_name(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text("sources:\n  - {name: a, kind: sql}\n  - {name: a, kind: sql}\n")
    with pytest.raises(InputError, match=r"fleet.yaml: sources: .*two sources are named 'a'"):
        load_config(path)
    assert FleetConfig().sources == []


def test_an_outcome_is_a_final_state() -> None:
    with pytest.raises(ValueError, match="an outcome's state is one of"):
        Outcome(state=ItemState.running)
