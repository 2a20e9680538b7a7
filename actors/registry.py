"""Named, versioned agents and environments. Tasks refer to them by name.

The registry edits the same :class:`FleetConfig` the scheduler resolves names with, so a new
agent is usable by the next task submitted. Archived specs stay readable but new tasks cannot
name them. (Kept in memory: after a supervisor restart, the config file's specs are back and
API-made ones must be put again.)
"""

from __future__ import annotations

from typing import Any

from core.errors import StateError
from core.records import CommandResult
from core.specs import AgentSpec, EnvironmentSpec, FleetConfig

KINDS: dict[str, type[AgentSpec] | type[EnvironmentSpec]] = {
    "agent": AgentSpec,
    "environment": EnvironmentSpec,
}


class SpecConflict(StateError, ValueError):
    """The spec changed since the version the caller read."""


class Registry:
    def __init__(self, config: FleetConfig) -> None:
        self.config = config
        self.versions: dict[tuple[str, str], int] = {}
        self.archived: dict[tuple[str, str], dict[str, Any]] = {}
        for name in config.agents:
            self.versions[("agent", name)] = 1
        for name in config.environments:
            self.versions[("environment", name)] = 1

    def _table(self, kind: str) -> dict[str, Any]:
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}: use agent or environment")
        return self.config.agents if kind == "agent" else self.config.environments

    def put(self, kind: str, spec: dict[str, Any], expected_version: int | None) -> dict[str, Any]:
        table = self._table(kind)
        model = KINDS[kind].model_validate(spec)
        key = (kind, model.name)
        current = self.versions.get(key, 0) if model.name in table else 0
        if expected_version is not None and expected_version != current:
            raise SpecConflict(
                f"{kind} {model.name!r} is at version {current}, not {expected_version}"
            )
        table[model.name] = model
        self.archived.pop(key, None)
        self.versions[key] = current + 1
        return self._view(kind, model.name)

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        if name in self._table(kind):
            return self._view(kind, name)
        return self.archived.get((kind, name))

    def list(self, kind: str, include_archived: bool = False) -> list[dict[str, Any]]:
        views = [self._view(kind, name) for name in sorted(self._table(kind))]
        if include_archived:
            views += [v for (k, _), v in sorted(self.archived.items()) if k == kind]
        return views

    def archive(self, kind: str, name: str) -> CommandResult:
        """New tasks may no longer name it; it stays readable. The default cannot go."""
        table = self._table(kind)
        if name not in table:
            archived = (kind, name) in self.archived
            return CommandResult.refused(
                f"{kind} {name!r} is archived already" if archived else f"no {kind} {name!r}"
            )
        if name == "default":
            return CommandResult.refused(f"the default {kind} cannot be archived")
        view = self._view(kind, name) | {"archived": True}
        del table[name]
        self.archived[(kind, name)] = view
        return CommandResult.done()

    def _view(self, kind: str, name: str) -> dict[str, Any]:
        spec = self._table(kind)[name]
        return {
            "kind": kind,
            "name": name,
            "version": self.versions.get((kind, name), 1),
            "archived": False,
            "spec": spec.model_dump(mode="json"),
        }
