"""An in-process fleet for the HTTP routes' tests: a :class:`serve.ports.SupervisorPort`
without Ray.

It is built on the real plain parts: :class:`actors.scheduler.Scheduler` decides (its
:class:`actors.registry.Registry` keeps agents and environments), :class:`core.eventlog.
EventLog` writes Parquet (the reports read it), :class:`actors.session.SessionRunner` runs
sessions in local sandboxes with :class:`harness.hooks.InboxHooks`, :class:`actors.files.
FileStore` keeps uploaded files, :class:`actors.commands.Commands` answers steer, interrupt,
tool confirmations, custom tool results, cancel and review (the fake is its session link),
:class:`actors.artifacts.ArtifactStore` keeps what sessions leave (parked loop states, diffs,
workspaces: the results routes read them). What it
leaves out of :class:`actors.supervisor.Supervisor`: Ray actors (workers are coroutines),
recovery, the manager agent, memory, heartbeats and time limits. Its vault
(:class:`core.vault.Vault`) is beside the events directory unless ``vault_dir`` says.

Like an actor it has a thread and an event loop of its own: every port method runs there,
whichever loop (a TestClient's) awaits it. ``calls`` counts the calls by method name.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from actors import artifacts as art
from actors import results
from actors.artifacts import ArtifactStore
from actors.commands import Commands
from actors.dispatch import answered
from actors.files import FileStore
from actors.scheduler import Scheduler
from actors.session import SessionRunner
from actors.status import fleet_status, list_tasks
from actors.worker import HeldSession, session_result
from core.eventlog import EventLog
from core.events import Event, EventType
from core.records import Assignment, CommandResult, TaskRecord
from core.settings import FleetSettings, PoolSpec
from core.specs import EnvironmentSpec, FleetConfig, SavedReport
from core.vault import SecretInfo, Vault
from harness.hooks import InboxHooks
from sandboxes import create_sandbox
from sandboxes.base import Sandbox

T = TypeVar("T")
FAKE_KEEPS_WORKSPACE = (
    EventType.handoff,
    EventType.task_parked,
    EventType.session_idle,
    EventType.session_checkpointed,
)
"""Decisions whose events point at the session's stored workspace and loop state here."""


