"""The manager agent: an optional routing policy where an LLM makes the assignment and triage
calls, through the same harness as the coding agents (``routing: manager``).

A round shows the agent the queue and the workers through tools; what it decides is only
collected here, then applied by the supervisor, which checks each call against the rules
that always hold (a worker must be idle and fit the task; a task must be queued).

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

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from harness.tools import Tool, ToolBox, ToolContext, ToolOutput, tool

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
