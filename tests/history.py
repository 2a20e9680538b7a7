"""A synthetic run history written straight to Parquet, laid out as the event log lays it out
(``<root>/date=YYYY-MM-DD/*.parquet``, the one Arrow schema): tasks with labels, agents,
retries, model turns, tool calls and outcomes in known proportions. For report tests and the
report benchmark (a million events in seconds, without running a fleet)."""

from __future__ import annotations

import json
import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from core.events import ARROW_SCHEMA

LABELS = ["bug", "docs", "feature", "infra"]
AGENTS = ["coder", "fixer", "writer"]
TOOLS = ["shell", "read_file", "write_file", "edit_file"]
REASONS = ["gate failed: exit 1", "stopped after 30 turns", "time limit reached"]
START = datetime(2026, 11, 1, tzinfo=UTC)


def write_history(
    root: Path, tasks: int, seed: int = 7, per_file: int = 250_000, writer: str = "synthetic"
) -> int:
    """Write the history of ``tasks`` tasks under ``root`` in files of about ``per_file``
    events, named as fleet ``writer``'s segments; the number of events. Task ``i``
    is ``t-<i>``; every 10th task fails (attempts 1..3, a reason of :data:`REASONS`), every
    17th that does not fail ends ``needs_human``, the rest succeed."""
    rng = random.Random(seed)
    columns: dict[str, list[Any]] = defaultdict(list)
    written = 0
    part = 0

    def add(ts: datetime, task: str, type_: str, seq: int, **fields: Any) -> None:
        columns["ts"].append(ts)
        columns["task_id"].append(task)
        columns["type"].append(type_)
        columns["seq"].append(seq)
        for name in ARROW_SCHEMA.names[4:]:
            value = fields.get(name)
            columns[name].append(json.dumps(value) if name == "payload" and value else value)

    def flush() -> None:
        nonlocal columns, written, part
        if not columns["ts"]:
            return
        table = pa.table(columns, schema=ARROW_SCHEMA)
        days = pc.strftime(table["ts"], format="%Y-%m-%d").to_pylist()
        for day in sorted(set(days)):
            mask = pa.array([d == day for d in days])
            folder = root / f"date={day}"
            folder.mkdir(parents=True, exist_ok=True)
            pq.write_table(table.filter(mask), folder / f"seg-{writer}-{part:08d}.parquet")
        written += table.num_rows
        part += 1
        columns = defaultdict(list)

    for i in range(tasks):
        task = f"t-{i}"
        label = LABELS[i % len(LABELS)]
        fails = i % 10 == 0
        state = "failed" if fails else ("needs_human" if i % 17 == 0 else "succeeded")
        attempts = 1 + i % 3 if fails else 1
        ts = START + timedelta(minutes=i * 7 % (60 * 24 * 14), seconds=rng.random())
        seq = 0
        spec = {"id": task, "prompt": f"task {i}", "labels": [label]}
        add(ts, task, "task.submitted", seq, payload={"task": spec, "batch": "synthetic"})
        for attempt in range(1, attempts + 1):
            session = f"{task}-s{attempt}"
            agent = AGENTS[(i + attempt) % len(AGENTS)]
            where = {"session_id": session, "attempt": attempt, "worker": f"w{i % 4}"}
            seq += 1
            ts += timedelta(seconds=0.2)
            add(ts, task, "task.assigned", seq, **where)
            seq += 1
            payload = {"agent": agent, "model": "gpt-x", "environment": "default"}
            add(ts, task, "session.started", seq, payload=payload, **where)
            started = ts
            turns = 2 + rng.randrange(4)
            for turn in range(1, turns + 1):
                ts += timedelta(seconds=1 + rng.random())
                seq += 1
                add(
                    ts,
                    task,
                    "usage",
                    seq,
                    payload={"model": "gpt-x", "turn": turn, "cached_input_tokens": 10},
                    tokens_in=900 + 100 * turn,
                    tokens_out=80,
                    cost_usd=0.001 * (AGENTS.index(agent) + 1),
                    duration_ms=400 + 600 * rng.random(),
                    **where,
                )
                if turn == turns:
                    break
                tool = TOOLS[(i + turn) % len(TOOLS)]
                call = {"call_id": f"c{turn}", "turn": turn}
                seq += 1
                add(ts, task, "agent.tool_use", seq, tool=tool, payload=call, **where)
                took = (5 if tool != "shell" else 40) * (1 + rng.random())
                ts += timedelta(milliseconds=took)
                seq += 1
                add(
                    ts,
                    task,
                    "agent.tool_result",
                    seq,
                    tool=tool,
                    payload={**call, "is_error": turn == 1 and fails},
                    exit_code=0,
                    duration_ms=took,
                    **where,
                )
            last = attempt == attempts
            status = "failed" if fails else "finished"
            reason = REASONS[i % len(REASONS)] if fails else ""
            seq += 1
            add(
                ts,
                task,
                "session.ended",
                seq,
                payload={"status": status, "reason": reason, "agent": agent, "turns": turns},
                duration_ms=(ts - started).total_seconds() * 1000,
                **where,
            )
            if not last:
                seq += 1
                add(ts, task, "task.retried", seq, payload={"reason": reason})
        seq += 1
        ts += timedelta(seconds=0.1)
        ending = {"reason": REASONS[i % len(REASONS)]} if fails else {"summary": "done"}
        if state == "needs_human":
            ending = {"reason": "which API key?"}
        add(ts, task, f"task.{state}", seq, payload=ending)
        if len(columns["ts"]) >= per_file:
            flush()
    flush()
    return written
