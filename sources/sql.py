"""A SQL table as a source of work: PostgreSQL (psycopg 3, async) or SQLite (stdlib sqlite3).

Each row is an item. People (or their tools) insert rows in the *ready* state; a watcher
lists them, claims a row with a conditional ``UPDATE ... WHERE id = ? AND state = 'ready'``
(the database makes exactly one of two concurrent claimers win, across processes and hosts:
PostgreSQL re-checks the condition after the row lock, SQLite serializes writers), and then
writes the row's state and result columns as the task goes. Nothing but the mapped columns
is ever written, and every write is conditional on the state the watcher expects, so a
person who changes a row's state or deletes it takes it back.

Config (``sources:`` in the fleet config file)::

    sources:
      - name: tickets
        kind: sql
        options:
          dsn_env: TICKETS_DSN          # or dsn_file: /run/secrets/tickets-dsn
          table: work_items             # or schema.table
          columns: {id: id, prompt: body}   # only the ones that differ from the defaults
          states: {ready: todo}             # likewise
          poll_interval_s: 10
          install_trigger: true         # PostgreSQL: NOTIFY on rows that become ready

The DSN is read from the environment variable or the file, never from the config text, and
never appears in an error message or a repr. ``sqlite:`` DSNs are SQLite files
(``sqlite:///abs/path.db`` or ``sqlite:relative.db``; the file must exist); anything else is
a libpq connection string or URL for PostgreSQL.

Pickup is prompt on PostgreSQL: the source LISTENs on a channel (``notify_channel``, default
``agent_fleet_<table>``) and :meth:`SqlSource.wait_for_work` returns at the first
notification. With ``install_trigger: true`` the source installs (idempotently) an
``AFTER INSERT OR UPDATE OF <state>`` trigger on the table that calls ``pg_notify`` when a row
enters the ready state; without it an application may send ``NOTIFY`` itself, and the poll
interval is the fallback either way. SQLite has no notifications: the poll interval only.

Column types: ``labels`` may be an array (PostgreSQL ``text[]``, JSON), a JSON array in
text, or comma-separated text; ``priority`` an integer (or text holding one). The id column
should be the table's key; ids are handed out as strings.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sqlite3
import urllib.parse
from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from core.errors import InputError
from core.specs import plain_name
from sources.base import (
    ItemState,
    Outcome,
    Source,
    SourceError,
    WorkItem,
    read_secret,
)

IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$")
"""A column, table, schema or channel name (quoted in SQL, so used exactly as written)."""


def _identifier(value: str) -> str:
    if not IDENTIFIER.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a plain SQL name (letters, digits, '_' and '$', "
            "not starting with a digit, at most 63 characters)"
        )
    return value


def _quote(name: str) -> str:
    """``name`` (already checked by :func:`_identifier`) as a quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


class ColumnMap(BaseModel):
    """Which column holds what. ``id``, ``prompt`` and ``state`` are required; set any other
    to null when the table has no such column (it is then neither read nor written)."""

    model_config = ConfigDict(extra="forbid")

    id: str = "id"
    prompt: str = "prompt"
    state: str = "state"
    repo: str | None = "repo"
    labels: str | None = "labels"
    priority: str | None = "priority"
    agent: str | None = "agent"
    summary: str | None = "summary"
    branch: str | None = "branch"
    pr_url: str | None = "pr_url"
    reason: str | None = "reason"
    updated_at: str | None = "updated_at"
    claimed_by: str | None = None
    """Optional: the column a claim writes the fleet's name to, so that several fleets can
    share a table (unmapped: a restarted watcher takes up every running row)."""

    @field_validator("*")
    @classmethod
    def _plain(cls, value: str | None) -> str | None:
        return None if value is None else _identifier(value)


class StateValues(BaseModel):
    """The value the state column holds for each item state."""

    model_config = ConfigDict(extra="forbid")

    ready: str = "ready"
    running: str = "running"
    succeeded: str = "succeeded"
    failed: str = "failed"
    needs_human: str = "needs_human"
    cancelled: str = "cancelled"
    rejected: str = "rejected"

    @model_validator(mode="after")
    def _distinct(self) -> StateValues:
        values = list(self.model_dump().values())
        if len(set(values)) != len(values):
            raise ValueError("each state needs its own value")
        return self

    def of(self, state: ItemState) -> str:
        return str(getattr(self, state.value))


