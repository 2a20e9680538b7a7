import os
from datetime import UTC, datetime, timedelta

import duckdb
import pytest

from fleet.eventlog import EventLog, EventLogError
from fleet.events import Event, EventType


def ev(task: str, seq: int, ts: datetime | None = None, **kw) -> Event:
    return Event(
        task_id=task, seq=seq, type=EventType.agent_message, ts=ts or datetime.now(UTC), **kw
    )


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
    assert rows[1][2] == '{"k": "v"}'


def test_appended_events_survive_a_crash_before_roll_exactly_once(tmp_path):
    log = EventLog(str(tmp_path))
    log.append([ev("a", 0), ev("a", 1)])
    log._wal.close()  # the process dies here: nothing rolled
    reopened = EventLog(str(tmp_path))
    assert [(e.task_id, e.seq) for e in reopened.replay()] == [("a", 0), ("a", 1)]
    assert len(reopened.files()) == 1
    # A crash after the Parquet file was written but before the WAL was dropped:
    again = EventLog(str(tmp_path))
    again.append([ev("b", 0)])
    segment, rows = again.start_roll()
    again._write_segment(segment, rows)  # the WAL segment is still there
    again._wal.close()
    third = EventLog(str(tmp_path))
    assert sorted((e.task_id, e.seq) for e in third.replay()) == [("a", 0), ("a", 1), ("b", 0)]


def test_torn_last_wal_line_is_skipped(tmp_path):
    log = EventLog(str(tmp_path))
    log.append([ev("a", 0)])
    log._wal.write('{"ts": "2026-01-01')  # a write cut off by the crash, never acknowledged
    log._wal.close()
    assert [e.seq for e in EventLog(str(tmp_path)).replay()] == [0]


def test_compaction_merges_small_files_and_keeps_every_event(tmp_path):
    log = EventLog(str(tmp_path), compact_min_files=3)
    for i in range(5):
        log.append([ev("a", i)])
        log.roll()
    assert len(log.files()) == 5
    assert log.compact() == 5
    assert len(log.files()) == 1
    assert [e.seq for e in log.replay()] == [0, 1, 2, 3, 4]


def test_unwritable_event_dir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(EventLogError, match="cannot write the event log"):
        EventLog(str(blocker / "events"))
