"""The Supervisor actor: owns the queue, the worker pool and the event log.

A shell over plain parts: it makes and calls the Ray handles (its workers, itself) and
forwards every call to the part that decides. The parts, each testable without Ray:

| part | module | what |
| --- | --- | --- |
| ``sched`` | :mod:`actors.scheduler` | queue order, routing, what follows each attempt |
| ``journal`` | :mod:`actors.journal` | the single writer of the log (numbers, applies, logs) |
| ``streams`` | :mod:`actors.streams` | live streams and their long polls |
| ``pool`` | :mod:`actors.pool` | the workers' bookkeeping and the wake-up idle ones wait on |
| ``dispatch`` | :mod:`actors.dispatch` | the workers' calls: results, assignments, checkpoints |
| ``commands`` | :mod:`actors.commands` | cancel, steer, interrupt, resume, close, decisions |
| ``manager`` | :mod:`actors.manager` | the manager agent's rounds (``routing: manager``) |
| ``telemetry`` | :mod:`actors.telemetry` | metrics and traces from the events the journal logs |
| (functions) | :mod:`actors.watchdog`, :mod:`actors.recovery` | what to stop; rebuilding state |
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import itertools
import logging
import os
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import ray

from actors import results, watchdog
from actors.artifacts import ArtifactStore
from actors.commands import Commands
from actors.dispatch import Dispatcher
from actors.files import FileStore
from actors.journal import Journal
from actors.manager import Manager
from actors.memory import Memory
from actors.pool import WorkerPool, prewarm_environments, worker_options
from actors.recovery import ids_in_history, recover, restore_registry
from actors.results import NoResults, ResultKind
from actors.scheduler import Scheduler
from actors.status import fleet_status, list_tasks
from actors.streams import LiveStreams
from actors.telemetry import Telemetry
from actors.worker import Worker
from core.errors import one_line
from core.eventlog import EventLog
from core.events import Event, EventWire, decode_events
from core.records import Assignment, CommandResult, SessionResult, TaskRecord
from core.settings import FleetSettings, PoolSpec
from core.specs import AgentSpec, FleetConfig, SavedReport
from core.vault import SecretInfo, Vault
from harness.models import ModelClient, make_model

log = logging.getLogger("fleet.supervisor")

GC_THRESHOLDS = (10_000, 10, 10)
"""The supervisor process's garbage collector thresholds (CPython's: 700, 10, 10). The
journal makes a few container objects per event and keeps most of them a while (the live
streams hold every event of recent tasks): with CPython's, a young collection ran every few
hundred events and a full one, over the whole heap, every time it had grown by a quarter,
some 15-20% of what ``ingest`` cost at 40,000 events/s (``benchmarks.limits``). Young
collections stay small and come 14 times less often; a full one is considered once per
million more objects instead of once per 70,000 (and still runs only on a heap a quarter
bigger than the last one left)."""


def supervisor_name(fleet_name: str) -> str:
    return f"fleet-supervisor-{fleet_name}"


class RaySessions:
    """How commands, the manager and the watchdog reach a worker's session: Ray calls on
    the worker's handle (a worker gone meanwhile is skipped)."""

    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool

    def worker_of(self, task_id: str) -> str | None:
        return self.pool.worker_of(task_id)

    def deliver(self, worker_id: str, session_id: str | None, kind: str, data: Any) -> None:
        if worker_id in self.pool.workers:
            self.pool.workers[worker_id].deliver.remote(session_id, kind, data)

    def stop(self, worker_id: str, session_id: str | None, reason: str = "") -> None:
        if worker_id in self.pool.workers:
            self.pool.workers[worker_id].stop_session.remote(session_id, reason)


