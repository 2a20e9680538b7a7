"""Batch job entry point for a Ray cluster.

    ray submit cluster.yaml fleet/job.py -- TASKS.jsonl [options]
    ray job submit --working-dir . -- python -m fleet.job TASKS.jsonl [options]
    python -m fleet.job TASKS.jsonl --address auto      # on any node of a running cluster

Connects to the cluster, submits the batch to the fleet's supervisor (starting it, detached,
if absent, so that later jobs reuse it), prints one progress line per finished task, then the
summary and the DuckDB report. The supervisor keeps running after the job.

Exit codes: 0 every task succeeded; 1 some task did not succeed or some line was rejected;
2 a usage or setup error.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__" and not __package__:
    # Run as a file (``python fleet/job.py``): import the package beside this file, if any,
    # rather than putting ``fleet/`` itself first on the path.
    _here = os.path.dirname(os.path.abspath(__file__))
    if os.path.isfile(os.path.join(_here, "__init__.py")):
        sys.path[0] = os.path.dirname(_here)

import argparse
import json
import time
import uuid
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from core.errors import InputError
from core.settings import FleetSettings

EXIT_TASKS_FAILED = 1
EXIT_USAGE = 2
DEFAULT_EVENTS = "~/fleet-events"
"""On the node the job's driver runs on: the head, for ``ray submit`` and ``ray job submit``."""


