"""The ``fleet`` command line. Built on :class:`fleet.api.Fleet` and :mod:`core.analytics`."""

from __future__ import annotations

import json
import re
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import typer

from core.analytics import AnalyticsError, Table, named_report, report, sql
from core.errors import FleetError, InputError, one_line, root_cause
from core.eventlog import EventLog, EventLogError
from core.records import CommandResult
from core.report_page import html_report
from core.settings import FleetSettings
from core.taskfile import load_config, load_tasks, parse_tasks
from fleet.driver import ExitCode, build_settings, prefixed, run_batch, run_prefix
from fleet.output import err, out, print_error, print_sandbox, print_table
from sources import build_sources

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Run many coding agents on Ray. Exit codes: 0 every task succeeded; 1 some task did "
    "not succeed, was unfinished or was rejected; 2 a usage or setup error.",
)

EventsOpt = Annotated[
    str | None,
    typer.Option(
        "--events",
        help="Event log directory or pyarrow URI (default: $FLEET_EVENTS_DIR, else "
        "~/fleet-events).",
    ),
]
LogsOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--events",
        help="Event log directory or pyarrow URI (default: $FLEET_EVENTS_DIR, else "
        "~/fleet-events). Repeat it to read several fleets' logs as one (the events view's "
        "`fleet` column says whose); a directory holding one log per subdirectory reads "
        "them all.",
    ),
]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks.")]


class CliError(InputError):
    """A problem the user can fix, shown as one line."""


def _fail(message: str, debug: bool, exc: BaseException | None = None) -> None:
    print_error(message, exc, debug)
    raise typer.Exit(ExitCode.USAGE)


def _settings(debug: bool, **options: Any) -> FleetSettings:
    """The fleet's settings from these options (None: not given), or a one-line exit 2."""
    try:
        return build_settings(**options)
    except ValueError as exc:
        _fail(str(exc), debug, exc)
        raise  # unreachable: _fail exits


def _events(events: str | None, debug: bool) -> str:
    """The event log this command reads: --events, else FLEET_EVENTS_DIR, else the default."""
    return _settings(debug, events_dir=events).events_dir


def _logs(events: list[str] | None, debug: bool) -> str | list[str]:
    """The event logs a report reads: each --events given, else the one default log."""
    if not events:
        return _events(None, debug)
    logs = [_events(e, debug) for e in events]
    return logs[0] if len(logs) == 1 else logs


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
    events: EventsOpt = None,
    config: ConfigOpt = None,
    timeout: TimeoutOpt = None,
    name: Annotated[str | None, typer.Option("--name", help="Fleet name.")] = None,
    address: Annotated[
        str | None,
        typer.Option("--address", help="Ray address ('auto', 'ray://...'); default: a local Ray."),
    ] = None,
    worker_resources: Annotated[
        str | None,
        typer.Option(metavar="JSON", help="Ray resources per worker, e.g. '{\"docker\": 1}'."),
    ] = None,
    pools: Annotated[
        str | None,
        typer.Option(metavar="JSON", help="Worker pools (FLEET_POOLS in the README)."),
    ] = None,
    pool_resources: Annotated[
        str | None, typer.Option(metavar="JSON", help="Ray resources per pool name.")
    ] = None,
    keep_ids: Annotated[
        bool, typer.Option("--keep-ids", help="Use task ids as written (no run prefix).")
    ] = False,
    debug: DebugOpt = False,
) -> None:
    """Run a batch of tasks from a JSONL file, then print the report."""
    settings = _settings(
        debug,
        workers=workers,
        sandbox=sandbox,
        events_dir=events,
        name=name,
        ray_address=address,
        worker_resources=worker_resources,
        pools=pools,
        pool_resources=pool_resources,
    )
    try:
        fleet_config = load_config(config)
        tasks, line_errors = load_tasks(tasks_file, fleet_config)
    except InputError as exc:
        _fail(str(exc), debug, exc)
    if not keep_ids:
        tasks = prefixed(tasks, run_prefix("r"))
    code = run_batch(tasks, line_errors, settings, fleet_config, timeout_s=timeout, debug=debug)
    raise typer.Exit(code)


