"""The wire form of a batch of events (a worker's ``EventBatcher`` -> the supervisor's
``ingest``) and the event log's columns: every field round-trips, malformed batches are
refused with a clear error before anything is logged, and a secret a worker sends never
reaches the WAL or Parquet."""

import asyncio
import json
import pickle
import random
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from core.errors import InputError
from core.eventlog import EventLog
from core.events import (
    FIELDS,
    WIRE,
    Event,
    EventType,
    EventWireError,
    decode_events,
    encode_events,
    log_columns,
    log_rows,
    to_json,
    ts_us,
    us_ts,
)
from core.vault import Vault
from tests.test_dispatch import Parts


def full_event() -> Event:
    """An event with every field set, none of them to its default."""
    return Event(
        ts=datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=UTC),
        task_id="t-1",
        type=EventType.agent_tool_result,
        seq=7,
        session_id="s-1",
        attempt=2,
        worker="w-3",
        payload={"call_id": "c1", "output": "total 8\nfile.py\n", "nested": {"a": [1, 2.5]}},
        tool="shell",
        exit_code=1,
        duration_ms=12.5,
        tokens_in=100,
        tokens_out=20,
        cost_usd=0.0125,
    )


def sent(events: list[Event]) -> list[Event]:
    """What the supervisor decodes of what a worker encodes, through pickle as Ray sends it."""
    return decode_events(pickle.loads(pickle.dumps(encode_events(events), protocol=5)))


def test_every_field_none_nested_and_non_ascii_values_round_trip() -> None:
    events = [
        full_event(),
        Event(task_id="t-2", type=EventType.session_started),  # every optional field None
        Event(
            task_id="t-3",
            type=EventType.user_message,
            payload={"text": "héllo wörld ✓ 日本", "deep": {"l": [{"x": None}, [True, 3]]}},
        ),
        Event(  # another time zone: the same instant comes back
            ts=datetime(2026, 1, 1, 23, 30, tzinfo=timezone(timedelta(hours=-5))),
            task_id="t-4",
            type=EventType.usage,
        ),
    ]
    back = sent(events)
    assert back == events
    assert [e.model_dump() for e in back] == [e.model_dump() for e in events]
    assert [type(e.type) for e in back] == [EventType] * 4
    assert back[0].model_fields_set == set(FIELDS)
    assert back[2].payload["text"] == "héllo wörld ✓ 日本"
    assert sent([]) == []


def test_an_int_where_a_float_goes_comes_back_a_float_as_validation_makes_it() -> None:
    wire = list(encode_events([Event(task_id="t", type=EventType.usage)]))
    wire[1 + FIELDS.index("duration_ms")] = [3]
    wire[1 + FIELDS.index("cost_usd")] = [2]
    [event] = decode_events(tuple(wire))
    assert event.duration_ms == 3.0 and type(event.duration_ms) is float
    assert type(event.cost_usd) is float


def test_decoded_events_are_models_like_any_other() -> None:
    a, b = sent([full_event(), full_event()])
    a.seq = 99  # the journal numbers events so
    a.payload["more"] = 1
    copy = b.model_copy(update={"seq": 3})
    assert (a.seq, b.seq, copy.seq) == (99, 7, 3)
    assert "more" not in b.payload and b.model_fields_set == set(FIELDS)
    assert Event.model_validate(a.model_dump()) == a
    assert pickle.loads(pickle.dumps(a)) == a


def column(name: str) -> int:
    return 1 + FIELDS.index(name)


