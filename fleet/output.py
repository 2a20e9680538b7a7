"""What the fleet's commands print: the consoles, tables, the sandbox line and the one batch
report (summary table, then the DuckDB report). Used by the CLI and the batch driver."""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.table import Table as RichTable

from core.analytics import AnalyticsError, Table, report
from core.settings import FleetSettings, host_variable


def console(stderr: bool = False) -> Console:
    """A console that does not fold tables to 80 columns when output goes to a file or pipe."""
    stream = sys.stderr if stderr else sys.stdout
    wide = not stream.isatty() and host_variable("COLUMNS") is None
    return Console(stderr=stderr, width=160 if wide else None)


out = console()
err = console(stderr=True)


def print_table(table: Table, title: str | None = None) -> None:
    """One analytics table; a single wide row is shown as metric/value pairs."""
    title = title or table.title or None
    if len(table.rows) == 1 and len(table.columns) > 6:  # one wide row reads better as a list
        pairs = list(zip(table.columns, table.rows[0], strict=True))
        table = Table(table.title, ["metric", "value"], pairs)
    rich_table = RichTable(title=title, title_justify="left")
    for column in table.columns:
        rich_table.add_column(column, overflow="fold")
    for row in table.rows:
        rich_table.add_row(*("" if v is None else str(v) for v in row))
    out.print(rich_table)


def print_sandbox(fleet: Any) -> None:
    """The sandbox backend, first and loud: local runs commands on the host itself."""
    colour = "green" if fleet.settings.sandbox == "docker" else "bold yellow"
    out.print(f"[{colour}]{fleet.sandbox_notice}[/{colour}]", highlight=False, soft_wrap=True)
    sys.stdout.flush()


def print_error(message: str, exc: BaseException | None = None, debug: bool = False) -> None:
    """A usage or setup error as one line on stderr (with the traceback when debugging)."""
    if debug and exc is not None:
        err.print_exception()
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)


def print_rejected(what: str) -> None:
    """A task file line or a task the fleet refused; the rest of the batch still runs."""
    err.print(f"[yellow]rejected[/yellow] {what}", highlight=False, soft_wrap=True)


def print_batch_report(
    records: list[Any], settings: FleetSettings, wall_s: float, batch: str
) -> None:
    """The report of one batch: its summary table (one row per task), then the DuckDB report
    over the event log (every table but the task list, which the summary already is)."""
    summary = RichTable(
        title=f"Batch summary ({wall_s:.1f}s, {settings.sandbox} sandbox)", title_justify="left"
    )
    for column in ("task", "state", "attempts", "turns", "tool calls", "duration s", "reason"):
        summary.add_column(column, overflow="fold")
    for r in sorted(records, key=lambda r: r.id):
        colour = "green" if r.state == "succeeded" else "red"
        duration = f"{r.duration_s:.2f}" if r.duration_s is not None else ""
        summary.add_row(
            r.id,
            f"[{colour}]{r.state.value}[/{colour}]",
            str(r.attempts),
            str(r.turns),
            str(r.tool_calls),
            duration,
            r.reason,
        )
    out.print(summary)
    try:
        tables = report(settings.events_dir, batch=batch)
    except AnalyticsError as exc:
        err.print(f"[yellow]report unavailable:[/yellow] {exc}")
        return
    out.print(f"Report (DuckDB over {settings.events_dir})", soft_wrap=True, highlight=False)
    for table in tables:
        if table.title != "Tasks":
            print_table(table)
