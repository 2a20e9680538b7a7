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

from core.settings import FleetSettings
from core.specs import FleetConfig, SourceSpec
from core.vault import UnknownSecret, Vault
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


SECRET_OPTION = "_secret"
"""An option ``<field>_secret: NAME`` names a secret of the vault for ``<field>``."""


def secret_options(spec: SourceSpec, vault: Vault | None) -> SourceSpec:
    """``spec`` with each ``<field>_secret: NAME`` option replaced by where the vault keeps
    that secret on the head (``<field>_env: VAR`` or ``<field>_file: PATH``), which the
    source then reads itself (:func:`sources.base.read_secret`); never the value."""
    named = {k: v for k, v in spec.options.items() if k.endswith(SECRET_OPTION)}
    if not named:
        return spec
    options = {k: v for k, v in spec.options.items() if k not in named}
    for key, name in named.items():
        field = key.removesuffix(SECRET_OPTION)
        if vault is None or not isinstance(name, str):
            raise SourceConfigError(f"source {spec.name!r}: options.{key}: no such secret")
        try:
            env, file = vault.location(name)
        except UnknownSecret as exc:
            raise SourceConfigError(f"source {spec.name!r}: options.{key}: {exc}") from None
        options[f"{field}_env" if env else f"{field}_file"] = env or file
    return spec.model_copy(update={"options": options})


def build_source(spec: SourceSpec, vault: Vault | None = None) -> Source:
    """The source a config entry describes, its options validated (SourceConfigError);
    ``vault``: where its ``<field>_secret`` options are looked up."""
    return source_class(spec.kind, spec.name).from_spec(secret_options(spec, vault))


def build_sources(config: FleetConfig, settings: FleetSettings | None = None) -> list[Source]:
    """Every source of the config, in order; the first bad entry raises SourceConfigError.
    Secrets named by options are the fleet's (``settings``: its vault directory)."""
    vault = Vault.of(settings or FleetSettings(), config.secrets)
    return [build_source(spec, vault) for spec in config.sources]
