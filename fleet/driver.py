"""The batch driver: ``fleet run``, ``fleet demo`` and the batch job (``fleet/job.py``) all run
a batch through :func:`run_batch`, with settings from :func:`build_settings`.

It starts the fleet (or reuses the one running under that name), submits the tasks, waits
with progress, prints the one report (:func:`fleet.output.print_batch_report`) and returns
an :class:`ExitCode`.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from enum import IntEnum
from typing import Any, Literal

from pydantic import ValidationError
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from core.settings import FleetSettings
from core.specs import FleetConfig, TaskSpec
from core.taskfile import LineError
from fleet.output import err, out, print_batch_report, print_error, print_rejected, print_sandbox


class ExitCode(IntEnum):
    """How ``fleet run``, ``fleet demo``, ``python -m fleet.job`` (and the other commands) exit."""

    OK = 0
    """Every task succeeded (or the command did what it was asked)."""
    NOT_ALL_SUCCEEDED = 1
    """Some task did not succeed, was still unfinished at ``--timeout``, or was rejected."""
    USAGE = 2
    """A usage or setup error: one line on stderr (``--debug`` shows the traceback)."""
    INTERRUPTED = 130
    """Ctrl-C."""


JSON_OPTIONS = ("worker_resources", "pools", "pool_resources")
"""Settings that a command line gives as JSON text."""

ProgressStyle = Literal["bar", "lines"]


def build_settings(**options: Any) -> FleetSettings:
    """The settings of a fleet this command may start: options over ``FLEET_*`` variables over
    defaults. An option that is None was not given; those in ``JSON_OPTIONS`` may be JSON text.

    Raises ValueError with one line naming the option or the setting.
    """
    updates: dict[str, Any] = {}
    for key, value in options.items():
        if value is None:
            continue
        if key in JSON_OPTIONS and isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"--{key.replace('_', '-')}: not JSON: {exc}") from None
        updates[key] = value
    try:
        return FleetSettings(**updates)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ValueError(f"setting {where}: {first['msg']}") from None


def prefixed(tasks: list[TaskSpec], prefix: str) -> list[TaskSpec]:
    """Tasks with ids ``<prefix>.<id>``, so a file can run again into the same event log."""
    return [t.model_copy(update={"id": f"{prefix}.{t.id}"}) for t in tasks]


def run_prefix(kind: str) -> str:
    """A fresh prefix for a run's task ids (``kind`` says which command made it)."""
    return f"{kind}{uuid.uuid4().hex[:6]}"


def run_batch(
    tasks: list[TaskSpec],
    line_errors: Sequence[LineError],
    settings: FleetSettings,
    config: FleetConfig | None = None,
    *,
    timeout_s: float | None = None,
    header: str = "",
    keep_fleet: bool = False,
    progress: ProgressStyle = "bar",
    debug: bool = False,
) -> ExitCode:
    """Run one batch and print its report.

    ``keep_fleet``: leave the fleet running afterwards (the batch job: a cluster's fleet
    serves later jobs); otherwise it is shut down. ``progress``: a live bar for a terminal,
    or one plain line per finished task for a job log.
    """
    from fleet.api import Fleet, FleetError

    for line_error in line_errors:
        print_rejected(str(line_error))
    if not tasks:
        print_error("no valid tasks to run")
        return ExitCode.USAGE
    started = time.monotonic()
    try:
        with out.status(f"starting the fleet ({settings.workers} workers)"):
            # A fleet that was already running keeps its settings (workers, events, sandbox).
            fleet = Fleet.start(settings, config)
    except FleetError as exc:
        print_error(str(exc), exc, debug)
        return ExitCode.USAGE
    try:
        print_sandbox(fleet)  # first: local sandboxes isolate nothing
        if header:
            out.print(header, highlight=False, soft_wrap=True)
        _print_fleet(fleet, settings)
        batch = f"b-{uuid.uuid4().hex[:8]}"
        submitted = fleet.submit(tasks, batch=batch)
        for rejection in submitted.rejected:
            print_rejected(
                f"task {rejection['task_id']}: {rejection['field']}: {rejection['error']}"
            )
        out.print(f"batch {batch}: {len(submitted.accepted)} tasks submitted", highlight=False)
        follow = _follow_bar if progress == "bar" else _follow_lines
        records = follow(fleet, submitted.accepted, timeout_s, started)
        fleet.flush()
        print_batch_report(records, fleet.settings, time.monotonic() - started, batch)
    finally:
        if not keep_fleet:
            fleet.shutdown()
    failed = [r for r in records if r.state != "succeeded"]
    unfinished = len(submitted.accepted) - len(records)
    rejected = len(line_errors) + len(submitted.rejected)
    if failed or rejected or unfinished:
        err.print(
            f"[red]{len(failed)} task(s) did not succeed, {unfinished} unfinished, "
            f"{rejected} rejected[/red]",
            highlight=False,
        )
        return ExitCode.NOT_ALL_SUCCEEDED
    out.print(f"[green]all {len(records)} tasks succeeded[/green]", highlight=False)
    return ExitCode.OK


def _print_fleet(fleet: Any, asked: FleetSettings) -> None:
    """The fleet's shape: name, workers, sandbox, events, then where Ray is."""
    info = fleet.status()
    running = fleet.settings
    wal = f" (write-ahead log {running.wal_dir})" if running.wal_dir else ""
    ray_at = f"Ray at {asked.ray_address}" if asked.ray_address else "a local Ray"
    out.print(
        f"fleet {info['fleet']!r}: {info['workers']} workers, {running.sandbox} sandbox, "
        f"events at {running.events_dir}{wal}, on {ray_at}",
        highlight=False,
        soft_wrap=True,
    )


def _follow_bar(fleet: Any, ids: list[str], timeout_s: float | None, started: float) -> list[Any]:
    """Wait for the tasks with a live progress bar (for a terminal)."""
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


def _follow_lines(fleet: Any, ids: list[str], timeout_s: float | None, started: float) -> list[Any]:
    """Wait for the tasks, one plain line per finished task (for a job log)."""
    records: list[Any] = []
    ok = 0
    try:
        for record in fleet.as_completed(ids, timeout_s=timeout_s):
            records.append(record)
            ok += record.state == "succeeded"
            out.print(
                f"[{len(records)}/{len(ids)}] {record.id}: {record.state.value} "
                f"(attempts {record.attempts}) | {ok} ok, {len(records) - ok} not ok, "
                f"{time.monotonic() - started:.1f}s",
                highlight=False,
                markup=False,
                soft_wrap=True,
            )
    except TimeoutError as exc:
        err.print(f"[red]timed out:[/red] {exc}")
    return records
