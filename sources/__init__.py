"""Places teams keep work (SQL tables, trackers) that the fleet picks tasks up from.

Layer: above serve, below fleet; imports only core. ``base`` is the interface, ``registry``
resolves a config entry's kind to a class, ``sql`` reads PostgreSQL and SQLite tables,
``github`` reads GitHub issues.
"""

from sources.base import (
    ItemState,
    Outcome,
    Source,
    SourceConfigError,
    SourceError,
    WorkItem,
)
from sources.registry import ENTRY_POINT_GROUP, build_source, build_sources, source_class

__all__ = [
    "ENTRY_POINT_GROUP",
    "ItemState",
    "Outcome",
    "Source",
    "SourceConfigError",
    "SourceError",
    "WorkItem",
    "build_source",
    "build_sources",
    "source_class",
]
