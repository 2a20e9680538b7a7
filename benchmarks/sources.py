"""Sources and the watcher: ``python -m benchmarks.sources``.

1. Pickup latency: a fleet (local Ray, local sandboxes, scripted tasks) and one watcher over
   two tables, one in PostgreSQL (a NOTIFY trigger; poll interval 10 s, so the notification
   is what wakes it) and one in SQLite (``--sqlite-poll`` seconds between polls). Rows are
   inserted one at a time at random moments; the latency of a row is its insert to its
   task's ``session.started`` event. Prints p50 and p99 per backend.
2. Claim rate: ``--rows`` ready rows (1,000) and two watchers' sources, each in its own
   thread, listing and claiming until none is left. Prints claims/s and the doubles (a row
   both claimed) and misses (a row neither claimed), which must be 0.

PostgreSQL is ``--pg-dsn``, else a throwaway server from tests/postgres.py when initdb is
installed, else its figures are skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sqlite3
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg

from core.events import EventType
from core.specs import FleetConfig, SourceSpec
from sources import build_source
from sources.sql import SqlSource

DDL = (
    "prompt TEXT, state TEXT NOT NULL DEFAULT 'ready', repo TEXT, labels TEXT, "
    "priority INTEGER, agent TEXT, summary TEXT, branch TEXT, pr_url TEXT, reason TEXT"
)
SCRIPT = [{"tool": "finish", "args": {"summary": "ok"}}]


class Db:
    """A work table in one backend, written as a person would (sync, own connection)."""

    def __init__(self, backend: str, dsn: str) -> None:
        self.backend, self.dsn = backend, dsn
        self.table = f"bench_{uuid.uuid4().hex[:8]}"
        key = "INTEGER PRIMARY KEY" if backend == "sqlite" else "SERIAL PRIMARY KEY"
        updated = "TEXT" if backend == "sqlite" else "TIMESTAMPTZ"
        self.sql(f"CREATE TABLE {self.table} (id {key}, {DDL}, updated_at {updated})")

    def sql(self, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        if self.backend == "sqlite":
            conn = sqlite3.connect(self.dsn.removeprefix("sqlite://"), isolation_level=None)
            try:
                cur = conn.execute(query, params)
                return cur.fetchall() if cur.description else []
            finally:
                conn.close()
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            cur = conn.execute(query.replace("?", "%s").encode(), params)
            return cur.fetchall() if cur.description else []

    def insert(self, prompt: str) -> str:
        rows = self.sql(f"INSERT INTO {self.table} (prompt) VALUES (?) RETURNING id", (prompt,))
        return str(rows[0][0])

    def spec(self, name: str, poll_s: float) -> SourceSpec:
        env = f"BENCH_DSN_{uuid.uuid4().hex[:8]}"
        os.environ[env] = self.dsn  # the source reads its DSN from a variable
        options: dict[str, Any] = {"dsn_env": env, "table": self.table, "poll_interval_s": poll_s}
        if self.backend == "postgresql":
            options["install_trigger"] = True
        return SourceSpec(name=name, kind="sql", options=options, task={"script": SCRIPT})


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def pickup_latency(dbs: dict[str, Db], rows: int, sqlite_poll: float) -> None:
    from fleet import Fleet
    from fleet.watch import Watcher, WatcherThread, WatchSettings
    from sources import build_sources

    specs = [db.spec(name, sqlite_poll if db.backend == "sqlite" else 10.0)
             for name, db in dbs.items()]  # fmt: skip
    config = FleetConfig(sources=specs)
    events = tempfile.mkdtemp(prefix="bench-sources-")
    fleet = Fleet.start(
        config=config, name=f"bench{uuid.uuid4().hex[:6]}", events_dir=events,
        sandbox="local", workers=4, flush_interval_s=0.2,
    )  # fmt: skip
    watcher = WatcherThread(
        Watcher(fleet, build_sources(config), WatchSettings(track_interval_s=0.2), config)
    ).start()
    try:
        time.sleep(2.0)  # LISTEN is up after the first poll
        inserted: dict[str, tuple[str, float]] = {}
        for n in range(rows):
            for name, db in dbs.items():
                item = db.insert(f"bench {n}")
                inserted[f"{name}-{item}"] = (name, time.time())
            time.sleep(random.uniform(0.1, 0.6))
        latencies: dict[str, list[float]] = {name: [] for name in dbs}
        deadline = time.monotonic() + 120
        for task_id, (name, at) in inserted.items():
            while time.monotonic() < deadline:
                started = [e for e in fleet.events(task_id) if e.type == EventType.session_started]
                if started:
                    latencies[name].append(started[0].ts.timestamp() - at)
                    break
                time.sleep(0.2)
        print(f"pickup latency (row inserted -> session.started), {rows} rows each:")
        for name, values in latencies.items():
            how = "NOTIFY" if dbs[name].backend == "postgresql" else f"poll {sqlite_poll:g}s"
            if not values:
                print(f"  {name:<10} ({how}): no task started")
                continue
            print(
                f"  {name:<10} ({how:>9}): p50 {percentile(values, 0.5) * 1000:7.0f} ms   "
                f"p99 {percentile(values, 0.99) * 1000:7.0f} ms   (n={len(values)})"
            )
    finally:
        watcher.watcher.settings.drain_timeout_s = 0
        watcher.stop(30)
        fleet.shutdown()


def claim_rate(db: Db, rows: int) -> None:
    values = ", ".join(["(?)"] * rows)
    db.sql(f"INSERT INTO {db.table} (prompt) VALUES {values}", tuple(f"r{n}" for n in range(rows)))
    ids = {str(r[0]) for r in db.sql(f"SELECT id FROM {db.table} WHERE state = 'ready'")}
    barrier = threading.Barrier(2)

    async def drain(source: SqlSource) -> list[str]:
        won: list[str] = []
        try:
            barrier.wait()
            while items := await source.list_ready(limit=100):
                for item in items:
                    if await source.claim(item.id):
                        won.append(item.id)
            return won
        finally:
            await source.close()

    sources = []
    for name in ("a", "b"):
        source = build_source(db.spec(name, 1.0))
        assert isinstance(source, SqlSource)
        sources.append(source)
    began = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        won_a, won_b = pool.map(lambda s: asyncio.run(drain(s)), sources)
    took = time.monotonic() - began
    doubles = len(set(won_a) & set(won_b))
    misses = len(ids - set(won_a) - set(won_b))
    print(
        f"  {db.backend:<10}: {rows} rows in {took:5.2f} s = {rows / took:6.0f} claims/s "
        f"(a {len(won_a)}, b {len(won_b)}); doubles {doubles}, misses {misses}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pg-dsn", help="A PostgreSQL to use (default: a throwaway one).")
    parser.add_argument("--pickup-rows", type=int, default=20)
    parser.add_argument("--sqlite-poll", type=float, default=1.0)
    parser.add_argument("--rows", type=int, default=1000, help="Rows for the claim rate.")
    args = parser.parse_args()
    server = None
    dsn = args.pg_dsn
    if dsn is None:
        from tests.postgres import PostgresServer, pg_bin_dir

        bin_dir = pg_bin_dir()
        if bin_dir is not None:
            server = PostgresServer.start(bin_dir)
            dsn = server.dsn
        else:
            print("PostgreSQL is not installed (scripts/ci-postgres.sh): SQLite only")
    tmp = Path(tempfile.mkdtemp(prefix="bench-sqlite-"))
    try:
        dbs = {"lite": Db("sqlite", f"sqlite://{tmp / 'work.db'}")}
        if dsn:
            dbs["pg"] = Db("postgresql", dsn)
        pickup_latency(dbs, args.pickup_rows, args.sqlite_poll)
        print(f"claim rate, two watchers on {args.rows} ready rows:")
        for db in dbs.values():
            claim_rate(Db(db.backend, db.dsn), args.rows)  # a fresh table
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
