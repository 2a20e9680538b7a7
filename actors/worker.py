"""The Worker actor: pulls assignments from the supervisor and runs them, one at a time.

Thin on purpose: the session logic is in :mod:`actors.session`. Events are buffered and sent
to the supervisor in batches; the last batch of a session rides on its result, so a short
session costs one round trip.

Once a session's live part is over (its gate passed, or it failed, parked or handed off),
its finish (final snapshot, diff, container removal) runs behind the next session: the
worker tells the supervisor the task is finishing as it asks for its next assignment, and
reports the result when the finish is done. At most one session finishes at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import traceback
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import ray

from actors.metrics import CallMetrics, ray_metrics
from actors.session import SessionRunner, carry_late_decision
from core.events import Event, EventType, encode_events
from core.records import Assignment, SessionResult
from core.settings import FleetSettings
from core.specs import EnvironmentSpec
from core.vault import Redactor
from harness.hooks import Decision, InboxHooks, ToolResult, content_text
from sandboxes import create_sandbox
from sandboxes.base import Sandbox
from sandboxes.pool import WarmPool

log = logging.getLogger(__name__)


@dataclass
class HeldSession:
    """A session a worker holds: running, or finishing behind the next one."""

    assignment: Assignment
    hooks: InboxHooks
    task: asyncio.Task[SessionResult] | None = None
    stop_reason: str | None = None
    figures: dict[str, Any] = field(default_factory=dict)

    def push(self, kind: str, data: Any) -> None:
        """What the supervisor sends the session: a message, an interrupt, a decision or a
        custom tool's result."""
        if kind == "message":
            self.hooks.push_message(str(data))
        elif kind == "interrupt":
            self.hooks.push_interrupt()
        elif kind == "decision":
            decision = Decision(bool(data["allow"]), data["message"], recorded=True)
            self.hooks.push_decision(data["call_id"], decision)
        elif kind == "tool_result":
            result = ToolResult(content_text(data["content"]), bool(data["is_error"]))
            self.hooks.push_tool_result(data["call_id"], result)


async def session_result(session: HeldSession, worker_id: str) -> SessionResult:
    """The result of a session whose task has ended: a stopped one fails with the reason
    it was stopped for; one that raised (a bug past the runner's own handling) fails with
    the error, so that its task is retried rather than left running."""
    a = session.assignment
    assert session.task is not None
    try:
        result = await session.task
        carry_late_decision(result, session.hooks)  # one that arrived as it ended
        return result
    except asyncio.CancelledError:
        reason = session.stop_reason or "session stopped by the supervisor"
    except Exception as exc:
        redact = Redactor(a.secret_values()).text  # the log, too, never holds a secret
        trace = redact("".join(traceback.format_exception(exc)))
        log.error("session %s of task %s failed:\n%s", a.session_id, a.task.id, trace)
        reason = "session error: " + redact(f"{type(exc).__name__}: {exc}")
    return SessionResult(
        task_id=a.task.id,
        session_id=a.session_id,
        attempt=a.attempt,
        worker=worker_id,
        status="failed",
        reason=reason,
    )


def reap_node_containers(own: bool = False) -> int:
    """Remove sandbox containers of this node: those whose worker process is dead, or
    (``own``) every one this process started. 0 without Docker: never the worker's problem."""
    try:
        from sandboxes.docker import OWNER, reap_containers, reap_orphans

        return reap_containers(owner=OWNER) if own else reap_orphans()
    except Exception as exc:  # no engine here, or it failed
        log.debug("removing sandbox containers skipped: %s", exc)
        return 0


VERDICTS = frozenset({EventType.gate_passed, EventType.gate_failed})
"""Events that decide a task: they reach the log only with the session's result."""


