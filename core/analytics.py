"""DuckDB over the Parquet event log: the ``events`` and ``tasks`` views and the reports."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from core.errors import StorageError
from core.eventlog import partition_files
from core.events import ARROW_SCHEMA, TERMINAL_EVENTS

TERMINAL = "(" + ", ".join(f"'{t.value}'" for t in sorted(TERMINAL_EVENTS)) + ")"
"""The terminal event types as an SQL list."""

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
        count(*) FILTER (WHERE type = 'agent.tool_use') AS tool_calls,
        min(ts) FILTER (WHERE type = 'task.submitted') AS submitted_at,
        min(ts) FILTER (WHERE type = 'task.assigned') AS started_at,
        max(ts) FILTER (WHERE type IN {TERMINAL}) AS finished_at,
        coalesce(sum(tokens_in), 0) AS tokens_in,
        coalesce(sum(tokens_out), 0) AS tokens_out,
        coalesce(sum(cost_usd), 0) AS cost_usd,
        arg_max(json_extract_string(payload, '$.reason'), seq)
            FILTER (WHERE type IN {TERMINAL}) AS reason
    FROM events
    -- a source's and the registry's events (task_id 'source:<name>', 'registry:<kind>/<name>')
    -- are no task's
    WHERE type NOT LIKE 'source.%' AND type NOT LIKE 'registry.%'
    GROUP BY task_id
)
SELECT
    *,
    coalesce(replace(final_event, 'task.', ''), 'unfinished') AS state,
    epoch(finished_at - started_at) AS duration_s,
    epoch(started_at - submitted_at) AS wait_s
FROM per_task
"""


class AnalyticsError(StorageError):
    """There is no event history to query there, or the query failed."""


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[tuple[Any, ...]] = field(default_factory=list)

    def as_dicts(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]


def connect(events_dir: str) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with the views ``events`` and ``tasks`` over the log's files.

    A local path is read by DuckDB itself; a URI (``s3://``, ``gs://``, ``file://``, ...)
    through pyarrow's filesystems, so no DuckDB extension is needed to reach it.
    """
    con = duckdb.connect()
    if "://" in events_dir:
        con.register("events_arrow", _uri_dataset(events_dir))
        con.execute("CREATE VIEW events AS SELECT * FROM events_arrow")
    else:
        root = os.path.abspath(events_dir)
        if not os.path.isdir(root):
            raise AnalyticsError(f"no event log at {root} (run a batch first, or pass --events)")
        if not glob.glob(os.path.join(root, "date=*", "*.parquet")):
            raise AnalyticsError(f"no events under {root} yet (run a batch first)")
        pattern = f"{root}/date=*/*.parquet".replace("'", "''")
        con.execute(
            "CREATE VIEW events AS SELECT * FROM "
            f"read_parquet('{pattern}', hive_partitioning = true, union_by_name = true)"
        )
    con.execute(TASKS_VIEW)
    return con


def _uri_dataset(uri: str) -> ds.Dataset:
    try:
        fs, root = pafs.FileSystem.from_uri(uri)
        files = partition_files(fs, root)
    except (OSError, pa.ArrowException, ValueError) as exc:
        raise AnalyticsError(f"cannot read the event log at {uri}: {exc}") from None
    if not files:
        raise AnalyticsError(f"no events under {uri} yet (run a batch first)")
    partitioning = ds.partitioning(pa.schema([("date", pa.date32())]), flavor="hive")
    return ds.dataset(
        files,
        filesystem=fs,
        format="parquet",
        schema=ARROW_SCHEMA.append(pa.field("date", pa.date32())),
        partitioning=partitioning,
        partition_base_dir=root,
    )


def query(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> Table:
    try:
        rel = con.execute(sql, params or [])
    except duckdb.Error as exc:
        raise AnalyticsError(str(exc).strip().splitlines()[0]) from None
    columns = [d[0] for d in rel.description or []]
    return Table(title="", columns=columns, rows=rel.fetchall())


def report(events_dir: str, batch: str | None = None, task_limit: int = 50) -> list[Table]:
    """The run report: overview, per-task outcome, tool calls by tool."""
    con = connect(events_dir)
    where = "WHERE batch = ?" if batch else ""
    params = [batch] if batch else []
    overview = query(
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
    overview.title = "Overview"
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
        WHERE type = 'agent.tool_result' {batch_filter}
        GROUP BY tool ORDER BY calls DESC
        """,
        params,
    )
    tools.title = "Tool calls by tool"
    return [overview, per_task, tools]


def sql(events_dir: str, statement: str) -> Table:
    """Run any SQL with the views ``events`` and ``tasks`` defined."""
    return query(connect(events_dir), statement)