class SqlOptions(BaseModel):
    """The ``options:`` of a ``kind: sql`` source."""

    model_config = ConfigDict(extra="forbid")

    dsn_env: str | None = Field(None, description="Environment variable holding the DSN.")
    dsn_file: str | None = Field(None, description="File holding the DSN (first line).")
    table: str = Field(description="Table name, optionally schema-qualified (schema.table).")
    columns: ColumnMap = Field(default_factory=ColumnMap)
    states: StateValues = Field(default_factory=StateValues)
    poll_interval_s: float = Field(10.0, gt=0, description="Wait between polls without NOTIFY.")
    listen: bool = Field(True, description="PostgreSQL: LISTEN for notifications.")
    notify_channel: str | None = Field(None, description="Default: agent_fleet_<table>.")
    install_trigger: bool = Field(
        False, description="PostgreSQL: install a trigger that NOTIFYs when a row becomes ready."
    )
    connect_timeout_s: float = Field(10.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _no_inline_dsn(cls, data: Any) -> Any:
        if isinstance(data, dict) and "dsn" in data:
            raise ValueError(
                "dsn: the DSN is never written in the config; name an environment variable "
                "(dsn_env) or a file (dsn_file) that holds it"
            )
        return data

    @field_validator("dsn_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        return None if value is None else plain_name(value)

    @field_validator("table")
    @classmethod
    def _table_name(cls, value: str) -> str:
        for part in value.split(".", 1):
            _identifier(part)
        return value

    @field_validator("notify_channel")
    @classmethod
    def _channel_name(cls, value: str | None) -> str | None:
        return None if value is None else _identifier(value)

    @model_validator(mode="after")
    def _one_dsn(self) -> SqlOptions:
        if (self.dsn_env is None) == (self.dsn_file is None):
            raise ValueError("give exactly one of dsn_env and dsn_file")
        return self

    @property
    def channel(self) -> str:
        return self.notify_channel or ("agent_fleet_" + self.table.replace(".", "_"))[:63]


def _secrets_of(dsn: str) -> list[str]:
    """The strings an error message must not show: the DSN and any password in it."""
    secrets = [dsn]
    try:
        password = conninfo_to_dict(dsn).get("password")
    except psycopg.Error:
        password = None
    if password:
        secrets += [str(password), urllib.parse.quote(str(password), safe="")]
    return secrets


def _scrub(text: str, secrets: Sequence[str]) -> str:
    for secret in sorted(secrets, key=len, reverse=True):
        if secret:
            text = text.replace(secret, "***")
    return text


class _Postgres:
    """One autocommit connection for queries, one for LISTEN; both opened lazily and
    reopened after a failure."""

    placeholder = "%s"
    kind = "postgresql"

    def __init__(self, source: str, dsn: str, connect_timeout_s: float) -> None:
        self._source = source
        self._dsn = dsn
        self._secrets = _secrets_of(dsn)
        self._timeout = max(2, round(connect_timeout_s))
        self._conn: psycopg.AsyncConnection[dict[str, Any]] | None = None
        self._listener: psycopg.AsyncConnection[dict[str, Any]] | None = None
        self._channel: str | None = None

    def _error(self, what: str, exc: Exception) -> SourceError:
        detail = _scrub(str(exc).strip().splitlines()[0] if str(exc).strip() else "", self._secrets)
        return SourceError(self._source, f"{what}: {type(exc).__name__}: {detail}")

    async def _connect(self) -> psycopg.AsyncConnection[dict[str, Any]]:
        try:
            return await psycopg.AsyncConnection.connect(
                self._dsn, autocommit=True, row_factory=dict_row, connect_timeout=self._timeout
            )
        except psycopg.Error as exc:
            raise self._error("cannot connect to PostgreSQL", exc) from None

    async def _connection(self) -> psycopg.AsyncConnection[dict[str, Any]]:
        if self._conn is None or self._conn.closed:
            self._conn = await self._connect()
        return self._conn

    async def _drop(self, conn: psycopg.AsyncConnection[Any] | None) -> None:
        if conn is not None and not conn.closed:
            with contextlib.suppress(psycopg.Error):
                await conn.close()

    async def fetch(self, query: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        conn = await self._connection()
        try:
            cur = await conn.execute(query.encode(), params)
            return await cur.fetchall()
        except psycopg.Error as exc:
            if isinstance(exc, psycopg.OperationalError):
                await self._drop(conn)
            raise self._error("query failed", exc) from None

    async def execute(self, query: str, params: Sequence[Any]) -> int:
        conn = await self._connection()
        try:
            cur = await conn.execute(query.encode(), params)
            return cur.rowcount
        except psycopg.Error as exc:
            if isinstance(exc, psycopg.OperationalError):
                await self._drop(conn)
            raise self._error("update failed", exc) from None

    async def script(self, statements: Sequence[str]) -> None:
        """Run ``statements`` in one transaction (for the trigger's DDL)."""
        conn = await self._connection()
        try:
            async with conn.transaction():
                for statement in statements:
                    await conn.execute(statement.encode())
        except psycopg.Error as exc:
            raise self._error("installing the notify trigger failed", exc) from None

    async def listen(self, channel: str) -> None:
        """Make sure a connection LISTENs on ``channel`` (call before listing, so nothing
        that becomes ready after the listing can be missed by the next wait)."""
        if self._listener is not None and not self._listener.closed:
            return
        self._listener = await self._connect()
        self._channel = channel
        try:
            await self._listener.execute(f"LISTEN {_quote(channel)}".encode())
        except psycopg.Error as exc:
            await self._drop(self._listener)
            raise self._error("LISTEN failed", exc) from None

    async def wait(self, timeout: float) -> bool:
        """True at the first notification (later ones already queued are consumed too),
        False after ``timeout`` seconds without one."""
        assert self._channel is not None
        await self.listen(self._channel)
        listener = self._listener
        assert listener is not None
        try:
            woken = False
            async for _ in listener.notifies(timeout=timeout, stop_after=1):
                woken = True
            if woken:  # a burst of rows: one wake-up, not one per row
                async for _ in listener.notifies(timeout=0.05):
                    pass
            return woken
        except psycopg.Error as exc:
            await self._drop(listener)
            raise self._error("waiting for notifications failed", exc) from None

    async def close(self) -> None:
        await self._drop(self._conn)
        await self._drop(self._listener)
        self._conn = self._listener = None


class _Sqlite:
    """A new stdlib connection per operation, run in a thread (SQLite connections are cheap;
    the database file's lock makes conditional updates atomic between processes)."""

    placeholder = "?"
    kind = "sqlite"

    def __init__(self, source: str, path: str, timeout_s: float) -> None:
        self._source = source
        self._uri = "file:" + urllib.parse.quote(path) + "?mode=rw"
        self._timeout = timeout_s

    def _run(self, query: str, params: Sequence[Any], fetch: bool) -> list[dict[str, Any]] | int:
        try:
            conn = sqlite3.connect(self._uri, uri=True, timeout=self._timeout, isolation_level=None)
        except sqlite3.Error as exc:
            raise SourceError(self._source, f"cannot open the SQLite database: {exc}") from None
        try:
            conn.row_factory = sqlite3.Row
            cur = conn.execute(query, tuple(params))
            if fetch:
                return [dict(row) for row in cur.fetchall()]
            return cur.rowcount
        except sqlite3.Error as exc:
            raise SourceError(self._source, f"query failed: {exc}") from None
        finally:
            conn.close()

    async def fetch(self, query: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        rows = await asyncio.to_thread(self._run, query, params, True)
        assert isinstance(rows, list)
        return rows

    async def execute(self, query: str, params: Sequence[Any]) -> int:
        count = await asyncio.to_thread(self._run, query, params, False)
        assert isinstance(count, int)
        return count

    async def close(self) -> None:
        pass


def _sqlite_path(dsn: str) -> str:
    rest = dsn.removeprefix("sqlite:")
    return rest[2:] if rest.startswith("//") else rest


class RowError(InputError):
    """A row that cannot become a task; the message is the reason written to it."""


def _text(row: dict[str, Any], column: str | None, field: str) -> str | None:
    if column is None or row.get(column) is None:
        return None
    value = row[column]
    if not isinstance(value, str):
        raise RowError(f"{field} is not text: {value!r}"[:300])
    return value.strip() or None


def _labels(row: dict[str, Any], column: str | None) -> list[str]:
    value = None if column is None else row.get(column)
    if value is None:
        return []
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                raise RowError(f"labels is not a JSON array: {exc.msg}") from None
        else:
            return [part.strip() for part in text.split(",") if part.strip()]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [v.strip() for v in value if v.strip()]
    raise RowError(f"labels must be a list of strings or comma-separated text: {value!r}"[:300])


def _priority(row: dict[str, Any], column: str | None) -> int:
    value = None if column is None else row.get(column)
    if value is None:
        return 0
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise RowError(f"priority is not an integer: {value!r}"[:300])


class SqlSource(Source):
    """Items are rows of one table in PostgreSQL or SQLite (see the module docstring)."""

    Options = SqlOptions
    options: SqlOptions

    def __init__(self, name: str, options: SqlOptions) -> None:  # type: ignore[override]
        super().__init__(name, options)
        self.poll_interval_s = options.poll_interval_s
        self._dsn = read_secret(name, "dsn", options.dsn_env, options.dsn_file)
        self._db: _Postgres | _Sqlite
        if self._dsn.startswith("sqlite:"):
            self._db = _Sqlite(name, _sqlite_path(self._dsn), options.connect_timeout_s)
        else:
            self._db = _Postgres(name, self._dsn, options.connect_timeout_s)
        self._prepared = False
        cols = options.columns
        self._table = ".".join(_quote(part) for part in options.table.split(".", 1))
        self._id, self._prompt, self._state = (
            _quote(cols.id),
            _quote(cols.prompt),
            _quote(cols.state),
        )

    @property
    def backend(self) -> str:
        """'postgresql' or 'sqlite'."""
        return self._db.kind

    def __repr__(self) -> str:
        return (
            f"SqlSource(name={self.name!r}, backend={self.backend!r}, table={self.options.table!r})"
        )

    @property
    def _listening(self) -> bool:
        return isinstance(self._db, _Postgres) and self.options.listen

    async def _prepare(self) -> None:
        """Once: install the notify trigger if asked; LISTEN (kept up by every listing)."""
        if isinstance(self._db, _Postgres):
            if not self._prepared and self.options.install_trigger:
                await self._db.script(self._trigger_sql())
            if self.options.listen:
                await self._db.listen(self.options.channel)
        self._prepared = True

    def _trigger_sql(self) -> list[str]:
        opts = self.options
        schema, _, table = opts.table.rpartition(".")
        prefix = _quote(schema) + "." if schema else ""
        function = prefix + _quote(("agent_fleet_notify_" + table)[:63])
        ready = opts.states.ready.replace("'", "''")
        return [
            "SELECT pg_advisory_xact_lock(hashtext('agent_fleet_notify_trigger'))",
            f"CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS "
            f"$fleet$ BEGIN PERFORM pg_notify('{opts.channel}', NEW.{self._id}::text); "
            "RETURN NEW; END $fleet$",
            f'DROP TRIGGER IF EXISTS "agent_fleet_notify" ON {self._table}',
            f'CREATE TRIGGER "agent_fleet_notify" AFTER INSERT OR UPDATE OF {self._state} '
            f"ON {self._table} FOR EACH ROW WHEN (NEW.{self._state} = '{ready}') "
            f"EXECUTE FUNCTION {function}()",
        ]

    def _now(self) -> datetime | str:
        now = datetime.now(UTC)
        return now if isinstance(self._db, _Postgres) else now.isoformat(timespec="seconds")

    def _update(
        self, item_id: str, expect: ItemState, values: list[tuple[str | None, Any]]
    ) -> tuple[str, list[Any]]:
        """``UPDATE`` setting the mapped ``(column, value)`` pairs (unmapped ones dropped,
        plus updated_at) on the row with ``item_id`` while its state is ``expect``."""
        p = self._db.placeholder
        pairs = [(c, v) for c, v in values if c is not None]
        if self.options.columns.updated_at is not None:
            pairs.append((self.options.columns.updated_at, self._now()))
        sets = ", ".join(f"{_quote(c)} = {p}" for c, _ in pairs)
        query = f"UPDATE {self._table} SET {sets} WHERE {self._id} = {p} AND {self._state} = {p}"
        return query, [v for _, v in pairs] + [item_id, self.options.states.of(expect)]

    def _item(self, row: dict[str, Any]) -> WorkItem:
        cols = self.options.columns
        prompt = row.get(cols.prompt)
        if not isinstance(prompt, str) or not prompt.strip():
            raise RowError("no prompt")
        agent = _text(row, cols.agent, "agent")
        return WorkItem(
            source=self.name,
            id=str(row[cols.id]),
            prompt=prompt,
            repo=_text(row, cols.repo, "repo"),
            labels=_labels(row, cols.labels),
            priority=_priority(row, cols.priority),
            agent=agent,
            raw=row,
        )

    async def _reject(self, item_id: str, reason: str) -> None:
        cols, states = self.options.columns, self.options.states
        query, params = self._update(
            item_id,
            ItemState.ready,
            [(cols.state, states.rejected), (cols.reason, reason)],
        )
        await self._db.execute(query, params)

    async def list_ready(self, limit: int = 100) -> list[WorkItem]:
        await self._prepare()
        cols, p = self.options.columns, self._db.placeholder
        order = f"{self._id}"
        if cols.priority is not None:
            order = f"{_quote(cols.priority)} DESC NULLS LAST, {order}"
        rows = await self._db.fetch(
            f"SELECT * FROM {self._table} WHERE {self._state} = {p} ORDER BY {order} LIMIT {p}",
            [self.options.states.ready, limit],
        )
        items = []
        for row in rows:
            if row.get(cols.id) is None:
                continue  # a row without a key cannot be addressed, not even to reject it
            try:
                items.append(self._item(row))
            except RowError as exc:
                await self._reject(str(row[cols.id]), str(exc))
        return items

    async def claim(self, item_id: str) -> bool:
        cols, states = self.options.columns, self.options.states
        values: list[tuple[str | None, Any]] = [(cols.state, states.running)]
        if cols.claimed_by is not None:
            values.append((cols.claimed_by, self.owner))
        query, params = self._update(item_id, ItemState.ready, values)
        return await self._db.execute(query, params) == 1

    async def list_claimed(self, limit: int = 10_000) -> list[WorkItem]:
        """Running rows (with ``claimed_by`` mapped: those claimed by :attr:`owner`), in key
        order. A running row that cannot become a task is left out (not written)."""
        cols, p = self.options.columns, self._db.placeholder
        where, params = f"{self._state} = {p}", [self.options.states.running]
        if cols.claimed_by is not None:
            where += f" AND {_quote(cols.claimed_by)} = {p}"
            params.append(self.owner or "")
        rows = await self._db.fetch(
            f"SELECT * FROM {self._table} WHERE {where} ORDER BY {self._id} LIMIT {p}",
            [*params, limit],
        )
        items = []
        for row in rows:
            if row.get(cols.id) is None:
                continue
            with contextlib.suppress(RowError):
                items.append(self._item(row))
        return items

    async def report_progress(self, item_id: str, note: str | None = None) -> bool:
        cols, states = self.options.columns, self.options.states
        values: list[tuple[str | None, Any]] = [(cols.state, states.running)]
        if note is not None:
            values.append((cols.summary, note))
        query, params = self._update(item_id, ItemState.running, values)
        return await self._db.execute(query, params) == 1

    async def report_outcome(self, item_id: str, outcome: Outcome) -> bool:
        cols, states = self.options.columns, self.options.states
        query, params = self._update(
            item_id,
            ItemState.running,
            [
                (cols.state, states.of(outcome.state)),
                (cols.summary, outcome.summary),
                (cols.branch, outcome.branch),
                (cols.pr_url, outcome.pr_url),
                (cols.reason, outcome.reason),
            ],
        )
        return await self._db.execute(query, params) == 1

    async def wanted(self, item_ids: Collection[str]) -> dict[str, str]:
        """Rows among ``item_ids`` still running (claimed) with a prompt, with that prompt.
        A row whose prompt was erased counts as withdrawn."""
        ids = list(dict.fromkeys(item_ids))
        p, out = self._db.placeholder, {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ", ".join([p] * len(chunk))
            rows = await self._db.fetch(
                f"SELECT {self._id} AS id, {self._prompt} AS prompt FROM {self._table} "
                f"WHERE {self._state} = {p} AND {self._id} IN ({marks})",
                [self.options.states.running, *chunk],
            )
            for row in rows:
                prompt = row["prompt"]
                if isinstance(prompt, str) and prompt.strip():
                    out[str(row["id"])] = prompt
        return out

    async def wait_for_work(self) -> bool:
        """PostgreSQL with ``listen``: the first NOTIFY on the channel (True) or the poll
        interval (False). SQLite: the poll interval."""
        if isinstance(self._db, _Postgres) and self.options.listen:
            await self._prepare()
            return await self._db.wait(self.poll_interval_s)
        return await super().wait_for_work()

    async def close(self) -> None:
        await self._db.close()