class JobError(InputError):
    """A usage or setup problem, shown as one line."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="fleet.job",
        description="Run a batch of tasks on the fleet of a Ray cluster and print its report.",
    )
    p.add_argument("tasks_file", type=Path, help="JSONL file, one task per line (on this node).")
    p.add_argument(
        "--address", default=None, help="Ray address (default: $RAY_ADDRESS, else 'auto')."
    )
    p.add_argument("--name", default=None, help="Fleet name (default: FLEET_NAME or 'default').")
    p.add_argument("--workers", "-w", type=int, default=None, help="Workers, if starting a fleet.")
    p.add_argument("--sandbox", default=None, help="local, docker or auto, if starting a fleet.")
    p.add_argument(
        "--events",
        default=None,
        help=f"Event log path or pyarrow URI, if starting a fleet (default: FLEET_EVENTS_DIR, "
        f"else {DEFAULT_EVENTS}); with object storage the write-ahead log goes to "
        "FLEET_WAL_DIR, else ~/fleet-wal/ on the head.",
    )
    p.add_argument(
        "--worker-resources",
        default=None,
        metavar="JSON",
        help="Ray resources per worker, if starting a fleet, e.g. '{\"docker\": 1}'.",
    )
    p.add_argument(
        "--pools",
        default=None,
        metavar="JSON",
        help="Worker pools, if starting a fleet, e.g. "
        '\'[{"name": "gpu", "workers": 1, "labels": ["gpu"]}]\'.',
    )
    p.add_argument(
        "--pool-resources",
        default=None,
        metavar="JSON",
        help='Ray resources per pool name, if starting a fleet, e.g. \'{"gpu": {"gpu_box": 1}}\'.',
    )
    p.add_argument("--config", default=None, help="YAML file of agents and environments.")
    p.add_argument("--timeout", type=float, default=None, help="Give up waiting after seconds.")
    p.add_argument("--keep-ids", action="store_true", help="Use task ids as written.")
    p.add_argument("--debug", action="store_true", help="Show tracebacks.")
    return p.parse_args(argv)


def build_settings(args: argparse.Namespace) -> FleetSettings:
    """Settings for a fleet this job may start; a running fleet keeps its own."""
    updates: dict[str, Any] = {
        "ray_address": args.address or os.environ.get("RAY_ADDRESS") or "auto",
    }
    if args.events is not None:
        updates["events_dir"] = args.events
    elif "FLEET_EVENTS_DIR" not in os.environ:
        updates["events_dir"] = DEFAULT_EVENTS
    for key in ("name", "workers", "sandbox"):
        if getattr(args, key) is not None:
            updates[key] = getattr(args, key)
    for key in ("worker_resources", "pools", "pool_resources"):
        if getattr(args, key) is not None:
            try:
                updates[key] = json.loads(getattr(args, key))
            except json.JSONDecodeError as exc:
                raise JobError(f"--{key.replace('_', '-')}: not JSON: {exc}") from None
    try:
        settings = FleetSettings(**updates)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise JobError(f"setting {where}: {first['msg']}") from None
    if "://" not in settings.events_dir:
        settings = settings.model_copy(
            update={"events_dir": os.path.abspath(os.path.expanduser(settings.events_dir))}
        )
    if settings.wal_dir is not None:
        settings = settings.model_copy(
            update={"wal_dir": os.path.abspath(os.path.expanduser(settings.wal_dir))}
        )
    return settings


def log(message: str) -> None:
    """One plain line in the job log (no TTY, no colour)."""
    print(message, flush=True)


def run(args: argparse.Namespace) -> int:
    from core.taskfile import load_config, load_tasks
    from fleet.api import Fleet, FleetError
    from fleet.cli import _print_summary, print_batch_report

    settings = build_settings(args)
    try:
        config = load_config(args.config)
        tasks, line_errors = load_tasks(args.tasks_file, config)
    except InputError as exc:
        raise JobError(str(exc)) from exc
    for line_error in line_errors:
        print(f"rejected {line_error}", file=sys.stderr, flush=True)
    if not tasks:
        raise JobError("no valid tasks to run")
    if not args.keep_ids:
        prefix = f"j{uuid.uuid4().hex[:6]}"
        tasks = [t.model_copy(update={"id": f"{prefix}.{t.id}"}) for t in tasks]

    started = time.monotonic()
    try:
        # A fleet that was already running keeps its settings (workers, events, sandbox).
        fleet = Fleet.start(settings, config)
    except FleetError as exc:
        raise JobError(str(exc)) from exc
    log(fleet.sandbox_notice)  # first: local sandboxes isolate nothing
    info = fleet.status()
    wal = f" (write-ahead log {fleet.settings.wal_dir})" if fleet.settings.wal_dir else ""
    log(
        f"fleet {info['fleet']!r}: {info['workers']} workers, {fleet.settings.sandbox} sandbox, "
        f"events at {fleet.settings.events_dir}{wal}, on Ray at {settings.ray_address}"
    )

    batch = f"b-{uuid.uuid4().hex[:8]}"
    submitted = fleet.submit(tasks, batch=batch)
    for rejection in submitted.rejected:
        print(
            f"rejected task {rejection['task_id']}: {rejection['field']}: {rejection['error']}",
            file=sys.stderr,
            flush=True,
        )
    log(f"batch {batch}: {len(submitted.accepted)} tasks submitted")
    records = follow(fleet, submitted.accepted, args.timeout, started)
    fleet.flush()

    _print_summary(records, fleet.settings, time.monotonic() - started)
    print_batch_report(fleet.settings.events_dir, batch)

    failed = [r for r in records if r.state != "succeeded"]
    unfinished = len(submitted.accepted) - len(records)
    rejected = len(line_errors) + len(submitted.rejected)
    if failed or rejected or unfinished:
        log(f"{len(failed)} task(s) did not succeed, {unfinished} unfinished, {rejected} rejected")
        return EXIT_TASKS_FAILED
    log(f"all {len(records)} tasks succeeded")
    return 0


def follow(fleet: Any, ids: list[str], timeout_s: float | None, started: float) -> list[Any]:
    """Wait for the tasks, one progress line per finished task."""
    records: list[Any] = []
    ok = 0
    try:
        for record in fleet.as_completed(ids, timeout_s=timeout_s):
            records.append(record)
            ok += record.state == "succeeded"
            log(
                f"[{len(records)}/{len(ids)}] {record.id}: {record.state.value} "
                f"(attempts {record.attempts}) | {ok} ok, {len(records) - ok} not ok, "
                f"{time.monotonic() - started:.1f}s"
            )
    except TimeoutError as exc:
        log(f"timed out: {exc}")
    return records


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except JobError as exc:
        if args.debug:
            import traceback

            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
