"""The manager agent: an optional routing policy where an LLM makes the assignment and triage
calls, through the same harness as the coding agents (``routing: manager``).

A round shows the agent the queue and the workers through tools; what it decides is only
collected (:class:`ManagerRound`), then applied by :class:`Manager`, which checks each call
against the rules that always hold (a worker must be idle and fit the task; a task must be
queued). :class:`Manager` is plain: it reaches the fleet through the callables it is given.

| tool | effect |
| --- | --- |
| ``list_tasks(state, limit)`` | the tasks in a state, highest priority first |
| ``list_workers()`` | each worker: pool, skills, idle or the task it runs |
| ``assign_task(task_id, worker_id)`` | that idle worker takes that queued task next |
| ``update_status(task_id, status, note)`` | send a task to a person, or cancel it |
| ``create_task(prompt, labels, priority, requires)`` | add a task to the queue |
| ``finish(summary)`` | end the round |
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from actors.pool import WorkerPool
from actors.scheduler import Scheduler
from core.events import Event, EventType
from core.settings import FleetSettings
from core.specs import AgentSpec, FleetConfig
from harness.loop import AgentLoop
from harness.models import ModelClient, close_model, make_model
from harness.tools import Tool, ToolBox, ToolContext, ToolOutput, tool
from sandboxes.local import LocalSandbox

log = logging.getLogger("fleet.supervisor")

VIEW_LIMIT = 200
"""Most tasks a round is shown, and most characters of each prompt."""

MANAGER_INSTRUCTIONS = (
    "You manage a fleet of coding agents. Look at the queued tasks and the idle workers, "
    "assign tasks to idle workers that fit them (most valuable first), send tasks that "
    "cannot succeed to a person with update_status, then call finish. Only idle workers "
    "can take a task."
)


@dataclass
class ManagerRound:
    """What one round of the manager saw and decided."""

    tasks: list[dict[str, Any]]
    workers: list[dict[str, Any]]
    assignments: dict[str, str] = field(default_factory=dict)
    """worker id -> task id"""
    updates: list[tuple[str, str, str]] = field(default_factory=list)
    created: list[dict[str, Any]] = field(default_factory=list)

    def toolbox(self) -> ToolBox:
        tasks = {t["task_id"]: t for t in self.tasks}
        workers = {w["worker_id"]: w for w in self.workers}

        @tool
        async def list_tasks(
            ctx: ToolContext, state: str = "queued", limit: int = 50
        ) -> ToolOutput:
            """The fleet's tasks in a state (queued, running, needs_human...)."""
            rows = [t for t in self.tasks if t["state"] == state][:limit]
            return ToolOutput(text=json.dumps(rows) if rows else f"no {state} tasks")

        @tool
        async def list_workers(ctx: ToolContext) -> ToolOutput:
            """The workers: pool, skills, and whether they are idle."""
            return ToolOutput(text=json.dumps(self.workers))

        @tool
        async def assign_task(ctx: ToolContext, task_id: str, worker_id: str) -> ToolOutput:
            """Give a queued task to an idle worker."""
            task, worker = tasks.get(task_id), workers.get(worker_id)
            if task is None or task["state"] != "queued":
                return ToolOutput(text=f"error: {task_id} is not a queued task", is_error=True)
            if worker is None or not worker["idle"] or worker_id in self.assignments:
                return ToolOutput(text=f"error: {worker_id} is not an idle worker", is_error=True)
            if task_id in self.assignments.values():
                return ToolOutput(text=f"error: {task_id} is assigned already", is_error=True)
            if not set(task["requires"]) <= set(worker["labels"]):
                missing = sorted(set(task["requires"]) - set(worker["labels"]))
                return ToolOutput(text=f"error: {worker_id} lacks {missing}", is_error=True)
            self.assignments[worker_id] = task_id
            return ToolOutput(text=f"{task_id} -> {worker_id}")

        @tool
        async def update_status(
            ctx: ToolContext,
            task_id: str,
            status: Literal["needs_human", "cancelled"],
            note: str,
        ) -> ToolOutput:
            """Send a task to a person (needs_human) or cancel it, saying why."""
            if task_id not in tasks:
                return ToolOutput(text=f"error: no task {task_id}", is_error=True)
            self.updates.append((task_id, status, note))
            return ToolOutput(text=f"{task_id}: {status}")

        @tool
        async def create_task(
            ctx: ToolContext,
            prompt: str,
            labels: list[str] | None = None,
            priority: int = 0,
            requires: list[str] | None = None,
        ) -> ToolOutput:
            """Add a new task to the queue."""
            spec = {
                "prompt": prompt,
                "labels": labels or [],
                "priority": priority,
                "requires": requires or [],
            }
            self.created.append(spec)
            return ToolOutput(text="task created")

        @tool
        async def finish(ctx: ToolContext, summary: str = "") -> ToolOutput:
            """End this round."""
            return ToolOutput(text="round over", final=True, data={"summary": summary})

        registry: dict[str, Tool] = {
            t.name: t
            for t in (list_tasks, list_workers, assign_task, update_status, create_task, finish)
        }
        return ToolBox(list(registry), registry)

    def prompt(self) -> str:
        idle = sum(w["idle"] for w in self.workers)
        queued = sum(t["state"] == "queued" for t in self.tasks)
        return f"{queued} tasks are queued and {idle} workers are idle. Decide this round."


Record = Callable[[list[Event]], Awaitable[None]]
Submit = Callable[[list[dict[str, Any]], str], Awaitable[Any]]
StopSession = Callable[[str, str | None, str], None]
"""``(worker_id, session_id, reason)``: stop that worker's session."""


