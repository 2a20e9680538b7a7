"""Memory of past runs: what history says about labels and agents, and the decisions it drives.

Read with DuckDB from the event log (per label and per agent: runs, success rate, duration
p50/p95, turns, tokens). Used at submit time:

- a time limit from history when the task sets none (p95 x 3, within bounds);
- an expected duration, so that among equal priorities the longest go first (shorter makespan);
- the agent with the best record when a task allows several (``agents``);
- one attempt only for labels that keep failing, so a human sees them early.

Every decision comes back with its reason; the supervisor logs each as ``memory.decision``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import duckdb

from core.analytics import AnalyticsError, connect
from core.events import Event, EventType
from core.settings import FleetSettings
from core.specs import TaskSpec

FINISHED = "('succeeded', 'failed', 'needs_human')"

LABEL_STATS = f"""
SELECT label AS name, count(*) AS runs,
       avg(CASE WHEN state = 'succeeded' THEN 1.0 ELSE 0.0 END) AS success_rate,
       quantile_cont(duration_s, 0.5) AS p50_s, quantile_cont(duration_s, 0.95) AS p95_s,
       avg(turns) AS avg_turns, avg(tokens_in + tokens_out) AS avg_tokens
FROM tasks
JOIN (SELECT task_id,
             unnest(from_json(json_extract(payload, '$.task.labels'), '["VARCHAR"]')) AS label
      FROM events WHERE type = 'task.submitted') USING (task_id)
WHERE state IN {FINISHED}
GROUP BY label ORDER BY label
"""

AGENT_STATS = f"""
WITH agent_of AS (
    SELECT task_id, arg_max(json_extract_string(payload, '$.agent'), seq) AS agent
    FROM events WHERE type = 'task.assigned' GROUP BY task_id
)
SELECT agent AS name, count(*) AS runs,
       avg(CASE WHEN state = 'succeeded' THEN 1.0 ELSE 0.0 END) AS success_rate,
       quantile_cont(duration_s, 0.5) AS p50_s, quantile_cont(duration_s, 0.95) AS p95_s,
       avg(turns) AS avg_turns, avg(tokens_in + tokens_out) AS avg_tokens
FROM tasks JOIN agent_of USING (task_id)
WHERE state IN {FINISHED} AND agent IS NOT NULL
GROUP BY agent ORDER BY agent
"""


@dataclass
class Stats:
    name: str
    runs: int
    success_rate: float
    p50_s: float | None
    p95_s: float | None
    avg_turns: float | None
    avg_tokens: float | None


@dataclass
class Decision:
    what: str
    value: Any
    reason: str

    def event(self, task_id: str) -> Event:
        """The ``memory.decision`` event that logs it for the task."""
        payload = {"decision": self.what, "value": self.value, "reason": self.reason}
        return Event(task_id=task_id, type=EventType.memory_decision, payload=payload)


class Memory:
    def __init__(self, settings: FleetSettings) -> None:
        self.settings = settings
        self.labels: dict[str, Stats] = {}
        self.agents: dict[str, Stats] = {}

    def refresh(self, events_dir: str) -> bool:
        """Re-read history; False when there is none yet."""
        try:
            con = connect(events_dir)
            self.labels = {r.name: r for r in _stats(con, LABEL_STATS)}
            self.agents = {r.name: r for r in _stats(con, AGENT_STATS)}
        except (AnalyticsError, duckdb.Error):  # no history yet, or none readable: no memory
            return False
        return True

    def _known(self, stats: Stats | None) -> Stats | None:
        return stats if stats and stats.runs >= self.settings.memory_min_runs else None

    def plan(self, spec: TaskSpec) -> tuple[dict[str, Any], list[Decision]]:
        """Decisions for a new task, from history."""
        plan: dict[str, Any] = {}
        decisions: list[Decision] = []
        label_stats = [s for s in (self._known(self.labels.get(x)) for x in spec.labels) if s]

        if spec.agents:
            ranked = sorted(
                spec.agents,
                key=lambda a: _rank(self._known(self.agents.get(a))),
            )
            best = ranked[0]
            stats = self._known(self.agents.get(best))
            plan["agent"] = best
            reason = (
                f"best record among {spec.agents}: {stats.success_rate:.0%} of {stats.runs} runs"
                if stats
                else f"no history for {spec.agents}: first listed"
            )
            decisions.append(Decision("agent", best, reason))

        durations = [s.p50_s for s in label_stats if s.p50_s is not None]
        if durations:
            plan["expected_s"] = round(max(durations), 3)
            decisions.append(
                Decision("expected_s", plan["expected_s"], "longest p50 among its labels")
            )

        p95s = [(s.p95_s, s.name) for s in label_stats if s.p95_s is not None]
        if spec.time_limit_s is None and p95s:
            p95, label = max(p95s)
            limit = min(self.settings.default_time_limit_s, max(30.0, round(p95 * 3, 1)))
            plan["time_limit_s"] = limit
            decisions.append(
                Decision("time_limit_s", limit, f"3 x p95 ({p95:.1f}s) of label {label!r}")
            )

        failing = [s for s in label_stats if s.success_rate < self.settings.memory_escalate_below]
        if failing and spec.max_attempts is None:
            worst = min(failing, key=lambda s: s.success_rate)
            plan["max_attempts"] = 1
            decisions.append(
                Decision(
                    "max_attempts",
                    1,
                    f"label {worst.name!r} succeeded {worst.success_rate:.0%} of {worst.runs} "
                    "runs: escalate to a human after one attempt",
                )
            )
        return plan, decisions

    def tables(self) -> dict[str, list[dict[str, Any]]]:
        return {
            "labels": [vars(s) for s in self.labels.values()],
            "agents": [vars(s) for s in self.agents.values()],
        }


def _rank(stats: Stats | None) -> tuple[float, float]:
    """Sort key: higher success first, then faster; unknown agents after known good ones."""
    if stats is None:
        return (-0.5, 0.0)
    return (-stats.success_rate, stats.p50_s or 0.0)


def _stats(con: Any, sql: str) -> list[Stats]:
    rows = con.execute(sql).fetchall()
    return [
        Stats(
            name=r[0],
            runs=int(r[1]),
            success_rate=float(r[2]),
            p50_s=_round(r[3]),
            p95_s=_round(r[4]),
            avg_turns=_round(r[5]),
            avg_tokens=_round(r[6]),
        )
        for r in rows
    ]


def _round(value: Any) -> float | None:
    return None if value is None else round(float(value), 3)
