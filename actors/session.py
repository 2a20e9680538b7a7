"""One session, start to end: sandbox up, workspace seeded, agent loop, gate, sandbox down.

Plain logic: the Worker actor calls it; tests call it directly.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from actors.delivery import Checkout, GitError
from actors.delivery import checkout as git_checkout
from actors.reviewer import REVIEW_INSTRUCTIONS, Verdict, reviewer_prompt, reviewer_toolbox
from core.errors import FleetError
from core.events import Event, EventType
from core.records import Assignment, SessionResult
from core.settings import FleetSettings
from core.specs import EnvironmentSpec, RepoSpec
from core.vault import Redactor
from harness.diffs import workspace_diff
from harness.hooks import Decision, InboxHooks, SessionHooks, ToolResult, content_text
from harness.loop import AgentLoop, SessionOutcome, StateFn, carry_decision, carry_tool_result
from harness.mcp import McpError, McpTools
from harness.models import close_model, make_model
from harness.skills import SKILLS_DIR, Skill, install_skills, load_skills
from harness.tools import ToolContext, truncate
from sandboxes.base import Sandbox, SandboxLost, SessionSandbox, tar_directory, tar_files

log = logging.getLogger("fleet.session")

SandboxFactory = Callable[[EnvironmentSpec, str], Awaitable[Sandbox]]
"""Returns a started sandbox for an environment; the name labels it."""

EventSink = Callable[[Event], None]
CheckpointSink = Callable[[str, str, dict[str, Any], bytes, bytes | None], Awaitable[Any]]
SandboxRelease = Callable[[Sandbox], Awaitable[None]]
"""Where a session's sandbox goes when the session is done with it (default: closed there
and then; a worker closes it in the background instead)."""
"""``(task_id, session_id, loop_state, workspace_archive, base)``: keeps a resume point (and
the task's starting workspace, sent once by a session that seeded it)."""


class Checkpointer:
    """The agent loop's checkpoint hook: at most one resume point per ``interval_s``.

    When one is due, the loop's state is built and the workspace snapshotted while the loop
    waits (nothing runs in between, so the two match: a resume never repeats a command);
    sending them goes on in the background, one send at a time (a failed checkpoint only
    loses a resume point). A turn with no checkpoint due costs a clock read."""

    def __init__(
        self,
        sink: CheckpointSink,
        task_id: str,
        session_id: str,
        sandbox: Sandbox,
        interval_s: float,
        base: bytes | None = None,
    ) -> None:
        self.sink = sink
        self.base = base
        """The task's starting workspace, sent with the first checkpoint (then None)."""
        self.task_id = task_id
        self.session_id = session_id
        self.sandbox = sandbox
        self.interval_s = interval_s
        self.last = time.monotonic()
        self.taken = 0
        self.sending: asyncio.Task[None] | None = None

    def due(self) -> bool:
        if time.monotonic() - self.last < self.interval_s:
            return False
        return self.sending is None or self.sending.done()

    def __call__(self, state: StateFn) -> Awaitable[None] | None:
        if not self.due():
            return None
        self.last = time.monotonic()
        return self._take(state())

    async def _take(self, state: dict[str, Any]) -> None:
        try:
            workspace = await self.sandbox.snapshot()
        except SandboxLost:
            raise  # the session cannot go on: let the loop end it
        except Exception as exc:
            log.warning("checkpoint snapshot of %s failed: %s", self.task_id, exc)
            return
        self.taken += 1
        self.sending = asyncio.create_task(self._send(state, workspace))

    async def _send(self, state: dict[str, Any], workspace: bytes) -> None:
        base, self.base = self.base, None
        try:
            await self.sink(self.task_id, self.session_id, state, workspace, base)
        except Exception as exc:
            log.warning("checkpoint of %s failed: %s", self.task_id, exc)


def carry_late_decision(result: SessionResult, hooks: SessionHooks) -> bool:
    """When the session parked on an approval (or a custom tool's result) and its decision
    (or result) has reached ``hooks`` since, too late for the loop, move it into the parked
    state so it is not lost: the resumed session uses it. True when one was carried."""
    outcome = result.outcome
    if outcome is None or outcome.status != "parked" or not outcome.state:
        return False
    pending = outcome.state.get("pending_approval") or {}
    call_id = pending.get("call_id")
    if call_id and not pending.get("decision"):
        decision = hooks.take_decision(call_id)
        return decision is not None and carry_decision(outcome.state, call_id, decision)
    waiting = outcome.state.get("pending_custom_tool") or {}
    call_id = waiting.get("call_id")
    if call_id and not waiting.get("result"):
        answer = hooks.take_tool_result(call_id)
        return answer is not None and carry_tool_result(outcome.state, call_id, answer)
    return False


class SessionRecorder:
    """Stamps a session's events and builds its result."""

    def __init__(self, a: Assignment, worker_id: str, sink: EventSink) -> None:
        self.a = a
        self.worker_id = worker_id
        self.sink = sink
        self.started = time.perf_counter()
        self.sandbox: str | None = None
        """Where the session ran (a container's name, a local workspace), once known."""

    def emit(self, type_: EventType, payload: dict[str, Any] | None = None, **typed: Any) -> None:
        self.sink(
            Event(
                task_id=self.a.task.id,
                type=type_,
                session_id=self.a.session_id,
                attempt=self.a.attempt,
                worker=self.worker_id,
                payload=payload or {},
                **typed,
            )
        )

    def result(
        self,
        status: str,
        reason: str,
        outcome: SessionOutcome | None = None,
        **extra: Any,
    ) -> SessionResult:
        duration_ms = (time.perf_counter() - self.started) * 1000
        payload: dict[str, Any] = {"status": status, "reason": reason, "agent": self.a.agent.name}
        if self.sandbox:
            payload["sandbox"] = self.sandbox
        if outcome:
            before = self.a.loop_state or {}  # a resumed loop counts on from its state
            payload |= {
                "outcome": outcome.status,
                "summary": outcome.summary,
                "turns": outcome.turns - int(before.get("turns", 0)),
                "tool_calls": outcome.tool_calls - int(before.get("tool_calls", 0)),
            }
        self.emit(EventType.session_ended, payload, duration_ms=duration_ms)
        return SessionResult(
            task_id=self.a.task.id,
            session_id=self.a.session_id,
            attempt=self.a.attempt,
            worker=self.worker_id,
            status=status,  # type: ignore[arg-type]
            reason=reason,
            outcome=outcome,
            duration_ms=duration_ms,
            interactive=self.a.task.interactive,
            **extra,
        )


class SessionRunner:
    def __init__(
        self,
        settings: FleetSettings,
        worker_id: str,
        sandboxes: SandboxFactory,
        where: dict[str, str] | None = None,
        checkpoints: CheckpointSink | None = None,
        release: SandboxRelease | None = None,
    ) -> None:
        self.settings = settings
        self.worker_id = worker_id
        self.sandboxes = sandboxes
        self.release = release
        self.checkpoints = checkpoints
        self.where = where or {}
        """Where the worker runs (node id, host), recorded with each session."""

    async def run(
        self,
        a: Assignment,
        sink: EventSink,
        hooks: SessionHooks | None = None,
        live_ended: asyncio.Event | None = None,
    ) -> SessionResult:
        """Run one session. ``live_ended`` is set when what is left is its finish (the
        gate, if any, has passed: the final snapshot, the diff, the sandbox's release), which
        needs nobody: a worker then takes its next task while this one finishes."""
        # The session's secret values never leave it: redacted from its events, its
        # commands' output, the files it reads, its checkpoints and its result.
        redactor = Redactor(a.secret_values())
        result = await self._run(a, redacting(sink, redactor), hooks, live_ended)
        return redact_result(result, redactor)

    async def _run(
        self,
        a: Assignment,
        sink: EventSink,
        hooks: SessionHooks | None = None,
        live_ended: asyncio.Event | None = None,
    ) -> SessionResult:
        rec = SessionRecorder(a, self.worker_id, sink)
        checkout: Checkout | None = None
        checkout_error = ""
        if a.workspace is None and isinstance(a.task.repo, RepoSpec):
            try:  # on the host, with credentials the sandbox never gets
                checkout = await git_checkout(a.task.repo, a.task.id, self.settings)
            except GitError as exc:
                checkout_error = f"repository checkout failed: {exc}"
        rec.emit(
            EventType.session_started,
            {
                "agent": a.agent.name,
                "model": a.agent.model,
                "environment": a.environment.name,
                "sandbox_kind": self.settings.sandbox,  # docker, or local: not isolated
                "stage": a.stage,
                "resumed": a.loop_state is not None,
                "secrets": sorted(a.secrets),  # names only
                **self.where,
                **(checkout.payload() if checkout else {}),
            },
        )
        if checkout_error:
            return rec.result("failed", checkout_error)
        hooks = hooks or SessionHooks()
        try:
            sandbox = await self.sandboxes(a.environment, f"{a.task.id}-{a.attempt}")
        except Exception as exc:
            return rec.result("failed", f"sandbox failed to start: {exc}")
        rec.sandbox = getattr(sandbox, "container_name", None) or getattr(sandbox, "workdir", None)
        own = SessionSandbox(sandbox, a.environment_secrets(), Redactor(a.secret_values()))
        try:
            result = await self._in_sandbox(a, own, rec, hooks, checkout, live_ended)
        except SandboxLost as exc:
            result = rec.result("failed", f"sandbox lost: {exc}")
        except Exception as exc:
            # a broken sandbox mid-session: the attempt fails, the worker lives
            result = rec.result("failed", f"session error: {type(exc).__name__}: {exc}")
        finally:  # the result holds all the session needs from its sandbox now
            await (self.release(sandbox) if self.release else sandbox.close())
        carry_late_decision(result, hooks)  # after the last await here
        return result

    async def _in_sandbox(
        self,
        a: Assignment,
        sandbox: Sandbox,
        rec: SessionRecorder,
        hooks: SessionHooks,
        checkout: Checkout | None = None,
        live_ended: asyncio.Event | None = None,
    ) -> SessionResult:
        if a.workspace is not None:
            await sandbox.restore(a.workspace)
        else:
            await self._seed(sandbox, a, checkout)
        try:
            skills = load_skills(a.agent.skills, self.settings.skill_dirs)
        except Exception as exc:
            return rec.result("failed", f"agent {a.agent.name!r} cannot start: {exc}")
        # Every session installs its agent's skills (a handoff's target too), before the
        # baseline, so that .skills/ is not part of the session's diff.
        await install_skills(sandbox, skills)
        baseline = await sandbox.snapshot() if self.settings.capture_diff or a.reviewer else None
        # Diffs are against the task's start: this session's when it seeded the workspace,
        # else the one it was given (a handed-over agent's own skills left out).
        task_base = a.base if a.base is not None else baseline
        skip = SKILLS_DIR if a.base is not None else None
        seeded = baseline if a.workspace is None else None
        if isinstance(hooks, InboxHooks):
            for message in a.messages:
                hooks.push_message(message)
            if a.decision:
                hooks.push_decision(
                    a.decision["call_id"],
                    Decision(a.decision["allow"], a.decision["message"], recorded=True),
                )
            if a.tool_result:
                answer = ToolResult(
                    content_text(a.tool_result["content"]), bool(a.tool_result.get("is_error"))
                )
                hooks.push_tool_result(a.tool_result["call_id"], answer)
        try:
            if turn_ended(a):  # closed with nothing new to say: straight to the gate
                outcome = ended_turn(a.loop_state or {})
            else:
                outcome = await self._agent(a, sandbox, rec, hooks, skills, seeded)
        except AgentStartError as exc:
            return rec.result("failed", str(exc))

        async def finish(status: str, reason: str, feedback: str = "") -> SessionResult:
            if live_ended is not None:
                live_ended.set()
            extra: dict[str, Any] = {"feedback": feedback}
            keep = a.keep_workspace or outcome.status in ("handoff", "parked", "interrupted")
            try:  # every session's final workspace is kept: the task's results
                after = await sandbox.snapshot()
            except SandboxLost as exc:
                if not keep and baseline is None:  # only the results lack it: the result stands
                    return rec.result(status, reason, outcome, **extra)
                # nothing to keep or resume from: the attempt fails
                lost = reason if reason.startswith("sandbox lost") else f"sandbox lost: {exc}"
                ended = outcome.model_copy(update={"status": "error", "state": None})
                return rec.result("failed", lost, ended)
            extra["workspace"] = after
            if keep and seeded is not None:  # a later session continues from this one
                extra["base"] = seeded
            if baseline is not None and self.settings.capture_diff:
                extra["diff"], extra["changed_files"] = workspace_diff(task_base, after, skip=skip)
            return rec.result(status, reason, outcome, **extra)

        if outcome.status == "handoff":
            return await finish("succeeded", "")
        if outcome.status != "finished":
            return await finish("failed", outcome.reason)
        # An interactive task's turn ends idle: proof of work runs when it is closed (and
        # after each turn with gate_each_turn).
        turn_only = a.task.interactive and not a.closing
        if not turn_only or a.task.gate_each_turn:
            refused = await self._proof(a, sandbox, rec, task_base)
            if refused is not None:
                return await finish("failed", *refused)
        if turn_only:
            outcome = outcome.model_copy(update={"status": "idle"})
        return await finish("succeeded", "")

    async def _proof(
        self, a: Assignment, sandbox: Sandbox, rec: SessionRecorder, task_base: bytes | None
    ) -> tuple[str, str] | None:
        """Run the gate, then the reviewer agent; ``(reason, feedback)`` when one refuses."""
        if a.gate:
            gate_timeout_s = min(a.time_limit_s, self.settings.gate_timeout_s)
            gate = await sandbox.exec(a.gate, timeout_s=gate_timeout_s)
            output = truncate(gate.stdout + gate.stderr, self.settings.tool_output_limit)
            passed = gate.exit_code == 0
            rec.emit(
                EventType.gate_passed if passed else EventType.gate_failed,
                {"command": a.gate, "output": output},
                exit_code=gate.exit_code,
                duration_ms=gate.duration_ms,
            )
            if not passed:
                feedback = f"The gate `{a.gate}` failed (exit {gate.exit_code}):\n{output[-2000:]}"
                return f"gate failed (exit {gate.exit_code})", feedback
        if a.reviewer is not None:
            verdict = await self._review(a, sandbox, rec, task_base)
            if verdict.approved is False:
                return (
                    "reviewer requested changes",
                    f"The reviewer ({a.reviewer.name}) asked for changes: {verdict.comments}",
                )
        return None

    async def _agent(
        self,
        a: Assignment,
        sandbox: Sandbox,
        rec: SessionRecorder,
        hooks: SessionHooks,
        skills: list[Skill],
        seeded: bytes | None = None,
    ) -> SessionOutcome:
        cannot = f"agent {a.agent.name!r} cannot start"
        state = a.loop_state
        max_turns = a.max_turns
        if state is not None and a.task.interactive:  # the limits count per turn
            state = {**state, "elapsed_s": 0.0}
            max_turns += int(state.get("turns", 0))
        try:
            model = make_model(
                a.agent,
                script=a.script,
                attempt=a.attempt,
                settings=self.settings,
                api_key=a.api_key(a.agent),
            )
        except Exception as exc:
            raise AgentStartError(f"{cannot}: {exc}") from exc
        # The agent's MCP servers, in this sandbox or on this worker, for this session only.
        servers = McpTools(a.agent.mcp_servers, sandbox, self.settings.mcp_start_timeout_s)
        try:
            try:
                await servers.start()
            except McpError as exc:
                raise AgentStartError(f"{cannot}: {exc}") from exc
            try:
                loop = AgentLoop.from_spec(
                    a.agent,
                    model=model,
                    ctx=self._tool_context(sandbox),
                    emit=rec.emit,
                    max_turns=max_turns,
                    time_limit_s=a.time_limit_s,
                    skills=skills,
                    mcp_tools=servers.tools,
                    hooks=hooks,
                    approval_wait_s=self.settings.approval_wait_s,
                    checkpoint=self._checkpointer(a, sandbox, seeded),
                    max_tokens=a.agent.max_tokens if a.max_tokens is None else a.max_tokens,
                    max_cost_usd=a.agent.max_cost_usd if a.max_cost_usd is None else a.max_cost_usd,
                )
            except Exception as exc:
                raise AgentStartError(f"{cannot}: {exc}") from exc
            if state is not None:
                outcome = await loop.resume(state)
            else:
                prompt = a.prompt or a.task.prompt
                if a.task.interactive:
                    prompt += CONVERSATION_NOTE
                outcome = await loop.run(prompt, history=a.history)
            if a.task.interactive and outcome.status == "finished":  # it resumes from here
                ended = {**loop.state(), TURN_ENDED: True, "summary": outcome.summary}
                outcome = outcome.model_copy(update={"state": ended})
            return outcome
        finally:
            await servers.close()
            await close_model(model)

    def _tool_context(self, sandbox: Sandbox) -> ToolContext:
        """What the tools of a session (agent or reviewer) may do, from the fleet's settings."""
        return ToolContext(
            sandbox=sandbox,
            output_limit=self.settings.tool_output_limit,
            command_timeout_s=self.settings.command_timeout_s,
            max_followups=self.settings.max_followups,
        )

    def _checkpointer(
        self, a: Assignment, sandbox: Sandbox, seeded: bytes | None
    ) -> Checkpointer | None:
        interval = self.settings.checkpoint_interval_s
        if self.checkpoints is None or interval <= 0:
            return None
        checkpoints, redactor = self.checkpoints, Redactor(a.secret_values())

        async def sink(
            task_id: str, session_id: str, state: dict[str, Any], workspace: bytes, base: Any
        ) -> Any:  # the loop's state (its history) without the session's secret values
            return await checkpoints(task_id, session_id, redactor.obj(state), workspace, base)

        return Checkpointer(sink, a.task.id, a.session_id, sandbox, interval, seeded)

    async def _review(
        self, a: Assignment, sandbox: Sandbox, rec: SessionRecorder, baseline: bytes | None
    ) -> Verdict:
        """Run the reviewer agent on the same sandbox; its events carry payload role=reviewer."""
        assert a.reviewer is not None
        diff, _ = workspace_diff(baseline, await sandbox.snapshot())
        verdict = Verdict()
        reviewer = a.reviewer

        def emit(type_: EventType, payload: dict[str, Any] | None = None, **typed: Any) -> None:
            rec.emit(
                type_, {**(payload or {}), "role": "reviewer", "agent": reviewer.name}, **typed
            )

        model = make_model(
            reviewer,
            script=a.task.review_script,
            attempt=a.attempt,
            settings=self.settings,
            api_key=a.api_key(reviewer),
        )
        loop = AgentLoop(
            instructions=reviewer.instructions + "\n\n" + REVIEW_INSTRUCTIONS,
            model=model,
            toolbox=reviewer_toolbox(verdict),
            ctx=self._tool_context(sandbox),
            emit=emit,
            max_turns=reviewer.max_turns or self.settings.default_max_turns,
            time_limit_s=a.time_limit_s,
        )
        try:
            outcome = await loop.run(reviewer_prompt(a.prompt or a.task.prompt, diff))
        finally:
            await close_model(model)
        if verdict.approved is None and outcome.status != "finished":
            verdict.approved, verdict.comments = False, f"review did not finish: {outcome.reason}"
        rec.emit(
            EventType.agent_message,
            {
                "role": "reviewer",
                "verdict": "approve" if verdict.approved else "changes",
                "comments": verdict.comments,
            },
        )
        return verdict

    async def _seed(self, sandbox: Sandbox, a: Assignment, checkout: Checkout | None) -> None:
        """Put the task's starting files (repository, environment files, task files, then
        its uploaded files, ``resources``) in place."""
        if checkout is not None:  # a git repository, cloned on the host (actors/delivery.py)
            await sandbox.restore(checkout.archive)
        elif isinstance(a.task.repo, str):
            repo = Path(a.task.repo).expanduser()
            if not repo.is_dir():
                raise FileNotFoundError(f"task repo {a.task.repo} is not a directory")
            await sandbox.restore(tar_directory(repo))
        env_files = {k: v for k, v in a.environment.files.items() if not k.startswith("/")}
        files = {**env_files, **a.task.files}
        if files:
            await sandbox.restore(tar_files({k: v.encode() for k, v in files.items()}))
        if a.resources:
            await sandbox.restore(tar_files(a.resources))


def redacting(sink: EventSink, redactor: Redactor) -> EventSink:
    """``sink`` fed each event with ``redactor``'s values replaced in its payload."""
    if not redactor:
        return sink

    def redacted(event: Event) -> None:
        sink(redactor.events([event])[0])

    return redacted


def redact_result(result: SessionResult, redactor: Redactor) -> SessionResult:
    """``result`` without ``redactor``'s values in what is kept of it (reason, feedback, diff,
    the outcome and its loop state); its events went through :func:`redacting`."""
    if not redactor:
        return result
    update: dict[str, Any] = {f: redactor.obj(getattr(result, f)) for f in ("reason", "feedback")}
    update["diff"] = redactor.obj(result.diff)
    if result.outcome is not None:
        outcome = redactor.obj(result.outcome.model_dump())
        update["outcome"] = SessionOutcome.model_validate(outcome)
    return result.model_copy(update=update)


TURN_ENDED = "turn_ended"
"""Marks an interactive task's saved loop state taken when its agent ended a turn (its
``summary`` beside it): closing it with nothing new to say runs no model turn."""
CONVERSATION_NOTE = (
    "\n\n(This is a conversation: when you have done what was asked, call finish with your "
    "answer as the summary; the user may then write again, with your work still in place.)"
)


def turn_ended(a: Assignment) -> bool:
    """Does this session only close an interactive task whose agent ended its turn, with no
    message since? Then no model turn runs: the gate, reviewer and review do."""
    return bool(
        a.closing and not a.messages and a.loop_state is not None and a.loop_state.get(TURN_ENDED)
    )


def ended_turn(state: dict[str, Any]) -> SessionOutcome:
    """The outcome of a turn that ended earlier (its saved state), for :func:`turn_ended`."""
    return SessionOutcome(
        status="finished",
        summary=str(state.get("summary", "")),
        turns=int(state.get("turns", 0)),
        tool_calls=int(state.get("tool_calls", 0)),
        state=state,
    )


class AgentStartError(FleetError, RuntimeError):
    """An agent's model client or loop cannot be built (its spec or environment is wrong)."""