def on_fleet_loop(method: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """A port method: counted, and run on the fake's own loop (as an actor call would)."""

    @functools.wraps(method)
    async def call(self: FakeSupervisor, *args: Any) -> T:
        self.calls[method.__name__] += 1
        future = asyncio.run_coroutine_threadsafe(method(self, *args), self.loop)
        return await asyncio.wrap_future(future)

    return call


class FakeSupervisor:
    def __init__(self, settings: FleetSettings, config: FleetConfig | None = None) -> None:
        self.settings = settings
        self.config = config or FleetConfig()
        self.artifacts = ArtifactStore(f"{settings.events_dir.rstrip('/')}/_artifacts")
        self.files = FileStore(self.artifacts, settings.max_file_bytes)
        self.sched = Scheduler(self.config, settings, self.files.exists)
        if settings.vault_dir is None:  # beside the events, not in the home directory
            vault_dir = str(Path(settings.events_dir).parent / "vault")
            settings = settings.model_copy(update={"vault_dir": vault_dir})
        self.vault = Vault.of(settings, self.config.secrets)
        self.sched.vault = self.vault
        self.registry = self.sched.registry
        self.log = EventLog(settings.events_dir, settings.wal_dir, writer=settings.name)
        self.runner = SessionRunner(settings, "fake", self._sandbox)
        self.history: dict[str, list[Event]] = {}
        self.stream: list[Event] = []
        self.running: dict[str, str] = {}
        """worker id -> task id"""
        self.sessions: dict[str, HeldSession] = {}
        """worker id -> its running session (its task and the hooks that reach it)"""
        self.calls: Counter[str] = Counter()
        self.commands = Commands(self.sched, self._record_async, self)
        self.started_at = time.time()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._changed = asyncio.Event()  # bound to the loop that first waits on it
        pools = [(f"w{n}", pool) for pool in settings.pool_specs() for n in range(pool.workers)]
        self.pools = {f"{name}-{pool.name}": pool for name, pool in pools}
        self._workers = [
            asyncio.run_coroutine_threadsafe(self._work(w, p), self.loop)
            for w, p in self.pools.items()
        ]

    def close(self) -> None:
        """Stop the sessions and the loop."""
        for worker in self._workers:
            worker.cancel()
        for session in list(self.sessions.values()):
            if session.task is not None:
                self.loop.call_soon_threadsafe(session.task.cancel)
        time.sleep(0.2)  # let cancelled sessions close their sandboxes
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.log.close()

    # -- the port (shapes as actors.supervisor.Supervisor's) -----------------------------
    @on_fleet_loop
    async def get_settings(self) -> FleetSettings:
        return self.settings

    @on_fleet_loop
    async def saved_reports(self) -> dict[str, SavedReport]:
        return self.config.reports

    @on_fleet_loop
    async def get(self, task_ids: list[str]) -> list[TaskRecord | None]:
        return [self.sched.tasks.get(i) for i in task_ids]

    @on_fleet_loop
    async def submit(self, tasks: list[dict[str, Any]], batch: str | None) -> dict[str, Any]:
        return await self.commands.submit(tasks, batch)

    @on_fleet_loop
    async def list_tasks(
        self, state: str | None, label: str | None, limit: int, offset: int
    ) -> list[TaskRecord]:
        return list_tasks(self.sched, state, label, limit, offset)

    @on_fleet_loop
    async def cancel(self, task_id: str) -> CommandResult:
        return await self.commands.cancel(task_id)

    @on_fleet_loop
    async def review(self, task_id: str, approve: bool, message: str) -> CommandResult:
        return await self.commands.review(task_id, approve, message)

    @on_fleet_loop
    async def steer(self, task_id: str, text: str) -> CommandResult:
        return await self.commands.steer(task_id, text)

    @on_fleet_loop
    async def interrupt(self, task_id: str) -> CommandResult:
        return await self.commands.interrupt(task_id)

    @on_fleet_loop
    async def close_task(self, task_id: str) -> CommandResult:
        return await self.commands.close(task_id)

    @on_fleet_loop
    async def decide_approval(
        self, task_id: str, call_id: str, allow: bool, message: str
    ) -> CommandResult:
        return await self.commands.decide_approval(task_id, call_id, allow, message)

    @on_fleet_loop
    async def custom_tool_result(
        self, task_id: str, call_id: str, content: str | list[dict[str, Any]], is_error: bool
    ) -> CommandResult:
        return await self.commands.custom_tool_result(task_id, call_id, content, is_error)

    @on_fleet_loop
    async def events_since(
        self, task_id: str, after_seq: int, timeout_s: float, limit: int
    ) -> list[Event]:
        def found() -> list[Event]:
            return [e for e in self.history.get(task_id, []) if e.seq > after_seq]

        if task_id not in self.sched.tasks:
            return []
        await self._wait_for(lambda: bool(found()), timeout_s)
        return found()[:limit]

    @on_fleet_loop
    async def stream_since(
        self, cursor: int, timeout_s: float, limit: int
    ) -> tuple[list[Event], int]:
        """Keeps every event: no ring, so no gaps."""
        if cursor < 0 or cursor > len(self.stream):
            cursor = len(self.stream)
        if limit > 0:
            await self._wait_for(lambda: len(self.stream) > cursor, timeout_s)
        events = self.stream[cursor : cursor + max(0, limit)]
        return events, cursor + len(events)

    @on_fleet_loop
    async def results(self, task_id: str, what: results.ResultKind, path: str = "") -> Any:
        if task_id not in self.sched.tasks:
            raise results.NoResults(f"no session or task {task_id!r}")
        return await asyncio.to_thread(results.fetch, self.artifacts, task_id, what, path)

    @on_fleet_loop
    async def status(self) -> dict[str, Any]:
        workers = len(self.pools)
        return fleet_status(
            self.sched, self.running, workers, self.settings, self.started_at, time.time()
        )

    @on_fleet_loop
    async def flush(self) -> int:
        pending = self.log.start_roll()
        if pending is None:
            return 0
        await asyncio.to_thread(self.log.finish_roll, *pending)
        return len(pending[1])

    @on_fleet_loop
    async def put_spec(
        self, kind: str, spec: dict[str, Any], expected_version: int | None
    ) -> dict[str, Any]:
        return await self.commands.put_spec(kind, spec, expected_version)

    @on_fleet_loop
    async def get_spec(
        self, kind: str, name: str, version: int | None = None
    ) -> dict[str, Any] | None:
        return self.registry.get(kind, name, version)

    @on_fleet_loop
    async def spec_versions(self, kind: str, name: str) -> list[dict[str, Any]] | None:
        return self.registry.versions(kind, name)

    @on_fleet_loop
    async def list_specs(self, kind: str, include_archived: bool) -> list[dict[str, Any]]:
        return self.registry.list(kind, include_archived)

    @on_fleet_loop
    async def archive_spec(self, kind: str, name: str) -> CommandResult:
        return await self.commands.archive_spec(kind, name)

    @on_fleet_loop
    async def put_file(self, data: bytes, filename: str, media_type: str) -> dict[str, Any]:
        return self.files.put(data, filename, media_type)

    @on_fleet_loop
    async def get_file(self, file_id: str) -> dict[str, Any] | None:
        return self.files.info(file_id)

    @on_fleet_loop
    async def file_content(self, file_id: str) -> bytes:
        return self.files.read(file_id)

    @on_fleet_loop
    async def put_secret(self, name: str, value: str, scope: str, create: bool) -> SecretInfo:
        return self.vault.put(name, value, scope=scope, create=create)  # type: ignore[arg-type]

    @on_fleet_loop
    async def list_secrets(self, scope: str | None) -> list[SecretInfo]:
        return self.vault.list(scope)  # type: ignore[arg-type]

    # -- the fleet's loop ----------------------------------------------------------------
    async def _record_async(self, events: list[Event]) -> None:
        self._record(events)

    def deliver(self, worker_id: str, session_id: str | None, kind: str, data: Any) -> None:
        """The :class:`actors.commands.SessionLink` push: to the session's hooks."""
        self.sessions[worker_id].push(kind, data)

    def stop(self, worker_id: str, session_id: str | None, reason: str = "") -> None:
        """The :class:`actors.commands.SessionLink` stop: cancel the session's coroutine."""
        task = self.sessions[worker_id].task
        if task is not None:
            task.cancel()

    def _record(self, events: list[Event]) -> None:
        """Redact, number, apply, log and keep events, then wake whoever waits (all on the
        loop)."""
        self.vault.redact_events(events)
        for event in events:
            event.seq = self.sched.next_seq(event.task_id)
            self.sched.apply(event)
            self.history.setdefault(event.task_id, []).append(event)
        self.log.append(events)
        self.stream.extend(events)
        if events:
            self._changed.set()
            self._changed = asyncio.Event()

    async def _wait_for(self, ready: Callable[[], bool], timeout_s: float) -> None:
        """Until ``ready()`` (checked after each recorded change) or ``timeout_s`` passed."""
        deadline = time.monotonic() + timeout_s
        while not ready() and (left := deadline - time.monotonic()) > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)

    def worker_of(self, task_id: str) -> str | None:
        """The :class:`actors.commands.SessionLink` lookup: the worker running the task."""
        return next((w for w, t in self.running.items() if t == task_id), None)

    async def _sandbox(self, environment: EnvironmentSpec, name: str) -> Sandbox:
        sandbox = create_sandbox(self.settings.sandbox, environment, name=name)
        await sandbox.start()
        return sandbox

    async def _work(self, worker: str, pool: PoolSpec) -> None:
        """A worker: take the next task that fits, run its session, report, again."""
        while True:
            running = [self.sched.tasks[t] for t in self.running.values()]
            got = self.sched.assign(worker, pool, running)
            if got is None:  # backoffs end unannounced: look again now and then
                await self._wait_for(lambda: False, 0.1)
                continue
            assignment, event = got
            if assignment is not None:  # a parked session resumes where it stopped
                record = self.sched.tasks[assignment.task.id]
                art.load_into(  # (read before the assignment clears them)
                    self.artifacts,
                    assignment,
                    record.workspace_ref or record.base_ref,
                    record.loop_state_ref if record.workspace_ref else None,
                    record.history_ref,
                )
                if assignment.workspace is None:  # it seeds: the task's uploaded files
                    assignment.resources = self.files.resources(assignment.task)
            self._record([event])
            if assignment is not None:
                await self._session(assignment, worker)

    async def _session(self, a: Assignment, worker: str) -> None:
        session = HeldSession(a, InboxHooks())
        session.task = asyncio.create_task(
            self.runner.run(a, lambda e: self._record([e]), session.hooks)
        )
        self.running[worker] = a.task.id
        self.sessions[worker] = session
        try:
            result = await session_result(session, worker)
        finally:
            del self.running[worker], self.sessions[worker]
        refs = art.store_result(self.artifacts, result) if art.has_artifacts(result) else {}
        decided = self.sched.conclude(result)
        for event in decided:
            if event.type in FAKE_KEEPS_WORKSPACE and refs:
                event.payload.update(refs)
        if refs.get("diff_ref"):
            decided.insert(0, art.diff_event(self.artifacts, result, refs["diff_ref"]))
        self._record(decided)
        parked_now = any(e.type == EventType.task_parked for e in decided)
        if parked_now and answered(self.sched.tasks[a.task.id]):
            self._record(self.sched.unpark(a.task.id))  # decided (or answered) as it parked
