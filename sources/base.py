"""The interface every source of work implements, and the words it speaks.

A *source* is a place where a team keeps work for agents: a SQL table, an issue tracker, a
queue. A watcher (``fleet watch``, built on this interface) drives one source in a loop::

    async with source:
        while True:
            for item in await source.list_ready():        # new items, oldest/highest first
                if await source.claim(item.id):           # False: another watcher won it
                    submit a task for item; await source.report_progress(item.id, "queued")
            # reconciliation, for the items this watcher holds:
            still = await source.wanted(held_ids)          # id -> current prompt
            #   an id missing from ``still``: withdrawn by a person -> cancel its task
            #   a prompt that differs from the submitted one: edited -> resubmit
            # a task that ended: await source.report_outcome(item.id, Outcome(...))
            await source.wait_for_work()                   # notification or poll interval

On start (after a restart or a crash, even between a claim and its submit) the watcher asks
:meth:`Source.list_claimed` for the items it holds and matches them with the fleet's tasks by
their deterministic task ids (``fleet/watch.py``).

Every method is async and may raise :class:`SourceError` when the backend cannot be reached
or refuses a query; the watcher then backs off and retries, it never loses its claims (they
live in the backend). Methods that write (claim, progress, outcome) are conditional: they
change an item only while it is in the state the watcher expects, so a person who took an
item back (changed its state, deleted it) always wins, and two watchers never both own one.

A new kind of source (Jira, say) is one subclass of :class:`Source` with an ``Options``
model; name it in the config by import path or register it as an entry point (see
``sources.registry``).
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Collection
from enum import StrEnum
from types import TracebackType
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from core.errors import FleetError, InputError
from core.specs import SourceSpec
from core.vault import read_secret_file, read_secret_variable


class SourceError(FleetError):
    """A source cannot be reached or refused a query (the one error a watcher backs off on).

    The message starts with the source's name and never contains a DSN or other secret.
    """

    def __init__(self, source: str, message: str) -> None:
        super().__init__(f"source {source!r}: {message}")
        self.source = source


class SourceConfigError(InputError):
    """A source's entry in the config is unusable: unknown kind, bad or missing option, a
    secret that cannot be read. The message names the source and the field."""


def read_secret(source: str, field: str, env: str | None, file: str | None) -> str:
    """A source's secret (a DSN, a token) from the variable ``env`` names, else the first
    line of ``file`` (``options.<field>_env`` / ``options.<field>_file``, exactly one set;
    ``options.<field>_secret`` names a secret of the vault, made one of these by
    :func:`sources.registry.build_source`). Read by the vault's functions
    (``core/vault.py``); SourceConfigError names the source and the option, never the value."""
    try:
        if env is not None:
            return read_secret_variable(env, f"source {source!r}: options.{field}_env")
        assert file is not None
        return read_secret_file(file, f"source {source!r}: options.{field}_file", first_line=True)
    except InputError as exc:
        raise SourceConfigError(str(exc)) from None


class ItemState(StrEnum):
    """Where an item stands, as the fleet reports it back to the source."""

    ready = "ready"
    """Waiting to be picked up (written by people or their tools, never by the fleet)."""
    running = "running"
    """Claimed by a watcher; its task is queued or running."""
    succeeded = "succeeded"
    failed = "failed"
    needs_human = "needs_human"
    cancelled = "cancelled"
    rejected = "rejected"
    """Never run: the item is malformed (no prompt, bad field) or the fleet refused it."""


OUTCOME_STATES = frozenset(
    {
        ItemState.succeeded,
        ItemState.failed,
        ItemState.needs_human,
        ItemState.cancelled,
        ItemState.rejected,
    }
)


class WorkItem(BaseModel):
    """One piece of work read from a source, ready to become a task.

    ``raw`` is the whole record as the backend gave it (every column of a row), so a watcher
    or a custom mapping can use fields the standard ones do not cover.
    """

    model_config = ConfigDict(frozen=True)

    source: str
    id: str = Field(min_length=1)
    prompt: str = Field(min_length=1)
    repo: str | None = None
    labels: list[str] = Field(default_factory=list)
    priority: int = 0
    agent: str | None = None
    raw: dict[str, Any] = Field(default_factory=dict)


class Outcome(BaseModel):
    """How an item ended, written back to the source by :meth:`Source.report_outcome`."""

    model_config = ConfigDict(frozen=True)

    state: ItemState
    summary: str | None = None
    branch: str | None = None
    pr_url: str | None = None
    reason: str | None = Field(None, description="Why it failed, was rejected or cancelled.")

    @model_validator(mode="after")
    def _final_state(self) -> Outcome:
        if self.state not in OUTCOME_STATES:
            allowed = ", ".join(sorted(OUTCOME_STATES))
            raise ValueError(f"an outcome's state is one of {allowed}, not {self.state.value!r}")
        return self


class NoOptions(BaseModel):
    """The options of a source that takes none (any given is an error)."""

    model_config = ConfigDict(extra="forbid")


class Source(ABC):
    """A place work is picked up from. Subclasses implement the abstract methods.

    ``Options`` is the pydantic model of the source's ``options:`` in the config; it is
    validated by :meth:`from_spec`, so a subclass receives a checked instance. Item ids are
    strings (the backend's key, converted). A source opens connections lazily and
    :meth:`close` releases them; it is also an async context manager.
    """

    Options: ClassVar[type[BaseModel]] = NoOptions
    poll_interval_s: float = 10.0
    """How long :meth:`wait_for_work` waits when no notification arrives."""
    owner: str | None = None
    """Who claims: the watcher sets its fleet's name. A source that can record it on a claim
    lets several fleets share one backend (:meth:`list_claimed` then returns only this
    owner's items)."""

    def __init__(self, name: str, options: BaseModel) -> None:
        self.name = name
        self.options = options

    @classmethod
    def from_spec(cls, spec: SourceSpec) -> Self:
        """Build the source from its config entry, validating ``spec.options`` with
        ``cls.Options``; a problem is a :class:`SourceConfigError` naming source and field."""
        try:
            options = cls.Options.model_validate(spec.options)
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in ("options", *err["loc"]))
            msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
            raise SourceConfigError(f"source {spec.name!r}: {field}: {msg}") from None
        return cls(spec.name, options)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"

    @abstractmethod
    async def list_ready(self, limit: int = 100) -> list[WorkItem]:
        """Up to ``limit`` items in the ready state, highest priority first, then oldest.

        Items that cannot become a task (no prompt, a malformed field) are marked
        ``rejected`` with the reason right here and left out; the rest are returned.
        Listing does not claim: another watcher may list the same items.
        """

    @abstractmethod
    async def claim(self, item_id: str) -> bool:
        """Take the item for this watcher: ready -> running, atomically. True if this call
        won it; False if it is gone, no longer ready, or another watcher claimed it first."""

    @abstractmethod
    async def report_progress(self, item_id: str, note: str | None = None) -> bool:
        """Record that the claimed item's task is alive (state running, updated time, the
        note as summary if given). False if the item is no longer running (withdrawn)."""

    @abstractmethod
    async def report_outcome(self, item_id: str, outcome: Outcome) -> bool:
        """Write the final state and the result fields. Only a running (claimed) item is
        written; False if a person changed or removed it meanwhile (it is left as it is)."""

    @abstractmethod
    async def wanted(self, item_ids: Collection[str]) -> dict[str, str]:
        """Of the given claimed items, those still wanted, with their current prompt.

        An id missing from the answer was withdrawn (deleted, or its state changed by a
        person): the watcher cancels its task. A prompt that differs from the one submitted
        was edited: the watcher replaces a task that has not started yet.
        """

    async def list_claimed(self, limit: int = 10_000) -> list[WorkItem]:
        """The items claimed (running) by this watcher, or by every watcher when the source
        cannot tell them apart (see :attr:`owner`), so that a restarted watcher takes up what
        it held. Items that cannot become a task are left out. A source that cannot list them
        raises NotImplementedError (the default): its watcher then cannot recover claims."""
        raise NotImplementedError(f"{type(self).__name__} cannot list its claimed items")

    async def wait_for_work(self) -> bool:
        """Return when new work may be ready: at a notification from the backend (True) or
        after :attr:`poll_interval_s` (False). This default only sleeps."""
        await asyncio.sleep(self.poll_interval_s)
        return False

    async def close(self) -> None:  # noqa: B027  (optional hook, default: nothing to close)
        """Release connections; the source reconnects if used again."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
