"""The manager agent's rounds as a plain class (no Ray): a scripted model decides, the
round's calls become events, pins, stopped sessions and new tasks."""

import asyncio
from typing import Any

from actors.manager import Manager
from actors.pool import WorkerPool
from actors.scheduler import Scheduler
from core.events import Event, EventType
from core.settings import FleetSettings, PoolSpec
from core.specs import AgentSpec, FleetConfig, ScriptStep, TaskSpec, TaskState
from harness.models import ModelClient, ScriptedModel

NOW = 1_000.0


class Fleet:
    """A scheduler with tasks and a pool of two workers, the second running ``busy``."""

    def __init__(self, steps: list[tuple[str, dict[str, Any]]] | None, **settings: Any) -> None:
        self.settings = FleetSettings(routing="manager", manager_backoff_s=60, **settings)
        self.sched = Scheduler(FleetConfig(), self.settings)
        self.pool = WorkerPool()
        self.recorded: list[Event] = []
        self.submitted: list[tuple[list[dict[str, Any]], str]] = []
        self.stopped: list[tuple[str, str | None, str]] = []
        self.now = NOW
        script = [ScriptStep(tool=t, args=a) for t, a in steps or []]

        def models(agent: AgentSpec) -> ModelClient:
            if steps is None:
                raise RuntimeError("model unreachable")
            return ScriptedModel(script)

        self.manager = Manager(
            self.settings,
            FleetConfig.model_validate({"agents": {"manager": {}}}),
            self.sched,
            self.pool,
            self.record,
            self.submit,
            lambda *stop: self.stopped.append(stop),
            models=models,
            clock=lambda: self.now,
        )
        for task_id, priority in (("busy", 0), ("high", 9), ("low", 0), ("doomed", 0)):
            self.apply([self.sched.submit(TaskSpec(id=task_id, prompt="x", priority=priority))])
        self.pool.add("w1", object(), PoolSpec(name="general"), NOW)
        self.pool.add("w2", object(), PoolSpec(name="general"), NOW)
        got = self.sched.assign("w2", only="busy")
        assert got is not None
        self.apply([got[1]])
        self.pool.running["w2"] = "busy"

    def apply(self, events: list[Event]) -> None:
        for event in events:
            known = self.sched.tasks.get(event.task_id)
            event.seq = known.seq + 1 if known else 0
            self.sched.apply(event)

    async def record(self, events: list[Event]) -> None:
        self.apply(events)
        self.recorded.extend(events)

    async def submit(self, tasks: list[dict[str, Any]], batch: str) -> None:
        self.submitted.append((tasks, batch))


def test_a_round_pins_assignments_ends_tasks_and_creates_new_ones() -> None:
    fleet = Fleet(
        [
            ("list_tasks", {}),
            ("assign_task", {"task_id": "low", "worker_id": "w1"}),
            ("assign_task", {"task_id": "high", "worker_id": "w2"}),  # refused: w2 is busy
            ("update_status", {"task_id": "busy", "status": "cancelled", "note": "duplicate"}),
            ("update_status", {"task_id": "doomed", "status": "needs_human", "note": "no spec"}),
            ("create_task", {"prompt": "write a spec", "labels": ["spec"]}),
            ("finish", {"summary": "low first"}),
        ]
    )
    views = {w["worker_id"]: w for w in fleet.manager.worker_views()}
    assert views["w1"]["idle"] and not views["w2"]["idle"] and views["w2"]["task"] == "busy"
    assert fleet.manager.task_views()[0]["task_id"] == "high"
    asyncio.run(fleet.manager.run_round())
    assert fleet.manager.pins == {"w1": "low"}
    decisions = [
        (e.task_id, e.payload) for e in fleet.recorded if e.type == EventType.manager_decision
    ]
    assert decisions[0] == ("low", {"action": "assign", "worker": "w1"})
    assert fleet.sched.tasks["busy"].state == TaskState.cancelled
    assert fleet.sched.tasks["doomed"].state == TaskState.needs_human
    assert fleet.sched.tasks["doomed"].reason == "manager: no spec"
    session = fleet.sched.tasks["busy"].session_id
    assert fleet.stopped == [("w2", session, "ended by the manager agent")]
    assert fleet.submitted == [
        ([{"prompt": "write a spec", "labels": ["spec"], "priority": 0, "requires": []}], "manager")
    ]
    assert fleet.manager.routes()


def test_a_failing_manager_leaves_routing_to_the_rules_for_a_while() -> None:
    fleet = Fleet(None)
    assert fleet.manager.routes()
    asyncio.run(fleet.manager.run_round())
    assert fleet.recorded == [] and fleet.manager.pins == {}
    assert not fleet.manager.routes()
    fleet.now = NOW + 61
    assert fleet.manager.routes()


def test_no_round_without_an_idle_worker_or_a_queued_task() -> None:
    fleet = Fleet([("finish", {})])
    fleet.manager.pins["w1"] = "low"  # promised: not idle
    asyncio.run(fleet.manager.run_round())
    assert fleet.recorded == []


def test_a_round_asked_for_while_one_runs_follows_it() -> None:
    rounds: list[int] = []

    async def scenario() -> None:
        fleet = Fleet([("finish", {})] * 2)

        async def counted() -> None:
            rounds.append(len(rounds))
            await asyncio.sleep(0.01)

        fleet.manager.run_round = counted  # type: ignore[method-assign]
        fleet.manager.request()
        fleet.manager.request()  # while the first runs: one more after it
        fleet.manager.request()
        await asyncio.sleep(0.1)

    asyncio.run(scenario())
    assert rounds == [0, 1]
