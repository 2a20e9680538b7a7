"""DuckDB reports over the event log's Parquet files."""

import asyncio
import datetime as dt
import decimal
import html
from typing import Annotated, Any

from fastapi import HTTPException, Query
from fastapi.responses import HTMLResponse

from core import analytics
from core.report_page import html_report
from core.specs import BUILTIN_REPORTS
from serve import models as m
from serve.deps import Fleet, Sup
from serve.openapi import NOT_FOUND
from serve.routes import v1_router

router = v1_router(tags=["fleet"])


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
    """DuckDB reports over the event log: overview, tasks, tools, durations, and the saved
    queries of the fleet's config (`reports:`). The log is rolled into Parquet every
    `flush_interval_s` (1 s by default); `fresh` forces it. Empty rows while the log has no
    events yet."""
    saved = await sup.saved_reports()
    if name not in BUILTIN_REPORTS and name not in saved:
        known = ", ".join([*BUILTIN_REPORTS, *sorted(saved)])
        raise HTTPException(404, f"no report {name!r} (known: {known})")
    if fresh:
        await sup.flush()
    try:
        table = await asyncio.to_thread(
            analytics.named_report, fleet.events_dir, name, batch, saved
        )
    except analytics.AnalyticsError as exc:
        if name in saved:  # the operator's SQL failed: say why
            raise HTTPException(422, f"report {name!r}: {exc}") from None
        table = analytics.Table(name, [], [])
    rows = [{k: plain(v) for k, v in row.items()} for row in table.as_dicts()]
    return m.Report(name=name, title=table.title or name, columns=table.columns, rows=rows)


@router.get(
    "/charts",
    response_class=HTMLResponse,
    responses={
        200: {
            "description": "One self-contained HTML page (inline SVG charts, no script).",
            "content": {"text/html": {"schema": {"type": "string"}}},
        },
    },
)
async def get_charts(
    sup: Sup,
    fleet: Fleet,
    batch: Annotated[str | None, Query(max_length=200)] = None,
    fresh: Annotated[bool, Query(description="Roll buffered events into Parquet first.")] = False,
) -> HTMLResponse:
    """The report with charts as one self-contained HTML page (what `fleet report --html`
    writes): success over time, durations by label and agent, cost and tokens by agent,
    failure reasons, tool and model latency, retries. The dashboard's `/reports` shows it."""
    if fresh:
        await sup.flush()
    try:
        page = await asyncio.to_thread(html_report, fleet.events_dir, batch)
    except analytics.AnalyticsError as exc:
        page = f"<!doctype html><title>Fleet report</title><p>{html.escape(str(exc))}</p>"
    return HTMLResponse(page)


def plain(value: Any) -> Any:
    """DuckDB values as JSON values."""
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    return value
