"""Every error this project raises on purpose derives from :class:`FleetError`.

A caller that wants "anything the fleet refused or could not do" catches ``FleetError``; one
that can act on a kind of failure catches its intermediate base. Where code (ours, pydantic's,
a caller's) catches a class by a builtin base, that base stays as a mixin (``InputError`` is
also a ``ValueError``, ``UnknownSpec`` also a ``LookupError``, ...). The tree::

    FleetError                       core.errors      anything the fleet refused or could not do
    ├── InputError (ValueError)      core.errors      input a person can fix: names the file,
    │   │                                             line or field (a task or config file)
    │   ├── TaskRejected             actors.scheduler a submitted task is refused (id, field)
    │   ├── PolicyError              serve.policy     a client asked for more than the operator
    │   │                                             allows (field)
    │   ├── SkillError               harness.skills   a skill is missing or malformed
    │   ├── CliError                 fleet.cli        a command line or setting is wrong
    │   ├── JobError                 fleet.job        a batch job's arguments or setup are wrong
    │   ├── SourceConfigError        sources.base     a source's config entry is unusable (field)
    │   ├── UnsafePath               actors.results   a result path leading out of the workspace
    │   ├── FileTooLarge             actors.files     an upload over max_file_bytes (413)
    │   ├── RowError                 sources.sql      a table row cannot become a task (reason)
    │   ├── IssueError               sources.github   an issue cannot become a task (reason)
    │   ├── EventWireError           core.events      a batch of events sent to ``ingest`` is
    │   │                                             not in the wire form (field, event)
    │   └── TelemetryError           actors.tracing   an OTEL_* variable asks for an exporter or
    │                                                 sampler the fleet cannot make
    ├── StateError                   core.errors      the request does not fit the fleet's state
    │   ├── SpecConflict (ValueError)  actors.registry  a spec changed since the caller read it
    │   ├── UnknownSpec (LookupError)  actors.scheduler a task names a spec that is gone
    │   ├── NoResults (LookupError)    actors.results   a task, its results or a file not there
    │   ├── NoSuchFile (LookupError)   actors.files     no uploaded file has that id
    │   ├── UnknownSecret (LookupError)  core.vault     a reference names no secret (or one that
    │   │                                               cannot be read now)
    │   ├── SecretDenied (PermissionError) core.vault   the caller may not change or name it
    │   ├── SecretConflict (ValueError)  core.vault     a secret exists already, or the config
    │   │                                               (or the secrets directory) defines it
    │   └── IssueGone                sources.github   an issue was deleted or moved (handled
    │                                                 inside the GitHub source)
    ├── StorageError (RuntimeError)  core.errors      the event history cannot be written or read
    │   ├── EventLogError            core.eventlog    the event log cannot be written or is taken
    │   └── AnalyticsError           core.analytics   there is no history to query, or bad SQL
    ├── SandboxError (RuntimeError)  sandboxes.base   a sandbox cannot do what was asked
    │   ├── SandboxLost              sandboxes.base   the sandbox is gone; the session cannot go on
    │   └── ImageBuildError          sandboxes.images an environment image cannot be built
    ├── ModelError (RuntimeError)    harness.models   the model could not produce a turn
    ├── McpError (RuntimeError)      harness.mcp      an agent's MCP server cannot be started
    │                                                 or reached (its stderr's end)
    ├── SourceError                  sources.base     a work source cannot be reached (back off)
    ├── _Transient                   harness.models.openai_client  a retryable model failure
    │                                                 (never leaves the client)
    ├── AgentStartError (RuntimeError)  actors.session  an agent's model or loop cannot be built
    ├── GitError (RuntimeError)      actors.delivery  a git command failed (token scrubbed)
    ├── FleetUnavailable (RuntimeError) fleet.api     a fleet cannot be started or reached
    └── BodyTooLarge (HTTPException) serve.plumbing   a request body over the limit (413); not
                                                      a ValueError, so body parsing passes it on

:func:`root_cause` finds the exception an actor raised behind Ray's wrappers, from Ray's own
structured fields (never from traceback text).
"""

from __future__ import annotations


class FleetError(Exception):
    """Anything the fleet refused or could not do; its message is one line for a person."""


class InputError(FleetError, ValueError):
    """Input a person can fix (a task or config file, an argument, a request field); the
    message names where: ``file:line``, the field, or the file that is unusable."""


class StateError(FleetError):
    """A request that does not fit the fleet's current state (a spec changed since it was
    read, a name that no longer exists)."""


class StorageError(FleetError, RuntimeError):
    """The event history cannot be written or read (the event log, its analytics)."""


def root_cause(exc: BaseException) -> BaseException:
    """The exception an actor or remote task raised, behind Ray's wrappers.

    A failed method or task arrives as a ``RayTaskError`` whose ``cause`` is the original
    exception (itself a ``RayTaskError`` when the failure came from a nested call). An actor
    whose constructor raised arrives as an ``ActorDiedError`` with ``actor_init_failed``:
    Ray builds it from the creation task's ``RayTaskError`` (its constructor argument, kept
    in ``args``), which carries the original exception as ``cause``. Anything else is its own
    root cause.
    """
    from ray.exceptions import ActorDiedError, RayTaskError

    while True:
        if isinstance(exc, RayTaskError) and isinstance(exc.cause, BaseException):
            if exc.cause is exc:
                return exc
            exc = exc.cause
        elif (
            isinstance(exc, ActorDiedError)
            and exc.actor_init_failed
            and exc.args
            and isinstance(exc.args[0], RayTaskError)
        ):
            exc = exc.args[0]
        else:
            return exc


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message (its class name when it has none), for a
    person; pass the :func:`root_cause` of a Ray error, not the wrapper."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
