"""Several named fleets on one Ray cluster used as one: where one supervisor is not enough.

    from fleet import Fleets
    with Fleets.start(["a", "b"], workers=4) as fleets:
        ids = fleets.submit([{"prompt": "...", "script": [...]}]).accepted
        for record in fleets.as_completed(ids):
            print(fleets.fleet_of(record.id), record.id, record.state)

Each fleet is a whole :class:`fleet.api.Fleet` (its own supervisor, workers and event log).
A task goes to one of them: to the fleet its label is mapped to (``routes``), else by a
stable hash of its id (rendezvous hashing: the same id always goes to the same fleet, ids
spread evenly, and adding a fleet moves only the tasks the new one wins). Status, records
and results are answered across them. ``fleet report --events A --events B`` (or one
shared events directory, the default) reports over all of their logs at once.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import ray

from core.errors import InputError
from core.records import TaskRecord
from core.settings import FleetSettings
from core.specs import FleetConfig, TaskSpec, new_task_id
from fleet.api import Fleet, SubmitResult

RESTART_PATIENCE_S = 60.0
"""How long ``Fleets.as_completed`` waits for a supervisor that went away to answer again."""


def rendezvous(task_id: str, names: Iterable[str]) -> str:
    """The fleet a task id goes to: the name with the highest hash of ``name/id``."""
    return max(names, key=lambda name: hashlib.sha256(f"{name}/{task_id}".encode()).digest())


class Fleets:
    """Named fleets on one Ray, with one submit, status and set of results over them."""

    def __init__(
        self, fleets: Mapping[str, Fleet], routes: Mapping[str, str] | None = None
    ) -> None:
        """``fleets``: name -> a started or connected fleet. ``routes``: label -> fleet name;
        a task whose ``requires`` or ``labels`` name a routed label goes to that fleet (the
        first routed one, ``requires`` before ``labels``)."""
        if not fleets:
            raise InputError("Fleets needs at least one fleet")
        unknown = sorted(set((routes or {}).values()) - set(fleets))
        if unknown:
            raise InputError(f"routes name fleets that are not here: {', '.join(unknown)}")
        self.fleets = dict(fleets)
        self.routes = dict(routes or {})
        self._where: dict[str, str] = {}
        """task id -> its fleet, for the tasks found in or sent to another fleet than their
        id's hash names (a label's route)"""

    @classmethod
    def start(
        cls,
        names: Iterable[str],
        settings: FleetSettings | None = None,
        config: FleetConfig | None = None,
        routes: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> Fleets:
        """Start (or reuse) one fleet per name on one Ray (``Fleet.start(name=...)``), each
        with the same settings otherwise; those started stop again if one fails."""
        started: dict[str, Fleet] = {}
        try:
            for name in names:
                started[name] = Fleet.start(settings, config, **{**overrides, "name": name})
        except BaseException:
            _shutdown(list(started.values()))
            raise
        return cls(started, routes)

    @classmethod
    def connect(
        cls,
        names: Iterable[str],
        address: str = "auto",
        namespace: str = "agent-fleet",
        routes: Mapping[str, str] | None = None,
    ) -> Fleets:
        """Attach to running named fleets of a Ray cluster."""
        return cls({n: Fleet.connect(address, n, namespace) for n in names}, routes)

    # -- routing -----------------------------------------------------------------------
    def route(self, task: TaskSpec | Mapping[str, Any]) -> str:
        """The name of the fleet a task goes to (it must have its id)."""
        spec = task.model_dump() if isinstance(task, TaskSpec) else task
        for label in [*(spec.get("requires") or []), *(spec.get("labels") or [])]:
            if label in self.routes:
                return self.routes[label]
        return rendezvous(str(spec["id"]), self.fleets)

    def fleet_of(self, task_id: str) -> str:
        """The fleet a task went to: as routed or found here, else where its id hashes to."""
        return self._where.get(task_id) or rendezvous(task_id, self.fleets)

    def submit(
        self, tasks: Iterable[TaskSpec | Mapping[str, Any]], batch: str | None = None
    ) -> SubmitResult:
        """Queue tasks, each on its fleet (one call per fleet, one batch name over all);
        a task without an id gets one here, since its id picks its fleet."""
        groups: dict[str, list[TaskSpec | dict[str, Any]]] = {}
        for task in tasks:
            if not isinstance(task, TaskSpec):
                task = dict(task)
                task.setdefault("id", new_task_id())
            groups.setdefault(self.route(task), []).append(task)
        batch = batch or f"b-{uuid.uuid4().hex[:8]}"
        merged = SubmitResult(accepted=[], rejected=[], batch=batch)
        for name, group in groups.items():
            result = self.fleets[name].submit(group, batch=batch)
            merged.accepted += result.accepted
            merged.rejected += [{**r, "fleet": name} for r in result.rejected]
            hashed = [i for i in result.accepted if rendezvous(i, self.fleets) != name]
            self._where.update(dict.fromkeys(hashed, name))
        return merged

    # -- answers across the fleets -----------------------------------------------------
    def get(self, task_id: str) -> TaskRecord | None:
        """A task's record, from its fleet (the others asked when that one has none)."""
        first = self.fleet_of(task_id)
        for name in [first, *(n for n in self.fleets if n != first)]:
            record = self.fleets[name].get(task_id)
            if record is not None:
                if name != first:
                    self._where[task_id] = name
                return record
        return None

    def records(self, task_ids: Iterable[str]) -> list[TaskRecord | None]:
        """Records of several tasks, in order (one call per fleet; None for an unknown id)."""
        ids = list(task_ids)
        by_fleet: dict[str, list[str]] = {}
        for task_id in ids:
            by_fleet.setdefault(self.fleet_of(task_id), []).append(task_id)
        found: dict[str, TaskRecord | None] = {}
        for name, group in by_fleet.items():
            found.update(zip(group, self.fleets[name].records(group), strict=True))
        return [found[i] if found[i] is not None else self.get(i) for i in ids]

    def as_completed(
        self, task_ids: Iterable[str], timeout_s: float | None = None
    ) -> Iterator[TaskRecord]:
        """Yield each task's record as it ends, whichever fleet runs it. A supervisor that
        restarts meanwhile is waited for (up to ``RESTART_PATIENCE_S``)."""
        ids = list(dict.fromkeys(task_ids))
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        # Listen from now on, then read what ended before (a task ending in between is in
        # both, and yielded once); reading also finds the tasks routed by another driver.
        cursors = {n: ray.get(f.supervisor.finished_count.remote()) for n, f in self.fleets.items()}
        pending: dict[str, set[str]] = {}
        for task_id, record in zip(ids, self.records(ids), strict=True):
            if record is not None and record.state.terminal:
                yield record
            else:
                pending.setdefault(self.fleet_of(task_id), set()).add(task_id)
        down_since: dict[str, float] = {}
        while any(pending.values()):
            if deadline is not None and time.monotonic() > deadline:
                left = sum(len(group) for group in pending.values())
                raise TimeoutError(f"{left} tasks still unfinished")
            waiting = [n for n, group in pending.items() if group]
            calls = {
                n: self.fleets[n].supervisor.finished_since.remote(cursors[n], 1.0 / len(waiting))
                for n in waiting
            }
            for name, call in calls.items():
                try:
                    records, cursors[name] = ray.get(call)
                except ray.exceptions.RayActorError:
                    # It restarts and replays its log: its finished tasks are listed anew.
                    since = down_since.setdefault(name, time.monotonic())
                    if time.monotonic() - since > RESTART_PATIENCE_S:
                        raise
                    cursors[name] = 0
                    time.sleep(0.5 / len(waiting))
                    continue
                down_since.pop(name, None)
                for record in records:
                    if record.id in pending[name]:
                        pending[name].discard(record.id)
                        yield record

    def wait(self, task_ids: Iterable[str], timeout_s: float | None = None) -> list[TaskRecord]:
        return list(self.as_completed(task_ids, timeout_s))

    def tasks(
        self, state: str | None = None, label: str | None = None, limit: int = 100
    ) -> list[TaskRecord]:
        """Tasks of every fleet, newest first."""
        every = [r for f in self.fleets.values() for r in f.tasks(state, label, limit)]
        every.sort(key=lambda r: r.submitted_at.timestamp() if r.submitted_at else 0.0)
        return every[::-1][:limit]

    def cancel(self, task_id: str, reason: str = "cancelled by user") -> Any:
        return self.fleets[self.fleet_of(task_id)].cancel(task_id, reason)

    def diff(self, task_id: str) -> str:
        return self.fleets[self.fleet_of(task_id)].diff(task_id)

    def status(self) -> dict[str, Any]:
        """Each fleet's status (``fleets``), and the task counts and workers of all."""
        each = {name: f.status() for name, f in self.fleets.items()}
        counts: dict[str, int] = {}
        for status in each.values():
            for state, n in status["counts"].items():
                counts[state] = counts.get(state, 0) + n
        workers = sum(int(s["workers"]) for s in each.values())
        return {"fleets": each, "counts": counts, "workers": workers}

    def events_dirs(self) -> list[str]:
        """The event logs of the fleets (one entry per distinct directory): what one
        ``fleet report --events ... --events ...`` reads."""
        return list(dict.fromkeys(f.settings.events_dir for f in self.fleets.values()))

    def flush(self) -> int:
        return sum(f.flush() for f in self.fleets.values())

    def shutdown(self) -> None:
        """Stop every fleet (the one that started Ray last, Ray with it)."""
        _shutdown(list(self.fleets.values()))

    def __enter__(self) -> Fleets:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def _shutdown(fleets: list[Fleet]) -> None:
    """Stop fleets; one that owns the local Ray goes last (it stops Ray, and the rest)."""
    errors: list[BaseException] = []
    for fleet in sorted(fleets, key=lambda f: f._owns_ray):
        try:
            fleet.shutdown()
        except Exception as exc:  # stop the others all the same
            errors.append(exc)
    if errors:
        raise errors[0]
