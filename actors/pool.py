"""The supervisor's bookkeeping of its worker pool: which workers it has, the pool each
belongs to, their heartbeats, what each runs, and the wake-up idle workers wait on.

Plain: a worker's handle is opaque here (a Ray actor handle in the supervisor, anything in a
test); the supervisor makes and calls the handles.
"""

from __future__ import annotations

import asyncio
from typing import Any

from core.settings import FleetSettings, PoolSpec
from core.specs import EnvironmentSpec, FleetConfig


class WorkerPool:
    def __init__(self, life: str = "") -> None:
        self.workers: dict[str, Any] = {}
        """worker id -> its handle"""
        self.pools: dict[str, PoolSpec] = {}
        """worker id -> the pool it belongs to"""
        self.heartbeats: dict[str, float] = {}
        self.running: dict[str, str] = {}
        """worker id -> the task it runs"""
        self.finishing: dict[str, tuple[str, str]] = {}
        """worker id -> (task id, session id) of its session finishing behind the running
        one: still the worker's (lost with it) until its result comes"""
        self.reported: dict[str, bool] = {}
        """Session ids whose result came before the call that named them finishing."""
        self.session_started: dict[str, float] = {}
        """session id -> when it was assigned (the watchdog's clock for time limits)"""
        self.life = life
        """Suffix of this life's worker ids: a worker of a crashed life (still dying) that
        calls in is never mistaken for one of this life."""
        self.stopping = False
        self.work: asyncio.Condition | None = None
        """Idle workers wait on it; whatever queues work wakes them (``open`` makes it)."""
        self._count = 0

    def open(self) -> None:
        """Make the wake-up idle workers wait on (on the loop that serves them)."""
        self.work = asyncio.Condition()

    async def wake(self) -> None:
        """Wake every idle worker: with pools, not every one fits every task."""
        if self.work is not None:
            async with self.work:
                self.work.notify_all()

    def new_id(self) -> str:
        self._count += 1
        return f"w{self._count}{self.life}"

    def add(self, worker_id: str, handle: Any, pool: PoolSpec, now: float) -> None:
        self.workers[worker_id] = handle
        self.pools[worker_id] = pool
        self.heartbeats[worker_id] = now

    def remove(self, worker_id: str) -> tuple[PoolSpec | None, list[str]]:
        """Forget a worker that died: its pool (to replace it) and the tasks it held (the
        one it ran, the one finishing behind it)."""
        self.workers.pop(worker_id, None)
        self.heartbeats.pop(worker_id, None)
        finishing = self.finishing.pop(worker_id, None)
        running = self.running.pop(worker_id, None)
        held = [finishing[0]] if finishing else []
        return self.pools.pop(worker_id, None), held + ([running] if running else [])

    def free(self, worker_id: str, task_id: str) -> None:
        """The worker runs ``task_id`` no more (if it still did: not its next task)."""
        if self.running.get(worker_id) == task_id:
            del self.running[worker_id]

    def beat(self, worker_id: str, now: float) -> None:
        if worker_id in self.workers:
            self.heartbeats[worker_id] = now

    def worker_of(self, task_id: str) -> str | None:
        """The live worker running the task (or finishing its session), if any."""
        for worker, running in self.running.items():
            if running == task_id and worker in self.workers:
                return worker
        for worker, (finishing, _) in self.finishing.items():
            if finishing == task_id and worker in self.workers:
                return worker
        return None

    def idle(self, pinned: dict[str, str]) -> list[str]:
        """Workers running nothing and promised nothing (``pinned``: worker id -> task)."""
        return [w for w in self.workers if w not in self.running and w not in pinned]


def worker_options(settings: FleetSettings, pool: PoolSpec) -> dict[str, Any]:
    """How a worker of ``pool`` is placed (Ray actor options)."""
    resources = {**settings.worker_resources, **settings.pool_resources.get(pool.name, {})}
    num_cpus = settings.worker_num_cpus
    if settings.worker_strategy == "SPREAD":
        num_cpus = max(num_cpus, 0.001)  # Ray spreads only actors that ask for a resource
    return {
        "num_cpus": num_cpus,
        "resources": resources,  # e.g. {"docker": 1}: only nodes that offer it
        "scheduling_strategy": settings.worker_strategy,  # SPREAD: across nodes
    }


def prewarm_environments(config: FleetConfig, pool: PoolSpec) -> list[EnvironmentSpec]:
    """The environments a new worker of ``pool`` starts sandboxes of before it is asked."""
    names = pool.environments or ["default"]
    return [config.environments[n] for n in names if n in config.environments]
