import pytest

from actors.scheduler import Running, Scheduler, TaskQueue, TaskRejected
from core.events import Event, EventType
from core.records import SessionResult
from core.settings import FleetSettings
from core.specs import FleetConfig, TaskSpec, TaskState


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


def test_a_pop_looks_at_the_shapes_that_fit_not_at_every_blocked_task():
    q = TaskQueue()
    for i in range(10_000):  # a label at its limit: none of these may run
        q.push(f"blocked-{i}", 9, shape="busy-label")
    q.push("runnable-low", 0, shape="free")
    q.push("runnable-high", 1, shape="free")
    asked: list[str] = []

    def fits(task_id: str) -> bool:
        asked.append(task_id)
        return True

    assert q.pop(fits, lambda shape: shape == "free") == "runnable-high"
    assert asked == ["runnable-high"]  # no blocked task was looked at
    assert q.pop(fits, lambda shape: shape == "free") == "runnable-low"
    assert q.pop(fits, lambda shape: shape == "free") is None
    # Across shapes that fit, the order is still priority, then expected time, then age.
    q.push("later-same-priority", 9, shape="free")
    assert q.pop(lambda _: True, lambda _: True) == "blocked-0"
    assert q.pop(lambda t: t != "blocked-1", lambda _: True) == "blocked-2"
    assert len(q) == 10_000 - 2 + 1
    assert q.pop(only="later-same-priority", shape_fits=lambda s: s == "busy-label") is None
    assert q.pop(only="later-same-priority") == "later-same-priority"


