"""The watchdog's decisions as plain functions of the state and the clock (no Ray)."""

from datetime import UTC, datetime

from actors.pool import WorkerPool
from actors.scheduler import Scheduler
from actors.watchdog import ReapClock, overdue, sessions_to_stop, silent_workers
from core.records import TaskRecord
from core.settings import FleetSettings, PoolSpec
from core.specs import FleetConfig, TaskSpec, TaskState

NOW = 1_000_000.0


def running(task_id: str, last_event_s_ago: float, **spec: object) -> TaskRecord:
    return TaskRecord(
        id=task_id,
        spec=TaskSpec(id=task_id, prompt="x", **spec),
        state=TaskState.running,
        session_id=f"s-{task_id}",
        last_event_at=datetime.fromtimestamp(NOW - last_event_s_ago, UTC),
    )


def test_a_silent_session_is_stalled_by_its_own_timeout_or_the_fleets() -> None:
    settings = FleetSettings(stall_timeout_s=300)
    assert overdue(running("t", 299), NOW, NOW, settings) is None
    assert overdue(running("t", 301), NOW, NOW, settings) == (
        "stalled: no event for 301s (stall timeout 300s)"
    )
    own = running("t", 61, stall_timeout_s=60)
    assert overdue(own, NOW, NOW, settings) == "stalled: no event for 61s (stall timeout 60s)"


def test_the_time_limit_gets_the_grace_before_the_session_is_stopped() -> None:
    settings = FleetSettings(default_time_limit_s=100, watchdog_grace_s=30)
    record = running("t", 0)
    assert overdue(record, NOW - 129, NOW, settings) is None
    assert overdue(record, NOW - 131, NOW, settings) == "time limit of 100s passed"
    planned = record.model_copy(update={"plan": {"time_limit_s": 10}})
    assert overdue(planned, NOW - 41, NOW, settings) == "time limit of 10s passed"
    no_grace = FleetSettings(default_time_limit_s=100, watchdog_grace_s=0)
    assert overdue(record, NOW - 101, NOW, no_grace) == "time limit of 100s passed"


def test_only_sessions_of_live_workers_are_stopped() -> None:
    settings = FleetSettings(stall_timeout_s=10)
    sched = Scheduler(FleetConfig(), settings)
    pool = WorkerPool()
    for n, silent in ((1, 60), (2, 1), (3, 60)):
        task_id = f"t{n}"
        sched.tasks[task_id] = running(task_id, silent)
        pool.running[f"w{n}"] = task_id
        pool.session_started[f"s-{task_id}"] = NOW
    pool.add("w1", object(), PoolSpec(), NOW)
    pool.add("w2", object(), PoolSpec(), NOW)  # w3 died: its task is requeued elsewhere
    [stop] = sessions_to_stop(sched, pool, NOW, settings)
    assert (stop.worker_id, stop.task_id, stop.session_id) == ("w1", "t1", "s-t1")
    assert stop.reason.startswith("stalled")


def test_workers_without_heartbeats_are_named_once_then_their_clock_restarts() -> None:
    pool = WorkerPool()
    pool.add("w1", object(), PoolSpec(), NOW - 61)
    pool.add("w2", object(), PoolSpec(), NOW - 10)
    pool.heartbeats["gone"] = NOW - 100  # not a live worker
    assert silent_workers(pool, NOW, 60) == ["w1"]
    assert pool.heartbeats["w1"] == NOW
    assert silent_workers(pool, NOW + 1, 60) == []


def test_the_head_reaps_once_per_interval() -> None:
    clock = ReapClock(NOW, 60)
    assert not clock.due(NOW + 60)
    assert clock.due(NOW + 61)
    assert not clock.due(NOW + 62)
    assert clock.due(NOW + 122)
