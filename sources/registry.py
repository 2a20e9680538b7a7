"""Finding the class of a source named in the config, and building the configured sources.

A ``kind`` is resolved in this order:

1. a built-in kind (``sql``, ``github``);
2. an entry point of that name in the group ``agent_fleet.sources`` (a package declares
   ``[project.entry-points."agent_fleet.sources"] jira = "my_pkg.jira:JiraSource"``);
3. an import path ``package.module:ClassName`` (a module on ``PYTHONPATH``).

The class must subclass :class:`sources.base.Source`.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from core.specs import FleetConfig, SourceSpec
from sources.base import Source, SourceConfigError

ENTRY_POINT_GROUP = "agent_fleet.sources"
BUILTIN_KINDS = {"sql": "sources.sql:SqlSource", "github": "sources.github:GitHubSource"}


def _import_path(path: str, source: str) -> object:
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise SourceConfigError(
            f"source {source!r}: kind: {path!r} is neither a known kind "
            f"({', '.join(sorted(BUILTIN_KINDS))}), an entry point in {ENTRY_POINT_GROUP!r}, "
            "nor an import path 'package.module:ClassName'"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SourceConfigError(
            f"source {source!r}: kind: cannot import {module_name!r}: {exc}"
        ) from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise SourceConfigError(
            f"source {source!r}: kind: module {module_name!r} has no {attr!r}"
        ) from None


def source_class(kind: str, source: str = "?") -> type[Source]:
    """The Source subclass ``kind`` names (see the module docstring for the order)."""
    if kind in BUILTIN_KINDS:
        found: object = _import_path(BUILTIN_KINDS[kind], source)
    else:
        points = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == kind]
        if points:
            try:
                found = points[0].load()
            except Exception as exc:
                raise SourceConfigError(
                    f"source {source!r}: kind: entry point {kind!r} does not load: {exc}"
                ) from None
        else:
            found = _import_path(kind, source)
    if not (isinstance(found, type) and issubclass(found, Source)):
        raise SourceConfigError(
            f"source {source!r}: kind: {kind!r} is not a subclass of sources.base.Source"
        )
    return found


def build_source(spec: SourceSpec) -> Source:
    """The source a config entry describes, its options validated (SourceConfigError)."""
    return source_class(spec.kind, spec.name).from_spec(spec)


def build_sources(config: FleetConfig) -> list[Source]:
    """Every source of the config, in order; the first bad entry raises SourceConfigError."""
    return [build_source(spec) for spec in config.sources]
