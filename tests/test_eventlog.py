import itertools
import json
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pytest

from core.eventlog import EventLog, EventLogError
from core.events import ARROW_SCHEMA, Event, EventType


def ev(task: str, seq: int, ts: datetime | None = None, **kw) -> Event:
    kw.setdefault("type", EventType.agent_message)
    return Event(task_id=task, seq=seq, ts=ts or datetime.now(UTC), **kw)


def crash(log: EventLog) -> None:
    """What the process's death does: files closed, the writer's lock let go."""
    log._wal.close()
    log._lock.close()


def test_roll_writes_hive_partitioned_parquet_that_duckdb_reads(tmp_path):
    log = EventLog(str(tmp_path))
    day1 = datetime(2026, 1, 1, 12, tzinfo=UTC)
    log.append([ev("a", 0, day1), ev("a", 1, day1 + timedelta(days=1), payload={"k": "v"})])
    assert log.roll() == 2
    assert sorted(os.listdir(tmp_path)) == ["_wal", "date=2026-01-01", "date=2026-01-02"]
    rows = duckdb.sql(
        f"select seq, date, payload from read_parquet('{tmp_path}/**/*.parquet', "
        "hive_partitioning=true) order by seq"
    ).fetchall()
    assert rows[0][0] == 0 and str(rows[0][1]) == "2026-01-01"
    assert rows[1][2] == '{"k":"v"}'


def test_appended_events_survive_a_crash_before_roll_exactly_once(tmp_path):
    log = EventLog(str(tmp_path))
    log.append([ev("a", 0), ev("a", 1)])
    crash(log)  # the process dies here: nothing rolled
    reopened = EventLog(str(tmp_path))
    assert [(e.task_id, e.seq) for e in reopened.replay()] == [("a", 0), ("a", 1)]
    assert len(reopened.files()) == 1
    crash(reopened)
    # A crash after the Parquet file was written but before the WAL was dropped:
    again = EventLog(str(tmp_path))
    again.append([ev("b", 0)])
    segment, rows = again.start_roll()
    again._write_segment(segment, rows)  # the WAL segment is still there
    crash(again)
    third = EventLog(str(tmp_path))
    assert sorted((e.task_id, e.seq) for e in third.replay()) == [("a", 0), ("a", 1), ("b", 0)]


def test_torn_last_wal_line_is_skipped(tmp_path):
    log = EventLog(str(tmp_path))
    log.append([ev("a", 0)])
    log._wal.write('{"ts": "2026-01-01')  # a write cut off by the crash, never acknowledged
    crash(log)
    assert [e.seq for e in EventLog(str(tmp_path)).replay()] == [0]


def test_an_append_cut_short_by_a_crash_loses_all_its_events_not_some(tmp_path):
    log = EventLog(str(tmp_path))
    log.append([ev("a", 0)])
    # The next append (a session's events and the decision they led to) is cut short by a
    # crash in the middle of its write, here in its last event: none of it is replayed.
    log.append([ev("a", 1), ev("a", 2, payload={"decision": "x" * 50})])
    crash(log)
    wal = log._wal_path(log._segment)
    os.truncate(wal, wal.stat().st_size - 30)
    assert [e.seq for e in EventLog(str(tmp_path)).replay()] == [0]


def test_a_wal_of_one_row_per_line_is_still_replayed(tmp_path):
    log = EventLog(str(tmp_path))
    rows = [ev("a", 0, payload={"k": "v"}).to_row(), ev("a", 1).to_row()]
    log._wal.write("".join(json.dumps(r, default=str) + "\n" for r in rows))  # older versions
    crash(log)
    replayed = list(EventLog(str(tmp_path)).replay())
    assert [(e.seq, e.payload) for e in replayed] == [(0, {"k": "v"}), (1, {})]


def test_to_row_gives_every_column_of_the_schema_as_model_dump_would():
    event = ev("a", 3, payload={"k": [1, {"x": None}]}, tool="shell", tokens_in=5)
    expected = event.model_dump() | {
        "type": event.type.value,
        "payload": '{"k":[1,{"x":null}]}',
    }
    assert event.to_row() == expected
    assert list(event.to_row()) == ARROW_SCHEMA.names == list(Event.model_fields)