class EventBatcher:
    """Buffers a session's events and ships them every ``interval_s`` while it runs, in the
    wire form of :func:`core.events.encode_events` (what the supervisor's ``ingest`` reads).

    From the gate's verdict on, nothing more is shipped early: the verdict and what follows
    ride on the session's result, so the log never holds a gate that passed in a session
    whose result was lost (the supervisor died): that session is run again, and exactly one
    session of the task has passed the gate."""

    def __init__(self, supervisor: Any, interval_s: float) -> None:
        self.supervisor = supervisor
        self.interval_s = interval_s
        self.buffer: list[Event] = []
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._holding = False

    def add(self, event: Event) -> None:
        self.buffer.append(event)
        self._holding = self._holding or event.type in VERDICTS
        if self._task is None and not self._holding:
            self._task = asyncio.create_task(self._ship_later())

    async def _ship_later(self) -> None:
        await asyncio.sleep(self.interval_s)
        async with self._lock:
            self._task = None
            if self._holding:
                return
            batch, self.buffer = self.buffer, []
            if batch:
                await self.supervisor.ingest.remote(encode_events(batch))

    async def drain(self) -> list[Event]:
        """Stop shipping and hand back what is left (after any batch in flight landed)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        async with self._lock:
            batch, self.buffer = self.buffer, []
        return batch


@ray.remote(max_restarts=0)
class Worker:
    def __init__(
        self,
        worker_id: str,
        supervisor: Any,
        settings: FleetSettings,
        prewarm: list[EnvironmentSpec] | None = None,
    ) -> None:
        self.worker_id = worker_id
        self.supervisor = supervisor
        self.settings = settings
        where = {"node_id": ray.get_runtime_context().get_node_id(), "host": socket.gethostname()}
        self.pool = WarmPool(
            self._new_sandbox, size=settings.warm_pool, reuse=settings.sandbox_reuse
        )
        self.runner = SessionRunner(
            settings,
            worker_id,
            self._sandbox,
            where,
            checkpoints=self._checkpoint,
            release=self.pool.release,  # containers are removed behind the next session
        )
        self.calls = CallMetrics(ray_metrics(settings.name, True)) if settings.metrics else None
        """The metrics of the model turns and tool calls this worker's sessions make."""
        self._prewarm = prewarm or []
        self._made = 0
        self._starts_reported = 0
        """The warm pool's ``started`` count when the last session ended (metrics)."""
        self._figures: ContextVar[dict[str, Any]] = ContextVar("sandbox_figures")
        """The session's sandbox figures (whether it was warm), set in the session's task."""
        self._sessions: dict[str, HeldSession] = {}
        """Session id -> the session running and the one finishing behind it, if any."""
        self._behind: asyncio.Task[None] | None = None
        """The finish (and report) of the session finishing behind the running one."""
        self._beat: asyncio.Task[None] | None = None
        self._closing = False
        if settings.sandbox in ("docker", "auto"):
            # Containers of crashed workers of this node (a worker reaps only its own node).
            threading.Thread(target=reap_node_containers, name="reap-orphans", daemon=True).start()

    def _new_sandbox(self, environment: EnvironmentSpec) -> Sandbox:
        self._made += 1
        return create_sandbox(
            self.settings.sandbox,
            environment,
            name=f"{self.worker_id}-{self._made}",
            output_limit=self.settings.sandbox_output_limit,
            fleet=self.settings.name,
        )

    async def _sandbox(self, environment: EnvironmentSpec, name: str) -> Sandbox:
        """A started sandbox: from the warm pool, which then starts the next one."""
        hits = self.pool.hits
        sandbox = await self.pool.acquire(environment)
        reused = getattr(sandbox, "resets", 0) > 0
        # Warm: it did not wait for a container to start (a reset takes milliseconds).
        self._figures.get({}).update(warm=self.pool.hits > hits or reused, reused=reused)
        return sandbox

    def _sandbox_figures(self, event: Event, figures: dict[str, Any]) -> Event:
        """``session.ended`` says whether the session's sandbox was warm (``sandbox_warm``),
        whether it had served an earlier session (``sandbox_reused``) and how many
        sandboxes this worker started since the last one ended (``sandboxes_started``): the
        fleet's sandbox metrics."""
        if event.type == EventType.session_ended:
            if "warm" in figures:
                event.payload["sandbox_warm"] = figures["warm"]
                event.payload["sandbox_reused"] = figures["reused"]
            event.payload["sandboxes_started"] = self.pool.started - self._starts_reported
            self._starts_reported = self.pool.started
        return event

    async def _checkpoint(
        self,
        task_id: str,
        session_id: str,
        state: dict[str, Any],
        workspace: bytes,
        base: bytes | None = None,
    ) -> None:
        await self.supervisor.checkpoint.remote(task_id, session_id, state, workspace, base)

    async def close(self) -> None:
        """Remove this worker's containers, idle and in use (the supervisor calls this before
        it kills the worker). A session running now loses its sandbox; its result is not
        reported, so the task stays running in the log (recovery requeues it)."""
        self._closing = True
        await self.pool.close()
        if self.settings.sandbox in ("docker", "auto"):
            await asyncio.to_thread(reap_node_containers, own=True)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_s)
            with contextlib.suppress(Exception):
                await self.supervisor.heartbeat.remote(self.worker_id)

    async def work(self) -> None:
        """Pull, run, report, until the supervisor says stop (returns None)."""
        if self._prewarm:  # the pool keeps ``warm_pool`` idle in all: warm the first one
            self.pool.fill(self._prewarm[0])
        self._beat = asyncio.create_task(self._heartbeat())
        result: SessionResult | None = None
        finishing: list[str] | None = None
        while True:
            assignment: Assignment | None = await self.supervisor.next_assignment.remote(
                self.worker_id, result, finishing
            )
            if assignment is None:
                await self._settle()
                return
            result = await self._run_one(assignment)
            # None: it finishes behind the next one (task and session ids for the supervisor)
            finishing = None if result else [assignment.task.id, assignment.session_id]
            if self._closing:
                return

    async def _run_one(self, assignment: Assignment) -> SessionResult | None:
        """Run a session until its live part is over: its result, or None when it finishes
        behind (it reports its result itself, see ``_finish_behind``)."""
        batcher = EventBatcher(self.supervisor, self.settings.worker_event_batch_s)
        session = HeldSession(assignment, InboxHooks())
        self._sessions[assignment.session_id] = session

        def sink(event: Event) -> None:
            if self.calls is not None:
                self.calls.observe(event)
            batcher.add(self._sandbox_figures(event, session.figures))

        live_ended = asyncio.Event()
        session.task = asyncio.create_task(self._session(session, sink, live_ended))
        live = asyncio.create_task(live_ended.wait())
        try:
            await asyncio.wait({session.task, live}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            live.cancel()
        if session.task.done():
            return await self._collect(session, batcher)
        await self._settle()  # one finish behind at a time
        self._behind = asyncio.create_task(self._finish_behind(session, batcher))
        return None

    async def _session(
        self, session: HeldSession, sink: Any, live_ended: asyncio.Event
    ) -> SessionResult:
        self._figures.set(session.figures)  # in this session's task only
        return await self.runner.run(session.assignment, sink, session.hooks, live_ended)

    async def _collect(self, session: HeldSession, batcher: EventBatcher) -> SessionResult:
        """The session's result, once it ended, with the events not shipped yet."""
        try:
            result = await session_result(session, self.worker_id)
        finally:
            self._sessions.pop(session.assignment.session_id, None)
        result.events = await batcher.drain()
        return result

    async def _finish_behind(self, session: HeldSession, batcher: EventBatcher) -> None:
        result = await self._collect(session, batcher)
        try:
            await self.supervisor.report_result.remote(self.worker_id, result)
        except Exception as exc:  # the supervisor died: its next life runs the task again
            log.warning("reporting the result of %s failed: %s", result.task_id, exc)

    async def _settle(self) -> None:
        """Wait for the session finishing behind, if any, to be reported."""
        if self._behind is not None:
            with contextlib.suppress(Exception):
                await self._behind
            self._behind = None

    def deliver(self, session_id: str, kind: str, data: Any) -> bool:
        """A push from the supervisor to a session of this worker: message, interrupt,
        decision, custom tool result."""
        session = self._sessions.get(session_id)
        if session is None:
            return False
        session.push(kind, data)
        return True

    async def stop_session(self, session_id: str, reason: str = "") -> bool:
        """Stop the session ``session_id`` if this worker holds it, running or finishing
        (its attempt fails with reason)."""
        session = self._sessions.get(session_id)
        if session is None or session.task is None or session.task.done():
            return False
        session.stop_reason = reason or None
        session.task.cancel()
        return True

    def pid(self) -> int:
        import os

        return os.getpid()
