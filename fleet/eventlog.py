"""The event log: Parquet files, Hive-partitioned by date, written by one writer.

Durability without tiny files: every appended batch goes first to a write-ahead log (JSON
lines in the current segment, written before ``append`` returns, so an acknowledged event
survives a crash of the process), and is buffered in memory. ``roll`` turns the buffer into
one Parquet file per date, named after the segment, then drops the segment. On open, a
segment left by a crash is rolled again; a partition that already has that segment's file
is skipped, so replay is exact. ``compact`` merges a partition's small files into one.

Layout::

    <root>/date=2026-11-23/seg-00000007.parquet
    <root>/date=2026-11-23/compact-<id>.parquet
    <wal>/seg-00000008.jsonl
"""

from __future__ import annotations

import json
import os
import uuid
from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from fleet.events import ARROW_SCHEMA, Event, rows_to_table


class EventLogError(RuntimeError):
    pass


class EventLog:
    def __init__(self, root: str, wal_dir: str | None = None, compact_min_files: int = 16) -> None:
        try:
            self.fs, self.root = pafs.FileSystem.from_uri(root)
        except (pa.ArrowInvalid, ValueError):
            self.fs, self.root = pafs.LocalFileSystem(), os.path.abspath(root)
        self.is_local = isinstance(self.fs, pafs.LocalFileSystem)
        if wal_dir is None:
            if not self.is_local:
                raise EventLogError(f"events at {root} need a local wal_dir")
            wal_dir = os.path.join(self.root, "_wal")
        self.wal_dir = Path(wal_dir)
        self.compact_min_files = compact_min_files
        try:
            self.fs.create_dir(self.root, recursive=True)
            self.wal_dir.mkdir(parents=True, exist_ok=True)
            probe = self.wal_dir / f".probe-{uuid.uuid4().hex}"
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            raise EventLogError(f"cannot write the event log at {root}: {exc}") from exc
        self._buffer: list[dict[str, Any]] = []
        self._recover()
        self._segment = self._next_segment()
        self._wal = open(self._wal_path(self._segment), "a", encoding="utf-8")  # noqa: SIM115

    # -- writing -----------------------------------------------------------------------
    def append(self, events: list[Event]) -> None:
        """Write events to the WAL (durable once this returns) and buffer them."""
        rows = [e.to_row() for e in events]
        lines = "".join(json.dumps(r, default=str) + "\n" for r in rows)
        self._wal.write(lines)
        self._wal.flush()
        self._buffer.extend(rows)

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def roll(self) -> int:
        """Move buffered events into Parquet files; returns how many were written."""
        pending = self.start_roll()
        if pending is None:
            return 0
        self.finish_roll(*pending)
        return len(pending[1])

    def start_roll(self) -> tuple[int, list[dict[str, Any]]] | None:
        """Cheap half of a roll: take the buffer and start a new WAL segment.

        ``finish_roll`` (slow: Parquet writes) may then run in another thread while
        ``append`` goes on in this one.
        """
        if not self._buffer:
            return None
        rows, self._buffer = self._buffer, []
        segment = self._segment
        self._wal.close()
        self._segment = segment + 1
        self._wal = open(self._wal_path(self._segment), "a", encoding="utf-8")  # noqa: SIM115
        return segment, rows

    def finish_roll(self, segment: int, rows: list[dict[str, Any]]) -> None:
        self._write_segment(segment, rows)
        self._wal_path(segment).unlink(missing_ok=True)

    def close(self) -> None:
        self.roll()
        self._wal.close()
        self._wal_path(self._segment).unlink(missing_ok=True)

    def compact(self) -> int:
        """Merge each partition holding many files into one; returns files removed."""
        removed = 0
        for partition, files in self._partitions().items():
            if len(files) < self.compact_min_files:
                continue
            table = pa.concat_tables(pq.read_table(f, filesystem=self.fs) for f in files)
            table = table.sort_by([("ts", "ascending")])
            self._write_table(f"{partition}/compact-{uuid.uuid4().hex[:12]}.parquet", table)
            for f in files:
                self.fs.delete_file(f)
            removed += len(files)
        return removed

    # -- reading -----------------------------------------------------------------------
    def files(self) -> list[str]:
        return sorted(f for fs in self._partitions().values() for f in fs)

    def read_table(self) -> pa.Table:
        """All rolled events (not the in-memory buffer) as one Arrow table."""
        files = self.files()
        if not files:
            return ARROW_SCHEMA.empty_table()
        tables = [pq.read_table(f, filesystem=self.fs, schema=ARROW_SCHEMA) for f in files]
        return pa.concat_tables(tables)

    def replay(self) -> Iterator[Event]:
        """Every event in the log, rolled and buffered, in (ts, seq) order per file set."""
        rows = self.read_table().to_pylist() + list(self._buffer)
        rows.sort(key=lambda r: (str(r["ts"]), r["seq"]))
        seen: set[tuple[str, int]] = set()
        for row in rows:
            key = (row["task_id"], row["seq"])
            if key in seen:  # a duplicate left by a crash during compaction
                continue
            seen.add(key)
            yield Event.from_row(row)

    # -- internals ---------------------------------------------------------------------
    def _wal_path(self, segment: int) -> Path:
        return self.wal_dir / f"seg-{segment:08d}.jsonl"

    def _wal_segments(self) -> list[int]:
        return sorted(int(p.stem.split("-")[1]) for p in self.wal_dir.glob("seg-*.jsonl"))

    def _next_segment(self) -> int:
        seen = self._wal_segments()
        for files in self._partitions().values():
            for f in files:
                name = f.rsplit("/", 1)[-1]
                if name.startswith("seg-"):
                    seen.append(int(name[4:12]))
        return max(seen, default=-1) + 1

    def _partitions(self) -> dict[str, list[str]]:
        selector = pafs.FileSelector(self.root, recursive=True, allow_not_found=True)
        found: dict[str, list[str]] = defaultdict(list)
        for info in self.fs.get_file_info(selector):
            path = info.path
            if info.type == pafs.FileType.File and path.endswith(".parquet"):
                parent = path.rsplit("/", 1)[0]
                if parent.rsplit("/", 1)[-1].startswith("date="):
                    found[parent].append(path)
        return found

    def _recover(self) -> None:
        """Roll WAL segments a crash left behind (exactly once per partition)."""
        for segment in self._wal_segments():
            path = self._wal_path(segment)
            rows = []
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:  # a torn last line: it was never acknowledged
                    continue
            for row in rows:
                row["ts"] = datetime.fromisoformat(row["ts"])
            if rows:
                self._write_segment(segment, rows)
            path.unlink()

    def _write_segment(self, segment: int, rows: list[dict[str, Any]]) -> None:
        by_date: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in rows:
            ts = row["ts"]
            by_date[ts.date().isoformat()].append(row)
        for day, day_rows in by_date.items():
            path = f"{self.root}/date={day}/seg-{segment:08d}.parquet"
            if self.fs.get_file_info(path).type == pafs.FileType.File:
                continue
            self._write_table(path, rows_to_table(day_rows))

    def _write_table(self, path: str, table: pa.Table) -> None:
        """Write then rename, so a reader never sees half a file."""
        parent = path.rsplit("/", 1)[0]
        self.fs.create_dir(parent, recursive=True)
        tmp = f"{parent}/.tmp-{uuid.uuid4().hex}"
        pq.write_table(table, tmp, filesystem=self.fs, compression="zstd")
        self.fs.move(tmp, path)
