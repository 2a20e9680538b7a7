"""DuckDB over the Parquet event log: the ``events`` view, the ``tasks``, ``sessions``,
``tool_calls`` and ``turns`` views over it, and the reports."""

from __future__ import annotations

import glob
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from core.errors import StorageError
from core.eventlog import partition_files
from core.events import ARROW_SCHEMA, TERMINAL_EVENTS, EventType
from core.specs import BUILTIN_REPORTS, SavedReport

TERMINAL = "(" + ", ".join(f"'{t.value}'" for t in sorted(TERMINAL_EVENTS)) + ")"
"""The terminal event types as an SQL list."""
TOOL_USES = (
    "("
    + ", ".join(
        f"'{t.value}'"
        for t in (
            EventType.agent_tool_use,
            EventType.agent_mcp_tool_use,
            EventType.agent_custom_tool_use,
        )
    )
    + ")"
)
"""The events of a model's tool call (built-in, MCP server's, custom), as an SQL list."""

TASKS_VIEW = f"""
CREATE OR REPLACE VIEW tasks AS
WITH per_task AS (
    SELECT
        task_id,
        any_value(json_extract_string(payload, '$.batch'))
            FILTER (WHERE type = 'task.submitted') AS batch,
        arg_max(type, seq) FILTER (WHERE type IN {TERMINAL}) AS final_event,
        max(attempt) AS attempts,
        coalesce(sum(CAST(json_extract(payload, '$.turns') AS BIGINT))
            FILTER (WHERE type = 'session.ended'), 0) AS turns,
        count(*) FILTER (WHERE type IN {TOOL_USES}) AS tool_calls,
        min(ts) FILTER (WHERE type = 'task.submitted') AS submitted_at,
        min(ts) FILTER (WHERE type = 'task.assigned') AS started_at,
        max(ts) FILTER (WHERE type IN {TERMINAL}) AS finished_at,
        coalesce(sum(tokens_in), 0) AS tokens_in,
        coalesce(sum(tokens_out), 0) AS tokens_out,
        coalesce(sum(cost_usd), 0) AS cost_usd,
        arg_max(json_extract_string(payload, '$.reason'), seq)
            FILTER (WHERE type IN {TERMINAL}) AS reason,
        fleet
    FROM events
    -- a source's and the registry's events (task_id 'source:<name>', 'registry:<kind>/<name>')
    -- are no task's
    WHERE type NOT LIKE 'source.%' AND type NOT LIKE 'registry.%'
    -- several fleets' logs read as one may each have a task of the same id
    GROUP BY task_id, fleet
)
SELECT
    *,
    coalesce(replace(final_event, 'task.', ''), 'unfinished') AS state,
    epoch(finished_at - started_at) AS duration_s,
    epoch(started_at - submitted_at) AS wait_s
FROM per_task
"""


SESSIONS_VIEW = f"""
CREATE OR REPLACE VIEW sessions AS
SELECT
    task_id,
    session_id,
    max(attempt) AS attempt,
    any_value(worker) FILTER (WHERE type = 'session.started') AS worker,
    any_value(json_extract_string(payload, '$.agent'))
        FILTER (WHERE type = 'session.started') AS agent,
    any_value(json_extract_string(payload, '$.model'))
        FILTER (WHERE type = 'session.started') AS model,
    any_value(json_extract_string(payload, '$.environment'))
        FILTER (WHERE type = 'session.started') AS environment,
    min(ts) FILTER (WHERE type = 'session.started') AS started_at,
    max(ts) FILTER (WHERE type = 'session.ended') AS ended_at,
    arg_max(json_extract_string(payload, '$.status'), seq)
        FILTER (WHERE type = 'session.ended') AS status,
    arg_max(json_extract_string(payload, '$.reason'), seq)
        FILTER (WHERE type = 'session.ended') AS reason,
    count(*) FILTER (WHERE type = 'usage') AS turns,
    count(*) FILTER (WHERE type IN {TOOL_USES}) AS tool_calls,
    coalesce(sum(tokens_in), 0) AS tokens_in,
    coalesce(sum(tokens_out), 0) AS tokens_out,
    coalesce(sum(cost_usd), 0) AS cost_usd,
    sum(duration_ms) FILTER (WHERE type = 'session.ended') / 1000 AS duration_s
FROM events
WHERE session_id IS NOT NULL
GROUP BY task_id, session_id
"""
"""One row per session (an attempt, or its resumption after a park): who ran it, how it
ended, what it spent."""

