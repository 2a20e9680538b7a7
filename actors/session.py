"""One session, start to end: sandbox up, workspace seeded, agent loop, gate, sandbox down.

Plain logic: the Worker actor calls it; tests call it directly.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from fleet.agent import AgentLoop, SessionOutcome
from fleet.events import Event, EventType
from fleet.hooks import SessionHooks
from fleet.models import make_model
from fleet.records import Assignment, SessionResult
from fleet.settings import FleetSettings
from fleet.specs import EnvironmentSpec
from fleet.tools import ToolBox, ToolContext, truncate
from sandboxes.base import Sandbox, tar_directory, tar_files

SandboxFactory = Callable[[EnvironmentSpec, str], Awaitable[Sandbox]]
"""Returns a started sandbox for an environment; the name labels it."""

EventSink = Callable[[Event], None]


class SessionRunner:
    def __init__(self, settings: FleetSettings, worker_id: str, sandboxes: SandboxFactory) -> None:
        self.settings = settings
        self.worker_id = worker_id
        self.sandboxes = sandboxes

    async def run(
        self, a: Assignment, sink: EventSink, hooks: SessionHooks | None = None
    ) -> SessionResult:
        started = time.perf_counter()
        task = a.task

        def emit(type_: EventType, payload: dict[str, Any] | None = None, **typed: Any) -> None:
            sink(
                Event(
                    task_id=task.id,
                    type=type_,
                    session_id=a.session_id,
                    attempt=a.attempt,
                    worker=self.worker_id,
                    payload=payload or {},
                    **typed,
                )
            )

        def result(status: str, reason: str, outcome: SessionOutcome | None) -> SessionResult:
            duration_ms = (time.perf_counter() - started) * 1000
            payload: dict[str, Any] = {"status": status, "reason": reason}
            if outcome:
                payload |= {
                    "outcome": outcome.status,
                    "summary": outcome.summary,
                    "turns": outcome.turns,
                    "tool_calls": outcome.tool_calls,
                }
            emit(EventType.session_ended, payload, duration_ms=duration_ms)
            return SessionResult(
                task_id=task.id,
                session_id=a.session_id,
                attempt=a.attempt,
                worker=self.worker_id,
                status=status,  # type: ignore[arg-type]
                reason=reason,
                outcome=outcome,
                duration_ms=duration_ms,
            )

        emit(
            EventType.session_started,
            {"agent": a.agent.name, "model": a.agent.model, "environment": a.environment.name},
        )
        try:
            sandbox = await self.sandboxes(a.environment, f"{task.id}-{a.attempt}")
        except Exception as exc:
            return result("failed", f"sandbox failed to start: {exc}", None)
        try:
            await self._seed(sandbox, a)
            try:
                toolbox = ToolBox(a.agent.tools)
                model = make_model(a.agent, script=task.script, attempt=a.attempt)
            except Exception as exc:
                return result("failed", f"agent {a.agent.name!r} cannot start: {exc}", None)
            ctx = ToolContext(sandbox=sandbox, output_limit=self.settings.tool_output_limit)
            loop = AgentLoop(
                instructions=a.agent.instructions,
                model=model,
                toolbox=toolbox,
                ctx=ctx,
                emit=emit,
                max_turns=a.max_turns,
                time_limit_s=a.time_limit_s,
            )
            try:
                outcome = await loop.run(task.prompt)
            finally:
                aclose = getattr(model, "aclose", None)
                if aclose is not None:
                    await aclose()
            if outcome.status != "finished":
                return result("failed", outcome.reason, outcome)
            if task.gate:
                gate = await sandbox.exec(task.gate, timeout_s=min(a.time_limit_s, 600.0))
                output = truncate(gate.stdout + gate.stderr, self.settings.tool_output_limit)
                passed = gate.exit_code == 0
                emit(
                    EventType.gate_passed if passed else EventType.gate_failed,
                    {"command": task.gate, "output": output},
                    exit_code=gate.exit_code,
                    duration_ms=gate.duration_ms,
                )
                if not passed:
                    return result("failed", f"gate failed (exit {gate.exit_code})", outcome)
            return result("succeeded", "", outcome)
        except (
            Exception
        ) as exc:  # a broken sandbox mid-session: the attempt fails, the worker lives
            return result("failed", f"session error: {type(exc).__name__}: {exc}", None)
        finally:
            await sandbox.close()

    async def _seed(self, sandbox: Sandbox, a: Assignment) -> None:
        """Put the task's starting files (repository, environment files, task files) in place."""
        if a.task.repo:
            repo = Path(a.task.repo).expanduser()
            if not repo.is_dir():
                raise FileNotFoundError(f"task repo {a.task.repo} is not a directory")
            await sandbox.restore(tar_directory(repo))
        env_files = {k: v for k, v in a.environment.files.items() if not k.startswith("/")}
        files = {**env_files, **a.task.files}
        if files:
            await sandbox.restore(tar_files({k: v.encode() for k, v in files.items()}))