@ray.remote(num_cpus=0, max_restarts=-1, max_concurrency=10_000)
class Supervisor:
    def __init__(self, settings: FleetSettings, config: FleetConfig) -> None:
        gc.set_threshold(*GC_THRESHOLDS)
        self.settings = settings
        self.config = config
        self.started_at = time.time()
        self.artifacts = ArtifactStore(
            settings.artifacts_dir or f"{settings.events_dir.rstrip('/')}/_artifacts"
        )
        self.files = FileStore(self.artifacts, settings.max_file_bytes)
        self.sched = Scheduler(config, settings, self.files.exists)
        self.vault = Vault.of(settings, config.secrets)
        self.sched.vault = self.vault
        self.registry = self.sched.registry
        self.memory = Memory(settings)
        self.log = EventLog(
            settings.events_dir,
            settings.wal_dir,
            settings.compact_min_files,
            settings.compact_small_bytes,
            writer=settings.name,
            wal_fsync=settings.wal_fsync,
        )
        restarted = ray.get_runtime_context().was_current_actor_reconstructed
        self.pool = WorkerPool(life=f".{uuid.uuid4().hex[:4]}" if restarted else "")
        if restarted or settings.recover:
            self.recovered = recover(self.log, self.sched)
        else:  # no task comes back, but every version of every agent and environment does
            restore_registry(self.log, self.sched)
            self.recovered = 0
        self.sched.taken_ids = ids_in_history(self.log)
        self.streams = LiveStreams(settings.stream_events, settings.recent_tasks, self.recovered)
        self._background: set[asyncio.Task[Any]] = set()
        self._starting: asyncio.Future[None] | None = None
        self._pruned: set[str] = set()
        """Finished tasks whose old workspaces are already removed (keep_workspaces_days)."""
        self.telemetry = Telemetry.for_fleet(settings, self.sched.tasks)
        self.telemetry.prime(self.sched.tasks.records())  # traces of tasks a restart took up
        observe = self.telemetry.observe if self.telemetry.enabled else None
        self.journal = Journal(
            self.sched,
            self.log,
            self.streams,
            self.pool,
            settings,
            self._spawn,
            redact=self.vault.redact_events,
            observe=observe,
        )
        self.sessions = RaySessions(self.pool)
        record = self.journal.record
        self.manager = Manager(
            settings,
            config,
            self.sched,
            self.pool,
            record,
            self.submit,
            self.sessions.stop,
            models=self._manager_model,
        )
        planner = self.memory.plan if settings.memory else None
        self.dispatch = Dispatcher(
            self.sched, self.pool, self.journal, self.artifacts, self.manager, settings, self.files
        )
        self.commands = Commands(
            self.sched, record, self.sessions, planner, self.dispatch.deliver_reviewed
        )
        if restarted:
            # After a crash nobody may call for a long time: bring the pool back now.
            ray.get_runtime_context().current_actor.start_until_up.remote()

    # -- life cycle --------------------------------------------------------------------
    async def start(self) -> dict[str, Any]:
        """Start the worker pool and the flush loop (idempotent). A caller that goes away
        (a client that disconnects) does not cancel the start it began."""
        if self._starting is None or (self._starting.done() and self._starting.exception()):
            self._starting = asyncio.ensure_future(self._start())
        await asyncio.shield(self._starting)
        return {"workers": len(self.pool.workers), "recovered": self.recovered}

    async def start_until_up(self) -> None:
        """Start, and try again (backing off) while it fails: after a crash no caller may
        come to ask again, and a pool that never came back would strand every task."""
        for tries in itertools.count(1):
            try:
                await self.start()
                return
            except Exception:
                if self.pool.stopping:
                    return
                log.exception("starting the pool failed (try %d); trying again", tries)
                await asyncio.sleep(min(30.0, 0.5 * 2**tries))

    async def _start(self) -> None:
        await watchdog.reap_head(self.settings.sandbox)
        self.pool.open()
        self.streams.open()
        self.journal.open()
        if self.pool.stopping:  # shut down while starting: no pool to bring up
            return
        for pool in self.settings.pool_specs():
            for _ in range(pool.workers):
                self._spawn_worker(pool)
        # The pool is up when start returns: wait for every worker process (one that dies
        # meanwhile is replaced by its watcher; the rest of the start goes on).
        await asyncio.gather(
            *(w.pid.remote() for w in self.pool.workers.values()), return_exceptions=True
        )
        self._spawn(self.journal.flush_loop(lambda: self.pool.stopping))
        self._spawn(self._watch_loop())
        if self.settings.memory:
            await asyncio.to_thread(self.memory.refresh, self.settings.events_dir)
            self._spawn(self._memory_loop())
        wake = self.sched.next_wakeup(time.time())  # backoffs replayed from the log
        if wake is not None:
            self.journal.wake_at(wake)
        await self.pool.wake()

    def _manager_model(self, agent: AgentSpec) -> ModelClient:
        """The manager agent's model client (its key from the vault when it names one)."""
        key = self.vault.value(agent.api_key_secret) if agent.api_key_secret else None
        return make_model(agent, settings=self.settings, api_key=key)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _spawn_worker(self, pool: PoolSpec) -> None:
        worker_id = self.pool.new_id()
        me = ray.get_runtime_context().current_actor
        handle = Worker.options(**worker_options(self.settings, pool)).remote(
            worker_id, me, self.settings, prewarm_environments(self.config, pool)
        )
        self.pool.add(worker_id, handle, pool, time.time())
        self._spawn(self._watch(worker_id, handle))

    async def _watch(self, worker_id: str, handle: Any) -> None:
        """Await the worker's main loop; if the worker dies, requeue its task and replace it."""
        try:
            await handle.work.remote()
            return
        except Exception as exc:
            reason = f"{type(exc).__name__}: {one_line(exc)}"
        pool, task_ids = self.pool.remove(worker_id)
        if self.pool.stopping or pool is None:
            return
        log.warning("worker %s lost: %s", worker_id, reason)
        for task_id in task_ids:  # running, and finishing behind it
            await self.journal.record(self.sched.worker_lost(worker_id, task_id, reason))
        self._spawn_worker(pool)

    async def shutdown(self) -> None:
        """Stop the workers once they finish their sessions, roll and compact the log."""
        self.pool.stopping = True
        if self._starting is not None:  # a start under way finishes first (its workers too)
            with contextlib.suppress(Exception):
                await asyncio.shield(self._starting)
        await self.pool.wake()
        workers = list(self.pool.workers.values())
        self.pool.workers.clear()
        closing = [w.close.remote() for w in workers]
        closed: list[Any] = []
        with contextlib.suppress(Exception):
            closed = await asyncio.wait_for(asyncio.gather(*closing, return_exceptions=True), 30)
        for handle in workers:
            with contextlib.suppress(Exception):
                ray.kill(handle)
        if len(closed) < len(workers) or any(isinstance(c, BaseException) for c in closed):
            await asyncio.sleep(0.5)  # a worker that did not close: let its process end first
        # Containers of workers that died before (an earlier life's, a lost worker's).
        await watchdog.reap_head(self.settings.sandbox)
        await self.dispatch.settle()  # results handed in before the stop are logged
        await self.flush(compact=True)
        await asyncio.to_thread(self.telemetry.close)  # the spans still buffered

    async def _watch_loop(self) -> None:
        """Stop sessions that went silent or overran, replace workers that stopped beating,
        expire interactive tasks idle too long."""
        reaping = watchdog.ReapClock(time.time(), self.settings.reap_interval_s)
        while not self.pool.stopping:
            await asyncio.sleep(self.settings.watch_interval_s)
            now = time.time()
            if reaping.due(now):  # workers of a crashed life die late
                self._spawn(watchdog.reap_head(self.settings.sandbox))
                self._spawn(self._prune_workspaces())
            for stop in watchdog.sessions_to_stop(self.sched, self.pool, now, self.settings):
                log.warning("stopping %s on %s: %s", stop.task_id, stop.worker_id, stop.reason)
                self.sessions.stop(stop.worker_id, stop.session_id, stop.reason)
            for worker_id in watchdog.silent_workers(
                self.pool, now, self.settings.heartbeat_timeout_s
            ):
                log.warning("worker %s missed its heartbeats; replacing it", worker_id)
                ray.kill(self.pool.workers[worker_id], no_restart=True)
            self.telemetry.tick(self.sched, self.pool, now)  # spans out, gauges
            for task_id, reason in watchdog.idle_expired(self.sched, now, self.settings):
                await self.journal.record(self.sched.expire(task_id, reason))

    async def _prune_workspaces(self) -> None:
        """Remove the workspaces of tasks finished more than ``keep_workspaces_days`` ago."""
        finished = [
            (r.id, r.finished_at)
            for r in self.sched.tasks.built()
            if r.state.terminal and r.id not in self._pruned
        ]
        try:
            done = await asyncio.to_thread(
                results.prune,
                self.artifacts,
                finished,
                self.settings.keep_workspaces_days,
                datetime.now(UTC),
            )
        except Exception:
            log.exception("removing old workspaces failed")
            return
        self._pruned.update(done)

    async def _memory_loop(self) -> None:
        while not self.pool.stopping:
            await asyncio.sleep(self.settings.memory_refresh_s)
            try:
                await self.flush()
                await asyncio.to_thread(self.memory.refresh, self.settings.events_dir)
            except Exception:
                log.exception("memory refresh failed")

    # -- driver calls ------------------------------------------------------------------
    async def submit(self, tasks: list[dict[str, Any]], batch: str | None = None) -> dict[str, Any]:
        """Queue tasks; each accepted one is in the log before this returns."""
        await self.start()
        return await self.commands.submit(tasks, batch)

    async def finished_since(
        self, cursor: int, timeout_s: float = 1.0
    ) -> tuple[list[TaskRecord], int]:
        """Tasks that ended after position ``cursor``; waits up to ``timeout_s`` for one."""
        await self.start()  # after a restart, the first driver call brings the pool back
        await self.streams.wait_finished(self.sched.finished, cursor, timeout_s)
        ids = self.sched.finished[cursor:]
        return [self.sched.tasks[i] for i in ids], cursor + len(ids)

    def finished_count(self) -> int:
        """How many tasks have ended: a cursor for ``finished_since`` that starts now."""
        return len(self.sched.finished)

    def pid(self) -> int:
        return os.getpid()

    async def worker_pid(self, worker_id: str) -> int:
        return await self.pool.workers[worker_id].pid.remote()

    def get_settings(self) -> FleetSettings:
        return self.settings

    def saved_reports(self) -> dict[str, SavedReport]:
        """The config's saved queries (``reports:``), by name."""
        return self.config.reports

    def get(self, task_ids: list[str]) -> list[TaskRecord | None]:
        return [self.sched.tasks.peek(i) for i in task_ids]

    def status(self) -> dict[str, Any]:
        workers = len(self.pool.workers)
        now = time.time()
        return fleet_status(
            self.sched, self.pool.running, workers, self.settings, self.started_at, now
        )

    def list_tasks(
        self, state: str | None = None, label: str | None = None, limit: int = 100, offset: int = 0
    ) -> list[TaskRecord]:
        """Tasks, newest first, optionally only those in ``state`` or carrying ``label``."""
        return list_tasks(self.sched, state, label, limit, offset)

    async def results(self, task_id: str, what: ResultKind, path: str = "") -> Any:
        """A task's diff, file listing, one file or workspace archive (see
        :func:`actors.results.fetch`); :class:`NoResults` for an unknown task."""
        if task_id not in self.sched.tasks:
            raise NoResults(f"no session or task {task_id!r}")
        return await asyncio.to_thread(results.fetch, self.artifacts, task_id, what, path)

    async def events(self, task_id: str) -> list[Event]:
        """A task's events so far, in ``seq`` order (rolled files plus the buffer)."""
        return await self.journal.task_events(task_id)

    async def flush(self, compact: bool = False) -> int:
        """Roll buffered events into Parquet now; returns how many were written."""
        return await self.journal.flush(compact)

    async def events_since(
        self, task_id: str, after_seq: int = -1, timeout_s: float = 0.0, limit: int = 1000
    ) -> list[Event]:
        """A task's events with ``seq > after_seq``, oldest first; when there are none yet,
        waits up to ``timeout_s`` for the next to arrive (long poll, for live streams)."""
        if task_id not in self.sched.tasks:
            return []
        from_log = functools.partial(self.journal.task_events, task_id)
        return await self.streams.task_events(task_id, after_seq, timeout_s, limit, from_log)

    async def stream_since(
        self, cursor: int, timeout_s: float = 0.0, limit: int = 500
    ) -> tuple[list[Event], int]:
        """Every task's events from global index ``cursor`` (see ``LiveStreams.since``)."""
        await self.start()
        return await self.streams.since(cursor, timeout_s, limit)

    async def cancel(self, task_id: str, reason: str = "cancelled by user") -> CommandResult:
        return await self.commands.cancel(task_id, reason)

    async def update_prompt(self, task_id: str, prompt: str, reason: str = "") -> CommandResult:
        return await self.commands.update_prompt(task_id, prompt, reason)

    async def source_error(self, source: str, error: str, failures: int, retry_in_s: float) -> None:
        """Log that a watcher could not reach a source (``Scheduler.source_error``)."""
        await self.journal.record([self.sched.source_error(source, error, failures, retry_in_s)])

    async def steer(self, task_id: str, text: str) -> CommandResult:
        # A message may resume an idle task: after a restart, it brings the pool back too.
        await self.start()
        return await self.commands.steer(task_id, text)

    async def resume(self, task_id: str) -> CommandResult:
        return await self.commands.resume(task_id)

    async def close_task(self, task_id: str) -> CommandResult:
        """Close an interactive task: its gate, reviewer and review run, then it ends."""
        await self.start()
        return await self.commands.close(task_id)

    async def interrupt(self, task_id: str) -> CommandResult:
        return await self.commands.interrupt(task_id)

    async def decide_approval(
        self, task_id: str, call_id: str, allow: bool, message: str = ""
    ) -> CommandResult:
        return await self.commands.decide_approval(task_id, call_id, allow, message)

    async def custom_tool_result(
        self,
        task_id: str,
        call_id: str,
        content: str | list[dict[str, Any]],
        is_error: bool = False,
    ) -> CommandResult:
        return await self.commands.custom_tool_result(task_id, call_id, content, is_error)

    async def review(self, task_id: str, approve: bool, message: str = "") -> CommandResult:
        return await self.commands.review(task_id, approve, message)

    async def memory_tables(self, refresh: bool = False) -> dict[str, Any]:
        """What the supervisor has learned from history (per label and per agent)."""
        if refresh:
            await self.flush()
            await asyncio.to_thread(self.memory.refresh, self.settings.events_dir)
        return self.memory.tables()

    # -- agents and environments (versioned; tasks refer to them by name) -------------
    async def put_spec(
        self, kind: str, spec: dict[str, Any], expected_version: int | None = None
    ) -> dict[str, Any]:
        """Create or update a named agent or environment (logged: ``registry.put``); raises
        SpecConflict when ``expected_version`` is given and is not the current version."""
        return await self.commands.put_spec(kind, spec, expected_version)

    def get_spec(self, kind: str, name: str, version: int | None = None) -> dict[str, Any] | None:
        """The current (or newest archived) version of a name, or that ``version``."""
        return self.registry.get(kind, name, version)

    def spec_versions(self, kind: str, name: str) -> list[dict[str, Any]] | None:
        """Every version of a name, oldest first (None: no such name)."""
        return self.registry.versions(kind, name)

    def list_specs(self, kind: str, include_archived: bool = False) -> list[dict[str, Any]]:
        return self.registry.list(kind, include_archived)

    async def archive_spec(self, kind: str, name: str) -> CommandResult:
        """New tasks may no longer name it (logged: ``registry.archived``)."""
        return await self.commands.archive_spec(kind, name)

    # -- uploaded files (content-addressed; a task's ``resources`` name them) ----------
    async def put_file(
        self, data: bytes, filename: str = "", media_type: str = "application/octet-stream"
    ) -> dict[str, Any]:
        """Keep a file; its metadata (``id``: the SHA-256 of the bytes). FileTooLarge over
        ``max_file_bytes``."""
        return await asyncio.to_thread(self.files.put, data, filename, media_type)

    async def get_file(self, file_id: str) -> dict[str, Any] | None:
        return await asyncio.to_thread(self.files.info, file_id)

    async def file_content(self, file_id: str) -> bytes:
        """A file's bytes; NoSuchFile when there is none of that id."""
        return await asyncio.to_thread(self.files.read, file_id)

    # -- secrets (values go in, never out) ---------------------------------------------
    def put_secret(
        self, name: str, value: str, scope: str = "operator", create: bool = False
    ) -> SecretInfo:
        """Create or rotate a stored secret (see :meth:`core.vault.Vault.put`); answers
        what may be shown of it, never the value."""
        return self.vault.put(name, value, scope=scope, create=create)  # type: ignore[arg-type]

    def list_secrets(self, scope: str | None = None) -> list[SecretInfo]:
        """Names, scopes, creation and rotation times (of ``scope`` only, when given)."""
        return self.vault.list(scope)  # type: ignore[arg-type]

    # -- worker calls ------------------------------------------------------------------
    async def next_assignment(
        self, worker_id: str, result: SessionResult | None, finishing: list[str] | None = None
    ) -> Assignment | None:
        """Take a worker's last result (if any) and wait for its next assignment
        (``finishing``: its session finishing behind, reported later)."""
        return await self.dispatch.next_assignment(worker_id, result, finishing)

    async def report_result(self, worker_id: str, result: SessionResult) -> None:
        """The result of a session that finished behind the worker's next one."""
        await self.dispatch.report_result(worker_id, result)

    async def checkpoint(
        self,
        task_id: str,
        session_id: str,
        state: dict[str, Any],
        workspace: bytes,
        base: bytes | None = None,
    ) -> bool:
        """Keep a running session's latest resume point (workspace and loop state), and the
        task's starting workspace when the session sends it."""
        return await self.dispatch.checkpoint(task_id, session_id, state, workspace, base)

    async def ingest(self, batch: EventWire) -> int:
        """A running session's events, as the worker's ``EventBatcher`` sends them
        (:func:`core.events.encode_events`); those of sessions written off are dropped.
        Raises :class:`core.events.EventWireError` (and logs nothing) on a malformed batch."""
        return await self.dispatch.ingest(decode_events(batch))

    def heartbeat(self, worker_id: str) -> None:
        self.pool.beat(worker_id, time.time())

    # -- benchmarks only ---------------------------------------------------------------
    async def attach_simulated_workers(self, handle: Any, count: int, pool: PoolSpec) -> list[str]:
        """Register ``count`` workers that one process (``handle``, a Ray actor) runs itself,
        speaking the worker protocol (``next_assignment``, ``ingest``, ``heartbeat``) without
        a sandbox or a model: how ``benchmarks/knee.py`` drives one supervisor with many
        sessions. Their ids (``sw<n>``), to call in with.

        Not a worker actor's way in, nor an API client's (no route or Fleet method calls it).
        Nobody replaces these workers: one that stops beating is killed by the watchdog's
        heartbeat check (``handle``, so all of its process's). ``handle`` must also answer what
        the supervisor asks a worker (``deliver``, ``stop_session``, ``close``). ``pool`` joins
        the fleet's pools if none has its name (tasks may then ask for its labels; no worker
        actor is started for it)."""
        await self.start()
        if all(p.name != pool.name for p in self.settings.pool_specs()):
            self.settings.pools = [*self.settings.pool_specs(), pool]
        now = time.time()
        ids = [f"s{self.pool.new_id()}" for _ in range(count)]
        for worker_id in ids:
            self.pool.add(worker_id, handle, pool, now)
        return ids
