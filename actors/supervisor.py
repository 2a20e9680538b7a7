"""The Supervisor actor: owns the queue, the worker pool and the event log.

It is the single writer of the log: every event, its own or a worker's, is numbered here
(``seq`` per task), applied to the scheduler's state and appended to the WAL before any call
that produced it is acknowledged. Decisions are made by :class:`actors.scheduler.Scheduler`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections import OrderedDict, deque
from itertools import islice
from typing import Any

import pyarrow.parquet as pq
import ray

from actors.artifacts import ArtifactStore
from actors.manager import MANAGER_INSTRUCTIONS, ManagerRound
from actors.memory import Memory
from actors.registry import Registry
from actors.scheduler import Scheduler, TaskRejected
from actors.status import fleet_status
from actors.worker import Worker
from core.eventlog import EventLog, partition_files
from core.events import Event, EventType
from core.records import Assignment, SessionResult, TaskRecord
from core.settings import FleetSettings, PoolSpec
from core.specs import FleetConfig, TaskSpec, TaskState
from harness.loop import AgentLoop
from harness.models import close_model, make_model
from harness.tools import ToolContext
from sandboxes.local import LocalSandbox

log = logging.getLogger("fleet.supervisor")

TERMINAL_EVENTS = {
    EventType.task_succeeded,
    EventType.task_failed,
    EventType.task_needs_human,
    EventType.task_cancelled,
}


IDLE_RECHECK_S = 5.0
"""An idle worker re-checks the queue this often even if no wake-up reached it."""


REAP_INTERVAL_S = 60.0
"""How often the head's containers of dead workers are looked for."""


def supervisor_name(fleet_name: str) -> str:
    return f"fleet-supervisor-{fleet_name}"


