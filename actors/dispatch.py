"""What workers call the supervisor for: report a session's result and wait for the next
assignment, keep a checkpoint, ship events. Plain asyncio: the supervisor forwards the
workers' calls here; no worker handle is called.

A worker's session comes back in two ways: as the result it hands in when it asks for its
next assignment, or, when it finishes behind the next session (see :mod:`actors.worker`),
first named as ``finishing`` (the pool keeps it as the worker's until its result comes) and
then handed in by ``report_result``. Either way the result is taken behind the worker's next
assignment: storing its artifacts, delivering it and logging what follows run while the
worker already starts its next session (at most ``len(workers)`` results at once; past that
a worker waits for one; ``settle`` waits for all). Nothing changes for the task: its final
state is logged only once its artifacts are stored, and a supervisor killed in between
leaves it running in the log, to run again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from actors import artifacts as art
from actors import delivery, pulls
from actors.artifacts import ArtifactStore
from actors.delivery import Delivery, branch_name
from actors.files import FileStore
from actors.journal import Journal
from actors.manager import Manager
from actors.pool import WorkerPool
from actors.scheduler import Scheduler
from core.events import Event, EventType
from core.records import Assignment, SessionResult, TaskRecord
from core.settings import FleetSettings
from core.specs import RepoSpec, TaskState

KEEPS_WORKSPACE = (
    EventType.handoff,
    EventType.task_parked,
    EventType.session_idle,
    EventType.session_checkpointed,
    EventType.task_awaiting_review,
    EventType.task_needs_human,
)
"""Decisions whose events point at the session's stored workspace and loop state."""

log = logging.getLogger(__name__)


def answered(record: TaskRecord) -> bool:
    """Does a parked task have what it waits for already (a decision came, or the client's
    result of its custom tool call, as it parked)? Then it resumes at once."""
    if record.state == TaskState.awaiting_tool_result:
        return bool((record.pending_custom_tool or {}).get("result"))
    return bool((record.pending_approval or {}).get("decision"))