class Manager:
    """Runs manager rounds (``routing: manager``): one at a time, another right after when
    asked while one runs. What a round decides becomes events (``record``), pins (the task
    a worker takes next, see ``pins``), stopped sessions (``stop``) and new tasks
    (``submit``). A failing agent leaves routing to the rules for ``manager_backoff_s``."""

    def __init__(
        self,
        settings: FleetSettings,
        config: FleetConfig,
        sched: Scheduler,
        pool: WorkerPool,
        record: Record,
        submit: Submit,
        stop: StopSession,
        models: Callable[[AgentSpec], ModelClient] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.config = config
        self.sched = sched
        self.pool = pool
        self.record = record
        self.submit = submit
        self.stop = stop
        self.models = models or (lambda agent: make_model(agent, settings=settings))
        self.clock = clock
        self.pins: dict[str, str] = {}
        """worker id -> the task the manager agent gave it"""
        self.down_until = 0.0
        self._round: asyncio.Task[None] | None = None
        self._again = False

    def routes(self) -> bool:
        """Does the manager agent route now (else the rules do)?"""
        return self.settings.routing == "manager" and self.clock() >= self.down_until

    def request(self) -> None:
        """Start a round, or ask for another once the running one ends."""
        if self._round is not None and not self._round.done():
            self._again = True
            return
        self._again = False
        self._round = asyncio.create_task(self._run())

    async def _run(self) -> None:
        await self.run_round()
        if self._again:
            self._round = None
            self.request()

    async def run_round(self) -> None:
        """One round, when a worker is idle and a task queued: decide, then apply."""
        if not self.pool.idle(self.pins) or not len(self.sched.queue):
            return
        round_ = ManagerRound(tasks=self.task_views(), workers=self.worker_views())
        await self.decide(round_)
        await self.apply(round_)

    async def decide(self, round_: ManagerRound) -> None:
        """Run the manager agent on the round. A manager that cannot decide must not stall
        the fleet: its calls are dropped and the rules route for a while."""
        agent = self.config.agents.get(self.settings.manager_agent)
        try:
            if agent is None:
                raise ValueError(f"no agent named {self.settings.manager_agent!r}")
            model = self.models(agent)
            loop = AgentLoop(
                instructions=f"{agent.instructions}\n\n{MANAGER_INSTRUCTIONS}",
                model=model,
                toolbox=round_.toolbox(),
                ctx=ToolContext(sandbox=LocalSandbox()),  # the manager's tools run no commands
                emit=lambda *_a, **_k: None,
                max_turns=agent.max_turns or self.settings.manager_max_turns,
                time_limit_s=self.settings.manager_time_limit_s,
            )
            outcome = await loop.run(round_.prompt())
            await close_model(model)
            if outcome.status != "finished" and not round_.assignments:
                raise RuntimeError(outcome.reason or outcome.status)
        except Exception as exc:
            backoff = self.settings.manager_backoff_s
            log.warning("manager agent failed (%s); the rules route for %gs", exc, backoff)
            self.down_until = self.clock() + backoff
            round_.assignments.clear()

    def plan(self, round_: ManagerRound) -> tuple[list[Event], list[tuple[str, str]]]:
        """Pin the round's assignments; return its events and the ``(worker, task)``
        sessions to stop (of tasks it ended). Updates of tasks that ended meanwhile are
        dropped."""
        events: list[Event] = []
        for worker, task_id in round_.assignments.items():
            self.pins[worker] = task_id
            payload = {"action": "assign", "worker": worker}
            events.append(Event(task_id=task_id, type=EventType.manager_decision, payload=payload))
        stop: list[tuple[str, str]] = []
        for task_id, status, note in round_.updates:
            if self.sched.tasks[task_id].state.terminal:
                continue
            worker = self.pool.worker_of(task_id)
            if worker is not None:
                stop.append((worker, task_id))
            kind = EventType.task_cancelled if status == "cancelled" else EventType.task_needs_human
            reason = f"manager: {note}"
            events.append(
                Event(
                    task_id=task_id,
                    type=EventType.manager_decision,
                    payload={"action": status, "reason": reason},
                )
            )
            events.append(Event(task_id=task_id, type=kind, payload={"reason": reason}))
        return events, stop

    async def apply(self, round_: ManagerRound) -> None:
        """Record what the round decided, stop the sessions of the tasks it ended, submit
        the tasks it created, wake the workers."""
        events, stop = self.plan(round_)
        await self.record(events)
        for worker, task_id in stop:  # its session must not go on once the task is ended
            session_id = self.sched.tasks[task_id].session_id
            self.stop(worker, session_id, "ended by the manager agent")
        if round_.created:
            await self.submit(round_.created, "manager")
        await self.pool.wake()

    def task_views(self) -> list[dict[str, Any]]:
        """What the agent is shown of the live tasks, highest priority first."""
        live = [r for r in self.sched.tasks.records() if not r.state.terminal]
        live.sort(key=lambda r: -r.spec.priority)
        return [
            {
                "task_id": r.id,
                "state": r.state.value,
                "prompt": r.spec.prompt[:VIEW_LIMIT],
                "priority": r.spec.priority,
                "labels": r.spec.labels,
                "requires": r.spec.requires,
                "attempts": r.attempts,
                "reason": r.reason,
                "expected_s": r.plan.get("expected_s"),
            }
            for r in live[:VIEW_LIMIT]
        ]

    def worker_views(self) -> list[dict[str, Any]]:
        """What the agent is shown of the workers."""
        pool = self.pool
        return [
            {
                "worker_id": w,
                "pool": pool.pools[w].name,
                "labels": pool.pools[w].labels,
                "idle": w not in pool.running and w not in self.pins,
                "task": pool.running.get(w),
            }
            for w in pool.workers
        ]
