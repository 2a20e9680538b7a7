import pytest

from actors.scheduler import Scheduler, TaskQueue, TaskRejected
from fleet.events import Event, EventType
from fleet.records import SessionResult
from fleet.settings import FleetSettings
from fleet.specs import FleetConfig, TaskSpec, TaskState


def test_queue_orders_by_priority_then_age_and_skips_what_does_not_fit():
    q = TaskQueue()
    q.push("low-old", 0)
    q.push("high", 5)
    q.push("low-new", 0)
    q.push("mid", 1)
    q.discard("mid")
    assert q.ids() == ["high", "low-old", "low-new"]
    assert q.pop(lambda t: t != "high") == "low-old"
    assert q.pop() == "high"
    assert len(q) == 1 and "low-new" in q


class Harness:
    """Drives a Scheduler the way the supervisor does: number, apply, keep the log."""

    def __init__(self, **settings):
        self.s = Scheduler(FleetConfig(), FleetSettings(**settings))
        self.log: list[Event] = []

    def record(self, events):
        for e in events:
            rec = self.s.tasks.get(e.task_id)
            e.seq = rec.seq + 1 if rec else 0
            self.s.apply(e)
            self.log.append(e)

    def submit(self, **kw):
        self.record([self.s.submit(TaskSpec(**kw))])

    def assign(self, worker="w1"):
        got = self.s.assign(worker)
        assert got is not None
        self.record([got[1]])
        return got[0]

    def finish(self, a, status, reason=""):
        self.record(
            self.s.complete(
                SessionResult(
                    task_id=a.task.id,
                    session_id=a.session_id,
                    attempt=a.attempt,
                    worker="w1",
                    status=status,
                    reason=reason,
                )
            )
        )


def test_failed_attempt_is_retried_then_fails_for_good():
    h = Harness(default_max_attempts=2)
    h.submit(id="t", prompt="x")
    a1 = h.assign()
    assert a1.attempt == 1 and h.s.tasks["t"].state == TaskState.running
    h.finish(a1, "failed", "gate failed")
    assert h.s.tasks["t"].state == TaskState.queued
    a2 = h.assign()
    assert a2.attempt == 2
    h.finish(a2, "failed", "gate failed again")
    rec = h.s.tasks["t"]
    assert rec.state == TaskState.failed and rec.reason == "gate failed again"
    assert h.s.finished == ["t"]


def test_priority_decides_assignment_and_success_is_terminal():
    h = Harness()
    h.submit(id="a", prompt="x")
    h.submit(id="b", prompt="x", priority=9)
    first = h.assign()
    assert first.task.id == "b"
    h.finish(first, "succeeded")
    assert h.s.tasks["b"].state == TaskState.succeeded
    # A late duplicate result changes nothing: no task succeeds twice.
    h.finish(first, "succeeded")
    assert [e.type for e in h.log].count(EventType.task_succeeded) == 1


def test_replaying_the_log_rebuilds_the_same_state():
    h = Harness(default_max_attempts=3)
    h.submit(id="a", prompt="x")
    h.submit(id="b", prompt="x")
    a = h.assign()
    h.finish(a, "failed", "boom")
    b = h.assign()
    h.record(h.s.worker_lost("w1", b.task.id, "killed"))
    replayed = Scheduler(FleetConfig(), FleetSettings(default_max_attempts=3))
    for e in h.log:
        replayed.apply(e)
    for tid in ("a", "b"):
        live, again = h.s.tasks[tid], replayed.tasks[tid]
        assert (live.state, live.attempts, live.seq) == (again.state, again.attempts, again.seq)
    assert replayed.queue.ids() == h.s.queue.ids()


def test_worker_loss_does_not_use_up_an_attempt():
    h = Harness(default_max_attempts=1)
    h.submit(id="t", prompt="x")
    h.assign()
    h.record(h.s.worker_lost("w1", "t", "node died"))
    assert h.s.tasks["t"].state == TaskState.queued
    again = h.assign("w2")
    assert again.attempt == 1  # still the first attempt: the crash was not the agent's fault


def test_submit_rejects_duplicates_and_unknown_names():
    h = Harness()
    h.submit(id="t", prompt="x")
    with pytest.raises(TaskRejected, match="already exists"):
        h.s.submit(TaskSpec(id="t", prompt="x"))
    with pytest.raises(TaskRejected) as info:
        h.s.submit(TaskSpec(id="u", prompt="x", environment="gpu"))
    assert info.value.field == "environment"


def test_cancel_ends_a_queued_task():
    h = Harness()
    h.submit(id="t", prompt="x")
    h.record(h.s.cancel("t"))
    assert h.s.tasks["t"].state == TaskState.cancelled
    assert h.s.assign("w1") is None
