"""DuckDB reports over the event log's Parquet files."""

import asyncio
import datetime as dt
import decimal
from typing import Annotated, Any

from fastapi import HTTPException, Query

from core import analytics
from serve import models as m
from serve.deps import Fleet, Sup
from serve.openapi import NOT_FOUND
from serve.routes import v1_router

router = v1_router(tags=["fleet"])
REPORTS = ("overview", "tasks", "tools", "durations")


@router.get("/reports/{name}", responses=NOT_FOUND)
async def get_report(
    sup: Sup,
    fleet: Fleet,
    name: str,
    batch: Annotated[str | None, Query(max_length=200)] = None,
    fresh: Annotated[
        bool,
        Query(
            description="Roll buffered events into Parquet first, so the report includes "
            "the last second too (writes a file: do not poll with it)."
        ),
    ] = False,
) -> m.Report:
    """DuckDB reports over the event log: overview, tasks, tools, durations. The log is
    rolled into Parquet every `flush_interval_s` (1 s by default); `fresh` forces it.
    Empty rows while the log has no events yet."""
    if name not in REPORTS:
        raise HTTPException(404, f"no report {name!r} (known: {', '.join(REPORTS)})")
    if fresh:
        await sup.flush()
    try:
        table = await asyncio.to_thread(run_report, fleet.events_dir, name, batch)
    except analytics.AnalyticsError:
        table = analytics.Table(name, [], [])
    rows = [{k: plain(v) for k, v in row.items()} for row in table.as_dicts()]
    return m.Report(name=name, title=table.title or name, columns=table.columns, rows=rows)


DURATIONS_SQL = """
SELECT task_id, state, round(duration_s, 3) AS duration_s,
       CAST(finished_at AS VARCHAR) AS finished_at
FROM tasks WHERE finished_at IS NOT NULL {where}
ORDER BY finished_at DESC LIMIT 200
"""


def run_report(events_dir: str, name: str, batch: str | None) -> analytics.Table:
    if name == "durations":
        con = analytics.connect(events_dir)
        where = "AND batch = ?" if batch else ""
        table = analytics.query(con, DURATIONS_SQL.format(where=where), [batch] if batch else [])
        table.title = "Durations of finished tasks (newest first)"
        return table
    overview, tasks, tools = analytics.report(events_dir, batch=batch, task_limit=500)
    return {"overview": overview, "tasks": tasks, "tools": tools}[name]


def plain(value: Any) -> Any:
    """DuckDB values as JSON values."""
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    return value
