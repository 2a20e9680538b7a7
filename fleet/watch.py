"""The watcher: picks work up from sources (``sources/``) and runs it on a fleet.

One async loop per source, as ``sources/base.py`` sketches it. Each round:

1. *track*: the fleet's records of the tasks this watcher holds: a task whose session started
   is reported ``running`` to its item, a task that ended has its outcome (state, summary,
   reason) written back and is let go;
2. *reconcile* (every poll): :meth:`Source.wanted` for the held items: an item withdrawn by a
   person (state changed, deleted) has its live task cancelled, with the reason in its
   ``task.cancelled`` event; an item whose prompt was edited while its task is still queued
   has the task's prompt replaced (``task.updated``; refused once the task started);
3. *intake* (every poll): ready items are claimed, then submitted as one task each, with the
   deterministic id :func:`task_id_for` (``<source>-<item id>``), the item's prompt, repo,
   labels (plus ``source:<name>``), priority and agent, the source's ``task:`` defaults, and
   ``source = "<name>:<item id>"``. An item the fleet refuses (unknown agent, bad field) is
   reported ``rejected`` with the reason; the others go on.

Between rounds it waits for :meth:`Source.wait_for_work` (a notification, or the source's poll
interval) or the track interval, whichever comes first.

Restarts lose nothing and run nothing twice: claims live in the source (items in ``running``)
and task ids are deterministic, so a watcher that starts asks :meth:`Source.list_claimed` for
the items it holds and matches them with the fleet's tasks: a missing task is submitted (the
watcher died between claim and submit), an ended one has its outcome reported, a live one is
followed again. A live task of this source whose item is no longer claimed (withdrawn while
the watcher was down) is cancelled. The fleet must replay its event log on start (``recover``,
which ``fleet watch`` and ``fleet serve`` turn on), or it would not know the tasks it ran.

A source that cannot be reached (:class:`SourceError`) is retried with capped exponential
backoff and jitter; each failure is a ``source.error`` event under the pseudo task id
``source:<name>`` and shows in the fleet's status (``sources``). Claims are never lost: an item
claimed but not yet submitted when something fails is submitted at the next round.

Stopping (:meth:`Watcher.stop`): no more claims; the watcher waits (up to
``drain_timeout_s``) until none of its tasks is running, reports the outcomes of those that
ended, and returns. Tasks still queued stay claimed: the next start takes them up.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import random
import re
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from actors.delivery import GitError, probe
from core.errors import one_line
from core.records import TaskRecord
from core.specs import FleetConfig, RepoSpec, TaskSpec, TaskState
from sources import ItemState, Outcome, Source, SourceError, WorkItem

log = logging.getLogger("fleet.watch")

SAFE = re.compile(r"[^A-Za-z0-9._-]")
"""Characters a task id made from an item id does not keep."""

LIVE_STATES = [s for s in TaskState if not s.terminal]


class WatchSettings(BaseModel):
    """How a :class:`Watcher` paces itself."""

    track_interval_s: float = Field(
        0.5, gt=0, description="How often the held tasks' states are checked."
    )
    batch: int = Field(100, ge=1, description="Ready items listed (and claimed) per poll.")
    backoff_s: float = Field(1.0, gt=0, description="First wait after a source error.")
    backoff_max_s: float = Field(60.0, gt=0, description="Longest wait after source errors.")
    drain_timeout_s: float = Field(
        300.0, ge=0, description="On stop, how long to wait for running tasks to end."
    )
    crash_after_claims: int = Field(
        0,
        ge=0,
        description="Tests only: SIGKILL this process right after that many claims, before "
        "their tasks are submitted (0: never).",
    )


def task_id_for(source: str, item_id: str) -> str:
    """The task id of an item: ``<source>-<item id>``. An item id with characters a task id
    should not have (anything but letters, digits, ``.``, ``_`` and ``-``), or a long one, is
    cleaned and gets a hash of the original, so two items never share a task id."""
    clean = SAFE.sub("_", item_id)[:120]
    if clean != item_id:
        clean += "-" + hashlib.sha256(item_id.encode()).hexdigest()[:10]
    return f"{source}-{clean}"


def source_label(source: str) -> str:
    """The label every task of ``source`` carries (for ``label_limits`` and listing)."""
    return f"source:{source}"


@dataclass
class Held:
    """An item this watcher claimed and whose task it follows."""

    item_id: str
    task_id: str
    prompt: str
    note: str = ""
    """The last progress reported to the item: '', 'queued' or 'running'."""


def repo_of(text: str, default: Any = None) -> Any:
    """What an item's ``repo`` text means: the git URL of the source's ``task: repo`` (its
    ``ref`` kept) when that is a repository; a git repository when the text looks like one
    (``scheme://``, ``user@host:path`` or ending in ``.git``); else a local directory."""
    if isinstance(default, dict):
        return {**default, "url": text}
    if "://" in text or text.endswith(".git") or re.match(r"^[\w.-]+@[\w.-]+:", text):
        return {"url": text}
    return text


class Watcher:
    """Connects sources to a fleet (see the module docstring). ``fleet`` is a
    :class:`fleet.api.Fleet` (its blocking calls run in threads)."""

    def __init__(
        self,
        fleet: Any,
        sources: Sequence[Source],
        settings: WatchSettings | None = None,
        config: FleetConfig | None = None,
    ) -> None:
        self.fleet = fleet
        self.sources = list(sources)
        self.settings = settings or WatchSettings()
        specs = {s.name: s for s in (config.sources if config else [])}
        self.defaults: dict[str, dict[str, Any]] = {
            s.name: dict(specs[s.name].task) if s.name in specs else {} for s in self.sources
        }
        """Source name -> the task fields its config entry gives every task."""
        self.held: dict[str, dict[str, Held]] = {s.name: {} for s in self.sources}
        self.errors: dict[str, tuple[str, datetime]] = {}
        """Source name -> its last error and when (also in the fleet's status)."""
        self._pending: dict[str, list[WorkItem]] = {s.name: [] for s in self.sources}
        """Claimed items not yet submitted (the fleet failed): submitted next round."""
        self._stop: asyncio.Event | None = None
        self._stop_asked = False
        self._claims = 0

    # -- running -----------------------------------------------------------------------
    async def run(self) -> None:
        """Watch every source until :meth:`stop`, then drain (see the module docstring)."""
        self._stop = asyncio.Event()
        if self._stop_asked:
            self._stop.set()
        await asyncio.gather(*(self._run_source(source) for source in self.sources))

    def stop(self) -> None:
        """Stop claiming; :meth:`run` drains and returns. Safe from a signal handler that
        runs in the watcher's event loop (``loop.add_signal_handler``)."""
        self._stop_asked = True
        if self._stop is not None:
            self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop is not None and self._stop.is_set()

    async def _run_source(self, source: Source) -> None:
        assert self._stop is not None
        source.owner = self.fleet.settings.name
        failures = 0
        resumed = False
        woken = True
        next_poll = 0.0
        waiter: asyncio.Task[bool] | None = None
        stopped = asyncio.ensure_future(self._stop.wait())
        try:
            while not self.stopping:
                try:
                    if waiter is not None and waiter.done():
                        waiter, done = None, waiter
                        done.result()  # a SourceError of the wait is handled here
                    if not resumed:
                        await self._take_up_claims(source)
                        resumed = True
                    await self._track(source)
                    if woken or time.monotonic() >= next_poll:
                        next_poll = time.monotonic() + source.poll_interval_s
                        await self._reconcile(source)
                        await self._intake(source)
                    woken = False
                    if failures:
                        log.warning("source %r answers again", source.name)
                    failures = 0
                except SourceError as exc:
                    failures += 1
                    delay = self._backoff(failures)
                    await self._source_failed(source, exc, failures, delay)
                    await self._sleep(delay)
                    woken = True
                    continue
                except Exception as exc:  # the fleet failed: keep the claims, try again
                    failures += 1
                    delay = self._backoff(failures)
                    log.warning("watching %r: %s (again in %.1fs)", source.name, exc, delay)
                    await self._sleep(delay)
                    woken = True
                    continue
                if waiter is None:
                    waiter = asyncio.ensure_future(source.wait_for_work())
                await asyncio.wait(
                    {waiter, stopped},
                    timeout=self.settings.track_interval_s,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                woken = waiter.done()
        finally:
            stopped.cancel()
            if waiter is not None:
                waiter.cancel()
                with contextlib.suppress(BaseException):
                    await waiter
            try:
                await self._drain(source)
            finally:
                await source.close()

    def _backoff(self, failures: int) -> float:
        """Capped exponential backoff with jitter (between half and all of the step)."""
        step = min(self.settings.backoff_max_s, self.settings.backoff_s * 2 ** (failures - 1))
        return step * random.uniform(0.5, 1.0)

    async def _sleep(self, seconds: float) -> None:
        """Sleep, or less if the watcher is stopped meanwhile."""
        assert self._stop is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    async def _source_failed(
        self, source: Source, exc: SourceError, failures: int, delay: float
    ) -> None:
        message = one_line(exc)
        self.errors[source.name] = (message, datetime.now(UTC))
        log.warning("%s (failure %d, again in %.1fs)", message, failures, delay)
        try:
            await asyncio.to_thread(
                self.fleet.report_source_error, source.name, message, failures, delay
            )
        except Exception as report_exc:  # the fleet is down too: the log line says it
            log.warning("cannot log the source error in the fleet: %s", report_exc)

    async def _drain(self, source: Source) -> None:
        """After stop: follow the held tasks until none runs (or the drain timeout)."""
        deadline = time.monotonic() + self.settings.drain_timeout_s
        while self.held[source.name]:
            try:
                records = await self._track(source)
            except Exception as exc:
                log.warning("draining %r: %s", source.name, exc)
                records = []
            if not any(r is not None and r.state == TaskState.running for r in records):
                return
            if time.monotonic() >= deadline:
                log.warning(
                    "drain of %r timed out; running tasks resume at the next start", source.name
                )
                return
            await asyncio.sleep(self.settings.track_interval_s)

    # -- one round ---------------------------------------------------------------------
    async def _take_up_claims(self, source: Source) -> None:
        """Take up the items this watcher held before it (re)started."""
        try:
            items = await source.list_claimed()
        except NotImplementedError:
            log.warning("source %r cannot list its claimed items: none are taken up", source.name)
            items = []
        held = self.held[source.name]
        missing = []
        if items:
            ids = [task_id_for(source.name, item.id) for item in items]
            records = await asyncio.to_thread(self.fleet.records, ids)
            for item, task_id, record in zip(items, ids, records, strict=True):
                if record is None:
                    missing.append(item)  # claimed, never submitted: the watcher died between
                else:
                    held[item.id] = Held(item.id, task_id, record.spec.prompt, note="queued")
        self._pending[source.name].extend(missing)
        # Tasks of this source whose item is no longer claimed: withdrawn while it was down.
        label = source_label(source.name)
        prefix = f"{source.name}:"
        for state in LIVE_STATES:
            records = await asyncio.to_thread(self.fleet.tasks, state.value, label, 100_000)
            for record in records:
                origin = record.spec.source or ""
                if origin.startswith(prefix) and origin[len(prefix) :] not in held:
                    if any(i.id == origin[len(prefix) :] for i in missing):
                        continue
                    await self._cancel(source, record.id, origin[len(prefix) :])
        if held or missing:
            log.info(
                "source %r: took up %d claimed items (%d to submit)",
                source.name,
                len(held) + len(missing),
                len(missing),
            )
        await self._submit(source, [])

    async def _track(self, source: Source) -> list[TaskRecord | None]:
        """Report progress and outcomes of the held tasks; returns their records."""
        held = self.held[source.name]
        if not held:
            return []
        entries = list(held.values())
        records: list[TaskRecord | None] = await asyncio.to_thread(
            self.fleet.records, [h.task_id for h in entries]
        )
        for entry, record in zip(entries, records, strict=True):
            if record is None:
                continue  # not in this fleet (any more): nothing to report
            if record.state.terminal:
                outcome = Outcome(
                    state=ItemState(record.state.value),
                    summary=record.summary or None,
                    reason=record.reason or None,
                    branch=record.branch,  # pushed (a work-in-progress one too), if any
                    pr_url=record.pr_url,
                )
                if not await source.report_outcome(entry.item_id, outcome):
                    log.info("item %s was taken back before its outcome was written", entry.item_id)
                held.pop(entry.item_id, None)
            elif record.attempts > 0 and entry.note != "running":
                await source.report_progress(entry.item_id, f"task {entry.task_id} running")
                entry.note = "running"
        return records

    async def _reconcile(self, source: Source) -> None:
        """Cancel the tasks of withdrawn items; re-prompt queued tasks of edited ones."""
        held = self.held[source.name]
        if not held:
            return
        still = await source.wanted(list(held))
        for item_id, entry in list(held.items()):
            prompt = still.get(item_id)
            if prompt is None:
                held.pop(item_id, None)
                await self._cancel(source, entry.task_id, item_id)
            elif prompt != entry.prompt:
                entry.prompt = prompt  # asked once: a task that started keeps its prompt
                why = f"item {item_id} was edited at source {source.name!r}"
                if await asyncio.to_thread(self.fleet.update_prompt, entry.task_id, prompt, why):
                    log.info("task %s: prompt replaced (%s)", entry.task_id, why)
                else:
                    log.info(
                        "task %s already started: it keeps its prompt (%s)", entry.task_id, why
                    )

    async def _cancel(self, source: Source, task_id: str, item_id: str) -> None:
        reason = (
            f"withdrawn at source {source.name!r}: item {item_id} is no longer claimed "
            "(its state was changed or it was deleted)"
        )
        if await asyncio.to_thread(self.fleet.cancel, task_id, reason):
            log.info("task %s cancelled: %s", task_id, reason)

    async def _intake(self, source: Source) -> None:
        """Claim ready items and submit their tasks (claimed ones are submitted even if a
        later claim fails)."""
        if self.stopping:
            return
        await self._submit(source, [])  # claims left over from a failed round first
        items = await source.list_ready(limit=self.settings.batch)
        claimed: list[WorkItem] = []
        try:
            for item in items:
                if self.stopping:
                    break
                if await source.claim(item.id):
                    claimed.append(item)
                    self._after_claim()
        finally:
            self._pending[source.name].extend(claimed)
        await self._submit(source, [])

    def _after_claim(self) -> None:
        self._claims += 1
        if self.settings.crash_after_claims and self._claims >= self.settings.crash_after_claims:
            os.kill(os.getpid(), signal.SIGKILL)  # the test hook: die between claim and submit

    def task_for(self, source: Source, item: WorkItem) -> TaskSpec:
        """The task an item becomes (ValidationError if it cannot become one)."""
        fields: dict[str, Any] = dict(self.defaults.get(source.name, {}))
        fields.update(
            id=task_id_for(source.name, item.id),
            prompt=item.prompt,
            priority=item.priority,
            labels=list(
                dict.fromkeys([*fields.get("labels", []), *item.labels, source_label(source.name)])
            ),
            source=f"{source.name}:{item.id}",
        )
        if item.repo is not None:
            fields["repo"] = repo_of(item.repo, fields.get("repo"))
        if item.agent is not None:
            fields["agent"] = item.agent
        for conversational in ("interactive", "gate_each_turn"):  # an item is a batch task
            fields.pop(conversational, None)
        return TaskSpec.model_validate(fields)

    async def _unclonable(self, specs: list[TaskSpec]) -> dict[str, str]:
        """Task id → why its repository cannot be cloned, for the specs on a git repository
        (each distinct repository and ref is asked once, all at the same time)."""
        repos = {
            (spec.repo.url, spec.repo.ref): spec.repo
            for spec in specs
            if isinstance(spec.repo, RepoSpec)
        }

        async def why(repo: RepoSpec) -> str | None:
            try:
                await probe(repo, self.fleet.settings)
            except GitError as exc:
                return f"repo: cannot be cloned: {exc}"
            return None

        answers = dict(zip(repos, await asyncio.gather(*map(why, repos.values())), strict=True))
        return {
            spec.id: reason
            for spec in specs
            if isinstance(spec.repo, RepoSpec)
            and (reason := answers[(spec.repo.url, spec.repo.ref)]) is not None
        }

    async def _submit(self, source: Source, items: list[WorkItem]) -> None:
        """Submit the pending claimed items (and ``items``): accepted ones are held and
        reported queued, refused ones reported rejected with the reason."""
        pending = self._pending[source.name]
        pending.extend(items)
        if not pending:
            return
        batch, specs, refused = list(pending), [], []
        for item in batch:
            try:
                specs.append((item, self.task_for(source, item)))
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first["loc"])
                refused.append((item, f"{where}: {first['msg']}"))
        unreachable = await self._unclonable([spec for _, spec in specs])
        refused += [(item, unreachable[spec.id]) for item, spec in specs if spec.id in unreachable]
        specs = [(item, spec) for item, spec in specs if spec.id not in unreachable]
        result = await asyncio.to_thread(
            self.fleet.submit, [spec for _, spec in specs], f"source-{source.name}"
        )
        del pending[: len(batch)]  # the fleet has them (or refused them): no resubmit
        why = {
            r["task_id"]: f"{r['field']}: {r['error']}" if r["field"] else r["error"]
            for r in result.rejected
        }
        accepted = set(result.accepted)
        held = self.held[source.name]
        for item, spec in specs:
            if spec.id in accepted:
                held[item.id] = Held(item.id, spec.id, spec.prompt)
            else:
                refused.append((item, why.get(spec.id, "refused by the fleet")))
        for item, reason in refused:
            log.info("item %s of %r rejected: %s", item.id, source.name, reason)
            await source.report_outcome(item.id, Outcome(state=ItemState.rejected, reason=reason))
        for item, spec in specs:
            entry = held.get(item.id)
            if entry is not None and not entry.note:
                entry.note = "queued"
                await source.report_progress(item.id, f"task {spec.id} queued")


def run_until_signalled(watcher: Watcher) -> None:
    """Run ``watcher`` in this thread until SIGTERM or SIGINT, then let it drain."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, watcher.stop)
        await watcher.run()

    asyncio.run(main())


class WatcherThread:
    """A watcher running in a thread of its own (``fleet serve`` runs its sources so)."""

    def __init__(self, watcher: Watcher) -> None:
        self.watcher = watcher
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name="fleet-watch", daemon=True)

    def _main(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            task = asyncio.ensure_future(self.watcher.run())
            self._ready.set()
            await task

        try:
            asyncio.run(main())
        except Exception:
            log.exception("the watcher stopped")
        finally:
            self._ready.set()

    def start(self) -> WatcherThread:
        self._thread.start()
        self._ready.wait()
        return self

    def stop(self, timeout_s: float | None = None) -> None:
        """Stop claiming, wait for the drain (up to ``timeout_s``)."""
        if self._loop is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self.watcher.stop)
        self._thread.join(timeout_s)