TOOL_CALLS_VIEW = """
CREATE OR REPLACE VIEW tool_calls AS
WITH uses AS (
    SELECT task_id, session_id, json_extract_string(payload, '$.call_id') AS call_id,
           ts AS called_at, CAST(json_extract(payload, '$.turn') AS INTEGER) AS turn
    FROM events WHERE type IN ('agent.tool_use', 'agent.mcp_tool_use')
)
SELECT
    r.task_id,
    r.session_id,
    r.attempt,
    u.turn,
    r.tool,
    json_extract_string(r.payload, '$.call_id') AS call_id,
    u.called_at,
    r.ts AS returned_at,
    r.duration_ms,
    r.exit_code,
    coalesce(CAST(json_extract(r.payload, '$.is_error') AS BOOLEAN), false) AS is_error
FROM events r
LEFT JOIN uses u
    ON u.task_id = r.task_id AND u.session_id IS NOT DISTINCT FROM r.session_id
    AND u.call_id = json_extract_string(r.payload, '$.call_id')
WHERE r.type IN ('agent.tool_result', 'agent.mcp_tool_result')
"""
"""One row per tool call that returned (built-in or an MCP server's): its tool, turn,
timing, exit code and error flag."""

TURNS_VIEW = """
CREATE OR REPLACE VIEW turns AS
SELECT
    task_id,
    session_id,
    attempt,
    CAST(json_extract(payload, '$.turn') AS INTEGER) AS turn,
    json_extract_string(payload, '$.model') AS model,
    ts,
    duration_ms AS latency_ms,
    coalesce(tokens_in, 0) AS tokens_in,
    coalesce(CAST(json_extract(payload, '$.cached_input_tokens') AS BIGINT), 0)
        AS cached_tokens_in,
    coalesce(tokens_out, 0) AS tokens_out,
    coalesce(cost_usd, 0) AS cost_usd
FROM events
WHERE type = 'usage'
"""
"""One row per model turn: the model, its latency, tokens and cost."""

VIEWS = {
    "tasks": TASKS_VIEW,
    "sessions": SESSIONS_VIEW,
    "tool_calls": TOOL_CALLS_VIEW,
    "turns": TURNS_VIEW,
}
"""The views every connection has beside ``events`` (README "History in SQL")."""


class AnalyticsError(StorageError):
    """There is no event history to query there, or the query failed."""


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[tuple[Any, ...]] = field(default_factory=list)

    def as_dicts(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]


Logs = str | Sequence[str]
"""Where reports read: one event log (a directory or a pyarrow URI), or several read as one
``events`` view (several fleets' logs; its ``fleet`` column says whose each event is)."""

FLEET_OF_FILE = r"/(?:seg|compact)-([^/-]+)-[^/]*\.parquet$"
"""The writer (fleet) name in a log file's name (``core.eventlog``'s layout)."""


def log_roots(events: Logs) -> list[str]:
    """The logs ``events`` names, in order, each once. A local directory that holds no log
    itself but has subdirectories that do (one per fleet) stands for those."""
    roots: list[str] = []
    for location in [events] if isinstance(events, str) else list(events):
        root = location if "://" in location else os.path.abspath(location)
        if "://" not in root and not glob.glob(os.path.join(root, "date=*")):
            children = sorted(
                os.path.dirname(d) for d in glob.glob(os.path.join(root, "*", "date=*"))
            )
            if children:
                roots += children
                continue
        roots.append(root)
    return list(dict.fromkeys(roots))


