"""The ``fleet`` command line. Built on :class:`fleet.api.Fleet` and :mod:`core.analytics`."""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table as RichTable

from core.analytics import AnalyticsError, Table, report, sql
from core.errors import InputError
from core.settings import FleetSettings
from core.specs import TaskSpec
from core.taskfile import LineError, load_config, load_tasks

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Run many coding agents on Ray.")


def _console(stderr: bool = False) -> Console:
    """A console that does not fold tables to 80 columns when output goes to a file or pipe."""
    stream = sys.stderr if stderr else sys.stdout
    wide = not stream.isatty() and "COLUMNS" not in os.environ
    return Console(stderr=stderr, width=160 if wide else None)


out = _console()
err = _console(stderr=True)

EXIT_TASKS_FAILED = 1
EXIT_USAGE = 2

EventsOpt = Annotated[str, typer.Option("--events", help="Event log directory or URI.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks.")]
DEFAULT_EVENTS = FleetSettings().events_dir


class CliError(InputError):
    """A problem the user can fix, shown as one line."""


def _fail(message: str, debug: bool, exc: BaseException | None = None) -> None:
    if debug and exc is not None:
        err.print_exception()
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_USAGE)


def print_table(table: Table, title: str | None = None) -> None:
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


def print_batch_report(events_dir: str, batch: str) -> None:
    """The DuckDB report of one batch, after its summary table (which lists the tasks)."""
    try:
        tables = report(events_dir, batch=batch)
    except AnalyticsError as exc:
        err.print(f"[yellow]report unavailable:[/yellow] {exc}")
        return
    out.print(f"Report (DuckDB over {events_dir})", soft_wrap=True, highlight=False)
    for table in tables:
        if table.title != "Tasks":
            print_table(table)


def _run_batch(
    tasks: list[TaskSpec],
    line_errors: list[LineError],
    settings: FleetSettings,
    config_path: str | None,
    debug: bool,
    timeout_s: float | None,
    header: str = "",
) -> int:
    from fleet.api import Fleet, FleetError

    for line_error in line_errors:
        err.print(f"[yellow]rejected[/yellow] {line_error}", highlight=False)
    if not tasks:
        _fail("no valid tasks to run", debug)
    try:
        config = load_config(config_path)
    except InputError as exc:
        _fail(str(exc), debug, exc)
    started = time.monotonic()
    with out.status(f"starting Ray and {settings.workers} workers"):
        try:
            fleet = Fleet.start(settings, config)
        except FleetError as exc:
            _fail(str(exc), debug, exc)
    print_sandbox(fleet)
    if header:
        out.print(header)
    try:
        batch = f"b-{uuid.uuid4().hex[:8]}"
        submitted = fleet.submit(tasks, batch=batch)
        for rejection in submitted.rejected:
            err.print(
                f"[yellow]rejected[/yellow] task {rejection['task_id']}: "
                f"{rejection['field']}: {rejection['error']}",
                highlight=False,
            )
        records = _follow(fleet, submitted.accepted, timeout_s)
        fleet.flush()
        _print_summary(records, fleet.settings, time.monotonic() - started)
        print_batch_report(fleet.settings.events_dir, batch)
    finally:
        fleet.shutdown()
    failed = [r for r in records if r.state != "succeeded"]
    unfinished = len(submitted.accepted) - len(records)
    rejected = len(line_errors) + len(submitted.rejected)
    if failed or rejected or unfinished:
        err.print(
            f"[red]{len(failed)} task(s) did not succeed, {unfinished} unfinished, "
            f"{rejected} rejected[/red]"
        )
        return EXIT_TASKS_FAILED
    out.print(f"[green]all {len(records)} tasks succeeded[/green]")
    return 0


def print_sandbox(fleet: Any) -> None:
    """The sandbox backend, first and loud: local runs commands on the host itself."""
    colour = "green" if fleet.settings.sandbox == "docker" else "bold yellow"
    out.print(f"[{colour}]{fleet.sandbox_notice}[/{colour}]", highlight=False, soft_wrap=True)
    sys.stdout.flush()