class Dispatcher:
    def __init__(
        self,
        sched: Scheduler,
        pool: WorkerPool,
        journal: Journal,
        store: ArtifactStore,
        manager: Manager,
        settings: FleetSettings,
        files: FileStore | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.sched = sched
        self.pool = pool
        self.journal = journal
        self.store = store
        self.manager = manager
        self.settings = settings
        self.files = files or FileStore(store, settings.max_file_bytes)
        self.clock = clock
        self._taking: set[asyncio.Task[None]] = set()
        """Results being taken behind their workers' next assignments."""

    async def next_assignment(
        self,
        worker_id: str,
        result: SessionResult | None,
        finishing: list[str] | None = None,
    ) -> Assignment | None:
        """Take a worker's last result (if any) and wait for its next assignment; None
        tells the worker to stop. ``finishing``: ``[task id, session id]`` of its session
        that finishes behind the next one (its result comes by ``report_result``)."""
        assert self.pool.work is not None
        if worker_id not in self.pool.workers:
            return None  # a worker of an earlier life (or replaced): its result is stale
        self.pool.heartbeats[worker_id] = self.clock()
        if finishing is not None:
            task_id, session_id = finishing
            self.pool.free(worker_id, task_id)
            if not self.pool.reported.pop(session_id, False):  # not already back
                self.pool.finishing[worker_id] = (task_id, session_id)
        if result is not None:
            await self._take_behind(worker_id, result)
        return await self.assign(worker_id)

    async def report_result(self, worker_id: str, result: SessionResult) -> None:
        """The result of a session that finished behind the worker's next one."""
        if worker_id not in self.pool.workers:
            return  # a worker of an earlier life (or replaced): its result is stale
        self.pool.heartbeats[worker_id] = self.clock()
        if self.pool.finishing.get(worker_id, ("", ""))[1] == result.session_id:
            del self.pool.finishing[worker_id]
        else:  # ahead of the call that names it finishing (Ray may reorder them)
            self.pool.reported[result.session_id] = True
        await self._take_behind(worker_id, result)

    async def _take_behind(self, worker_id: str, result: SessionResult) -> None:
        """Take ``result`` in the background (waiting first while too many are)."""
        self.pool.free(worker_id, result.task_id)  # the worker is free; the task not yet
        while len(self._taking) >= max(1, len(self.pool.workers)):
            await asyncio.wait(set(self._taking), return_when=asyncio.FIRST_COMPLETED)
        taking = asyncio.create_task(self._take_logged(worker_id, result))
        self._taking.add(taking)
        taking.add_done_callback(self._taking.discard)

    async def _take_logged(self, worker_id: str, result: SessionResult) -> None:
        try:
            await self.take_result(worker_id, result)
        except Exception:  # the task stays running in the log: recovery runs it again
            log.exception("taking the result of %s (%s) failed", result.task_id, worker_id)

    async def settle(self) -> None:
        """Wait until every result handed in is taken (before a shutdown's last flush)."""
        while self._taking:
            await asyncio.gather(*self._taking, return_exceptions=True)

    async def take_result(self, worker_id: str, result: SessionResult) -> None:
        """Record a session's events and artifacts and what follows it (retry, next stage,
        review, parking, success)."""
        self.pool.free(worker_id, result.task_id)
        self.pool.session_started.pop(result.session_id, None)
        refs: dict[str, str] = {}
        if art.has_artifacts(result):  # first: what the log will point at exists
            refs = await asyncio.to_thread(art.store_result, self.store, result)
        delivery = None
        if self.sched.delivery_due(result):  # pushed before it is logged: actors/delivery.py
            record = self.sched.tasks[result.task_id]
            summary = result.outcome.summary if result.outcome else ""
            delivery = await self.deliver(record, result.workspace, summary, events=result.events)

        decided: list[Event] = []

        def decide() -> list[Event]:
            decided.extend(self.sched.conclude(result, delivery=delivery))
            for event in decided:
                if event.type in KEEPS_WORKSPACE and refs:
                    event.payload.update(refs)
            if refs.get("diff_ref"):
                decided.insert(0, art.diff_event(self.store, result, refs["diff_ref"]))
            return decided

        # The session's events and what follows them, in one append: a supervisor killed
        # here keeps both or neither (then the task reruns, having left no verdict).
        await self.journal.record(self.journal.live(result.events), then=decide)
        if self.settings.git_push_wip and result.workspace is not None:
            await self.push_wip(result, decided)
        parked = any(e.type == EventType.task_parked for e in decided)
        if parked and answered(self.sched.tasks[result.task_id]):
            # A decision (or a tool result) reached the worker as the session parked: resume.
            await self.journal.record(self.sched.unpark(result.task_id))

    async def deliver(
        self,
        record: TaskRecord,
        workspace: bytes | None,
        summary: str,
        wip: bool = False,
        events: list[Event] | None = None,
    ) -> Delivery | None:
        """Commit a task's final workspace and push it to the task's branch (see
        :mod:`actors.delivery`), then open its pull request when the repository is on GitHub
        (:mod:`actors.pulls`); None when the task is not on a git repository. ``events``:
        the last session's (its gate's output and cost go into the pull request)."""
        repo = record.spec.repo
        if not isinstance(repo, RepoSpec):
            return None
        if workspace is None:
            error = "no workspace came back to deliver"
            return Delivery(url=repo.url, branch=branch_name(self.settings, record.id), error=error)
        done = await delivery.deliver(
            self.settings, record.id, repo, record.base_commit, workspace, summary, wip
        )
        if wip or done.refused or not done.commit or not self.settings.github_pull_requests:
            return done
        full_name = pulls.github_repo(self.settings, repo)
        if full_name is None:
            return done
        return await self.open_pull(record, repo, full_name, done, summary, events or [])

    async def open_pull(
        self,
        record: TaskRecord,
        repo: RepoSpec,
        full_name: str,
        done: Delivery,
        summary: str,
        events: list[Event],
    ) -> Delivery:
        """``done`` with the pull request of its branch (or why there is none)."""
        gate, output = pulls.gate_of(events)
        body = pulls.pull_body(
            record.id,
            summary,
            gate or record.spec.gate,
            output,
            record.attempts,
            record.spent_cost_usd + pulls.cost_of(events),
            done.commit,
        )
        try:
            token = delivery.Auth.from_settings(self.settings).token
        except delivery.GitError as exc:
            return done.model_copy(update={"pr_error": str(exc)})
        title = pulls.pull_title(record.spec.prompt)
        pull = await pulls.open_pull(
            self.settings, full_name, done.branch, repo.ref, title, body, token
        )
        return done.model_copy(update={"pr_url": pull.url, "pr_error": pull.error})

    async def deliver_reviewed(self, task_id: str) -> Delivery | None:
        """Deliver a result a person approves (kept since ``task.awaiting_review``)."""
        record = self.sched.tasks.get(task_id)
        if record is None or record.state != TaskState.awaiting_review:
            return None
        if not isinstance(record.spec.repo, RepoSpec):
            return None
        ref = record.workspace_ref
        workspace = await asyncio.to_thread(self.store.get, ref) if ref else None
        return await self.deliver(record, workspace, record.summary)

    async def push_wip(self, result: SessionResult, decided: list[Event]) -> None:
        """``git_push_wip``: a task that just went to a person (not for a refused push) gets
        its last workspace pushed as a work-in-progress commit, then ``task.delivered``
        (``wip``). Best effort, after the decision is logged: a crash in between leaves the
        branch without its event."""
        ended = [e for e in decided if e.type == EventType.task_needs_human]
        record = self.sched.tasks.get(result.task_id)
        if not ended or record is None or "delivery refused" in ended[0].payload.get("reason", ""):
            return
        summary = f"{ended[0].payload.get('reason', '')}"
        wip = await self.deliver(record, result.workspace, summary, wip=True)
        if wip is None or not wip.commit:
            return
        common = {"task_id": result.task_id, "session_id": result.session_id}
        event = Event(type=EventType.task_delivered, payload=wip.payload(), **common)
        await self.journal.record([event])

    async def assign(self, worker_id: str) -> Assignment | None:
        """Wait until a task may run on this worker (the rules pick it, or the manager agent
        pinned it), then hand it over with what it resumes from."""
        work = self.pool.work
        assert work is not None
        pool = self.pool.pools.get(worker_id)
        async with work:
            while True:
                if self.pool.stopping or pool is None or worker_id not in self.pool.workers:
                    return None
                # A live view of the running tasks, read only by the (synchronous) assign below.
                running = self.sched.running(self.pool.running.values())
                if self.manager.routes():
                    pinned = self.manager.pins.pop(worker_id, None)
                    got = (
                        self.sched.assign(worker_id, pool, running, only=pinned) if pinned else None
                    )
                    if got is None and len(self.sched.queue):
                        self.manager.request()
                else:
                    got = self.sched.assign(worker_id, pool, running)
                if got is not None and got[0] is None:  # it names a spec that is gone
                    await self.journal.record([got[1]])
                    continue
                if got is not None:
                    break
                # Woken by whatever queues work; the timeout is a safety net, not the clock.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(work.wait(), self.settings.idle_recheck_s)
        assignment, event = got
        assert assignment is not None
        self.pool.running[worker_id] = assignment.task.id
        record = self.sched.tasks[assignment.task.id]
        # One-shot refs (a parked loop, a handoff's history) are cleared by the assignment.
        refs = (
            record.workspace_ref or record.base_ref,
            record.loop_state_ref if record.workspace_ref else None,
            record.history_ref,
        )
        await self.journal.record([event])
        if any(refs):
            await asyncio.to_thread(art.load_into, self.store, assignment, *refs)
        if assignment.workspace is None and assignment.task.resources:  # it seeds: the files
            assignment.resources = await asyncio.to_thread(self.files.resources, assignment.task)
        return assignment

    async def checkpoint(
        self,
        task_id: str,
        session_id: str,
        state: dict[str, Any],
        workspace: bytes,
        base: bytes | None = None,
    ) -> bool:
        """Keep a running session's latest resume point (workspace and loop state, and the
        task's starting workspace when sent); False when the session is no longer the
        task's running one."""
        record = self.sched.tasks.get(task_id)
        if record is None or record.state != TaskState.running or record.session_id != session_id:
            return False
        refs = await asyncio.to_thread(
            art.store_checkpoint, self.store, task_id, session_id, state, workspace, base
        )
        event = art.checkpoint_event(record, session_id, refs, state.get("turns"), len(workspace))
        await self.journal.record([event])
        return True

    async def ingest(self, events: list[Event]) -> int:
        """A running session's events; those of sessions written off are dropped."""
        live = self.journal.live(events)
        await self.journal.record(live)
        return len(live)