@ray.remote(num_cpus=0, max_restarts=-1, max_concurrency=10_000)
class Supervisor:
    def __init__(self, settings: FleetSettings, config: FleetConfig) -> None:
        self.settings = settings
        self.config = config
        self.sched = Scheduler(config, settings)
        self.registry = Registry(config)
        self.memory = Memory(settings)
        self.log = EventLog(
            settings.events_dir,
            settings.wal_dir,
            settings.compact_min_files,
            writer=settings.name,
            wal_fsync=settings.wal_fsync,
        )
        self.artifacts = ArtifactStore(
            settings.artifacts_dir or f"{settings.events_dir.rstrip('/')}/_artifacts"
        )
        self.workers: dict[str, Any] = {}
        self.pools: dict[str, PoolSpec] = {}
        """worker id -> the pool it belongs to"""
        self.heartbeats: dict[str, float] = {}
        self.running: dict[str, str] = {}
        """worker id -> task id it is running"""
        self._worker_count = 0
        self._stopping = False
        self._work: asyncio.Condition | None = None
        self._done: asyncio.Condition | None = None
        self._roll_lock: asyncio.Lock | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._starting: asyncio.Future[None] | None = None
        self._recent: OrderedDict[str, list[Event]] = OrderedDict()
        """Events of recently active tasks, for streams (the log has them all)."""
        self._arrived: asyncio.Condition | None = None
        self._session_started: dict[str, float] = {}
        self._pins: dict[str, str] = {}
        """worker id -> the task the manager agent gave it"""
        self._manager_round: asyncio.Task[None] | None = None
        self._manager_again = False
        self._manager_down_until = 0.0
        self.started_at = time.time()
        restarted = ray.get_runtime_context().was_current_actor_reconstructed
        self._life = f".{uuid.uuid4().hex[:4]}" if restarted else ""
        """Suffix of this life's worker ids: a worker of a crashed life (still dying) that
        calls in is never mistaken for one of this life."""
        self.recovered = 0
        if restarted or settings.resume:
            self.recovered = self._recover()
        self.sched.taken_ids = self._ids_in_history()
        self._stream: deque[Event] = deque(maxlen=settings.stream_events)
        """The latest events of every task, for the fleet-wide stream (``stream_since``)."""
        self._stream_next = self.recovered
        """Global index of the next event: the log's events (replayed) came before it."""
        if restarted:
            # After a crash nobody may call for a long time: bring the pool back now.
            ray.get_runtime_context().current_actor.start.remote()

    # -- life cycle --------------------------------------------------------------------
    async def start(self) -> dict[str, Any]:
        """Start the worker pool and the flush loop (idempotent). A caller that goes away
        (a client that disconnects) does not cancel the start it began."""
        if self._starting is None or (self._starting.done() and self._starting.exception()):
            self._starting = asyncio.ensure_future(self._start())
        await asyncio.shield(self._starting)
        return {"workers": len(self.workers), "recovered": self.recovered}

    async def _start(self) -> None:
        await self._reap_head()
        self._work = asyncio.Condition()
        self._done = asyncio.Condition()
        self._arrived = asyncio.Condition()
        self._roll_lock = asyncio.Lock()
        if self._stopping:  # shut down while starting: no pool to bring up
            return
        for pool in self.settings.pool_specs():
            for _ in range(pool.workers):
                self._spawn_worker(pool)
        # The pool is up when start returns: wait for every worker process.
        await asyncio.gather(*(w.pid.remote() for w in self.workers.values()))
        self._spawn(self._flush_loop())
        self._spawn(self._watch_loop())
        if self.settings.memory:
            await asyncio.to_thread(self.memory.refresh, self.settings.events_dir)
            self._spawn(self._memory_loop())
        wake = self.sched.next_wakeup(time.time())  # backoffs replayed from the log
        if wake is not None:
            self._wake_at(wake)
        async with self._work:
            self._work.notify_all()

    async def _reap_head(self) -> None:
        """Remove this node's sandbox containers whose worker died (each worker reaps its
        own node too, when it starts)."""
        if self.settings.sandbox != "docker":
            return
        from sandboxes.docker import reap_orphans

        try:
            reaped = await asyncio.to_thread(reap_orphans)
        except Exception as exc:  # no engine on the head: Docker only on worker nodes
            log.info("no orphan containers reaped on the head: %s", exc)
        else:
            if reaped:
                log.warning("removed %d containers left by dead workers", reaped)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _spawn_worker(self, pool: PoolSpec) -> None:
        self._worker_count += 1
        worker_id = f"w{self._worker_count}{self._life}"
        me = ray.get_runtime_context().current_actor
        names = pool.environments or ["default"]
        prewarm = [self.config.environments[n] for n in names if n in self.config.environments]
        resources = {
            **self.settings.worker_resources,
            **self.settings.pool_resources.get(pool.name, {}),
        }
        num_cpus = self.settings.worker_num_cpus
        if self.settings.worker_strategy == "SPREAD":
            num_cpus = max(num_cpus, 0.001)  # Ray spreads only actors that ask for a resource
        handle = Worker.options(
            num_cpus=num_cpus,
            resources=resources,  # e.g. {"docker": 1}: only nodes that offer it
            scheduling_strategy=self.settings.worker_strategy,  # SPREAD: across nodes
        ).remote(worker_id, me, self.settings, prewarm)
        self.workers[worker_id] = handle
        self.pools[worker_id] = pool
        self.heartbeats[worker_id] = time.time()
        self._spawn(self._watch(worker_id, handle))

    async def _watch(self, worker_id: str, handle: Any) -> None:
        """Await the worker's main loop; if the worker dies, requeue its task and replace it."""
        try:
            await handle.run.remote()
            return
        except Exception as exc:
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        self.workers.pop(worker_id, None)
        self.heartbeats.pop(worker_id, None)
        pool = self.pools.pop(worker_id)
        task_id = self.running.pop(worker_id, None)
        if self._stopping:
            return
        log.warning("worker %s lost: %s", worker_id, reason)
        if task_id:
            events = self.sched.worker_lost(worker_id, task_id, reason)
            await self._record(events)
        self._spawn_worker(pool)

    async def shutdown(self) -> None:
        """Stop the workers once they finish their sessions, roll and compact the log."""
        self._stopping = True
        if self._starting is not None:  # a start under way finishes first (its workers too)
            with contextlib.suppress(Exception):
                await asyncio.shield(self._starting)
        if self._work is not None:
            async with self._work:
                self._work.notify_all()
        workers = list(self.workers.values())
        self.workers.clear()
        closing = [w.close.remote() for w in workers]
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.gather(*closing, return_exceptions=True), 30)
        for handle in workers:
            with contextlib.suppress(Exception):
                ray.kill(handle)
        # Containers of workers that died before (an earlier life's, a lost worker's).
        await asyncio.sleep(0.5)
        await self._reap_head()
        await self.flush(compact=True)

    # -- driver calls ------------------------------------------------------------------
    async def submit(self, tasks: list[dict[str, Any]], batch: str | None = None) -> dict[str, Any]:
        """Queue tasks; each accepted one is in the log before this returns."""
        await self.start()
        accepted: list[str] = []
        rejected: list[dict[str, str]] = []
        events: list[Event] = []
        for raw in tasks:
            try:
                spec = raw if isinstance(raw, TaskSpec) else TaskSpec.model_validate(raw)
                plan, decisions = self.memory.plan(spec) if self.settings.memory else ({}, [])
                event = self.sched.submit(spec, batch, plan)
            except TaskRejected as exc:
                rejected.append({"task_id": exc.task_id, "field": exc.field, "error": exc.message})
                continue
            except ValueError as exc:
                task_id = str(raw.get("id", "?")) if isinstance(raw, dict) else "?"
                rejected.append({"task_id": task_id, "field": "", "error": str(exc)})
                continue
            # Apply at once so a duplicate id later in the same batch is caught.
            await self._record([event, *(self._decision_event(spec.id, d) for d in decisions)])
            events.append(event)
            accepted.append(spec.id)
        return {"accepted": accepted, "rejected": rejected, "batch": batch}

    @staticmethod
    def _decision_event(task_id: str, decision: Any) -> Event:
        payload = {"decision": decision.what, "value": decision.value, "reason": decision.reason}
        return Event(task_id=task_id, type=EventType.memory_decision, payload=payload)

    async def finished_since(
        self, cursor: int, timeout_s: float = 1.0
    ) -> tuple[list[TaskRecord], int]:
        """Tasks that ended after position ``cursor``; waits up to ``timeout_s`` for one."""
        await self.start()  # after a restart, the first driver call brings the pool back
        assert self._done is not None
        if len(self.sched.finished) <= cursor:
            async with self._done:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._done.wait_for(lambda: len(self.sched.finished) > cursor), timeout_s
                    )
        ids = self.sched.finished[cursor:]
        return [self.sched.tasks[i] for i in ids], cursor + len(ids)

    def finished_count(self) -> int:
        """How many tasks have ended: a cursor for ``finished_since`` that starts now."""
        return len(self.sched.finished)

    def pid(self) -> int:
        return os.getpid()

    async def worker_pid(self, worker_id: str) -> int:
        return await self.workers[worker_id].pid.remote()

    def get_settings(self) -> FleetSettings:
        return self.settings

    def get(self, task_ids: list[str]) -> list[TaskRecord | None]:
        return [self.sched.tasks.get(i) for i in task_ids]

    async def cancel(self, task_id: str, reason: str = "cancelled by user") -> bool:
        events = self.sched.cancel(task_id, reason)
        if not events:
            return False
        worker = next((w for w, t in self.running.items() if t == task_id), None)
        await self._record(events)
        if worker and worker in self.workers:
            record = self.sched.tasks[task_id]
            self.workers[worker].stop_session.remote(record.session_id)
        return True

    async def update_prompt(self, task_id: str, prompt: str, reason: str = "") -> bool:
        """Replace a queued task's prompt before it starts (``Scheduler.update_prompt``)."""
        events = self.sched.update_prompt(task_id, prompt, reason)
        await self._record(events)
        return bool(events)

    async def source_error(self, source: str, error: str, failures: int, retry_in_s: float) -> None:
        """Log that a watcher could not reach a source (``Scheduler.source_error``)."""
        await self._record([self.sched.source_error(source, error, failures, retry_in_s)])

    def status(self) -> dict[str, Any]:
        return fleet_status(
            self.sched, self.running, len(self.workers), self.settings, self.started_at, time.time()
        )

    async def events(self, task_id: str) -> list[Event]:
        """A task's events so far, in ``seq`` order (rolled files plus the buffer)."""
        await self.flush()
        files = self.log.files()
        if not files:
            return []
        table = pq.read_table(files, filters=[("task_id", "=", task_id)], filesystem=self.log.fs)
        events = [Event.from_row(r) for r in table.to_pylist()]
        return sorted(events, key=lambda e: e.seq)

    async def flush(self, compact: bool = False) -> int:
        """Roll buffered events into Parquet now; returns how many were written."""
        assert self._roll_lock is not None or not self.log.buffered
        if self._roll_lock is None:
            return 0
        async with self._roll_lock:
            pending = self.log.start_roll()
            written = 0
            if pending is not None:
                await asyncio.to_thread(self.log.finish_roll, *pending)
                written = len(pending[1])
            if compact:
                await asyncio.to_thread(self.log.compact)
        return written

    async def events_since(
        self, task_id: str, after_seq: int = -1, timeout_s: float = 0.0, limit: int = 1000
    ) -> list[Event]:
        """A task's events with ``seq > after_seq``, oldest first; when there are none yet,
        waits up to ``timeout_s`` for the next to arrive (long poll, for live streams)."""
        if task_id not in self.sched.tasks:
            return []
        found = self._events_after(task_id, after_seq)
        if found is None:
            found = [e for e in await self.events(task_id) if e.seq > after_seq]
        if not found and timeout_s > 0 and self._arrived is not None:

            def arrived() -> bool:
                return bool(self._events_after(task_id, after_seq))

            async with self._arrived:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._arrived.wait_for(arrived), timeout_s)
            found = self._events_after(task_id, after_seq) or []
        return found[:limit]

    def _events_after(self, task_id: str, after_seq: int) -> list[Event] | None:
        """From memory, or None when memory does not reach back to ``after_seq``."""
        cached = self._recent.get(task_id)
        if not cached or cached[0].seq > after_seq + 1:
            return None
        return [e for e in cached if e.seq > after_seq]

    async def stream_since(
        self, cursor: int, timeout_s: float = 0.0, limit: int = 500
    ) -> tuple[list[Event], int]:
        """Every task's events from global index ``cursor`` on, oldest first, and the index
        to ask for next; the first event's index is ``next - len(events)``, above ``cursor``
        when older ones already left the ring. A negative ``cursor`` means from now. When
        there are none yet, waits up to ``timeout_s`` for one (long poll, for live streams)."""
        await self.start()
        if cursor < 0 or cursor > self._stream_next:  # from now (or from another life)
            cursor = self._stream_next
        if cursor == self._stream_next and timeout_s > 0 and limit > 0:
            assert self._arrived is not None
            async with self._arrived:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._arrived.wait_for(lambda: self._stream_next > cursor), timeout_s
                    )
        oldest = self._stream_next - len(self._stream)
        start = max(cursor, oldest)
        events = list(islice(self._stream, start - oldest, start - oldest + max(0, limit)))
        return events, start + len(events)

    def list_tasks(
        self,
        state: str | None = None,
        label: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[TaskRecord]:
        """Tasks, newest first, optionally only those in ``state`` or carrying ``label``."""
        records = reversed(self.sched.tasks.values())
        picked = [
            r
            for r in records
            if (state is None or r.state == state) and (label is None or label in r.spec.labels)
        ]
        return picked[offset : offset + limit]

    async def steer(self, task_id: str, text: str) -> bool:
        """Send a user message to a task's session: delivered at its next turn."""
        record = self.sched.tasks.get(task_id)
        if record is None or record.state.terminal:
            return False
        worker = self._worker_of(task_id)
        event = Event(
            task_id=task_id,
            type=EventType.user_message,
            session_id=record.session_id,
            payload={"text": text, "delivered": worker is not None},
        )
        await self._record([event])
        if worker is not None:
            self.workers[worker].deliver.remote(record.session_id, "message", text)
        elif record.state == TaskState.paused:
            await self._record(self.sched.resume(task_id))
        return True

    async def resume(self, task_id: str) -> bool:
        """Continue a paused (interrupted) or parked task on any worker."""
        events = self.sched.resume(task_id)
        await self._record(events)
        return bool(events)

    async def interrupt(self, task_id: str) -> bool:
        """Stop a running session at its next safe point, leaving it resumable."""
        record = self.sched.tasks.get(task_id)
        worker = self._worker_of(task_id)
        if record is None or worker is None:
            return False
        await self._record(
            [Event(task_id=task_id, type=EventType.user_interrupt, session_id=record.session_id)]
        )
        self.workers[worker].deliver.remote(record.session_id, "interrupt", None)
        return True

    async def decide_approval(
        self, task_id: str, call_id: str, allow: bool, message: str = ""
    ) -> bool:
        """Allow or deny a tool call that waits for approval."""
        record = self.sched.tasks.get(task_id)
        pending = record.pending_approval if record else None
        if record is None or not pending or pending.get("call_id") != call_id:
            return False
        if pending.get("decision") is not None or record.state.terminal:
            return False  # decided already
        event = Event(
            task_id=task_id,
            type=EventType.approval_decided,
            session_id=record.session_id,
            payload={"call_id": call_id, "allow": allow, "message": message, "by": "user"},
        )
        worker = self._worker_of(task_id)
        await self._record([event])
        if worker is not None:
            decision = {"call_id": call_id, "allow": allow, "message": message}
            self.workers[worker].deliver.remote(record.session_id, "decision", decision)
        elif record.state == TaskState.awaiting_approval:
            await self._record(self.sched.resume(task_id))  # parked: any worker picks it up
        return True

    # -- agents and environments (versioned; tasks refer to them by name) -------------
    def put_spec(
        self, kind: str, spec: dict[str, Any], expected_version: int | None = None
    ) -> dict[str, Any]:
        """Create or update a named agent or environment; raises SpecConflict when
        ``expected_version`` is given and is not the current version."""
        return self.registry.put(kind, spec, expected_version)

    def get_spec(self, kind: str, name: str) -> dict[str, Any] | None:
        return self.registry.get(kind, name)

    def list_specs(self, kind: str, include_archived: bool = False) -> list[dict[str, Any]]:
        return self.registry.list(kind, include_archived)

    def archive_spec(self, kind: str, name: str) -> bool:
        return self.registry.archive(kind, name)

    def _worker_of(self, task_id: str) -> str | None:
        for worker, running in self.running.items():
            if running == task_id and worker in self.workers:
                return worker
        return None

    # -- worker calls ------------------------------------------------------------------
    async def next_assignment(
        self, worker_id: str, result: SessionResult | None
    ) -> Assignment | None:
        """Take a worker's last result (if any) and wait for its next assignment."""
        assert self._work is not None
        if worker_id not in self.workers:
            return None  # a worker of an earlier life (or replaced): its result is stale
        self.heartbeats[worker_id] = time.time()
        if result is not None:
            self.running.pop(worker_id, None)
            self._session_started.pop(result.session_id, None)
            await self._record(self._live(result.events))
            has_artifacts = (
                result.diff
                or result.workspace is not None
                or (
                    result.outcome is not None
                    and (result.outcome.state or result.outcome.handoff_history)
                )
            )
            refs = await asyncio.to_thread(self._store_artifacts, result) if has_artifacts else {}
            decided = self.sched.complete(result)
            for event in decided:
                if event.type in (EventType.handoff, EventType.task_parked) and refs:
                    event.payload.update(refs)
            if refs.get("diff_ref"):
                decided.insert(0, self._artifact_event(result, refs))
            await self._record(decided)
            if any(e.type == EventType.task_parked for e in decided):
                # A decision that reached the worker as the session parked: resume now.
                record = self.sched.tasks[result.task_id]
                if (record.pending_approval or {}).get("decision"):
                    await self._record(self.sched.resume(result.task_id))
        pool = self.pools.get(worker_id)
        async with self._work:
            while True:
                if self._stopping or pool is None or worker_id not in self.workers:
                    return None
                running = [self.sched.tasks[t] for t in self.running.values()]
                if self._manager_routes():
                    pinned = self._pins.pop(worker_id, None)
                    got = (
                        self.sched.assign(worker_id, pool, running, only=pinned) if pinned else None
                    )
                    if got is None and len(self.sched.queue):
                        self._run_manager()
                else:
                    got = self.sched.assign(worker_id, pool, running)
                if got is not None and got[0] is None:  # it names a spec that is gone
                    await self._record([got[1]])
                    continue
                if got is not None:
                    break
                # Woken by whatever queues work; the timeout is a safety net, not the clock.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._work.wait(), IDLE_RECHECK_S)
        assignment, event = got
        assert assignment is not None
        self.running[worker_id] = assignment.task.id
        record = self.sched.tasks[assignment.task.id]
        # One-shot refs (a parked loop, a handoff's history) are cleared by the assignment.
        refs = (
            record.workspace_ref or record.base_ref,
            record.loop_state_ref if record.workspace_ref else None,
            record.history_ref,
        )
        await self._record([event])
        if any(refs):
            await asyncio.to_thread(self._load_artifacts, assignment, *refs)
        return assignment

    def _store_artifacts(self, result: SessionResult) -> dict[str, str]:
        """Write a session's diff, workspace and parked loop state; return their refs."""
        refs: dict[str, str] = {}
        sid = result.session_id
        if result.diff:  # an empty diff (nothing changed) is not worth a file
            refs["diff_ref"] = self.artifacts.put(
                result.task_id, f"{sid}.diff", result.diff.encode()
            )
        if result.workspace is not None:
            refs["workspace_ref"] = self.artifacts.put(
                result.task_id, f"{sid}.tar", result.workspace
            )
        outcome = result.outcome
        if outcome is not None and outcome.status in ("parked", "interrupted") and outcome.state:
            refs["loop_state_ref"] = self.artifacts.put_json(
                result.task_id, f"{sid}.state.json", outcome.state
            )
        if outcome is not None and outcome.status == "handoff" and outcome.handoff_history:
            refs["history_ref"] = self.artifacts.put_json(
                result.task_id, f"{sid}.history.json", outcome.handoff_history
            )
        return refs

    def _artifact_event(self, result: SessionResult, refs: dict[str, str]) -> Event:
        return Event(
            task_id=result.task_id,
            type=EventType.artifact_saved,
            session_id=result.session_id,
            attempt=result.attempt,
            worker=result.worker,
            payload={
                "kind": "diff",
                "ref": refs["diff_ref"],
                "path": self.artifacts.path(refs["diff_ref"]),
                "changed_files": result.changed_files[:200],
                "bytes": len(result.diff or ""),
            },
        )

    def _load_artifacts(
        self,
        assignment: Assignment,
        workspace_ref: str | None,
        loop_state_ref: str | None,
        history_ref: str | None,
    ) -> None:
        if workspace_ref:
            assignment.workspace = self.artifacts.get(workspace_ref)
        if loop_state_ref:
            assignment.loop_state = self.artifacts.get_json(loop_state_ref)
        if history_ref:
            assignment.history = self.artifacts.get_json(history_ref)

    async def checkpoint(
        self, task_id: str, session_id: str, state: dict[str, Any], workspace: bytes
    ) -> bool:
        """Keep a running session's latest resume point (workspace and loop state)."""
        record = self.sched.tasks.get(task_id)
        if record is None or record.state != TaskState.running or record.session_id != session_id:
            return False

        def store() -> dict[str, str]:
            return {
                "workspace_ref": self.artifacts.put(task_id, f"{session_id}.ckpt.tar", workspace),
                "loop_state_ref": self.artifacts.put_json(
                    task_id, f"{session_id}.ckpt.json", state
                ),
            }

        refs = await asyncio.to_thread(store)
        event = Event(
            task_id=task_id,
            type=EventType.session_checkpointed,
            session_id=session_id,
            attempt=record.attempts,
            payload={**refs, "turns": state.get("turns"), "bytes": len(workspace)},
        )
        await self._record([event])
        return True

    # -- the manager agent (routing = manager) ----------------------------------------
    def _manager_routes(self) -> bool:
        return self.settings.routing == "manager" and time.time() >= self._manager_down_until

    def _run_manager(self) -> None:
        """Start a manager round, or ask for another once the running one ends."""
        if self._manager_round is not None and not self._manager_round.done():
            self._manager_again = True
            return
        self._manager_again = False
        self._manager_round = asyncio.create_task(self._manage())

    async def _manage(self) -> None:
        idle = [w for w in self.workers if w not in self.running and w not in self._pins]
        if not idle or not len(self.sched.queue):
            return
        round_ = ManagerRound(tasks=self._task_views(), workers=self._worker_views())
        agent = self.config.agents.get(self.settings.manager_agent)
        try:
            if agent is None:
                raise ValueError(f"no agent named {self.settings.manager_agent!r}")
            model = make_model(agent)
            loop = AgentLoop(
                instructions=f"{agent.instructions}\n\n{MANAGER_INSTRUCTIONS}",
                model=model,
                toolbox=round_.toolbox(),
                ctx=ToolContext(sandbox=LocalSandbox()),  # the manager's tools run no commands
                emit=lambda *_a, **_k: None,
                max_turns=agent.max_turns or 20,
                time_limit_s=120.0,
            )
            outcome = await loop.run(round_.prompt())
            await close_model(model)
            if outcome.status != "finished" and not round_.assignments:
                raise RuntimeError(outcome.reason or outcome.status)
        except Exception as exc:
            # A manager that cannot decide must not stall the fleet: rules route for a while.
            log.warning("manager agent failed (%s); the rules route for 60s", exc)
            self._manager_down_until = time.time() + 60
            round_.assignments.clear()
        await self._apply_manager(round_)

    async def _apply_manager(self, round_: ManagerRound) -> None:
        events: list[Event] = []
        for worker, task_id in round_.assignments.items():
            self._pins[worker] = task_id
            payload = {"action": "assign", "worker": worker}
            events.append(Event(task_id=task_id, type=EventType.manager_decision, payload=payload))
        stop: list[tuple[str, str]] = []
        for task_id, status, note in round_.updates:
            if self.sched.tasks[task_id].state.terminal:
                continue
            worker = self._worker_of(task_id)
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
        await self._record(events)
        for worker, task_id in stop:  # its session must not go on once the task is ended
            session_id = self.sched.tasks[task_id].session_id
            self.workers[worker].stop_session.remote(session_id, "ended by the manager agent")
        if round_.created:
            await self.submit(round_.created, batch="manager")
        if self._work is not None:
            async with self._work:
                self._work.notify_all()
        if self._manager_again:
            self._manager_round = None
            self._run_manager()

    def _task_views(self) -> list[dict[str, Any]]:
        live = [r for r in self.sched.tasks.values() if not r.state.terminal]
        live.sort(key=lambda r: -r.spec.priority)
        return [
            {
                "task_id": r.id,
                "state": r.state.value,
                "prompt": r.spec.prompt[:200],
                "priority": r.spec.priority,
                "labels": r.spec.labels,
                "requires": r.spec.requires,
                "attempts": r.attempts,
                "reason": r.reason,
                "expected_s": r.plan.get("expected_s"),
            }
            for r in live[:200]
        ]

    def _worker_views(self) -> list[dict[str, Any]]:
        return [
            {
                "worker_id": w,
                "pool": self.pools[w].name,
                "labels": self.pools[w].labels,
                "idle": w not in self.running and w not in self._pins,
                "task": self.running.get(w),
            }
            for w in self.workers
        ]

    def heartbeat(self, worker_id: str) -> None:
        if worker_id in self.workers:
            self.heartbeats[worker_id] = time.time()

    async def review(self, task_id: str, approve: bool, message: str = "") -> bool:
        """A human approves or rejects a result that awaits review."""
        events = self.sched.review(task_id, approve, message)
        await self._record(events)
        return bool(events)

    async def _memory_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.settings.memory_refresh_s)
            try:
                await self.flush()
                await asyncio.to_thread(self.memory.refresh, self.settings.events_dir)
            except Exception:
                log.exception("memory refresh failed")

    async def memory_tables(self, refresh: bool = False) -> dict[str, Any]:
        """What the supervisor has learned from history (per label and per agent)."""
        if refresh:
            await self.flush()
            await asyncio.to_thread(self.memory.refresh, self.settings.events_dir)
        return self.memory.tables()

    async def _watch_loop(self) -> None:
        """Stop sessions that went silent or overran, replace workers that stopped beating."""
        reaped_at = time.time()
        while not self._stopping:
            await asyncio.sleep(self.settings.watch_interval_s)
            now = time.time()
            if now - reaped_at > REAP_INTERVAL_S:  # workers of a crashed life die late
                reaped_at = now
                self._spawn(self._reap_head())
            for worker_id, task_id in list(self.running.items()):
                record = self.sched.tasks[task_id]
                stall = record.spec.stall_timeout_s or self.settings.stall_timeout_s
                silent = now - record.last_event_at.timestamp() if record.last_event_at else 0
                limit = (
                    record.spec.time_limit_s
                    or record.plan.get("time_limit_s")
                    or self.settings.default_time_limit_s
                )
                started = self._session_started.get(record.session_id or "", now)
                reason = None
                if silent > stall:
                    reason = f"stalled: no event for {silent:.0f}s (stall timeout {stall:g}s)"
                elif now - started > limit + 30:
                    reason = f"time limit of {limit:g}s passed"
                if reason and worker_id in self.workers:
                    log.warning("stopping %s on %s: %s", task_id, worker_id, reason)
                    self.workers[worker_id].stop_session.remote(record.session_id, reason)
            for worker_id, beat in list(self.heartbeats.items()):
                if now - beat > self.settings.heartbeat_timeout_s and worker_id in self.workers:
                    log.warning("worker %s missed its heartbeats; replacing it", worker_id)
                    self.heartbeats[worker_id] = now
                    ray.kill(self.workers[worker_id], no_restart=True)

    async def ingest(self, events: list[Event]) -> int:
        """A running session's events; those of sessions written off are dropped."""
        live = self._live(events)
        await self._record(live)
        return len(live)

    def _live(self, events: list[Event]) -> list[Event]:
        """Events of sessions the fleet still counts: the task's current session, while it
        runs or once it ended (a cancel's tail). A session whose task went back to the queue
        (its worker lost, the supervisor restarted) has been written off: what it still says
        must not mix into the task's history."""
        kept = []
        for event in events:
            record = self.sched.tasks.get(event.task_id)
            if record is None:
                continue
            if event.session_id is None or (
                event.session_id == record.session_id and record.state != TaskState.queued
            ):
                kept.append(event)
        if len(kept) < len(events):
            log.info("dropped %d events of written-off sessions", len(events) - len(kept))
        return kept

    # -- internals ---------------------------------------------------------------------
    async def _record(self, events: list[Event]) -> None:
        """Number, apply and log events; wake whoever waits on what they changed."""
        if not events:
            return
        requeued = 0
        ended = False
        for event in events:
            event.seq = self.sched.next_seq(event.task_id)
            self.sched.apply(event)
            if event.type in (EventType.task_submitted, EventType.task_retried, EventType.handoff):
                requeued += 1
                not_before = event.payload.get("not_before", 0)
                if not_before and not_before > time.time():
                    self._wake_at(not_before)
            elif event.type == EventType.task_assigned and event.session_id:
                self._session_started[event.session_id] = time.time()
            elif event.type in TERMINAL_EVENTS:
                ended = True
        self.log.append(events)
        self._remember(events)
        if self._arrived is not None:
            async with self._arrived:
                self._arrived.notify_all()
        if self.log.buffered >= self.settings.flush_max_events:
            self._spawn(self.flush())
        if requeued and self._work is not None:
            async with self._work:  # all: with pools, not every idle worker fits every task
                self._work.notify_all()
        if ended and self._done is not None:
            async with self._done:
                self._done.notify_all()

    def _wake_at(self, when: float) -> None:
        """Wake idle workers when a backoff ends."""

        async def wake() -> None:
            await asyncio.sleep(max(0.0, when - time.time()) + 0.01)
            if self._work is not None:
                async with self._work:
                    self._work.notify_all()

        self._spawn(wake())

    def _remember(self, events: list[Event]) -> None:
        self._stream.extend(events)
        self._stream_next += len(events)
        for event in events:
            cached = self._recent.get(event.task_id)
            if cached is None:
                cached = self._recent[event.task_id] = []
            else:
                self._recent.move_to_end(event.task_id)
            cached.append(event)
        while len(self._recent) > self.settings.recent_tasks:
            self._recent.popitem(last=False)

    async def _flush_loop(self) -> None:
        rolls = 0
        while not self._stopping:
            await asyncio.sleep(self.settings.flush_interval_s)
            try:
                if await self.flush(compact=rolls % 32 == 31):
                    rolls += 1
            except Exception:  # keep the loop alive; the WAL still holds the events
                log.exception("event log flush failed")

    def _recover(self) -> int:
        """Rebuild task state from the log (after a restart, or with ``resume``), then send
        back to the queue what the log shows running: its worker died with the old life.
        Both happen before this life can assign anything, so no task is handed to a new
        worker and then requeued (which would run it twice)."""
        count = 0
        for event in self.log.replay():
            self.sched.apply(event)
            count += 1
        orphans = [
            self._orphan_event(r) for r in self.sched.tasks.values() if r.state == TaskState.running
        ]
        for event in orphans:
            event.seq = self.sched.tasks[event.task_id].seq + 1
            self.sched.apply(event)
        if orphans:
            self.log.append(orphans)
            log.warning("requeued %d tasks running when the supervisor died", len(orphans))
        return count + len(orphans)

    def _ids_in_history(self) -> set[str]:
        """Task ids the events folder already has (every fleet's): a new task may not take
        one, or reports would mix two histories under it."""
        files = partition_files(self.log.fs, self.log.root)
        if not files:
            return set()
        table = pq.read_table(
            files,
            columns=["task_id"],
            filters=[("type", "=", EventType.task_submitted.value)],
            filesystem=self.log.fs,
        )
        return set(table.column("task_id").to_pylist())

    @staticmethod
    def _orphan_event(record: TaskRecord) -> Event:
        """The attempt is not counted; it resumes from its latest checkpoint if it has one."""
        return Event(
            task_id=record.id,
            type=EventType.task_retried,
            session_id=record.session_id,
            payload={
                "reason": "supervisor restarted",
                "next_attempt": record.attempts,
                "resume": bool(record.workspace_ref),
            },
        )