def malformed() -> list[tuple[str, Any, str]]:
    """(what is wrong, the batch, what the error must say)."""
    good = encode_events([full_event(), full_event()])

    def with_column(name: str, values: Any) -> tuple[Any, ...]:
        wire = list(good)
        wire[column(name)] = values
        return tuple(wire)

    def with_value(name: str, value: Any) -> tuple[Any, ...]:
        return with_column(name, [good[column(name)][0], value])

    return [
        ("a list of events", [full_event()], "not a batch of events"),
        ("not a batch", "events", "not a batch of events"),
        ("another version", ("events/0", *good[1:]), "not a batch of events"),
        ("a column short", good[:-1], "of 14 items"),
        ("a column not a list", with_column("tool", ("shell", "shell")), "tool: expected a list"),
        ("columns of unequal length", with_column("seq", [1]), "seq: expected a list of 2"),
        ("a str for an int", with_value("seq", "7"), "event 1: seq may not be a str"),
        ("a bool for an int", with_value("exit_code", True), "exit_code may not be a bool"),
        ("no task id", with_value("task_id", None), "task_id may not be a NoneType"),
        ("a ts as text", with_value("ts", "2026-01-01"), "ts may not be a str"),
        ("a payload as text", with_value("payload", "{}"), "payload may not be a str"),
        ("a payload key not a str", with_value("payload", {1: "x"}), "a payload key is not a str"),
        ("an unknown event type", with_value("type", "agent.dance"), "'agent.dance'"),
    ]


@pytest.mark.parametrize(("what", "wire", "says"), malformed(), ids=[m[0] for m in malformed()])
def test_a_malformed_batch_is_refused_with_a_clear_error(what: str, wire: Any, says: str) -> None:
    with pytest.raises(EventWireError, match=says.replace("(", r"\(")) as refused:
        decode_events(wire)
    assert isinstance(refused.value, InputError)


def test_the_log_columns_are_to_row_column_by_column() -> None:
    events = [full_event(), Event(task_id="t", type=EventType.usage, payload={"é": "✓"})]
    columns = log_columns(events)
    assert len(columns) == len(FIELDS) and columns[0] == [ts_us(e.ts) for e in events]
    assert log_rows(columns) == [e.to_row() for e in events]
    assert log_columns([]) == [[] for _ in FIELDS]


def test_a_payload_is_written_as_compact_json_with_str_for_the_rest() -> None:
    class Thing:
        def __str__(self) -> str:
            return "a thing"

    at = datetime(2026, 1, 1, tzinfo=UTC)
    cases = [
        ({}, {}),
        (
            {"k": "v", "n": [1, 2.5, None, True], "deep": {"x": {"y": []}}},
            {"k": "v", "n": [1, 2.5, None, True], "deep": {"x": {"y": []}}},
        ),
        ({"é": "ü ✓ 日本", "quote": 'a "b" \\ c\n'}, {"é": "ü ✓ 日本", "quote": 'a "b" \\ c\n'}),
        ({"nan": float("nan"), "inf": float("inf")}, {"nan": None, "inf": None}),
        ({"big": 10**30, "small": -(10**30)}, {"big": 10**30, "small": -(10**30)}),
        (
            {"at": at, "thing": Thing(), "tuple": (1, 2), 3: "three"},
            {"at": str(at), "thing": "a thing", "tuple": [1, 2], "3": "three"},
        ),
    ]
    for payload, read in cases:
        assert json.loads(to_json(payload)) == read
    assert to_json({"a": 1, "b": [1, None]}) == '{"a":1,"b":[1,null]}'  # compact
    assert to_json({"t": "日本"}) == '{"t":"日本"}'  # UTF-8 text, not \\u escapes
    assert to_json({"at": at}) == json.dumps({"at": at}, default=str, separators=(",", ":"))


def test_microseconds_since_the_epoch_are_exact_both_ways() -> None:
    rng = random.Random(7)
    for _ in range(20_000):
        us = rng.randrange(0, 2**52)  # until the year 2112
        assert ts_us(us_ts(us)) == us
    naive = datetime(2026, 5, 6, 7, 8, 9, 10)
    assert us_ts(ts_us(naive)) == naive.replace(tzinfo=UTC)  # a naive time is UTC


