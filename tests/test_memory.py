"""Memory of past runs, over a real event log read with DuckDB (no Ray needed)."""

from datetime import UTC, datetime, timedelta

from actors.memory import Memory
from core.eventlog import EventLog
from core.events import Event, EventType
from core.settings import FleetSettings
from core.specs import TaskSpec


def history(root: str, runs: list[tuple[str, str, list[str], bool, float]]) -> None:
    """Write finished tasks: (task id, agent, labels, succeeded, duration in seconds)."""
    log = EventLog(root, writer="history")
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for task_id, agent, labels, ok, duration in runs:
        end = start + timedelta(seconds=duration)
        final = EventType.task_succeeded if ok else EventType.task_failed
        log.append(
            [
                Event(task_id=task_id, seq=0, ts=start, type=EventType.task_submitted,
                      payload={"task": {"labels": labels}}),
                Event(task_id=task_id, seq=1, ts=start, type=EventType.task_assigned, attempt=1,
                      payload={"agent": agent}),
                Event(task_id=task_id, seq=2, ts=end, type=final, attempt=1),
            ]
        )  # fmt: skip
    log.close()


def test_the_agent_with_the_best_record_is_picked_with_its_reason(tmp_path):
    root = str(tmp_path)
    runs = [(f"a{i}", "sloppy", ["x"], i == 0, 1.0) for i in range(4)]
    runs += [(f"b{i}", "careful", ["x"], True, 2.0) for i in range(4)]
    history(root, runs)
    memory = Memory(FleetSettings(memory_min_runs=3))
    assert memory.refresh(root)
    plan, decisions = memory.plan(TaskSpec(prompt="p", agents=["sloppy", "careful"]))
    assert plan["agent"] == "careful"
    why = next(d for d in decisions if d.what == "agent")
    assert "100% of 4 runs" in why.reason
    # With too little history for either, the first listed is kept, and said so.
    plan, decisions = Memory(FleetSettings(memory_min_runs=10)).plan(
        TaskSpec(prompt="p", agents=["sloppy", "careful"])
    )
    assert plan["agent"] == "sloppy" and "no history" in decisions[0].reason


def test_a_label_that_keeps_failing_goes_to_a_person_after_one_try(tmp_path):
    root = str(tmp_path)
    runs = [(f"f{i}", "default", ["flaky"], False, 1.0) for i in range(5)]
    runs += [(f"g{i}", "default", ["fine"], True, 1.0) for i in range(5)]
    history(root, runs)
    memory = Memory(FleetSettings(memory_min_runs=3, memory_escalate_below=0.2))
    memory.refresh(root)
    plan, decisions = memory.plan(TaskSpec(prompt="p", labels=["flaky"]))
    assert plan["max_attempts"] == 1
    assert any(
        d.what == "max_attempts" and "'flaky' succeeded 0% of 5" in d.reason for d in decisions
    )
    plan, _ = memory.plan(TaskSpec(prompt="p", labels=["fine"]))
    assert "max_attempts" not in plan
    plan, _ = memory.plan(TaskSpec(prompt="p", labels=["flaky"], max_attempts=3))
    assert "max_attempts" not in plan  # what the task says wins over history


def test_time_limit_and_expected_duration_come_from_the_label_history(tmp_path):
    root = str(tmp_path)
    history(root, [(f"s{i}", "default", ["slow"], True, 40.0 + i) for i in range(4)])
    memory = Memory(FleetSettings(memory_min_runs=3, default_time_limit_s=600))
    memory.refresh(root)
    plan, decisions = memory.plan(TaskSpec(prompt="p", labels=["slow"]))
    assert 40 <= plan["expected_s"] <= 43
    assert 120 <= plan["time_limit_s"] <= 130  # 3 x p95
    assert "3 x p95" in next(d.reason for d in decisions if d.what == "time_limit_s")
    plan, _ = memory.plan(TaskSpec(prompt="p", labels=["slow"], time_limit_s=5))
    assert "time_limit_s" not in plan


def test_the_agent_is_picked_by_its_record_on_the_tasks_labels(tmp_path):
    root = str(tmp_path)
    # "writer" is good at docs and bad at bugs; "fixer" the other way round; overall equal.
    runs = [(f"wd{i}", "writer", ["docs"], True, 1.0) for i in range(4)]
    runs += [(f"wb{i}", "writer", ["bug"], i == 0, 1.0) for i in range(4)]
    runs += [(f"fd{i}", "fixer", ["docs"], i == 0, 1.0) for i in range(4)]
    runs += [(f"fb{i}", "fixer", ["bug"], True, 1.0) for i in range(4)]
    history(root, runs)
    memory = Memory(FleetSettings(memory_min_runs=3))
    assert memory.refresh(root)
    assert memory.agents["writer"].success_rate == memory.agents["fixer"].success_rate
    agents = ["writer", "fixer"]
    for labels, best in ((["bug"], "fixer"), (["docs"], "writer")):
        plan, decisions = memory.plan(TaskSpec(prompt="p", agents=agents, labels=labels))
        why = next(d for d in decisions if d.what == "agent")
        assert plan["agent"] == best and f"on label(s) {labels[0]}" in why.reason
        assert "100% of 4 runs" in why.reason
    # A label history knows nothing about: the overall record, and the reason says so.
    plan, decisions = memory.plan(TaskSpec(prompt="p", agents=agents, labels=["infra"]))
    assert decisions[0].reason.startswith("no history on ['infra']: best record among")
    domains = {(r["label"], r["agent"]): r for r in memory.tables()["domains"]}
    assert domains[("bug", "fixer")]["success_rate"] == 1.0
    assert domains[("bug", "writer")]["success_rate"] == 0.25


def test_labels_that_stall_show_and_fleet_memory_says_why_it_decided(tmp_path):
    root = str(tmp_path)
    history(root, [(f"s{i}", "default", ["slow"], True, 1.0) for i in range(4)])
    log = EventLog(root, writer="stalls")
    for i in range(2):  # two of the four had a session stopped as stalled first
        log.append(
            [
                Event(task_id=f"s{i}", seq=5, type=EventType.session_ended, attempt=1,
                      payload={"status": "stopped", "reason": "stalled: no event for 300s"}),
            ]
        )  # fmt: skip
    log.append(
        [
            Event(task_id="s0", seq=6, type=EventType.memory_decision,
                  payload={"decision": "time_limit_s", "value": 30, "reason": "3 x p95"}),
        ]
    )  # fmt: skip
    log.close()
    memory = Memory(FleetSettings(memory_min_runs=3))
    assert memory.refresh(root)
    assert memory.labels["slow"].stall_rate == 0.5
    [latest] = memory.tables()["decisions"]
    assert (latest["task_id"], latest["decision"], latest["reason"]) == (
        "s0",
        "time_limit_s",
        "3 x p95",
    )
