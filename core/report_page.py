"""The run report as one self-contained HTML page: the overview table and charts of success
over time, durations by label and by agent, cost and tokens by agent, failure reasons, tool
and model latency, and retries (``fleet report --html``, the dashboard's ``/reports``).

The charts are inline SVG drawn by :mod:`core.charts`: the file needs no script and no
network, so it opens offline and can be mailed or archived as it is.
"""

from __future__ import annotations

from datetime import UTC, datetime
from html import escape
from typing import Any

import duckdb

from core import charts
from core.analytics import Table, connect, overview, query
from core.charts import Spread

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px auto;max-width:1340px;color:#222}
h1{font-size:22px;margin:0 0 4px} h2{font-size:15px;margin:0 0 6px}
.sub{color:#666;margin-bottom:16px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:14px}
svg{width:100%;height:auto}
section{border:1px solid #ddd;border-radius:6px;padding:10px 12px;background:#fff}
table{border-collapse:collapse;margin-bottom:16px} td,th{padding:3px 10px;text-align:right}
th{background:#f3f3f3;font-weight:600} td:first-child,th:first-child{text-align:left}
svg .lbl{font-size:12px;fill:#333} svg .val{font-size:11px;fill:#555}
svg .whisker{stroke:#3b6fb6;stroke-width:1.5} svg line.grid{stroke:#e4e4e4}
"""

BUCKETS = (("day", 3 * 86400), ("hour", 3 * 3600), ("minute", 0))
"""The time bucket of the success chart: the first whose span is exceeded."""


def _rows(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
    return query(con, sql, params).rows


def _scope(batch: str | None) -> tuple[str, list[Any]]:
    """A ``tasks`` CTE limited to the batch (all tasks without one), and its parameters."""
    if batch:
        return "WITH scope AS (SELECT * FROM tasks WHERE batch = ?)", [batch]
    return "WITH scope AS (SELECT * FROM tasks)", []


def success_over_time(con: duckdb.DuckDBPyConnection, batch: str | None) -> str:
    scope, params = _scope(batch)
    span = _rows(
        con,
        f"{scope} SELECT epoch(max(finished_at) - min(finished_at)) FROM scope "
        "WHERE finished_at IS NOT NULL",
        params,
    )[0][0]
    unit = next(name for name, limit in BUCKETS if (span or 0) >= limit)
    fmt = {"day": "%m-%d", "hour": "%m-%d %Hh", "minute": "%H:%M"}[unit]
    rows = _rows(
        con,
        f"""{scope}
        SELECT strftime(date_trunc('{unit}', finished_at), '{fmt}') AS bucket,
               100.0 * count(*) FILTER (WHERE state = 'succeeded') / count(*) AS pct,
               count(*) AS n
        FROM scope WHERE finished_at IS NOT NULL
        GROUP BY date_trunc('{unit}', finished_at), bucket
        ORDER BY date_trunc('{unit}', finished_at)
        """,
        params,
    )
    points = [(bucket, float(pct), f"{n} tasks ended") for bucket, pct, n in rows]
    return charts.line(f"Success rate (%) by {unit}", points)


def _spreads(rows: list[tuple[Any, ...]]) -> list[tuple[str, Spread]]:
    return [
        (str(name), Spread(*(float(v) for v in figures), count=int(n)))
        for name, *figures, n in rows
    ]


SPREAD = """
min(duration_s), quantile_cont(duration_s, 0.25), median(duration_s),
quantile_cont(duration_s, 0.75), max(duration_s), count(*)
"""


def _durations(
    con: duckdb.DuckDBPyConnection, batch: str | None, title: str, groups: str, none: str
) -> str:
    """Box plots of the scope's task durations by group (the 12 biggest): ``groups`` is a
    query of ``(task_id, name)`` over the scope; a task in none is counted as ``none``."""
    scope, params = _scope(batch)
    rows = _rows(
        con,
        f"""{scope}, grouped AS ({groups})
        SELECT coalesce(g.name, '{none}') AS name, {SPREAD}
        FROM scope s LEFT JOIN grouped g USING (task_id)
        WHERE s.duration_s IS NOT NULL
        GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 12
        """,
        params,
    )
    return charts.boxes(title, _spreads(rows), "s")


def durations_by_label(con: duckdb.DuckDBPyConnection, batch: str | None) -> str:
    labels = """
        SELECT task_id, unnest(CAST(json_extract(payload, '$.task.labels') AS VARCHAR[]))
            AS name
        FROM events WHERE type = 'task.submitted'"""
    return _durations(con, batch, "Task duration by label (s)", labels, "(no label)")


def durations_by_agent(con: duckdb.DuckDBPyConnection, batch: str | None) -> str:
    last_agent = """
        SELECT task_id, arg_max(agent, started_at) AS name
        FROM sessions WHERE task_id IN (SELECT task_id FROM scope) GROUP BY task_id"""
    return _durations(con, batch, "Task duration by agent (s)", last_agent, "(none)")


def spend_by_agent(con: duckdb.DuckDBPyConnection, batch: str | None) -> tuple[str, str]:
    scope, params = _scope(batch)
    rows = _rows(
        con,
        f"""{scope}
        SELECT coalesce(agent, '(none)') AS name, sum(cost_usd), sum(tokens_in),
               sum(tokens_out)
        FROM sessions WHERE task_id IN (SELECT task_id FROM scope)
        GROUP BY name ORDER BY sum(cost_usd) DESC, name LIMIT 12
        """,
        params,
    )
    cost = charts.bars("Cost by agent (USD)", [(n, [float(c)]) for n, c, _, _ in rows], unit=" USD")
    tokens = charts.bars(
        "Tokens by agent",
        [(n, [float(i), float(o)]) for n, _, i, o in rows],
        series=("input", "output"),
    )
    return cost, tokens


def failure_reasons(con: duckdb.DuckDBPyConnection, batch: str | None) -> str:
    scope, params = _scope(batch)
    rows = _rows(
        con,
        f"""{scope}
        SELECT left(coalesce(nullif(reason, ''), '(no reason)'), 90) AS why, count(*) AS n
        FROM scope WHERE state IN ('failed', 'needs_human', 'cancelled')
        GROUP BY why ORDER BY n DESC, why LIMIT 10
        """,
        params,
    )
    return charts.bars("Most common failure reasons (tasks)", [(r, [float(n)]) for r, n in rows])


def _latency(
    con: duckdb.DuckDBPyConnection,
    batch: str | None,
    title: str,
    view: str,
    key: str,
    column: str,
    what: str,
) -> str:
    """p50 and p95 of ``column`` of ``view`` by ``key`` (the busiest 12), as bars."""
    scope, params = _scope(batch)
    rows = _rows(
        con,
        f"""{scope}
        SELECT coalesce({key}, '?') AS name, median({column}), quantile_cont({column}, 0.95),
               count(*)
        FROM {view} WHERE task_id IN (SELECT task_id FROM scope) AND {column} IS NOT NULL
        GROUP BY name ORDER BY count(*) DESC, name LIMIT 12
        """,
        params,
    )
    return charts.bars(
        title,
        [(f"{name} ({n} {what})", [float(p50), float(p95)]) for name, p50, p95, n in rows],
        series=("p50", "p95"),
        unit=" ms",
    )


def tool_latency(con: duckdb.DuckDBPyConnection, batch: str | None) -> str:
    return _latency(con, batch, "Tool latency (ms)", "tool_calls", "tool", "duration_ms", "calls")


def model_latency(con: duckdb.DuckDBPyConnection, batch: str | None) -> str:
    return _latency(
        con, batch, "Model latency per turn (ms)", "turns", "model", "latency_ms", "turns"
    )


def retries(con: duckdb.DuckDBPyConnection, batch: str | None) -> str:
    scope, params = _scope(batch)
    rows = _rows(
        con,
        f"""{scope}
        SELECT attempts, count(*) FROM scope WHERE attempts IS NOT NULL
        GROUP BY attempts ORDER BY attempts
        """,
        params,
    )
    return charts.bars(
        "Tasks by number of attempts", [(f"{a} attempt(s)", [float(n)]) for a, n in rows]
    )


def _table(table: Table) -> str:
    head = "".join(f"<th>{escape(c)}</th>" for c in table.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape('' if v is None else str(v))}</td>" for v in row) + "</tr>"
        for row in table.rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def html_report(events_dir: str, batch: str | None = None) -> str:
    """The whole page over the event log at ``events_dir`` (one batch, or every task)."""
    con = connect(events_dir)
    cost, tokens = spend_by_agent(con, batch)
    sections = [
        ("Success over time", success_over_time(con, batch)),
        ("Durations by label", durations_by_label(con, batch)),
        ("Durations by agent", durations_by_agent(con, batch)),
        ("Cost by agent", cost),
        ("Tokens by agent", tokens),
        ("Failure reasons", failure_reasons(con, batch)),
        ("Tool latency", tool_latency(con, batch)),
        ("Model latency", model_latency(con, batch)),
        ("Retries", retries(con, batch)),
    ]
    made = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    scope = f"batch {batch}" if batch else "all tasks"
    cards = "".join(
        f'<section id="{escape(title.lower().replace(" ", "-"))}"><h2>{escape(title)}</h2>'
        f"{svg}</section>"
        for title, svg in sections
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>Fleet report: {escape(scope)}</title><style>{STYLE}</style></head><body>"
        f"<h1>Fleet report</h1><div class=sub>{escape(scope)} · {escape(events_dir)} · "
        f"made {made}</div>{_table(overview(con, batch))}<div class=grid>{cards}</div>"
        "</body></html>"
    )