def test_compaction_merges_small_files_and_keeps_every_event(tmp_path):
    log = EventLog(str(tmp_path), compact_min_files=3)
    for i in range(5):
        log.append([ev("a", i)])
        log.roll()
    assert len(log.files()) == 5
    assert log.compact() == 5
    assert len(log.files()) == 1
    assert [e.seq for e in log.replay()] == [0, 1, 2, 3, 4]


def test_compaction_merges_only_small_files_so_its_work_stays_bounded(tmp_path):
    log = EventLog(str(tmp_path), compact_min_files=3, compact_small_bytes=10**9)
    for i in range(4):
        log.append([ev("a", i)])
        log.roll()
    assert log.compact() == 4
    [big] = log.files()
    log.compact_small_bytes = os.path.getsize(big)  # the compacted file now counts as big
    for i in range(4, 7):
        log.append([ev("a", i)])
        log.roll()
    assert log.compact() == 3  # the three new ones; the first compaction's file is kept
    assert big in log.files() and len(log.files()) == 2
    assert [e.seq for e in log.replay()] == list(range(7))


KILLED_COMPACTION = """
import os, signal, sys
from datetime import UTC, datetime
from core.eventlog import EventLog
from core.events import ARROW_SCHEMA, Event, EventType

log = EventLog(sys.argv[1], compact_min_files=3)
for i in range(6):
    log.append([Event(task_id="a", seq=i, type=EventType.agent_message,
                      ts=datetime(2026, 1, 1, 12, i, tzinfo=UTC))])
    log.roll()
print(len(log.files()), flush=True)

def delete_two_then_die(files):
    for path in files[:2]:  # the merged file is in place, four of its sources are not gone
        log.fs.delete_file(path)
    os.kill(os.getpid(), signal.SIGKILL)

log._delete = delete_two_then_die
log.compact()
"""


