"""Batch job entry point for a Ray cluster.

    ray submit cluster.yaml fleet/job.py -- TASKS.jsonl [options]
    ray job submit --working-dir . -- python -m fleet.job TASKS.jsonl [options]
    python -m fleet.job TASKS.jsonl --address auto      # on any node of a running cluster

Connects to the cluster, submits the batch to the fleet's supervisor (starting it, detached,
if absent, so that later jobs reuse it), prints one progress line per finished task, then the
summary and the DuckDB report. The supervisor keeps running after the job.

Exit codes: ``fleet.driver.ExitCode`` (0 every task succeeded; 1 some task did not succeed,
was unfinished or was rejected; 2 a usage or setup error). The run itself is
``fleet.driver.run_batch``, the same as ``fleet run``'s.
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
from pathlib import Path

from core.errors import InputError
from core.settings import FleetSettings
from fleet import driver
from fleet.driver import ExitCode, prefixed, run_batch, run_prefix
from fleet.output import print_error


class JobError(InputError):
    """A usage or setup problem, shown as one line."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="fleet.job",
        description="Run a batch of tasks on the fleet of a Ray cluster and print its report. "
        "Exit codes: 0 every task succeeded; 1 some task did not succeed, was unfinished or "
        "was rejected; 2 a usage or setup error.",
    )
    p.add_argument("tasks_file", type=Path, help="JSONL file, one task per line (on this node).")
    p.add_argument(
        "--address",
        default=None,
        help="Ray address (default: FLEET_RAY_ADDRESS, else 'auto', which finds $RAY_ADDRESS "
        "or the cluster this node is in).",
    )
    p.add_argument("--name", default=None, help="Fleet name (default: FLEET_NAME or 'default').")
    p.add_argument("--workers", "-w", type=int, default=None, help="Workers, if starting a fleet.")
    p.add_argument("--sandbox", default=None, help="local, docker or auto, if starting a fleet.")
    p.add_argument(
        "--events",
        default=None,
        help="Event log path or pyarrow URI, if starting a fleet (default: FLEET_EVENTS_DIR, "
        "else ~/fleet-events); with object storage the write-ahead log goes to "
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
    """Settings for a fleet this job may start (a running fleet keeps its own): the options
    over ``FLEET_*`` variables; the job joins a cluster, so the Ray address is never None."""
    try:
        settings = driver.build_settings(
            ray_address=args.address,
            events_dir=args.events,
            name=args.name,
            workers=args.workers,
            sandbox=args.sandbox,
            worker_resources=args.worker_resources,
            pools=args.pools,
            pool_resources=args.pool_resources,
        )
    except ValueError as exc:
        raise JobError(str(exc)) from None
    if settings.ray_address is None:
        settings = settings.model_copy(update={"ray_address": "auto"})
    return settings


def run(args: argparse.Namespace) -> ExitCode:
    """Run the batch of ``args.tasks_file`` on the cluster's fleet, which keeps running."""
    from core.taskfile import load_config, load_tasks

    settings = build_settings(args)
    try:
        config = load_config(args.config)
        tasks, line_errors = load_tasks(args.tasks_file, config)
    except InputError as exc:
        raise JobError(str(exc)) from exc
    if not args.keep_ids:
        tasks = prefixed(tasks, run_prefix("j"))
    return run_batch(
        tasks,
        line_errors,
        settings,
        config,
        timeout_s=args.timeout,
        keep_fleet=True,
        progress="lines",
        debug=args.debug,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except JobError as exc:
        print_error(str(exc), exc, args.debug)
        return ExitCode.USAGE


if __name__ == "__main__":
    sys.exit(main())