def test_tasks_behind_a_label_limit_do_not_hold_up_others():
    h = Harness(label_limits={"gpu": 0})
    for i in range(50):
        h.submit(id=f"g{i}", prompt="x", labels=["gpu"], priority=5)
    h.submit(id="plain", prompt="x")
    assignment, _ = h.s.assign("w1")
    assert assignment is not None and assignment.task.id == "plain"
    assert h.s.assign("w1") is None and len(h.s.queue) == 50


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
            self.s.conclude(
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
    h = Harness(default_max_attempts=2, exhausted_state="failed", retry_backoff_s=0)
    h.submit(id="t", prompt="x")
    a1 = h.assign()
    assert a1.attempt == 1 and h.s.tasks["t"].state == TaskState.running
    h.finish(a1, "failed", "gate failed")
    assert h.s.tasks["t"].state == TaskState.queued
    a2 = h.assign()
    assert a2.attempt == 2
    h.finish(a2, "failed", "gate failed again")
    rec = h.s.tasks["t"]
    assert rec.state == TaskState.failed and rec.reason == "gate failed again (after 2 attempts)"
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


# -- issue 6: routing, limits, backoff, triage, stages, review --------------------------
from core.settings import PoolSpec  # noqa: E402
from harness.loop import SessionOutcome  # noqa: E402


def make(**settings):
    config = FleetConfig.model_validate(
        {"agents": {"coder": {}, "docs": {}, "rev": {}}, "environments": {"gpu": {}}}
    )
    h = Harness(**settings)
    h.s.config = config
    return h


def result_for(a, status="succeeded", reason="", **outcome):
    out = SessionOutcome(status=outcome.pop("outcome", "finished"), **outcome)
    return SessionResult(
        task_id=a.task.id,
        session_id=a.session_id,
        attempt=a.attempt,
        worker="w1",
        status=status,
        reason=reason,
        outcome=out,
    )


def test_a_pool_split_by_agent_takes_only_its_agents_tasks():
    h = make(pools=[{"name": "docs", "agents": ["docs"]}, {"name": "rest"}])
    h.submit(id="code", prompt="x", agent="coder")
    h.submit(id="write", prompt="x", agent="docs")
    docs_pool = PoolSpec(name="docs", agents=["docs"])
    got = h.s.assign("w1", docs_pool)
    assert got[0].task.id == "write" and got[0].agent.name == "docs"
    assert h.s.assign("w2", docs_pool) is None  # the coder's task is not for this pool
    assert h.s.assign("w3", PoolSpec(name="rest"))[0].task.id == "code"


def test_a_task_no_pool_takes_for_its_agent_is_refused_at_submit():
    h = make(pools=[{"name": "docs", "agents": ["docs"]}])
    with pytest.raises(TaskRejected, match="as agent 'coder'"):
        h.s.submit(TaskSpec(id="code", prompt="x", agent="coder"))
    with pytest.raises(TaskRejected, match="as agent 'coder'"):  # a later stage's agent too
        h.s.submit(
            TaskSpec(id="two", prompt="x", agent="docs", stages=[{"agent": "coder", "prompt": "y"}])
        )
    assert h.s.submit(TaskSpec(id="write", prompt="x", agent="docs")).task_id == "write"


def test_routing_by_required_labels_and_environment():
    h = make(pools=[{"name": "py", "labels": ["python"]}, {"name": "gpu", "environments": ["gpu"]}])
    h.submit(id="needs-py", prompt="x", requires=["python"])
    h.submit(id="on-gpu", prompt="x", environment="gpu")
    plain = PoolSpec(environments=["default"])
    py, gpu = PoolSpec(labels=["python"]), PoolSpec(environments=["gpu"])
    assert h.s.assign("w0", plain) is None  # nothing fits a pool without the label or env
    got = h.s.assign("w1", gpu)
    assert got[0].task.id == "on-gpu"
    got = h.s.assign("w2", py)
    assert got[0].task.id == "needs-py"
    with pytest.raises(TaskRejected, match="no worker pool"):
        h.s.submit(TaskSpec(id="nobody", prompt="x", requires=["rust"]))


def test_label_and_global_concurrency_limits():
    h = make(label_limits={"db": 1}, max_running=2)
    for i in range(3):
        h.submit(id=f"db{i}", prompt="x", labels=["db"])
    h.submit(id="other", prompt="x")
    first = h.assign()
    got = h.s.assign("w2", PoolSpec(), h.s.running([first.task.id]))
    assert got[0].task.id == "other"  # the second db task waits for the label's slot
    h.record([got[1]])
    both = h.s.running([first.task.id, "other"])
    assert h.s.assign("w3", PoolSpec(), both) is None  # global limit of 2
    assert (len(both), both.with_label("db"), both.with_label("web")) == (2, 1, 0)


def test_an_assignment_reads_the_running_tasks_labels_only_for_a_label_limit():
    asked: list[str] = []

    def labels_of(task_id: str) -> list[str]:
        asked.append(task_id)
        return ["db"] if task_id.startswith("db") else []

    running = [f"db{i}" for i in range(3)] + [f"r{i}" for i in range(300)]
    plain = make()
    plain.submit(id="t", prompt="x", labels=["db"])
    assert plain.s.assign("w1", PoolSpec(), Running(running, labels_of)) is not None
    assert asked == []  # no limit asks: nothing about the 303 running tasks is read
    limited = make(label_limits={"db": 3})
    for i in range(5):
        limited.submit(id=f"q{i}", prompt="x", labels=["db"])
    limited.submit(id="free", prompt="x")
    got = limited.s.assign("w1", PoolSpec(), Running(running, labels_of))
    assert got[0].task.id == "free"  # the db tasks wait for the label's slots
    assert sorted(asked) == sorted(running)  # each running task read once, for all 5 waiting


def test_backoff_delays_the_retry_and_feedback_reaches_the_next_prompt():
    h = make(retry_backoff_s=10, default_max_attempts=3)
    h.submit(id="t", prompt="do it")
    a = h.assign()
    res = result_for(a, "failed", "gate failed (exit 1)")
    res.feedback = "assert 2 == 3"
    h.record(h.s.conclude(res, now=1000.0))
    rec = h.s.tasks["t"]
    assert rec.state == TaskState.queued and rec.not_before == 1010.0
    assert h.s.assign("w1", now=1005.0) is None
    again = h.s.assign("w1", now=1011.0)[0]
    assert again.attempt == 2
    assert "Attempt 1 failed: gate failed (exit 1)" in again.prompt
    assert "assert 2 == 3" in again.prompt


def test_exhausted_attempts_go_to_a_human_with_a_brief():
    h = make(retry_backoff_s=0, default_max_attempts=2)
    h.submit(id="t", prompt="x")
    for reason in ("gate failed (exit 1)", "gate failed (exit 2)"):
        a = h.assign()
        h.record(
            [
                Event(
                    task_id="t",
                    type=EventType.session_ended,
                    attempt=a.attempt,
                    payload={"outcome": "finished", "reason": reason, "agent": "default"},
                )
            ]
        )
        h.record(h.s.conclude(result_for(a, "failed", reason)))
    rec = h.s.tasks["t"]
    assert rec.state == TaskState.needs_human
    brief = h.log[-1].payload["brief"]
    assert len(brief) == 2 and "exit 1" in brief[0] and "exit 2" in brief[1]


def test_stages_hand_the_workspace_to_the_next_agent():
    h = make()
    h.submit(
        id="t",
        prompt="code it",
        agent="coder",
        stages=[{"agent": "docs", "prompt": "document it", "gate": "test -f README"}],
    )
    first = h.assign()
    assert first.agent.name == "coder" and first.keep_workspace and first.stage == 0
    h.record(h.s.conclude(result_for(first, summary="coded")))
    rec = h.s.tasks["t"]
    assert rec.state == TaskState.queued and rec.stage == 1 and rec.agent == "docs"
    second = h.assign()
    assert second.agent.name == "docs" and second.prompt.startswith("document it")
    assert second.gate == "test -f README" and not second.keep_workspace
    assert second.attempt == 1  # attempts count per stage
    h.record(h.s.conclude(result_for(second)))
    assert h.s.tasks["t"].state == TaskState.succeeded


def test_agent_handoff_and_unknown_target():
    h = make()
    h.submit(id="t", prompt="x", agent="coder")
    a = h.assign()
    h.record(
        h.s.conclude(
            result_for(
                a, outcome="handoff", handoff_to="docs", handoff_note="code done, write docs"
            )
        )
    )
    b = h.assign()
    assert b.agent.name == "docs" and "code done, write docs" in b.prompt
    h.record(h.s.conclude(result_for(b, outcome="handoff", handoff_to="ghost")))
    assert h.s.tasks["t"].reason.startswith("handoff to unknown agent")


def test_human_review_approves_or_sends_back():
    h = make(retry_backoff_s=0)
    h.submit(id="t", prompt="x", require_approval=True)
    a = h.assign()
    h.record(h.s.conclude(result_for(a, summary="done")))
    assert h.s.tasks["t"].state == TaskState.awaiting_review
    h.record(h.s.review("t", approve=False, message="use a list"))
    rec = h.s.tasks["t"]
    assert rec.state == TaskState.queued
    again = h.assign()
    assert "use a list" in again.prompt
    h.record(h.s.conclude(result_for(again, summary="done again")))
    h.record(h.s.review("t", approve=True))
    assert h.s.tasks["t"].state == TaskState.succeeded
    assert h.s.review("t", approve=True) == []  # nothing to review any more


def test_followups_become_linked_tasks():
    h = make()
    h.submit(id="p", prompt="x")
    a = h.assign()
    h.record(h.s.conclude(result_for(a, followups=[{"prompt": "write tests", "labels": ["t"]}])))
    child = h.s.tasks["p.f1"]
    assert child.spec.parent == "p" and child.state == TaskState.queued
    assert h.s.tasks["p"].children == ["p.f1"]


def test_parked_task_resumes_with_its_decision():
    h = make()
    h.submit(id="t", prompt="x")
    a = h.assign()
    h.record(
        [
            Event(
                task_id="t",
                type=EventType.approval_requested,
                payload={"call_id": "c1", "tool": "shell", "args": {"command": "rm -rf x"}},
            )
        ]
    )
    h.record(h.s.conclude(result_for(a, "failed", outcome="parked", state={"turns": 1})))
    rec = h.s.tasks["t"]
    assert rec.state == TaskState.awaiting_approval
    assert h.s.assign("w1") is None  # a parked task holds no worker and is not queued
    h.record(
        [
            Event(
                task_id="t",
                type=EventType.approval_decided,
                payload={"call_id": "c1", "allow": True, "message": "ok"},
            )
        ]
    )
    h.record(h.s.unpark("t"))
    resumed = h.assign()
    assert resumed.attempt == 1  # the same attempt, continued
    assert resumed.decision == {"call_id": "c1", "allow": True, "message": "ok"}


def test_a_queued_task_whose_spec_is_gone_fails_with_the_reason_and_the_next_one_runs():
    h = Harness()
    h.s.config.agents["temp"] = h.s.config.agents["default"].model_copy(update={"name": "temp"})
    h.s.config.environments["gpu"] = h.s.config.environments["default"].model_copy(
        update={"name": "gpu"}
    )
    h.submit(id="agentless", prompt="x", agent="temp", priority=2)
    h.submit(id="envless", prompt="x", environment="gpu", priority=1)
    h.submit(id="fine", prompt="x")
    del h.s.config.agents["temp"]  # archived while the tasks waited
    del h.s.config.environments["gpu"]
    for task_id, what in (("agentless", "agent 'temp'"), ("envless", "environment 'gpu'")):
        assignment, event = h.s.assign("w1")
        assert assignment is None and event.task_id == task_id
        assert event.type == EventType.task_failed
        assert event.payload["reason"] == f"cannot run: {what} no longer exists"
        h.record([event])
        assert h.s.tasks[task_id].state == TaskState.failed
    assert h.assign().task.id == "fine"  # never the default agent instead of the lost one


def test_a_reviewer_that_is_gone_fails_the_task_rather_than_skipping_the_review():
    h = Harness()
    h.s.config.agents["critic"] = h.s.config.agents["default"].model_copy(update={"name": "critic"})
    h.submit(id="t", prompt="x", reviewer="critic")
    del h.s.config.agents["critic"]
    assignment, event = h.s.assign("w1")
    assert assignment is None and "reviewer agent 'critic'" in event.payload["reason"]


def test_an_id_from_the_logs_history_is_refused():
    h = Harness()
    h.s.taken_ids = {"old"}
    with pytest.raises(TaskRejected, match="already exists") as caught:
        h.submit(id="old", prompt="x")
    assert caught.value.field == "id"
    h.submit(id="new", prompt="x")


def test_max_running_zero_pauses_the_fleet():
    h = make(max_running=0)
    h.submit(id="held", prompt="x")
    assert h.s.assign("w1", PoolSpec(), []) is None
    assert [r.id for r in h.s.tasks.records() if r.state == TaskState.queued] == ["held"]


def test_a_refused_followup_is_recorded_with_the_field_at_fault():
    h = Harness()
    h.submit(id="p", prompt="x")
    h.submit(id="taken", prompt="x")
    a = h.assign()
    requests = [
        {"prompt": "ok"},
        {"prompt": "bad", "priority": "high"},
        {"id": "taken", "prompt": "y"},
    ]
    outcome = SessionOutcome(status="finished", followups=requests)
    h.record(
        h.s.conclude(
            SessionResult(
                task_id="p",
                session_id=a.session_id,
                attempt=a.attempt,
                worker="w1",
                status="succeeded",
                outcome=outcome,
            )
        )
    )
    noted = [e.payload for e in h.log if e.type == EventType.task_followup]
    assert noted[0] == {"child": "p.f1", "prompt": "ok"}
    assert noted[1]["error"].startswith("priority: Input should be a valid integer")
    assert noted[2]["error"] == "task taken: id: a task with this id already exists"


def _submitted(sched: Scheduler, spec: TaskSpec, seq: int = 0) -> None:
    event = sched.submit(spec)
    event.seq = seq
    sched.apply(event)


def test_passive_events_change_only_the_seq_and_last_event_of_their_task():
    from actors.scheduler import PASSIVE_EVENTS

    sched = Scheduler(FleetConfig(), FleetSettings(memory=False))
    _submitted(sched, TaskSpec(id="t1", prompt="x"))
    record = sched.tasks["t1"]
    for seq, kind in enumerate(sorted(PASSIVE_EVENTS), start=1):
        before = record.model_dump()
        sched.apply(Event(task_id="t1", type=kind, seq=seq, payload={"call_id": "c"}))
        after = record.model_dump()
        changed = {k for k in after if after[k] != before[k]}
        assert changed <= {"seq", "last_event_at", "last_event"}, (kind, changed)
        assert record.seq == seq and record.last_event == kind.value
    # Every other kind of a task's event is one the fold looks at (a new case is not skipped).
    assert EventType.agent_tool_result not in PASSIVE_EVENTS
    assert EventType.user_message not in PASSIVE_EVENTS


def test_tasks_pinned_to_the_same_versions_share_them_and_a_handoff_copies_before_pinning():
    sched = Scheduler(FleetConfig(), FleetSettings(memory=False))
    _submitted(sched, TaskSpec(id="a", prompt="x"))
    _submitted(sched, TaskSpec(id="b", prompt="x"))
    a, b = sched.tasks["a"], sched.tasks["b"]
    assert a.versions == {"agent": {"default": 1}, "environment": {"default": 1}}
    assert a.versions is b.versions  # one dict for the queue, not one per task
    handoff = Event(
        task_id="a",
        type=EventType.handoff,
        seq=1,
        payload={"to_agent": "reviewer", "to_version": 3, "stage": 0},
    )
    sched.apply(handoff)
    assert a.versions["agent"] == {"default": 1, "reviewer": 3}
    assert b.versions == {"agent": {"default": 1}, "environment": {"default": 1}}
    again = handoff.model_copy(
        update={"seq": 2, "payload": {"to_agent": "reviewer", "to_version": 9}}
    )
    sched.apply(again)  # pinned once: a later handoff to it keeps the first version
    assert a.versions["agent"]["reviewer"] == 3