def _follow(fleet: Any, ids: list[str], timeout_s: float | None) -> list[Any]:
    records = []
    counts = {"succeeded": 0, "failed": 0}
    columns = [
        TextColumn("[bold]tasks"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
    ]
    with Progress(*columns, console=out, transient=False) as progress:
        bar = progress.add_task("", total=len(ids))
        try:
            for record in fleet.as_completed(ids, timeout_s=timeout_s):
                records.append(record)
                key = "succeeded" if record.state == "succeeded" else "failed"
                counts[key] += 1
                progress.update(
                    bar,
                    advance=1,
                    description=f"[green]{counts['succeeded']} ok[/green] "
                    f"[red]{counts['failed']} not ok[/red]",
                )
        except TimeoutError as exc:
            err.print(f"[red]timed out:[/red] {exc}")
    return records


def _print_summary(records: list[Any], settings: FleetSettings, wall_s: float) -> None:
    table = RichTable(
        title=f"Batch summary ({wall_s:.1f}s, {settings.sandbox} sandbox)", title_justify="left"
    )
    for column in ("task", "state", "attempts", "turns", "tool calls", "duration s", "reason"):
        table.add_column(column, overflow="fold")
    for r in sorted(records, key=lambda r: r.id):
        colour = "green" if r.state == "succeeded" else "red"
        duration = f"{r.duration_s:.2f}" if r.duration_s is not None else ""
        table.add_row(
            r.id,
            f"[{colour}]{r.state.value}[/{colour}]",
            str(r.attempts),
            str(r.turns),
            str(r.tool_calls),
            duration,
            r.reason,
        )
    out.print(table)


def _settings(
    workers: int | None, sandbox: str | None, events: str, name: str | None
) -> FleetSettings:
    updates: dict[str, Any] = {"events_dir": events}
    if workers is not None:
        updates["workers"] = workers
    if sandbox is not None:
        updates["sandbox"] = sandbox
    if name is not None:
        updates["name"] = name
    try:
        return FleetSettings(**updates)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise CliError(f"setting {where}: {first['msg']}") from None


def _prefixed(tasks: list[TaskSpec], prefix: str) -> list[TaskSpec]:
    return [t.model_copy(update={"id": f"{prefix}.{t.id}"}) for t in tasks]


WorkersOpt = Annotated[int | None, typer.Option("--workers", "-w", help="Worker actors.")]
SandboxOpt = Annotated[
    str | None, typer.Option("--sandbox", help="local, docker or auto (default: auto).")
]
ConfigOpt = Annotated[
    str | None, typer.Option("--config", help="YAML file of agents and environments.")
]
TimeoutOpt = Annotated[
    float | None, typer.Option("--timeout", help="Give up waiting after this many seconds.")
]


@app.command()
def run(
    tasks_file: Annotated[Path, typer.Argument(help="JSONL file, one task per line.")],
    workers: WorkersOpt = None,
    sandbox: SandboxOpt = None,
    events: EventsOpt = DEFAULT_EVENTS,
    config: ConfigOpt = None,
    timeout: TimeoutOpt = None,
    keep_ids: Annotated[
        bool, typer.Option("--keep-ids", help="Use task ids as written (no run prefix).")
    ] = False,
    debug: DebugOpt = False,
) -> None:
    """Run a batch of tasks from a JSONL file, then print the report."""
    try:
        settings = _settings(workers, sandbox, events, None)
        fleet_config = load_config(config)
        tasks, line_errors = load_tasks(tasks_file, fleet_config)
    except (InputError, CliError) as exc:
        _fail(str(exc), debug, exc)
    if not keep_ids:
        tasks = _prefixed(tasks, f"r{uuid.uuid4().hex[:4]}")
    raise typer.Exit(_run_batch(tasks, line_errors, settings, config, debug, timeout))


@app.command()
def demo(
    workers: WorkersOpt = None,
    sandbox: SandboxOpt = None,
    events: EventsOpt = DEFAULT_EVENTS,
    timeout: TimeoutOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Run the bundled demo batch with the scripted model."""
    source = resources.files("fleet") / "demo" / "tasks.jsonl"
    try:
        settings = _settings(workers, sandbox, events, None)
    except CliError as exc:
        _fail(str(exc), debug, exc)
    from core.taskfile import parse_tasks

    tasks, line_errors = parse_tasks(source.read_text(encoding="utf-8"), "demo/tasks.jsonl")
    tasks = _prefixed(tasks, f"demo{uuid.uuid4().hex[:4]}")
    header = f"[bold]fleet demo[/bold]: {len(tasks)} tasks, scripted model (no API key needed)"
    raise typer.Exit(_run_batch(tasks, line_errors, settings, None, debug, timeout, header))


@app.command("report")
def report_cmd(
    events: EventsOpt = DEFAULT_EVENTS,
    batch: Annotated[str | None, typer.Option("--batch", help="Only this batch.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    debug: DebugOpt = False,
) -> None:
    """Report over the event log: outcomes, success rate, durations, tool calls."""
    try:
        tables = report(events, batch=batch)
    except AnalyticsError as exc:
        _fail(str(exc), debug, exc)
    if as_json:
        out.print_json(json.dumps({t.title: t.as_dicts() for t in tables}, default=str))
        return
    for table in tables:
        print_table(table)


@app.command("sql")
def sql_cmd(
    statement: Annotated[str, typer.Argument(help="SQL over the views events and tasks.")],
    events: EventsOpt = DEFAULT_EVENTS,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON rows.")] = False,
    debug: DebugOpt = False,
) -> None:
    """Run SQL with DuckDB over the event log (views: events, tasks)."""
    try:
        table = sql(events, statement)
    except AnalyticsError as exc:
        _fail(str(exc), debug, exc)
    if as_json:
        out.print_json(json.dumps(table.as_dicts(), default=str))
    else:
        print_table(table)


@app.command()
def status(
    address: Annotated[str, typer.Option(help="Ray address of the running fleet.")] = "auto",
    name: Annotated[str, typer.Option(help="Fleet name.")] = "default",
    debug: DebugOpt = False,
) -> None:
    """Show a running fleet: counts, queue, running sessions, recent outcomes."""
    info = _connect(address, name, debug).status()
    counts = Table("Tasks", list(info["counts"]), [tuple(info["counts"].values())])
    sandbox = info.get("sandbox", "?")
    warn = " (commands run as host processes, not isolated)" if sandbox == "local" else ""
    out.print(f"sandbox: {sandbox}{warn}", highlight=False, soft_wrap=True)
    print_table(counts, f"Fleet {info['fleet']}: {info['workers']} workers")
    if info["running"]:
        print_table(
            Table("Running", list(info["running"][0]), [tuple(r.values()) for r in info["running"]])
        )
    if info.get("blocked"):
        print_table(
            Table(
                "Waiting on people",
                list(info["blocked"][0]),
                [tuple(r.values()) for r in info["blocked"]],
            )
        )
    if info["queued"]:
        out.print(f"queued ({len(info['queued'])} shown): " + ", ".join(info["queued"][:20]))
    if info["recent"]:
        print_table(
            Table("Recent", list(info["recent"][0]), [tuple(r.values()) for r in info["recent"]])
        )


AddressOpt = Annotated[str, typer.Option("--address", help="Ray address of the fleet.")]
NameOpt = Annotated[str, typer.Option("--name", help="Fleet name.")]


def _connect(address: str, name: str, debug: bool) -> Any:
    from fleet.api import Fleet, FleetError

    try:
        return Fleet.connect(address, name=name, namespace=FleetSettings().namespace)
    except FleetError as exc:
        _fail(str(exc), debug, exc)


@app.command()
def approve(
    task_id: str,
    call_id: str,
    deny: Annotated[
        str | None, typer.Option("--deny", help="Deny the call, with this message.")
    ] = None,
    address: AddressOpt = "auto",
    name: NameOpt = "default",
    debug: DebugOpt = False,
) -> None:
    """Allow (or --deny) a tool call that waits for approval."""
    fleet = _connect(address, name, debug)
    if not fleet.approve(task_id, call_id, allow=deny is None, message=deny or ""):
        _fail(f"task {task_id} has no tool call {call_id} waiting for approval", debug)
    out.print(f"{'denied' if deny is not None else 'allowed'} {call_id} of {task_id}")


@app.command()
def review(
    task_id: str,
    reject: Annotated[
        str | None, typer.Option("--reject", help="Reject the result, with this message.")
    ] = None,
    address: AddressOpt = "auto",
    name: NameOpt = "default",
    debug: DebugOpt = False,
) -> None:
    """Approve (or --reject) a finished task that awaits human review."""
    fleet = _connect(address, name, debug)
    if not fleet.review(task_id, approve=reject is None, message=reject or ""):
        _fail(f"task {task_id} is not awaiting review", debug)
    out.print(f"{'rejected' if reject is not None else 'approved'} {task_id}")


@app.command()
def steer(
    task_id: str,
    message: str,
    address: AddressOpt = "auto",
    name: NameOpt = "default",
    debug: DebugOpt = False,
) -> None:
    """Send a message to a task's session (read before its next turn)."""
    fleet = _connect(address, name, debug)
    if not fleet.steer(task_id, message):
        _fail(f"task {task_id} is not live", debug)


@app.command()
def memory(
    events: EventsOpt = DEFAULT_EVENTS,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    debug: DebugOpt = False,
) -> None:
    """What the fleet has learned from past runs, per label and per agent."""
    from actors.memory import Memory

    learned = Memory(FleetSettings(events_dir=events))
    if not learned.refresh(events):
        _fail(f"no history under {events} yet (run a batch first)", debug)
    tables = learned.tables()
    if as_json:
        out.print_json(json.dumps(tables))
        return
    for title, rows in tables.items():
        if rows:
            print_table(Table(f"By {title[:-1]}", list(rows[0]), [tuple(r.values()) for r in rows]))


@app.command("serve")
def serve_cmd(
    host: Annotated[str, typer.Option(help="Address the HTTP proxy listens on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port.")] = 8000,
    replicas: Annotated[int, typer.Option(min=1, help="API replicas.")] = 1,
    address: Annotated[
        str | None, typer.Option(help="Ray address ('auto', 'ray://...'); default: a local Ray.")
    ] = None,
    name: Annotated[str | None, typer.Option(help="Fleet name.")] = None,
    workers: WorkersOpt = None,
    sandbox: SandboxOpt = None,
    events: EventsOpt = DEFAULT_EVENTS,
    config: ConfigOpt = None,
    token_file: Annotated[
        str | None, typer.Option(help="File holding the API token (else FLEET_API_TOKEN).")
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(help="Rebuild unfinished tasks from the event log and run them on."),
    ] = True,
    debug: DebugOpt = False,
) -> None:
    """Serve the HTTP API and dashboard (Ray Serve) over a fleet, started or reused.
    Refuses local sandboxes (client tasks on the host) unless asked for: --sandbox local.
    Ctrl-C or SIGTERM stops it: the API, then the fleet and Ray if this command started them."""
    import contextlib
    import signal

    from ray import serve

    from fleet.api import Fleet, FleetError
    from serve.app import ServeSettings
    from serve.deployment import run as run_api
    from serve.deployment import stop as stop_api

    try:
        settings = _settings(workers, sandbox, events, name)
        settings = settings.model_copy(update={"ray_address": address, "resume": resume})
        fleet_config = load_config(config)
        api_settings = ServeSettings(**({"token_file": token_file} if token_file else {}))
        api_settings.resolve_token()
        api_settings.resolve_admin_token()
    except (InputError, CliError, ValueError, OSError) as exc:
        _fail(str(exc).splitlines()[0], debug, exc)
    try:  # never client tasks on the host unless local was asked for by name
        fleet = Fleet.start(settings, fleet_config, refuse_auto_local=True)
    except FleetError as exc:
        _fail(str(exc), debug, exc)
    print_sandbox(fleet)

    def interrupt(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt  # SIGTERM stops as cleanly as Ctrl-C (Ray's handler exits)

    signal.signal(signal.SIGTERM, interrupt)
    try:
        try:
            run_api(settings.name, settings.namespace, api_settings, host, port, replicas)
        except Exception as exc:  # e.g. the port is taken
            _fail(f"cannot serve on {host}:{port}: {str(exc).strip().splitlines()[0]}", debug, exc)
        url = f"http://{host}:{port}/"
        out.print(f"fleet {settings.name}: API and dashboard on {url} (Ctrl-C stops)")
        sys.stdout.flush()  # a pipe or file must see it now, not at exit
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        out.print("stopping")
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):  # a second one must not cut this short
            signal.signal(signum, signal.SIG_IGN)
        if fleet._owns_ray:  # Ray goes with this command: all of Serve too
            with contextlib.suppress(Exception):
                serve.shutdown()
            fleet.shutdown()
        else:  # a cluster's fleet (and other Serve apps) outlive this command
            with contextlib.suppress(Exception):
                stop_api()


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