def test_a_wal_line_of_the_previous_version_still_replays(tmp_path: Path) -> None:
    log = EventLog(str(tmp_path))
    rows = [full_event().to_row(), Event(task_id="t-2", type=EventType.usage, seq=0).to_row()]
    log._wal.write(json.dumps(rows, default=str) + "\n")  # a list of row objects per line
    log.append([Event(task_id="t-3", type=EventType.usage, seq=0)])  # and one of this version
    log._wal.close()
    log._lock.close()  # the process dies here
    replayed = list(EventLog(str(tmp_path)).replay())
    assert sorted((e.task_id, e.seq) for e in replayed) == [("t-1", 7), ("t-2", 0), ("t-3", 0)]
    assert next(e for e in replayed if e.task_id == "t-1") == full_event()


def test_the_wal_holds_a_batch_as_one_line_of_columns(tmp_path: Path) -> None:
    log = EventLog(str(tmp_path))
    events = [full_event(), full_event().model_copy(update={"seq": 8})]
    log.append(events)
    [line] = log._wal_path(log._segment).read_text().splitlines()
    columns = json.loads(line)["columns"]
    assert len(columns) == len(FIELDS) and columns[FIELDS.index("seq")] == [7, 8]
    assert columns[0] == [ts_us(full_event().ts)] * 2
    assert json.loads(columns[FIELDS.index("payload")][0]) == full_event().payload
    assert list(log.replay()) == events  # from the buffer
    assert log.roll() == 2 and list(log.replay()) == events  # from Parquet
    log.close()


SECRET = "tok-9f8e7d6c5b4a3921"


def test_a_secret_a_worker_sends_never_reaches_the_wal_or_parquet(tmp_path: Path) -> None:
    """A worker's batch goes the supervisor's way (decode, then the dispatcher's ingest and
    the journal with the vault's redactor): the WAL and the Parquet file have the label."""
    parts = Parts(tmp_path / "events")
    vault = Vault(tmp_path / "vault")
    vault.put("API_TOKEN", SECRET, scope="operator")
    parts.journal.redact = vault.redact_events

    async def scenario() -> None:
        parts.open()
        await parts.submit("t1")
        a = await parts.dispatch.next_assignment("w1", None)
        assert a is not None
        leak = {"output": f"token={SECRET}", "args": {"command": f"echo {SECRET}"}}
        events = [
            Event(task_id="t1", type=EventType.agent_tool_use, session_id=a.session_id),
            Event(
                task_id="t1",
                type=EventType.agent_tool_result,
                session_id=a.session_id,
                payload=leak,
            ),
            Event(task_id="t1", type=EventType.agent_message, session_id="s-written-off"),
        ]
        assert await parts.dispatch.ingest(sent(events)) == 2  # the written-off one dropped
        wal = b"".join(p.read_bytes() for p in parts.log.wal_dir.glob("seg-*.jsonl"))
        assert SECRET.encode() not in wal and b"[secret:API_TOKEN]" in wal
        assert await parts.journal.flush() > 0
        for task in parts.background:
            task.cancel()

    asyncio.run(scenario())
    files = parts.log.files()
    assert files
    for path in files:
        assert SECRET.encode() not in Path(path).read_bytes()
    payloads = pq.read_table(files, columns=["type", "payload"]).to_pylist()
    result = next(r for r in payloads if r["type"] == EventType.agent_tool_result.value)
    assert json.loads(result["payload"]) == {
        "output": "token=[secret:API_TOKEN]",
        "args": {"command": "echo [secret:API_TOKEN]"},
    }
    assert not any(r["type"] == EventType.agent_message.value for r in payloads)


def test_the_wire_is_plain_values_that_start_with_its_version() -> None:
    wire = encode_events([full_event()])
    assert wire[0] == WIRE and len(wire) == len(FIELDS) + 1
    plain = (str, int, float, type(None), dict, datetime)
    assert all(type(v) in plain for c in wire[1:] for v in c)
    assert wire[column("type")] == ["agent.tool_result"]
