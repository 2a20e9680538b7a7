"""Named, versioned agents and environments. Tasks refer to them by name.

Every change is an event (``registry.put``, ``registry.archived``, under the pseudo task id
``registry:<kind>/<name>``): :meth:`Registry.put_event` and :meth:`Registry.archived_event`
decide one, the journal logs it and :meth:`Registry.apply` folds it in, so a supervisor that
starts on the same event log gets every version back (``actors.recovery``). Specs of the
config file are version 1 of their name; a version the log has wins over the file's.

Every version is kept: a task is pinned to the versions it was submitted with
(``TaskRecord.versions``) and runs them whatever later updates say. The registry edits the
same :class:`FleetConfig` the scheduler resolves names with: its tables hold the current
version of each name that is not archived. Archived specs stay readable, new tasks cannot
name them.
"""

from __future__ import annotations

from typing import Any

from core.errors import StateError
from core.events import Event, EventType, registry_task_id
from core.records import CommandResult
from core.specs import AgentSpec, EnvironmentSpec, FleetConfig

Spec = AgentSpec | EnvironmentSpec

KINDS: dict[str, type[AgentSpec] | type[EnvironmentSpec]] = {
    "agent": AgentSpec,
    "environment": EnvironmentSpec,
}


class SpecConflict(StateError, ValueError):
    """The spec changed since the version the caller read."""


class Registry:
    def __init__(self, config: FleetConfig) -> None:
        self.config = config
        self.history: dict[tuple[str, str], dict[int, Spec]] = {}
        """Every version of every name, archived ones included."""
        self.archived: set[tuple[str, str]] = set()
        for kind in KINDS:
            for name, spec in self._table(kind).items():
                self.history[(kind, name)] = {1: spec}

    def _table(self, kind: str) -> dict[str, Any]:
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}: use agent or environment")
        return self.config.agents if kind == "agent" else self.config.environments

    # -- what is there -------------------------------------------------------------------
    def live(self, kind: str, name: str) -> bool:
        """May new tasks name it (it exists and is not archived)?"""
        return name in self._table(kind)

    def names(self, kind: str) -> list[str]:
        """The names new tasks may give, sorted."""
        return sorted(self._table(kind))

    def is_archived(self, kind: str, name: str) -> bool:
        return (kind, name) in self.archived and not self.live(kind, name)

    def latest_version(self, kind: str, name: str) -> int:
        """The newest version of the name, archived or not; 0 when it never existed."""
        versions = self.history.get((kind, name))
        if versions:
            return max(versions)
        return 1 if self.live(kind, name) else 0

    def current_version(self, kind: str, name: str) -> int:
        """The version new tasks get; 0 when the name is unknown or archived."""
        return self.latest_version(kind, name) if self.live(kind, name) else 0

    def spec(self, kind: str, name: str, version: int) -> Spec | None:
        """That version of the name (archived or not), or None."""
        if self.live(kind, name) and version == self.current_version(kind, name):
            return self._table(kind)[name]
        return self.history.get((kind, name), {}).get(version)

    # -- decisions (events) and the fold ---------------------------------------------
    def put_event(self, kind: str, spec: dict[str, Any], expected_version: int | None) -> Event:
        """``registry.put`` for a new version of ``spec``'s name (validated first; a pydantic
        ValidationError says what is wrong). ``expected_version``: the current version the
        caller read (0: it must not exist yet); SpecConflict when it is not that."""
        self._table(kind)
        model = KINDS[kind].model_validate(spec)
        current = self.current_version(kind, model.name)
        if expected_version is not None and expected_version != current:
            raise SpecConflict(
                f"{kind} {model.name!r} is at version {current}, not {expected_version}"
            )
        payload = {
            "kind": kind,
            "name": model.name,
            "version": self.latest_version(kind, model.name) + 1,
            "spec": model.model_dump(mode="json"),
        }
        return Event(
            task_id=registry_task_id(kind, model.name), type=EventType.registry_put, payload=payload
        )

    def archive_refusal(self, kind: str, name: str) -> str:
        """Why the name cannot be archived (empty: it can). The default cannot go."""
        if self.is_archived(kind, name):
            return f"{kind} {name!r} is archived already"
        if not self.live(kind, name):
            return f"no {kind} {name!r}"
        if name == "default":
            return f"the default {kind} cannot be archived"
        return ""

    def archived_event(self, kind: str, name: str) -> Event:
        """``registry.archived`` (see :meth:`archive_refusal` first)."""
        payload = {"kind": kind, "name": name, "version": self.current_version(kind, name)}
        return Event(
            task_id=registry_task_id(kind, name), type=EventType.registry_archived, payload=payload
        )

    def apply(self, event: Event) -> None:
        """Fold a registry event in (from a live decision or the log's replay)."""
        p = event.payload
        kind, name = str(p["kind"]), str(p["name"])
        key = (kind, name)
        if event.type == EventType.registry_put:
            model = KINDS[kind].model_validate(p["spec"])
            model.name = name
            version = int(p["version"])
            versions = self.history.setdefault(key, {})
            newest = version >= max(versions, default=0)
            versions[version] = model
            if newest:
                self._table(kind)[name] = model
                self.archived.discard(key)
        elif event.type == EventType.registry_archived:
            self._table(kind).pop(name, None)
            self.archived.add(key)

    # -- without a log (tests, in-memory use): decide and apply at once -----------------
    def put(self, kind: str, spec: dict[str, Any], expected_version: int | None) -> dict[str, Any]:
        event = self.put_event(kind, spec, expected_version)
        self.apply(event)
        view = self.view(kind, event.payload["name"])
        assert view is not None
        return view

    def archive(self, kind: str, name: str) -> CommandResult:
        """New tasks may no longer name it; it stays readable. The default cannot go."""
        why = self.archive_refusal(kind, name)
        if why:
            return CommandResult.refused(why)
        self.apply(self.archived_event(kind, name))
        return CommandResult.done()

    # -- views -------------------------------------------------------------------------
    def get(self, kind: str, name: str, version: int | None = None) -> dict[str, Any] | None:
        """The name's current (or newest archived) version, or that ``version``; None when
        there is no such name or version."""
        if not self.live(kind, name) and not self.is_archived(kind, name):
            return None
        return self.view(kind, name, version)

    def list(self, kind: str, include_archived: bool = False) -> list[dict[str, Any]]:
        names = sorted(self._table(kind))
        views = [self.view(kind, name) for name in names]
        if include_archived:
            gone = sorted(n for k, n in self.archived if k == kind and not self.live(kind, n))
            views += [self.view(kind, name) for name in gone]
        return views

    def versions(self, kind: str, name: str) -> list[dict[str, Any]] | None:
        """Every version of the name, oldest first; None when there is no such name."""
        if self.get(kind, name) is None:
            return None
        numbers = sorted(
            set(self.history.get((kind, name), {})) | {self.latest_version(kind, name)}
        )
        return [v for n in numbers if (v := self.view(kind, name, n)) is not None]

    def view(self, kind: str, name: str, version: int | None = None) -> dict[str, Any] | None:
        version = self.latest_version(kind, name) if version is None else version
        spec = self.spec(kind, name, version)
        if spec is None:
            return None
        return {
            "kind": kind,
            "name": name,
            "version": version,
            "archived": self.is_archived(kind, name),
            "spec": spec.model_dump(mode="json"),
        }