@app.command()
def demo(
    workers: WorkersOpt = None,
    sandbox: SandboxOpt = None,
    events: EventsOpt = None,
    timeout: TimeoutOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Run the bundled demo batch with the scripted model."""
    settings = _settings(debug, workers=workers, sandbox=sandbox, events_dir=events)
    source = resources.files("fleet") / "demo" / "tasks.jsonl"
    tasks, line_errors = parse_tasks(source.read_text(encoding="utf-8"), "demo/tasks.jsonl")
    tasks = prefixed(tasks, run_prefix("demo"))
    header = f"[bold]fleet demo[/bold]: {len(tasks)} tasks, scripted model (no API key needed)"
    code = run_batch(tasks, line_errors, settings, timeout_s=timeout, header=header, debug=debug)
    raise typer.Exit(code)


@app.command("report")
def report_cmd(
    name: Annotated[
        str | None,
        typer.Argument(
            help="One report: overview, tasks, tools, durations, or a saved query of the "
            "config's reports: (default: the first three)."
        ),
    ] = None,
    events: LogsOpt = None,
    batch: Annotated[str | None, typer.Option("--batch", help="Only this batch.")] = None,
    config: ConfigOpt = None,
    html: Annotated[
        Path | None,
        typer.Option("--html", help="Write the report with charts to this HTML file."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    debug: DebugOpt = False,
) -> None:
    """Report over the event log: outcomes, success rate, durations, tool calls; one report
    by name; or (--html) one self-contained page of charts."""
    events_dir = _logs(events, debug)
    try:
        if html is not None:
            with out.status("drawing the report"):
                page = html_report(events_dir, batch=batch)
            html.write_text(page, encoding="utf-8")
            out.print(f"wrote {html} ({len(page.encode()) // 1024} KiB)")
            return
        if name is None:
            tables = report(events_dir, batch=batch)
        else:
            saved = load_config(config).reports
            tables = [named_report(events_dir, name, batch, saved)]
    except (AnalyticsError, InputError, OSError) as exc:
        _fail(str(exc), debug, exc)
    except KeyError as exc:
        _fail(str(exc.args[0]), debug, exc)
    if as_json:
        out.print_json(json.dumps({t.title: t.as_dicts() for t in tables}, default=str))
        return
    for table in tables:
        print_table(table)


@app.command("sql")
def sql_cmd(
    statement: Annotated[
        str,
        typer.Argument(help="SQL over the views events, tasks, sessions, tool_calls, turns."),
    ],
    events: LogsOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON rows.")] = False,
    debug: DebugOpt = False,
) -> None:
    """Run SQL with DuckDB over the event log (views: events, tasks, sessions, tool_calls,
    turns)."""
    try:
        table = sql(_logs(events, debug), statement)
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
    if info.get("sources"):
        rows = [(name, s["at"], s["failures"], s["error"]) for name, s in info["sources"].items()]
        print_table(Table("Sources: last error", ["source", "at", "failures", "error"], rows))


AddressOpt = Annotated[str, typer.Option("--address", help="Ray address of the fleet.")]
NameOpt = Annotated[str, typer.Option("--name", help="Fleet name.")]


def _connect(address: str, name: str, debug: bool) -> Any:
    from fleet.api import Fleet, FleetError

    try:
        return Fleet.connect(address, name=name, namespace=FleetSettings().namespace)
    except FleetError as exc:
        _fail(str(exc), debug, exc)


def _answer(result: CommandResult, done: str, debug: bool) -> None:
    """A command's answer: what was done, or the fleet's reason for refusing (exit 2)."""
    if not result:
        _fail(result.reason, debug)
    out.print(done)


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
    done = fleet.approve(task_id, call_id, allow=deny is None, message=deny or "")
    _answer(done, f"{'denied' if deny is not None else 'allowed'} {call_id} of {task_id}", debug)


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
    done = fleet.review(task_id, approve=reject is None, message=reject or "")
    _answer(done, f"{'rejected' if reject is not None else 'approved'} {task_id}", debug)


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
    _answer(fleet.steer(task_id, message), f"sent to {task_id}", debug)


secrets_app = typer.Typer(
    no_args_is_help=True,
    help="A running fleet's secrets: list them (names and times, never values), set one.",
)
app.add_typer(secrets_app, name="secrets")


@secrets_app.command("list")
def secrets_list(
    address: AddressOpt = "auto", name: NameOpt = "default", debug: DebugOpt = False
) -> None:
    """Every secret: name, scope, where it comes from, created and rotated (no values)."""
    rows = [
        (s.name, s.scope, s.origin, str(s.created_at or ""), str(s.rotated_at or ""))
        for s in _connect(address, name, debug).secrets()
    ]
    print_table(Table("Secrets", ["name", "scope", "origin", "created", "rotated"], rows))


@secrets_app.command("set")
def secrets_set(
    secret: Annotated[str, typer.Argument(help="The secret's name.")],
    from_file: Annotated[
        Path | None, typer.Option("--from-file", help="Read the value from this file.")
    ] = None,
    create: Annotated[bool, typer.Option("--create", help="Refuse a name that exists.")] = False,
    address: AddressOpt = "auto",
    name: NameOpt = "default",
    debug: DebugOpt = False,
) -> None:
    """Create or rotate a secret. The value is read from standard input (or --from-file),
    never from the command line (other users of the host see command lines)."""
    try:
        value = from_file.read_text() if from_file else sys.stdin.read()
    except OSError as exc:
        _fail(f"{from_file}: {exc.strerror}", debug, exc)
    value = value.rstrip("\r\n")
    try:
        info = _connect(address, name, debug).put_secret(secret, value, create=create)
    except FleetError as exc:
        _fail(one_line(exc), debug, exc)
    how = "rotated" if info.rotated_at else "created"
    out.print(f"secret {info.name} {how} (scope {info.scope})")


@app.command()
def close(
    task_id: str,
    address: AddressOpt = "auto",
    name: NameOpt = "default",
    debug: DebugOpt = False,
) -> None:
    """Close an interactive task: its gate, reviewer and review run, then it ends."""
    fleet = _connect(address, name, debug)
    _answer(fleet.close(task_id), f"closed {task_id}", debug)


@app.command()
def diff(
    task_id: str,
    address: AddressOpt = "auto",
    name: NameOpt = "default",
    debug: DebugOpt = False,
) -> None:
    """Print a task's diff against its starting workspace (its latest ended session's)."""
    fleet = _connect(address, name, debug)
    try:
        text = fleet.diff(task_id)
    except FleetError as exc:
        _fail(one_line(exc), debug, exc)
    sys.stdout.write(text)


@app.command()
def files(
    task_id: str,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Write the files under this directory.")
    ] = None,
    address: AddressOpt = "auto",
    name: NameOpt = "default",
    debug: DebugOpt = False,
) -> None:
    """List the files of a task's final workspace, or write them under --out DIR (paths
    that would land outside DIR, and links pointing out of it, are refused and named)."""
    fleet = _connect(address, name, debug)
    try:
        if out_dir is None:
            rows = [
                (f["path"], f["size"], f["mode"], f.get("target") or "")
                for f in fleet.files(task_id)
            ]
            print_table(Table(f"Files of {task_id}", ["path", "size", "mode", "link"], rows))
            return
        archive = fleet.archive(task_id)
    except FleetError as exc:
        _fail(one_line(exc), debug, exc)
    written, refused = extract_confined(archive, out_dir)
    for path, why in refused:
        err.print(f"refused {path}: {why}", highlight=False, soft_wrap=True)
    out.print(f"wrote {written} files of {task_id} under {out_dir}", highlight=False)
    if refused:
        raise typer.Exit(ExitCode.NOT_ALL_SUCCEEDED)


def extract_confined(archive: bytes, dest: Path) -> tuple[int, list[tuple[str, str]]]:
    """Unpack a workspace tar.gz under ``dest``: each member through tarfile's ``data``
    filter (no absolute paths, no ``..``, no links out of ``dest``); a refused member is
    skipped and named. Returns the number of files written and the refused members."""
    import io
    import tarfile

    dest.mkdir(parents=True, exist_ok=True)
    written, refused = 0, []
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        for member in tar:
            try:
                safe = tarfile.data_filter(member, str(dest))
            except tarfile.FilterError as exc:
                refused.append((member.name, str(exc)))
                continue
            tar.extract(safe, dest, filter="data")
            written += safe.isfile()
    return written, refused


@app.command()
def compact(events: EventsOpt = None, debug: DebugOpt = False) -> None:
    """Merge the event log's small Parquet files (a running fleet does it by itself; this is
    for the logs of fleets that are not running). Every event is kept, exactly once."""
    settings = _settings(debug, events_dir=events)
    root = Path(settings.events_dir)
    if "://" in settings.events_dir or not root.is_dir():
        _fail(f"no local event log at {settings.events_dir}", debug)
    pattern = re.compile(r"^(?:seg-([\w.]+)-\d+|compact-([\w.]+)-[0-9a-f]+)\.parquet$")
    writers = sorted(
        {
            m.group(1) or m.group(2)
            for p in root.glob("date=*/*.parquet")
            if (m := pattern.match(p.name))
        }
    )
    rows = []
    for writer in writers:
        try:
            log = EventLog(
                settings.events_dir,
                settings.wal_dir,
                compact_min_files=2,
                compact_small_bytes=settings.compact_small_bytes,
                writer=writer,
                lock_wait_s=0,
                wal_fsync=settings.wal_fsync,
            )
        except EventLogError:
            rows.append((writer, "running: its fleet compacts it", "", ""))
            continue
        try:
            before = len(log.files())
            with out.status(f"compacting {writer}"):
                log.compact()
            rows.append((writer, "compacted", before, len(log.files())))
        finally:
            log.close()
    print_table(Table("Compaction", ["fleet", "what", "files before", "files after"], rows))


@app.command()
def memory(
    events: EventsOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    debug: DebugOpt = False,
) -> None:
    """What the fleet has learned from past runs (per label, per agent, per agent on each
    label) and the latest decisions it took from that, with their reasons."""
    from actors.memory import Memory

    events_dir = _events(events, debug)
    learned = Memory(FleetSettings(events_dir=events_dir))
    if not learned.refresh(events_dir):
        _fail(f"no history under {events_dir} yet (run a batch first)", debug)
    tables = learned.tables()
    if as_json:
        out.print_json(json.dumps(tables))
        return
    titles = {
        "labels": "By label",
        "agents": "By agent",
        "domains": "By label and agent",
        "decisions": "Latest decisions and why",
    }
    for key, rows in tables.items():
        if rows:
            print_table(Table(titles[key], list(rows[0]), [tuple(r.values()) for r in rows]))


@app.command()
def watch(
    config: Annotated[str, typer.Option("--config", help="YAML file with a sources: section.")],
    workers: WorkersOpt = None,
    sandbox: SandboxOpt = None,
    events: EventsOpt = None,
    name: Annotated[str | None, typer.Option("--name", help="Fleet name.")] = None,
    address: Annotated[
        str | None,
        typer.Option("--address", help="Ray address ('auto', 'ray://...'); default: a local Ray."),
    ] = None,
    drain_timeout: Annotated[
        float,
        typer.Option(help="On SIGTERM/Ctrl-C, seconds to wait for running tasks to end."),
    ] = 300.0,
    crash_after_claims: Annotated[int, typer.Option(hidden=True)] = 0,
    debug: DebugOpt = False,
) -> None:
    """Pick work up from the config's sources (SQL tables...) and run it until SIGTERM or
    Ctrl-C: then stop claiming, let running tasks finish, report their outcomes, exit 0."""
    from fleet.api import Fleet, FleetError
    from fleet.watch import Watcher, WatchSettings, run_until_signalled

    settings = _settings(
        debug, workers=workers, sandbox=sandbox, events_dir=events, name=name,
        ray_address=address, recover=True,
    )  # fmt: skip
    try:
        fleet_config = load_config(config)
        sources = build_sources(fleet_config, settings)
    except InputError as exc:
        _fail(one_line(exc), debug, exc)
    if not sources:
        _fail(f"{config}: no sources: to watch (see README, 'From a tracker or a table')", debug)
    watch_settings = WatchSettings(
        drain_timeout_s=drain_timeout, crash_after_claims=crash_after_claims
    )
    try:
        fleet = Fleet.start(settings, fleet_config)
    except FleetError as exc:
        _fail(str(exc), debug, exc)
    try:
        print_sandbox(fleet)
        names = ", ".join(repr(s) for s in sources)
        out.print(
            f"fleet {fleet.settings.name!r}: {fleet.settings.workers} workers, events at "
            f"{fleet.settings.events_dir}; watching {names} (Ctrl-C stops)",
            highlight=False,
            soft_wrap=True,
        )
        sys.stdout.flush()
        run_until_signalled(Watcher(fleet, sources, watch_settings, fleet_config))
        out.print("stopped: no more claims, running tasks ended and reported")
    finally:
        fleet.shutdown()


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
    events: EventsOpt = None,
    config: ConfigOpt = None,
    token_file: Annotated[
        str | None, typer.Option(help="File holding the API token (else FLEET_API_TOKEN).")
    ] = None,
    recover: Annotated[
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
    from fleet.watch import Watcher, WatcherThread
    from serve.deployment import start as start_api
    from serve.deployment import stop as stop_api

    try:
        settings = build_settings(
            workers=workers,
            sandbox=sandbox,
            events_dir=events,
            name=name,
            ray_address=address,
            recover=recover,
        )
        fleet_config = load_config(config)
        sources = build_sources(fleet_config, settings)
        api_settings = settings.api
        if token_file:
            api_settings = api_settings.model_copy(update={"token_file": token_file})
        api_settings.resolve_token()
        api_settings.resolve_admin_token()
    except (InputError, CliError, ValueError, OSError) as exc:
        _fail(one_line(exc), debug, exc)
    try:  # never client tasks on the host unless local was asked for by name
        fleet = Fleet.start(settings, fleet_config, refuse_auto_local=True)
    except FleetError as exc:
        _fail(str(exc), debug, exc)
    print_sandbox(fleet)

    def interrupt(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt  # SIGTERM stops as cleanly as Ctrl-C (Ray's handler exits)

    signal.signal(signal.SIGTERM, interrupt)
    watching = None
    try:
        if sources:  # the config's sources run beside the API, as `fleet watch` runs them
            watching = WatcherThread(Watcher(fleet, sources, config=fleet_config)).start()
        try:
            start_api(settings.name, settings.namespace, api_settings, host, port, replicas)
        except Exception as exc:  # e.g. the port is taken
            _fail(f"cannot serve on {host}:{port}: {one_line(root_cause(exc))}", debug, exc)
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
        if watching is not None:
            watching.stop()
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
        sys.exit(ExitCode.INTERRUPTED)


if __name__ == "__main__":
    main()
