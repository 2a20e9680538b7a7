"""The event log: Parquet files, Hive-partitioned by date, written by one writer.

Durability without tiny files: every appended batch goes first to a write-ahead log (one
JSON line per append, in the current segment, written before ``append`` returns, so an
acknowledged event survives a crash of the process; a write a crash cut short loses its
whole batch, never part of it), and is buffered in memory. A line is the batch column by
column, ``{"columns": [...]}``: one list per field in :data:`core.events.FIELDS` order,
``ts`` in microseconds since the epoch, each payload as its JSON text
(:func:`core.events.log_columns`). Segments that older versions wrote (a line of a list of
row objects, or of one, with ``ts`` as ISO text) are replayed alike.
``roll`` turns the buffer into one Parquet file per date, named after the segment, then
drops the segment. On open, a segment left by a crash is rolled again; a partition that
already has that segment's file is skipped, so replay is exact. ``compact`` merges a
partition's small files into one (and opening the log finishes a compaction a crash cut
short).

How far an acknowledged event survives is the ``wal_fsync`` choice. Every mode writes and
flushes the WAL before ``append`` returns, so a crash of the *process* loses nothing; they
differ on a crash of the *host* (power, kernel), which loses what the kernel had not yet
written to the disk:

- ``"always"``: the WAL is fsynced before ``append`` returns (and its directory, once per
  new segment): an acknowledged event survives a host crash.
- an interval, ``"100ms"`` (or ``"100"``, in ms): a background thread fsyncs the WAL at most
  once per interval, and no later than one interval after an append (plus the fsync's own
  time): a host crash loses at most the events acknowledged in that last window. The
  thread does not wait for a further append. ``"0ms"`` is ``"always"``.
- ``"off"``: the WAL is never fsynced: a host crash may lose whatever the kernel still held
  (on Linux, typically the last 30 s or so).

Whatever the mode, a Parquet file (segment or compaction) and its directory entry are
fsynced before the WAL segment or the files it replaces are deleted (on a local disk;
object stores are durable once a write returns), so a host crash right after a roll loses
nothing the WAL had, and never leaves a half-written Parquet file in the log.

Several fleets may share one events directory (shared history for reports and memory): each
writes under its own *writer* name (the fleet's name), holds an exclusive lock on its WAL
folder while it lives, and replays only its own files. A second live writer of the same name
is refused with a clear error rather than allowed to interleave with the first.

Layout::

    <root>/date=2026-11-23/seg-<writer>-00000007.parquet
    <root>/date=2026-11-23/compact-<writer>-<id>.parquet
    <wal>/<writer>/seg-00000008.jsonl
    <wal>/<writer>/.lock
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from core.errors import StorageError
from core.events import (
    ARROW_SCHEMA,
    FIELDS,
    TS,
    Event,
    columns_table,
    log_columns,
    log_rows,
    no_columns,
    to_json,
    ts_us,
)

log = logging.getLogger(__name__)

REPLACES = b"fleet.replaces"
"""Metadata key of a compacted file: the names of the files it replaces (JSON list)."""


class EventLogError(StorageError):
    """The event log cannot be written, or another live fleet of the same name writes it."""


DAY_US = 86_400_000_000
"""Microseconds in a day: a row's ``ts // DAY_US`` is its date partition (UTC)."""


Columns = list[list[Any]]
"""Events as the log writes and buffers them: :func:`core.events.log_columns`."""


def read_wal(path: Path) -> Columns:
    """The events a WAL segment holds (a torn last line, never acknowledged, is skipped)."""
    columns = no_columns()
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            written = json.loads(line)
        except json.JSONDecodeError:  # a torn last line: it was never acknowledged
            continue
        read_wal_line(written, columns)
    return columns


