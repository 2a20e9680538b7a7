"""Token and cost budgets are per task: usage adds up in the task record across attempts and
handoffs, each session gets what is left, and a spent budget is not retried."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from actors.scheduler import Scheduler
from core.events import Event, EventType
from core.records import Assignment, SessionResult
from core.settings import FleetSettings
from core.specs import FleetConfig, TaskSpec, TaskState
from harness.loop import SessionOutcome
from sandboxes.local import LocalSandbox
from tests.test_harness_support import Events, Priced, make_loop

CONFIG = {
    "agents": {
        "coder": {"max_tokens": 1000, "max_cost_usd": 1.0},
        "docs": {"max_tokens": 1500},
    }
}


class Harness:
    """Drives a Scheduler as the supervisor does: number, apply, keep the log."""

    def __init__(self, **settings: Any) -> None:
        self.settings = FleetSettings(**{"retry_backoff_s": 0, **settings})
        self.s = Scheduler(FleetConfig.model_validate(CONFIG), self.settings)
        self.log: list[Event] = []

    def record(self, events: list[Event]) -> None:
        for e in events:
            rec = self.s.tasks.get(e.task_id)
            e.seq = rec.seq + 1 if rec else 0
            self.s.apply(e)
            self.log.append(e)

    def assign(self) -> Assignment:
        got = self.s.assign("w1")
        assert got is not None
        self.record([got[1]])
        return got[0]

    def used(self, a: Assignment, tokens_in: int, tokens_out: int, cost: float = 0.0) -> None:
        self.record(
            [
                Event(
                    task_id=a.task.id,
                    type=EventType.usage,
                    session_id=a.session_id,
                    tokens_in=tokens_in,
                    tokens_out=tokens_out,
                    cost_usd=cost,
                )
            ]
        )

    def end(self, a: Assignment, status: str, outcome: str, reason: str = "", **kw: Any) -> None:
        result = SessionResult(
            task_id=a.task.id,
            session_id=a.session_id,
            attempt=a.attempt,
            worker="w1",
            status=status,  # type: ignore[arg-type]
            reason=reason,
            outcome=SessionOutcome(status=outcome, reason=reason, **kw),  # type: ignore[arg-type]
        )
        self.record(self.s.conclude(result))


def test_usage_adds_up_and_each_session_gets_what_is_left() -> None:
    h = Harness(default_max_attempts=3)
    h.record([h.s.submit(TaskSpec(id="t", prompt="x", agent="coder"))])
    first = h.assign()
    assert (first.max_tokens, first.max_cost_usd) == (1000, 1.0)
    h.used(first, 300, 50, 0.25)
    h.used(first, 100, 50, 0.25)
    h.end(first, "failed", "finished", "gate failed (exit 1)")
    record = h.s.tasks["t"]
    assert (record.spent_tokens, record.spent_cost_usd) == (500, 0.5)
    assert record.state == TaskState.queued  # a retry: budget left
    second = h.assign()
    assert (second.max_tokens, second.max_cost_usd) == (500, 0.5)
    # A handoff does not reset it: the next agent's limit counts what the task spent.
    h.end(second, "succeeded", "handoff", handoff_to="docs", handoff_note="docs next")
    third = h.assign()
    assert third.agent.name == "docs"
    assert (third.max_tokens, third.max_cost_usd) == (1000, None)
    # Replaying the log rebuilds the same spend.
    replayed = Scheduler(FleetConfig.model_validate(CONFIG), h.settings)
    for e in h.log:
        replayed.apply(e)
    assert replayed.tasks["t"].spent_tokens == 500
    assert replayed.tasks["t"].spent_cost_usd == pytest.approx(0.5)


@pytest.mark.parametrize("exhausted", ["needs_human", "failed"])
def test_a_spent_budget_is_not_retried(exhausted: str) -> None:
    h = Harness(default_max_attempts=3, exhausted_state=exhausted)
    h.record([h.s.submit(TaskSpec(id="t", prompt="x", agent="coder"))])
    a = h.assign()
    h.used(a, 900, 150)
    h.end(a, "failed", "budget", "token budget of 1000 reached (1050 used)")
    record = h.s.tasks["t"]
    assert record.state == TaskState(exhausted) and record.attempts == 1
    assert record.reason == "budget spent: 1050 of 1000 tokens used"
    assert h.s.assign("w1") is None


def test_a_failed_attempt_that_spent_the_budget_is_not_retried() -> None:
    h = Harness(default_max_attempts=3)
    h.record([h.s.submit(TaskSpec(id="t", prompt="x", agent="coder"))])
    a = h.assign()
    h.used(a, 10, 10, 1.2)
    h.end(a, "failed", "finished", "gate failed (exit 1)")
    record = h.s.tasks["t"]
    assert record.state == TaskState.needs_human
    assert record.reason == "budget spent: $1.2000 of $1 used (last attempt: gate failed (exit 1))"


def test_the_loop_counts_its_budget_from_where_it_resumes() -> None:
    """A resumed session's state carries what it spent before; the task record counted that
    already, so the budget it is given (what is left) counts only what it spends now."""

    async def go() -> None:
        box = LocalSandbox()
        await box.start()
        try:
            loop = make_loop(Priced(), box, Events(), approvals={"shell": "always_ask"})
            loop.approval_wait_s = 0
            parked = await loop.run("x")
            assert parked.status == "parked" and parked.tokens_in == 100
            state = json.loads(json.dumps(parked.state))
            state["pending_approval"]["decision"] = {"allow": True, "message": ""}
            resumed = make_loop(Priced(), box, Events(), max_tokens=200)
            outcome = await resumed.resume(state)
            assert outcome.status == "budget" and outcome.turns == 3
            assert outcome.reason == "token budget of 200 reached (220 used)"
        finally:
            await box.close()

    asyncio.run(go())