def connect(events_dir: Logs) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with the view ``events`` over the log's files and the
    :data:`VIEWS` over it. ``events_dir``: one log, or several (see :data:`Logs`,
    :func:`log_roots`); either way ``events`` has a ``fleet`` column: the name of the fleet
    that wrote each event (from its file's name).

    A local path is read by DuckDB itself; a URI (``s3://``, ``gs://``, ``file://``, ...)
    through pyarrow's filesystems, so no DuckDB extension is needed to reach it.
    """
    con = duckdb.connect()
    roots = log_roots(events_dir)
    if any("://" in root for root in roots):
        parts = []
        for n, (fleet, dataset) in enumerate(_uri_datasets(roots)):
            con.register(f"events_arrow_{n}", dataset)
            name = f"'{fleet}'" if fleet else "NULL"
            parts.append(f"SELECT *, {name} AS fleet FROM events_arrow_{n}")
        con.execute("CREATE VIEW events AS " + " UNION ALL BY NAME ".join(parts))
    else:
        patterns = []
        for root in roots:
            if not os.path.isdir(root):
                raise AnalyticsError(
                    f"no event log at {root} (run a batch first, or pass --events)"
                )
            if not glob.glob(os.path.join(root, "date=*", "*.parquet")):
                raise AnalyticsError(f"no events under {root} yet (run a batch first)")
            patterns.append("'" + f"{root}/date=*/*.parquet".replace("'", "''") + "'")
        query(
            con,
            "CREATE VIEW events AS SELECT * EXCLUDE (filename), "
            f"nullif(regexp_extract(filename, '{FLEET_OF_FILE}', 1), '') AS fleet FROM "
            f"read_parquet([{', '.join(patterns)}], hive_partitioning = true, "
            "union_by_name = true, filename = true)",
        )
    for view in VIEWS.values():
        query(con, view)  # tried again if a compaction removes a file meanwhile
    return con


def _uri_datasets(roots: list[str]) -> list[tuple[str, ds.Dataset]]:
    """One dataset per log and writer (fleet) in it: (the fleet's name, its files)."""
    out = []
    for root_uri in roots:
        try:
            fs, root = pafs.FileSystem.from_uri(root_uri)
            files = partition_files(fs, root)
        except (OSError, pa.ArrowException, ValueError) as exc:
            raise AnalyticsError(f"cannot read the event log at {root_uri}: {exc}") from None
        if not files:
            raise AnalyticsError(f"no events under {root_uri} yet (run a batch first)")
        by_fleet: dict[str, list[str]] = {}
        for path in files:
            found = re.search(FLEET_OF_FILE, path)
            by_fleet.setdefault(found.group(1) if found else "", []).append(path)
        partitioning = ds.partitioning(pa.schema([("date", pa.date32())]), flavor="hive")
        for fleet, paths in sorted(by_fleet.items()):
            dataset = ds.dataset(
                paths,
                filesystem=fs,
                format="parquet",
                schema=ARROW_SCHEMA.append(pa.field("date", pa.date32())),
                partitioning=partitioning,
                partition_base_dir=root,
            )
            out.append((fleet.replace("'", ""), dataset))
    return out


READ_TRIES = 10
"""Times a query is tried while a compaction removes files under it (with a short pause)."""


def query(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> Table:
    """Run ``sql``. A file that a compaction removed while the query ran makes it run again
    (the views list the files anew), after a pause as long as the tries so far."""
    for tries in range(1, READ_TRIES + 1):
        try:
            rel = con.execute(sql, params or [])
            columns = [d[0] for d in rel.description or []]
            return Table(title="", columns=columns, rows=rel.fetchall())
        except duckdb.IOException as exc:
            if tries == READ_TRIES:
                raise AnalyticsError(str(exc).strip().splitlines()[0]) from None
            time.sleep(0.02 * tries)
        except duckdb.Error as exc:
            raise AnalyticsError(str(exc).strip().splitlines()[0]) from None
    raise AssertionError("unreachable")


def report(events_dir: Logs, batch: str | None = None, task_limit: int = 50) -> list[Table]:
    """The run report: overview, per-task outcome, tool calls by tool."""
    con = connect(events_dir)
    where = "WHERE batch = ?" if batch else ""
    params = [batch] if batch else []
    per_task = query(
        con,
        f"""
        SELECT task_id, state, attempts, turns, tool_calls,
               round(duration_s, 3) AS duration_s, coalesce(reason, '') AS reason
        FROM tasks {where}
        ORDER BY finished_at NULLS LAST, task_id
        LIMIT {int(task_limit)}
        """,
        params,
    )
    per_task.title = "Tasks"
    batch_filter = "AND task_id IN (SELECT task_id FROM tasks WHERE batch = ?)" if batch else ""
    tools = query(
        con,
        f"""
        SELECT tool,
               count(*) AS calls,
               count(*) FILTER (WHERE json_extract(payload, '$.is_error')::BOOLEAN) AS errors,
               round(avg(duration_ms), 2) AS avg_ms,
               round(quantile_cont(duration_ms, 0.95), 2) AS p95_ms
        FROM events
        WHERE type IN ('agent.tool_result', 'agent.mcp_tool_result') {batch_filter}
        GROUP BY tool ORDER BY calls DESC
        """,
        params,
    )
    tools.title = "Tool calls by tool"
    tables = [overview(con, batch), per_task, tools]
    fleets = by_fleet(con, batch)
    return [*tables, fleets] if len(fleets.rows) > 1 else tables


def by_fleet(con: duckdb.DuckDBPyConnection, batch: str | None = None) -> Table:
    """Tasks per fleet (the logs of several fleets read as one): how many ended how."""
    where = "WHERE batch = ?" if batch else ""
    table = query(
        con,
        f"""
        SELECT coalesce(fleet, '') AS fleet, count(*) AS tasks,
               count(*) FILTER (WHERE state = 'succeeded') AS succeeded,
               count(*) FILTER (WHERE state <> 'succeeded') AS other,
               round(quantile_cont(duration_s, 0.5), 3) AS p50_s
        FROM tasks {where} GROUP BY ALL ORDER BY fleet
        """,
        [batch] if batch else [],
    )
    table.title = "By fleet"
    return table


def overview(con: duckdb.DuckDBPyConnection, batch: str | None = None) -> Table:
    """One row: how many tasks ended how, the success rate, durations, turns, spend."""
    where = "WHERE batch = ?" if batch else ""
    params = [batch] if batch else []
    table = query(
        con,
        f"""
        SELECT count(*) AS tasks,
               count(*) FILTER (WHERE state = 'succeeded') AS succeeded,
               count(*) FILTER (WHERE state = 'failed') AS failed,
               count(*) FILTER (WHERE state = 'needs_human') AS needs_human,
               count(*) FILTER (WHERE state NOT IN ('succeeded', 'failed', 'needs_human'))
                   AS other,
               round(100.0 * count(*) FILTER (WHERE state = 'succeeded')
                     / nullif(count(*), 0), 1) AS success_pct,
               round(quantile_cont(duration_s, 0.5), 3) AS p50_s,
               round(quantile_cont(duration_s, 0.9), 3) AS p90_s,
               round(quantile_cont(duration_s, 0.99), 3) AS p99_s,
               round(max(duration_s), 3) AS max_s,
               round(avg(turns), 1) AS avg_turns,
               sum(tool_calls) AS tool_calls,
               sum(tokens_in + tokens_out) AS tokens,
               round(sum(cost_usd), 4) AS cost_usd
        FROM tasks {where}
        """,
        params,
    )
    table.title = "Overview"
    return table


def sql(events_dir: Logs, statement: str) -> Table:
    """Run any SQL with the views ``events``, ``tasks``, ``sessions``, ``tool_calls`` and
    ``turns`` defined."""
    return query(connect(events_dir), statement)


DURATIONS_SQL = """
SELECT task_id, state, round(duration_s, 3) AS duration_s,
       CAST(finished_at AS VARCHAR) AS finished_at
FROM tasks WHERE finished_at IS NOT NULL {where}
ORDER BY finished_at DESC LIMIT 200
"""


def named_report(
    events_dir: Logs,
    name: str,
    batch: str | None = None,
    saved: dict[str, SavedReport] | None = None,
) -> Table:
    """One report by name: a built-in (:data:`BUILTIN_REPORTS`) or a saved query of the
    config. KeyError names the known ones; a saved query takes no ``batch``."""
    saved = saved or {}
    if name in saved:
        if batch:
            raise AnalyticsError(f"report {name!r} is a saved query: it takes no batch")
        table = sql(events_dir, saved[name].sql)
        table.title = saved[name].title or name
        return table
    if name not in BUILTIN_REPORTS:
        known = ", ".join([*BUILTIN_REPORTS, *sorted(saved)])
        raise KeyError(f"no report {name!r} (known: {known})")
    if name == "durations":
        con = connect(events_dir)
        where = "AND batch = ?" if batch else ""
        table = query(con, DURATIONS_SQL.format(where=where), [batch] if batch else [])
        table.title = "Durations of finished tasks (newest first)"
        return table
    overview_, tasks, tools = report(events_dir, batch=batch, task_limit=500)[:3]
    return {"overview": overview_, "tasks": tasks, "tools": tools}[name]