def read_wal_line(written: Any, into: Columns) -> None:
    """Add the events of a parsed WAL line to ``into``: ``{"columns": [...]}``, or (a WAL
    an older version wrote) a list of row objects or one row object, ``ts`` as ISO text."""
    if isinstance(written, dict) and "columns" in written:
        columns = written["columns"]
        if len(columns) != len(FIELDS) or len({len(c) for c in columns}) != 1:
            raise EventLogError(f"a WAL line's columns are not {len(FIELDS)} lists of a length")
        for column, values in zip(into, columns, strict=True):
            column.extend(values)
        return
    for row in written if isinstance(written, list) else [written]:
        values = [row.get(name) for name in FIELDS]
        values[TS] = ts_us(datetime.fromisoformat(row["ts"]))
        for column, value in zip(into, values, strict=True):
            column.append(value)


def writer_name(name: str) -> str:
    """A fleet name made safe for file names (letters, digits, '_', '.'; no '-')."""
    return re.sub(r"[^A-Za-z0-9_.]", "_", name)[:64] or "_"


def partition_files(fs: pafs.FileSystem, root: str) -> list[str]:
    """Every Parquet file in the log's date partitions (``<root>/date=*/*.parquet``), of all
    writers, sorted."""
    selector = pafs.FileSelector(root, recursive=True, allow_not_found=True)
    return sorted(
        info.path
        for info in fs.get_file_info(selector)
        if info.type == pafs.FileType.File
        and info.path.endswith(".parquet")
        and info.path.rsplit("/", 2)[-2].startswith("date=")
    )


def parse_wal_fsync(value: str | float) -> float | None:
    """``wal_fsync`` as seconds between fsyncs: 0.0 for ``always``, None for ``off``."""
    text = str(value)
    if text == "always":
        return 0.0
    if text == "off":
        return None
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms)?", text)
    if match is None:
        raise ValueError(
            f"wal_fsync: expected 'always', 'off' or an interval in ms like '100ms', got {value!r}"
        )
    return float(match.group(1)) / 1000


def release_arrow_memory() -> None:
    """Give back what Arrow's allocator keeps of the tables a write or a merge made. It
    keeps it for later; a supervisor writes now and then and holds its queue meanwhile
    (about 45 MiB of its RSS after a roll of 20,000 events)."""
    pa.default_memory_pool().release_unused()


def fsync_path(path: str | Path) -> None:
    """fsync a file or a directory by name (a directory: so the names it holds persist)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _WalSyncer:
    """The background thread of the interval mode: fsyncs the WAL files that appends made
    dirty, at most once per ``interval_s`` and at most ``interval_s`` after they did."""

    def __init__(self, interval_s: float, wal_dir: Path) -> None:
        self.interval_s = interval_s
        self.wal_dir = wal_dir
        self._cond = threading.Condition()
        self._dirty: dict[int, int] = {}
        """WAL segment -> a duplicate of its descriptor (ours to close), for the segments
        written since the last fsync: one descriptor per file, however many appends."""
        self._dir_dirty = False
        self._last_sync = -interval_s
        self._closed = False
        self._thread: threading.Thread | None = None

    def dirty(self, segment: int, fd: int, new_file: bool = False) -> None:
        """WAL ``segment`` (open as ``fd``) has unsynced writes (``new_file``: a name too)."""
        with self._cond:
            if self._closed:
                return
            if segment in self._dirty and not new_file:
                return  # the next fsync covers this write too
            was_clean = not self._dirty and not self._dir_dirty
            if segment not in self._dirty:
                self._dirty[segment] = os.dup(fd)
            self._dir_dirty = self._dir_dirty or new_file
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="wal-fsync", daemon=True)
                self._thread.start()
            if was_clean:  # the thread may be waiting for work, not for its interval
                self._cond.notify()

    def close(self) -> None:
        """Sync what is dirty now, then stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()
        self._sync(self._take())

    def _take(self) -> tuple[list[int], bool]:
        with self._cond:
            fds, self._dirty = list(self._dirty.values()), {}
            dir_dirty, self._dir_dirty = self._dir_dirty, False
        return fds, dir_dirty

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._dirty and not self._dir_dirty and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                wait = self._last_sync + self.interval_s - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                self._last_sync = time.monotonic()
            self._sync(self._take())

    def _sync(self, taken: tuple[list[int], bool]) -> None:
        fds, dir_dirty = taken
        for fd in fds:
            try:
                os.fsync(fd)
            except OSError:
                log.exception("fsync of the write-ahead log failed")
            finally:
                os.close(fd)
        if dir_dirty:
            try:
                fsync_path(self.wal_dir)
            except OSError:
                log.exception("fsync of the write-ahead log directory failed")


