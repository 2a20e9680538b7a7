"""Memory of past runs: what history says about labels and agents, and the decisions it drives.

Read with DuckDB from the event log (per label, per agent, and per agent on each label: runs,
success rate, duration p50/p95, turns, tokens, how often a session stalled or ran out of
time). Used at submit time:

- a time limit from history when the task sets none (p95 x 3, within bounds);
- an expected duration, so that among equal priorities the longest go first (shorter makespan);
- the agent with the best record when a task allows several (``agents``): on the task's
  labels when history has a record of them, else overall;
- one attempt only for labels that keep failing, so a human sees them early.

Every decision comes back with its reason; the supervisor logs each as ``memory.decision``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import duckdb

from core.analytics import AnalyticsError, connect, query
from core.events import Event, EventType
from core.settings import FleetSettings
from core.specs import TaskSpec

FINISHED = "('succeeded', 'failed', 'needs_human')"

FIGURES = """
count(*) AS runs,
avg(CASE WHEN state = 'succeeded' THEN 1.0 ELSE 0.0 END) AS success_rate,
quantile_cont(duration_s, 0.5) AS p50_s, quantile_cont(duration_s, 0.95) AS p95_s,
avg(turns) AS avg_turns, avg(tokens_in + tokens_out) AS avg_tokens,
avg(CASE WHEN task_id IN (SELECT task_id FROM stalled) THEN 1.0 ELSE 0.0 END) AS stall_rate
"""
"""What is known of a group of finished tasks (the columns of :class:`Stats`)."""

SOURCES = (
    f"""CREATE OR REPLACE TEMP TABLE finished AS
    SELECT task_id, state, duration_s, turns, tokens_in, tokens_out
    FROM tasks WHERE state IN {FINISHED}""",
    """CREATE OR REPLACE TEMP TABLE labelled AS
    SELECT task_id,
           unnest(from_json(json_extract(payload, '$.task.labels'), '["VARCHAR"]')) AS label
    FROM events WHERE type = 'task.submitted'""",
    """CREATE OR REPLACE TEMP TABLE agent_of AS
    SELECT task_id, arg_max(json_extract_string(payload, '$.agent'), seq) AS agent
    FROM events WHERE type = 'task.assigned' GROUP BY task_id""",
    """CREATE OR REPLACE TEMP TABLE stalled AS
    SELECT DISTINCT task_id FROM events
    WHERE json_extract_string(payload, '$.reason') LIKE 'stalled%'
       OR json_extract_string(payload, '$.reason') LIKE 'time limit%'""",
)
"""Read once per refresh, for the three groupings below: the finished tasks, each task's
labels and its (last) agent, the tasks a session of which stalled or ran out of time."""

LABEL_STATS = f"""
SELECT label AS name, NULL AS label, {FIGURES}
FROM finished JOIN labelled USING (task_id)
GROUP BY label ORDER BY label
"""

AGENT_STATS = f"""
SELECT agent AS name, NULL AS label, {FIGURES}
FROM finished JOIN agent_of USING (task_id)
WHERE agent IS NOT NULL
GROUP BY agent ORDER BY agent
"""

DOMAIN_STATS = f"""
SELECT agent AS name, label, {FIGURES}
FROM finished JOIN agent_of USING (task_id) JOIN labelled USING (task_id)
WHERE agent IS NOT NULL
GROUP BY label, agent ORDER BY label, agent
"""
"""Per label and agent: which agent does best on which kind of task."""

DECISIONS = """
SELECT CAST(ts AS VARCHAR) AS at, task_id, json_extract_string(payload, '$.decision') AS decision,
       json_extract_string(payload, '$.value') AS value,
       json_extract_string(payload, '$.reason') AS reason