def test_a_compaction_killed_halfway_is_finished_on_open_with_every_event_once(tmp_path):
    import subprocess
    import sys

    root = tmp_path / "events"
    done = subprocess.run(
        [sys.executable, "-c", KILLED_COMPACTION, str(root)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
        timeout=120,
    )
    assert done.returncode == -9 and done.stdout.strip() == "6", done.stderr
    files = sorted(p.name for p in root.glob("date=*/*.parquet"))
    assert len(files) == 5 and sum(f.startswith("compact-") for f in files) == 1
    pattern = f"{root}/date=*/*.parquet"
    duplicated = duckdb.sql(f"select count(*) from read_parquet('{pattern}')").fetchall()[0][0]
    assert duplicated == 6 + 4  # the merged file and four sources it replaces
    reopened = EventLog(str(root))
    assert [p.name.startswith("compact-") for p in root.glob("date=*/*.parquet")] == [True]
    assert duckdb.sql(f"select count(*) from read_parquet('{pattern}')").fetchall()[0][0] == 6
    assert [e.seq for e in reopened.replay()] == list(range(6))


def test_readers_never_miss_an_event_while_a_compaction_runs(tmp_path):
    import threading

    from core import analytics

    log = EventLog(str(tmp_path), compact_min_files=2)
    counts: list[int] = []
    stop = threading.Event()

    errors: list[Exception] = []

    def read() -> None:
        while not stop.is_set():
            try:
                table = analytics.sql(str(tmp_path), "SELECT count(*) FROM events")
            except Exception as exc:  # shown by the assertion below
                errors.append(exc)
                return
            counts.append(table.rows[0][0])

    total = 0
    for round_ in range(6):
        for i in range(20):
            log.append([ev(f"t{round_}", i)])
            log.roll()
            total += 1
        reader = threading.Thread(target=read)
        before = total
        reader.start()
        while not counts and not errors:  # reading already when the compaction starts...
            time.sleep(0.001)
        started = len(counts)
        log.compact()
        while len(counts) < started + 2 and not errors:  # ...and still after it
            time.sleep(0.001)
        stop.set()
        reader.join()
        stop.clear()
        assert errors == [] and min(counts) >= before, (round_, counts, errors)
        counts.clear()
    assert analytics.sql(str(tmp_path), "SELECT count(*) FROM events").rows[0][0] == total


def test_unwritable_event_dir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(EventLogError, match="cannot write the event log"):
        EventLog(str(blocker / "events"))


def test_fleets_sharing_a_folder_keep_their_own_events(tmp_path):
    first = EventLog(str(tmp_path), writer="alpha")
    first.append([ev("a", 0)])
    second = EventLog(str(tmp_path), writer="beta")  # opens while alpha's WAL is live
    first.append([ev("a", 1)])
    second.append([ev("b", 0)])
    first.roll()
    second.roll()
    crash(first)
    reopened = EventLog(str(tmp_path), writer="alpha")
    assert [(e.task_id, e.seq) for e in reopened.replay()] == [("a", 0), ("a", 1)]
    assert [(e.task_id, e.seq) for e in second.replay()] == [("b", 0)]
    every = duckdb.sql(f"select count(*) from read_parquet('{tmp_path}/**/*.parquet')")
    assert every.fetchall() == [(3,)]  # shared history: reports see both fleets


def test_a_second_live_writer_of_the_same_name_is_refused(tmp_path):
    live = EventLog(str(tmp_path), writer="alpha")
    with pytest.raises(EventLogError, match="another fleet named 'alpha'"):
        EventLog(str(tmp_path), writer="alpha", lock_wait_s=0.2)
    live.close()
    EventLog(str(tmp_path), writer="alpha")  # once it is gone, the name is free again


def test_replay_keeps_each_tasks_seq_order_when_clocks_disagree(tmp_path):
    log = EventLog(str(tmp_path))
    now = datetime.now(UTC)
    skewed = now - timedelta(seconds=5)  # a node whose clock runs behind
    log.append([ev("a", 0, now), ev("b", 0, now), ev("a", 1, skewed), ev("a", 2, now)])
    log.roll()
    order = [(e.task_id, e.seq) for e in log.replay()]
    assert [s for t, s in order if t == "a"] == [0, 1, 2]


def test_a_uri_event_log_needs_no_wal_option_and_reads_back_through_duckdb(tmp_path, monkeypatch):
    from actors.memory import Memory
    from core.analytics import AnalyticsError, report, sql
    from core.settings import FleetSettings

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    uri = f"file://{tmp_path}/remote"
    assert Memory(FleetSettings()).refresh(uri) is False  # no history yet: no memory, no crash
    with pytest.raises(AnalyticsError, match="no events under"):
        sql(uri, "select 1")
    log = EventLog(uri)
    remote = EventLog("mock://bucket/events")  # not a local disk: the WAL stays on one
    assert str(remote.wal_dir).startswith(str(tmp_path / "home" / "fleet-wal"))
    submitted = {"batch": "b1", "task": {"labels": ["docs"]}}
    log.append([ev("a", 0, type=EventType.task_submitted, payload=submitted)])
    log.append([ev("a", 1, type=EventType.task_succeeded)])
    log.roll()
    assert sql(uri, "select task_id, state from tasks").rows == [("a", "succeeded")]
    overview = report(uri, batch="b1")[0].as_dicts()[0]
    assert overview["tasks"] == 1 and overview["succeeded"] == 1


class FsyncRecorder:
    """Stands in for os.fsync: does the real one and records what it synced, and when."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, order: list[str] | None = None) -> None:
        self.calls: list[tuple[float, str]] = []
        self.order = order if order is not None else []
        self.real = os.fsync
        monkeypatch.setattr(os, "fsync", self)

    def __call__(self, fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        self.calls.append((time.monotonic(), path))
        self.order.append(f"fsync {path}")
        self.real(fd)

    def of(self, suffix: str) -> list[float]:
        return [t for t, path in self.calls if path.endswith(suffix)]


def test_wal_fsync_setting_is_checked_and_parsed(monkeypatch):
    from pydantic import ValidationError

    from core.eventlog import parse_wal_fsync
    from core.settings import FleetSettings

    assert FleetSettings().wal_fsync == "100ms"
    monkeypatch.setenv("FLEET_WAL_FSYNC", "always")
    assert FleetSettings().wal_fsync == "always"
    with pytest.raises(ValidationError, match="wal_fsync"):
        FleetSettings(wal_fsync="sometimes")
    assert [parse_wal_fsync(v) for v in ("always", "off", "250", "2.5ms")] == [
        0.0,
        None,
        0.25,
        0.0025,
    ]
    with pytest.raises(ValueError, match="wal_fsync"):
        EventLog("unused", wal_fsync="1s")


def test_always_fsyncs_the_wal_before_append_returns(tmp_path, monkeypatch):
    fsync = FsyncRecorder(monkeypatch)
    log = EventLog(str(tmp_path), wal_fsync="always")
    for i in range(3):
        log.append([ev("a", i)])
        assert len(fsync.of(".jsonl")) == i + 1  # this append's own fsync, already done
    assert len(fsync.of("/_wal/default")) == 1  # the new segment's name, once
    log.roll()
    log.append([ev("a", 3)])
    assert len(fsync.of("/_wal/default")) == 2  # and once more for the next segment
    assert fsync.of("seg-00000001.jsonl")
    log.close()


def test_off_never_fsyncs_the_wal(tmp_path, monkeypatch):
    fsync = FsyncRecorder(monkeypatch)
    log = EventLog(str(tmp_path), wal_fsync="off")
    for i in range(20):
        log.append([ev("a", i)])
    time.sleep(0.05)
    log.close()
    assert not fsync.of(".jsonl") and not fsync.of("/_wal/default")


def test_interval_fsyncs_at_most_once_per_interval_and_soon_after_the_last_append(
    tmp_path, monkeypatch
):
    fsync = FsyncRecorder(monkeypatch)
    log = EventLog(str(tmp_path), wal_fsync="600ms")
    burst_start = time.monotonic()
    for i in range(50):  # a burst inside one interval, with time for the thread to run
        log.append([ev("a", i)])
        last_append = time.monotonic()
        time.sleep(0.004)
    burst_end = time.monotonic()
    assert burst_end - burst_start < 0.6, "the burst took longer than the interval"
    deadline = time.monotonic() + 10
    while not [t for t in fsync.of(".jsonl") if t > last_append] and time.monotonic() < deadline:
        time.sleep(0.01)
    times = fsync.of(".jsonl")
    assert [t for t in times if t > last_append], "the last append was never fsynced"
    assert len([t for t in times if t <= burst_end]) <= 1  # the burst: one fsync at most
    assert all(b - a >= 0.59 for a, b in itertools.pairwise(times))  # ~0 if not throttled
    assert fsync.of("/_wal/default")  # the new segment's name too
    appended = time.monotonic()
    log.append([ev("a", 50)])  # a lone append, long after: covered without another append
    while not [t for t in fsync.of(".jsonl") if t > appended] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [t for t in fsync.of(".jsonl") if t > appended]
    log.close()


def test_a_roll_makes_the_parquet_file_durable_before_dropping_the_wal(tmp_path, monkeypatch):
    order: list[str] = []
    FsyncRecorder(monkeypatch, order)
    real_unlink = Path.unlink

    def unlink(self: Path, missing_ok: bool = False) -> None:
        order.append(f"unlink {self}")
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink)
    log = EventLog(str(tmp_path), wal_fsync="off")  # the Parquet side does not depend on it
    day = datetime(2026, 1, 1, 12, tzinfo=UTC)
    log.append([ev("a", 0, day)])
    segment, rows = log.start_roll()
    log.finish_roll(segment, rows)
    partition = f"{tmp_path}/date=2026-01-01"
    wal_gone = order.index(f"unlink {log._wal_path(segment)}")
    synced = [line for line in order[:wal_gone] if line.startswith("fsync")]
    assert any(line.startswith(f"fsync {partition}/.tmp-") for line in synced)  # the data
    assert f"fsync {partition}" in synced  # its name in the partition
    assert f"fsync {tmp_path}" in synced  # the new partition's name in the root
    assert len(log.files()) == 1
    log.close()


def test_fleet_compact_merges_stopped_fleets_logs_and_leaves_running_ones(tmp_path):
    import subprocess
    import sys

    from core import analytics
    from tests.history import write_history

    written = write_history(tmp_path, 60, per_file=40, writer="stopped")
    live = EventLog(str(tmp_path), writer="running")
    for i in range(3):
        live.append([ev("live", i)])
        live.roll()
    before = len(list(tmp_path.glob("date=*/seg-stopped-*.parquet")))
    assert before > 10
    done = subprocess.run(
        [sys.executable, "-m", "fleet.cli", "compact", "--events", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "running: its fleet compacts it" in done.stdout and "compacted" in done.stdout
    assert list(tmp_path.glob("date=*/seg-stopped-*.parquet")) == []
    assert len(list(tmp_path.glob("date=*/seg-running-*.parquet"))) == 3
    count = analytics.sql(str(tmp_path), "SELECT count(*) FROM events").rows[0][0]
    assert count == written + 3
    live.close()