def default_wal_dir(uri: str) -> str:
    """Where the write-ahead log of a remote event log lives: a local disk of this node."""
    digest = hashlib.sha256(uri.encode()).hexdigest()[:16]
    return str(Path.home() / "fleet-wal" / digest)


class EventLog:
    def __init__(
        self,
        root: str,
        wal_dir: str | None = None,
        compact_min_files: int = 16,
        compact_small_bytes: int = 32 * 2**20,
        writer: str = "default",
        lock_wait_s: float = 5.0,
        wal_fsync: str | float = "100ms",
    ) -> None:
        try:
            self.fs, self.root = pafs.FileSystem.from_uri(root)
        except (pa.ArrowInvalid, ValueError):
            self.fs, self.root = pafs.LocalFileSystem(), os.path.abspath(root)
        self.is_local = isinstance(self.fs, pafs.LocalFileSystem)
        if wal_dir is None:
            wal_dir = os.path.join(self.root, "_wal") if self.is_local else default_wal_dir(root)
        self.writer = writer_name(writer)
        self.wal_dir = Path(wal_dir) / self.writer
        self.compact_min_files = compact_min_files
        self.compact_small_bytes = compact_small_bytes
        self.fsync_every = parse_wal_fsync(wal_fsync)
        """Seconds between WAL fsyncs: 0.0 always, None never."""
        try:
            self.fs.create_dir(self.root, recursive=True)
            self.wal_dir.mkdir(parents=True, exist_ok=True)
            probe = self.wal_dir / f".probe-{uuid.uuid4().hex}"
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            raise EventLogError(f"cannot write the event log at {root}: {exc}") from exc
        self._lock = self._take_lock(root, lock_wait_s)
        self._buffer: Columns = no_columns()
        """Appended events not yet rolled."""
        self._syncer = _WalSyncer(self.fsync_every, self.wal_dir) if self.fsync_every else None
        self._recover()
        self._segment = self._next_segment()
        self._open_wal()

    # -- writing -----------------------------------------------------------------------
    def append(self, events: list[Event]) -> None:
        """Write events to the WAL and buffer them: once this returns they survive a crash of
        the process, and of the host as far as ``wal_fsync`` says (see the module doc)."""
        if not events:
            return
        columns = log_columns(events)
        # One line per append: a crash that cuts the write short loses the whole append
        # (never acknowledged), never half of it; one encode for the batch is cheaper too.
        self._wal.write(to_json({"columns": columns}) + "\n")
        self._wal.flush()
        for buffered, column in zip(self._buffer, columns, strict=True):
            buffered.extend(column)  # rolled even if an fsync below fails: the caller has them
        if self.fsync_every == 0.0:
            if self._new_wal:
                fsync_path(self.wal_dir)
            os.fsync(self._wal.fileno())
        elif self._syncer is not None:
            self._syncer.dirty(self._segment, self._wal.fileno(), new_file=self._new_wal)
        self._new_wal = False

    @property
    def buffered(self) -> int:
        return len(self._buffer[TS])

    def roll(self) -> int:
        """Move buffered events into Parquet files; returns how many were written."""
        pending = self.start_roll()
        if pending is None:
            return 0
        self.finish_roll(*pending)
        return len(pending[1][TS])

    def start_roll(self) -> tuple[int, Columns] | None:
        """Cheap half of a roll: take the buffer and start a new WAL segment.

        ``finish_roll`` (slow: Parquet writes) may then run in another thread while
        ``append`` goes on in this one.
        """
        if not self.buffered:
            return None
        columns, self._buffer = self._buffer, no_columns()
        segment = self._segment
        self._wal.close()  # the syncer holds its own descriptor of it if it was dirty
        self._segment = segment + 1
        self._open_wal()
        return segment, columns

    def finish_roll(self, segment: int, columns: Columns) -> None:
        self._write_segment(segment, columns)  # durable (fsynced) before the WAL goes
        self._wal_path(segment).unlink(missing_ok=True)
        release_arrow_memory()

    def close(self) -> None:
        self.roll()
        self._wal.close()
        self._wal_path(self._segment).unlink(missing_ok=True)
        if self._syncer is not None:
            self._syncer.close()
        self._lock.close()

    def _take_lock(self, root: str, wait_s: float) -> Any:
        """Hold the writer's WAL folder for this process's life (the kernel lets go when
        it dies). A restarted supervisor may briefly overlap its dying predecessor."""
        handle = open(self.wal_dir / ".lock", "a+", encoding="utf-8")  # noqa: SIM115
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    handle.seek(0)
                    holder = handle.read().strip() or "?"
                    handle.close()
                    raise EventLogError(
                        f"another fleet named {self.writer!r} (pid {holder}) is writing the "
                        f"event log at {root}: give this one another name or events directory"
                    ) from None
                time.sleep(0.1)
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        return handle

    def compact(self) -> int:
        """Merge the small files of each partition that has many into one; returns how many
        files went. Files of ``compact_small_bytes`` or more are left alone, so each
        compaction does bounded work however big the history grows.

        Safe beside a writer (it touches only the files it listed; a roll writes new ones)
        and against a crash: the new file names the files it replaces (in its metadata)
        and is complete before any of them is deleted; opening the log deletes those a crash
        left behind. Between the new file's rename and the deletes (milliseconds) a reader
        may see both; nothing is ever missing."""
        removed = 0
        for partition, files in self._partitions().items():
            sizes = self.fs.get_file_info(files)
            small = [i.path for i in sizes if (i.size or 0) < self.compact_small_bytes]
            if len(small) >= self.compact_min_files:
                self._merge(partition, small)
                removed += len(small)
        release_arrow_memory()
        return removed

    def _merge(self, partition: str, small: list[str]) -> None:
        """Write one file of ``small``'s rows in ``partition``, then delete them."""
        tables = [pq.read_table(f, filesystem=self.fs, schema=ARROW_SCHEMA) for f in small]
        table = pa.concat_tables(tables).sort_by([("ts", "ascending")])
        replaces = json.dumps([f.rsplit("/", 1)[-1] for f in small])
        table = table.replace_schema_metadata({REPLACES: replaces})
        name = f"compact-{self.writer}-{uuid.uuid4().hex[:12]}.parquet"
        self._write_table(f"{partition}/{name}", table)
        self._delete(small)

    def _delete(self, files: list[str]) -> None:
        for f in files:
            with contextlib.suppress(FileNotFoundError):
                self.fs.delete_file(f)

    def _finish_compactions(self) -> None:
        """Delete the files a compaction had replaced when a crash stopped it before."""
        for partition, files in self._partitions().items():
            present = {f.rsplit("/", 1)[-1] for f in files}
            for f in files:
                if not f.rsplit("/", 1)[-1].startswith(f"compact-{self.writer}-"):
                    continue
                metadata = pq.read_schema(f, filesystem=self.fs).metadata or {}
                replaced = json.loads(metadata.get(REPLACES, b"[]"))
                left = [f"{partition}/{name}" for name in replaced if name in present]
                if left:
                    log.warning("finishing a compaction a crash cut short: %d files", len(left))
                    self._delete(left)

    # -- reading -----------------------------------------------------------------------
    def files(self) -> list[str]:
        """This writer's Parquet files (other fleets sharing the folder have theirs)."""
        return sorted(f for fs in self._partitions().values() for f in fs)

    def read_table(self) -> pa.Table:
        """All rolled events (not the in-memory buffer) as one Arrow table."""
        files = self.files()
        if not files:
            return ARROW_SCHEMA.empty_table()
        tables = [pq.read_table(f, filesystem=self.fs, schema=ARROW_SCHEMA) for f in files]
        return pa.concat_tables(tables)

    def replay(self) -> Iterator[Event]:
        """Every event of this writer, rolled and buffered: tasks interleaved by time, each
        task's own events in ``seq`` order (clocks of different nodes may disagree)."""
        rows = self.read_table().to_pylist() + log_rows(self._buffer)
        rows.sort(key=lambda r: (str(r["ts"]), r["seq"]))
        seen: set[tuple[str, int]] = set()
        unique = []
        for row in rows:
            key = (row["task_id"], row["seq"])
            if key not in seen:  # a duplicate is left by a crash during compaction
                seen.add(key)
                unique.append(row)
        slots: dict[str, list[int]] = defaultdict(list)
        for index, row in enumerate(unique):
            slots[row["task_id"]].append(index)
        ordered: list[dict[str, Any]] = [{}] * len(unique)
        for indexes in slots.values():
            by_seq = sorted((unique[i] for i in indexes), key=lambda r: r["seq"])
            for index, row in zip(indexes, by_seq, strict=True):
                ordered[index] = row
        for row in ordered:
            yield Event.from_row(row)

    # -- internals ---------------------------------------------------------------------
    def _open_wal(self) -> None:
        self._wal = open(self._wal_path(self._segment), "a", encoding="utf-8")  # noqa: SIM115
        self._new_wal = True
        """Its name is not yet fsynced into the WAL directory (done with the first append)."""

    def _wal_path(self, segment: int) -> Path:
        return self.wal_dir / f"seg-{segment:08d}.jsonl"

    def _wal_segments(self) -> list[int]:
        return sorted(int(p.stem.split("-")[1]) for p in self.wal_dir.glob("seg-*.jsonl"))

    def _next_segment(self) -> int:
        seen = self._wal_segments()
        prefix = f"seg-{self.writer}-"
        for files in self._partitions().values():
            for f in files:
                name = f.rsplit("/", 1)[-1]
                if name.startswith(prefix):
                    seen.append(int(name[len(prefix) :].split(".")[0]))
        return max(seen, default=-1) + 1

    def _partitions(self) -> dict[str, list[str]]:
        """This writer's Parquet files by date partition."""
        found: dict[str, list[str]] = defaultdict(list)
        mine = (f"seg-{self.writer}-", f"compact-{self.writer}-")
        for path in partition_files(self.fs, self.root):
            parent, name = path.rsplit("/", 1)
            if name.startswith(mine):
                found[parent].append(path)
        return found

    def _recover(self) -> None:
        """Finish a compaction and roll WAL segments a crash left behind (exactly once per
        partition)."""
        self._finish_compactions()
        for segment in self._wal_segments():
            path = self._wal_path(segment)
            columns = read_wal(path)
            if columns[TS]:
                self._write_segment(segment, columns)
            path.unlink()

    def _write_segment(self, segment: int, columns: Columns) -> None:
        """One Parquet file per date (UTC) of the events' ``ts``, named after the segment
        (skipped where it exists: a replay after a crash writes each once)."""
        table = columns_table(columns)
        days = [ts // DAY_US for ts in columns[TS]]
        distinct = sorted(set(days))
        for day in distinct:
            date = datetime.fromtimestamp(day * 86_400, UTC).date().isoformat()
            path = f"{self.root}/date={date}/seg-{self.writer}-{segment:08d}.parquet"
            if self.fs.get_file_info(path).type == pafs.FileType.File:
                continue
            if len(distinct) > 1:
                self._write_table(path, table.filter(pa.array([d == day for d in days])))
            else:
                self._write_table(path, table)

    def _write_table(self, path: str, table: pa.Table) -> None:
        """Write, fsync, rename, fsync the directory: a reader never sees half a file, and
        once this returns the file survives a host crash (so what it replaces may go)."""
        parent = path.rsplit("/", 1)[0]
        new_parent = self.is_local and not os.path.isdir(parent)
        self.fs.create_dir(parent, recursive=True)
        if new_parent:  # a new date partition: its name in the root must persist too
            fsync_path(self.root)
        tmp = f"{parent}/.tmp-{uuid.uuid4().hex}"
        pq.write_table(table, tmp, filesystem=self.fs, compression="zstd")
        if self.is_local:
            fsync_path(tmp)
        self.fs.move(tmp, path)
        if self.is_local:
            fsync_path(parent)