FROM events WHERE type = 'memory.decision'
ORDER BY ts DESC LIMIT ?
"""


@dataclass
class Stats:
    """What history says about the finished tasks of one label, one agent, or one agent on
    one label (``label`` set, ``name`` the agent)."""

    name: str
    label: str | None
    runs: int
    success_rate: float
    p50_s: float | None
    p95_s: float | None
    avg_turns: float | None
    avg_tokens: float | None
    stall_rate: float
    """The share of these tasks with a session stopped as stalled or out of time."""


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
        self.domains: dict[tuple[str, str], Stats] = {}
        """(label, agent) -> how that agent did on tasks of that label."""
        self.decisions: list[dict[str, Any]] = []
        """The latest ``memory.decision`` events, newest first (for ``fleet memory``)."""

    def refresh(self, events_dir: str) -> bool:
        """Re-read history; False when there is none yet."""
        try:
            con = connect(events_dir)
            for statement in SOURCES:
                query(con, statement)
            self.labels = {r.name: r for r in _stats(con, LABEL_STATS)}
            self.agents = {r.name: r for r in _stats(con, AGENT_STATS)}
            self.domains = {(r.label or "", r.name): r for r in _stats(con, DOMAIN_STATS)}
            rows = con.execute(DECISIONS, [self.settings.memory_decisions_shown])
            columns = [d[0] for d in rows.description or []]
            self.decisions = [dict(zip(columns, r, strict=True)) for r in rows.fetchall()]
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
            best, reason = self._pick_agent(spec.agents, spec.labels)
            plan["agent"] = best
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

    def _on_labels(self, agent: str, labels: list[str]) -> Stats | None:
        """How ``agent`` did on tasks with any of ``labels`` (enough runs only), pooled."""
        known = [s for s in (self._known(self.domains.get((x, agent))) for x in labels) if s]
        if not known:
            return None
        runs = sum(s.runs for s in known)
        return Stats(
            name=agent,
            label=", ".join(s.label or "" for s in known),
            runs=runs,
            success_rate=sum(s.success_rate * s.runs for s in known) / runs,
            p50_s=max((s.p50_s for s in known if s.p50_s is not None), default=None),
            p95_s=max((s.p95_s for s in known if s.p95_s is not None), default=None),
            avg_turns=None,
            avg_tokens=None,
            stall_rate=sum(s.stall_rate * s.runs for s in known) / runs,
        )

    def _pick_agent(self, agents: list[str], labels: list[str]) -> tuple[str, str]:
        """The agent to run a task allowed ``agents``, and why: the best record on the
        task's labels when history has one for any of them, else the best overall."""
        on_labels = {a: self._on_labels(a, labels) for a in agents}
        if any(on_labels.values()):
            best = min(agents, key=lambda a: _rank(on_labels[a]))
            stats = on_labels[best]
            if stats is not None:
                return best, (
                    f"best record on label(s) {stats.label} among {agents}: "
                    f"{stats.success_rate:.0%} of {stats.runs} runs"
                )
        best = min(agents, key=lambda a: _rank(self._known(self.agents.get(a))))
        overall = self._known(self.agents.get(best))
        if overall is None:
            return best, f"no history for {agents}: first listed"
        where = f"no history on {labels}: " if labels else ""
        return best, (
            f"{where}best record among {agents}: {overall.success_rate:.0%} of {overall.runs} runs"
        )

    def tables(self) -> dict[str, list[dict[str, Any]]]:
        """What ``fleet memory`` shows: per label, per agent, per label and agent, and the
        latest decisions with their reasons."""

        def rows(stats: list[Stats], label: bool) -> list[dict[str, Any]]:
            out = []
            for s in stats:
                row = vars(s).copy()
                if label:
                    row = {"label": row.pop("label"), "agent": row.pop("name"), **row}
                else:
                    row.pop("label")
                out.append(row)
            return out

        return {
            "labels": rows(list(self.labels.values()), False),
            "agents": rows(list(self.agents.values()), False),
            "domains": rows(list(self.domains.values()), True),
            "decisions": self.decisions,
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
            label=r[1],
            runs=int(r[2]),
            success_rate=float(r[3]),
            p50_s=_round(r[4]),
            p95_s=_round(r[5]),
            avg_turns=_round(r[6]),
            avg_tokens=_round(r[7]),
            stall_rate=float(r[8]),
        )
        for r in rows
    ]


def _round(value: Any) -> float | None:
    return None if value is None else round(float(value), 3)
