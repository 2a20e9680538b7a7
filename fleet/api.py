"""The Python driver API: start or connect to a fleet, submit tasks, follow them.

    from fleet import Fleet
    with Fleet.start(workers=4) as fleet:
        ids = fleet.submit([{"prompt": "...", "script": [...]}]).accepted
        for record in fleet.as_completed(ids):
            print(record.id, record.state)

The CLI is built on this class and nothing private.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray

from actors.supervisor import Supervisor, supervisor_name
from core.errors import FleetError, one_line, root_cause
from core.events import Event
from core.records import CommandResult, TaskRecord
from core.settings import FleetSettings, otel_variables, ray_workers_at_normal_priority
from core.specs import FleetConfig, TaskSpec
from core.vault import SecretInfo
from sandboxes import describe_kind, resolve_kind


class FleetUnavailable(FleetError, RuntimeError):
    """The fleet could not be started, reached or asked (one clear line for a person)."""


@dataclass
class SubmitResult:
    accepted: list[str]
    rejected: list[dict[str, str]] = field(default_factory=list)
    batch: str | None = None


class Fleet:
    def __init__(
        self, supervisor: Any, settings: FleetSettings, owns_ray: bool, sandbox_why: str = ""
    ) -> None:
        self.supervisor = supervisor
        self.settings = settings
        self._owns_ray = owns_ray
        self._restarts = 0
        self.sandbox_notice = describe_kind(settings.sandbox, sandbox_why)
        """One line naming the sandbox backend this fleet's sessions run in (say it loudly)."""

    # -- getting a fleet ---------------------------------------------------------------
    @classmethod
    def start(
        cls,
        settings: FleetSettings | None = None,
        config: FleetConfig | None = None,
        *,
        refuse_auto_local: bool = False,
        **overrides: Any,
    ) -> Fleet:
        """Start Ray if needed and the fleet's supervisor if absent (else reuse it).

        The sandbox backend is resolved here, once, on the head node: ``auto`` becomes
        ``docker`` when an engine answers there, else ``local``. ``refuse_auto_local`` refuses
        a ``local`` backend that was not asked for by name (``auto`` without Docker, or a
        running fleet's): a server for API clients must not quietly run their tasks on the
        host. Raises FleetUnavailable (a FleetError).
        """
        settings = settings or FleetSettings()
        if overrides:  # validated, unlike model_copy(update=...)
            settings = FleetSettings(**{**settings.model_dump(), **overrides})
        config = config or FleetConfig()
        if settings.model and config.agents["default"].model == "scripted":
            default = config.agents["default"].model_copy(
                update={"model": settings.model, "api": settings.api}
            )
            config = config.model_copy(update={"agents": {**config.agents, "default": default}})
        owns_ray = cls._init_ray(settings.ray_address, settings.namespace, settings.ray_logs)
        requested = settings.sandbox
        try:
            settings = settings.model_copy(
                update={"sandbox": _resolve_on_head(requested, owns_ray)}
            )
            if refuse_auto_local:
                _refuse_local_fallback(requested, settings.sandbox)
        except (FleetError, ray.exceptions.RayError) as exc:
            if owns_ray:
                ray.shutdown()
            raise FleetUnavailable(one_line(root_cause(exc))) from exc
        options: dict[str, Any] = {
            "name": supervisor_name(settings.name),
            "namespace": settings.namespace,
            "get_if_exists": True,
            # On the head node, beside the event log's default path.
            "resources": {"node:__internal_head__": 0.001},
        }
        if not owns_ray:
            options["lifetime"] = "detached"  # a cluster's fleet outlives the driver
        otel = otel_variables() if settings.tracing is not False else {}
        if otel:  # the supervisor exports the traces: it needs this driver's OTEL_* variables
            options["runtime_env"] = {"env_vars": otel}
        try:
            handle = Supervisor.options(**options).remote(settings, config)
            ray.get(handle.start.remote())
            # A fleet that was running already keeps its own settings (sandbox included).
            running = ray.get(handle.get_settings.remote())
        except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as exc:
            cause = one_line(root_cause(exc))
            raise FleetUnavailable(f"the supervisor failed to start: {cause}") from exc
        why = ""
        if running.sandbox == settings.sandbox == "local":
            why = "no Docker engine answered" if requested == "auto" else "asked for"
        fleet = cls(handle, running, owns_ray, why)
        if refuse_auto_local and running.sandbox == "local" and requested != "local":
            if owns_ray:
                fleet.shutdown()
            raise FleetUnavailable(
                f"fleet {settings.name!r} is already running with local sandboxes (not "
                "isolated): pass --sandbox local (or FLEET_SANDBOX=local) to serve it anyway"
            )
        return fleet

    @classmethod
    def connect(
        cls, address: str = "auto", name: str = "default", namespace: str = "agent-fleet"
    ) -> Fleet:
        """Attach to a running fleet on a Ray cluster (``"auto"`` or ``"ray://host:port"``)."""
        owns_ray = cls._init_ray(address, namespace, FleetSettings().ray_logs)
        try:
            handle = ray.get_actor(supervisor_name(name), namespace=namespace)
        except ValueError:
            raise FleetUnavailable(f"no fleet named {name!r} is running at {address}") from None
        settings = ray.get(handle.get_settings.remote())
        return cls(handle, settings, owns_ray)

    @staticmethod
    def _init_ray(address: str | None, namespace: str, ray_logs: bool) -> bool:
        """Returns True when this process started its own local Ray. ``ray_logs``: show the
        Ray workers' logs here (``FLEET_RAY_LOGS``)."""
        if ray.is_initialized():
            return False
        # Ray says at every local start that token authentication is on (the safe default
        # the fleet keeps): not worth a line on every command's output.
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(
            logging.ERROR
        )
        ray_workers_at_normal_priority()  # a cluster's nodes: see cluster.yaml
        try:
            ray.init(
                address=address,
                namespace=namespace,
                include_dashboard=False,
                logging_level=logging.WARNING,
                log_to_driver=ray_logs,
            )
        except Exception as exc:
            where = address or "a local Ray"
            raise FleetUnavailable(f"cannot start or reach {where}: {one_line(exc)}") from exc
        # ray.init() with no address joins a cluster started by `ray start` when one runs:
        # that Ray (and its fleet) is not ours to stop.
        node = getattr(ray._private.worker, "_global_node", None)
        return address is None and bool(getattr(node, "head", False))

    # -- work --------------------------------------------------------------------------
    def submit(
        self, tasks: Iterable[TaskSpec | dict[str, Any]], batch: str | None = None
    ) -> SubmitResult:
        """Queue tasks. Accepted ones are in the event log when this returns."""
        batch = batch or f"b-{uuid.uuid4().hex[:8]}"
        payload = [
            t.model_dump(mode="json", exclude_none=True) if isinstance(t, TaskSpec) else t
            for t in tasks
        ]
        out = ray.get(self.supervisor.submit.remote(payload, batch))
        return SubmitResult(out["accepted"], out["rejected"], out["batch"])

    def as_completed(
        self, task_ids: Iterable[str], timeout_s: float | None = None
    ) -> Iterator[TaskRecord]:
        """Yield each task's record as it ends, in the order they end."""
        pending = set(task_ids)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        # Listen from now on (not from the fleet's first task), after collecting the tasks
        # that ended before: one that ends in between is in both, and yielded once.
        cursor = self._read(self.supervisor.finished_count)
        for record in self._read(self.supervisor.get, list(pending)):
            if record is not None and record.state.terminal:
                pending.discard(record.id)
                yield record
        while pending:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{len(pending)} tasks still unfinished")
            before = self._restarts
            records, cursor = self._read(self.supervisor.finished_since, cursor, 1.0)
            if self._restarts != before:
                # The supervisor restarted and replayed the log: its list of finished tasks
                # was rebuilt, so read it again from the start (yielded ones are skipped).
                records, cursor = self._read(self.supervisor.finished_since, 0, 0.0)
            for record in records:
                if record.id in pending:
                    pending.discard(record.id)
                    yield record

    def _read(self, method: Any, *args: Any, patience_s: float = 60.0) -> Any:
        """Call a read-only supervisor method, waiting out a supervisor restart."""
        deadline = time.monotonic() + patience_s
        while True:
            try:
                return ray.get(method.remote(*args))
            except ray.exceptions.RayActorError:
                if time.monotonic() > deadline:
                    raise
                self._restarts += 1
                time.sleep(0.5)

    def wait(self, task_ids: Iterable[str], timeout_s: float | None = None) -> list[TaskRecord]:
        return list(self.as_completed(task_ids, timeout_s))

    def get(self, task_id: str) -> TaskRecord | None:
        return ray.get(self.supervisor.get.remote([task_id]))[0]

    def records(self, task_ids: Iterable[str]) -> list[TaskRecord | None]:
        """The records of several tasks in one call (None for an unknown id)."""
        return ray.get(self.supervisor.get.remote(list(task_ids)))

    def tasks(
        self, state: str | None = None, label: str | None = None, limit: int = 100
    ) -> list[TaskRecord]:
        """Tasks, newest first, optionally only those in ``state`` or carrying ``label``."""
        return ray.get(self.supervisor.list_tasks.remote(state, label, limit))

    # Commands answer a CommandResult: truthy when done, else ``reason`` says why not.
    def cancel(self, task_id: str, reason: str = "cancelled by user") -> CommandResult:
        """Cancel a live task; ``reason`` is logged in its ``task.cancelled`` event."""
        return ray.get(self.supervisor.cancel.remote(task_id, reason))

    def update_prompt(self, task_id: str, prompt: str, reason: str = "") -> CommandResult:
        """Replace the prompt of a task still queued that never started (``task.updated``);
        False once it started or ended."""
        return ray.get(self.supervisor.update_prompt.remote(task_id, prompt, reason))

    def report_source_error(
        self, source: str, error: str, failures: int = 1, retry_in_s: float = 0.0
    ) -> None:
        """Log a ``source.error`` event (task id ``source:<name>``), shown by the status."""
        ray.get(self.supervisor.source_error.remote(source, error, failures, retry_in_s))

    def steer(self, task_id: str, message: str) -> CommandResult:
        """Send a message to the task's session; it reads it before its next turn."""
        return ray.get(self.supervisor.steer.remote(task_id, message))

    def interrupt(self, task_id: str) -> CommandResult:
        """Stop the running session at a safe point; ``steer`` or ``resume`` continues it."""
        return ray.get(self.supervisor.interrupt.remote(task_id))

    def resume(self, task_id: str) -> CommandResult:
        return ray.get(self.supervisor.resume.remote(task_id))

    def send(self, task_id: str, message: str) -> CommandResult:
        """A user message: an idle interactive task resumes with it on any worker (the same
        as :meth:`steer`, which a running session reads before its next turn)."""
        return self.steer(task_id, message)

    def close(self, task_id: str) -> CommandResult:
        """Close an interactive task: its gate, reviewer and review run (now when it is
        idle, else once its agent ends the running turn), then it ends as a batch task."""
        return ray.get(self.supervisor.close_task.remote(task_id))

    def approve(
        self, task_id: str, call_id: str, allow: bool = True, message: str = ""
    ) -> CommandResult:
        """Decide on a tool call waiting for approval (a parked session resumes anywhere)."""
        return ray.get(self.supervisor.decide_approval.remote(task_id, call_id, allow, message))

    def tool_result(
        self,
        task_id: str,
        call_id: str,
        content: str | list[dict[str, Any]],
        is_error: bool = False,
    ) -> CommandResult:
        """Give the result of a custom tool call (an ``agent.custom_tool_use`` event's
        ``call_id``) that you ran: the session goes on (a parked one resumes anywhere).
        ``content``: text, or text blocks ``{"type": "text", "text": ...}``. Refused with
        ``refusal`` ``unknown`` (no such call waits) or ``invalid`` (not matching the tool's
        ``output_schema``)."""
        return ray.get(
            self.supervisor.custom_tool_result.remote(task_id, call_id, content, is_error)
        )

    def review(self, task_id: str, approve: bool, message: str = "") -> CommandResult:
        """Approve a result awaiting review (it succeeds) or reject it (a new attempt)."""
        return ray.get(self.supervisor.review.remote(task_id, approve, message))

    def memory(self, refresh: bool = False) -> dict[str, Any]:
        """What the supervisor learned from history, per label and per agent."""
        return ray.get(self.supervisor.memory_tables.remote(refresh))

    def events(self, task_id: str) -> list[Event]:
        return ray.get(self.supervisor.events.remote(task_id))

    # Results: of the task's latest ended session (a finished task's final ones). They raise
    # NoResults (an unknown task, none yet, no such file) or UnsafePath (out of the workspace).
    def diff(self, task_id: str) -> str:
        """The task's diff against its starting workspace ("" when nothing changed)."""
        return self._results(task_id, "diff")

    def files(self, task_id: str) -> list[dict[str, Any]]:
        """The final workspace's files and symlinks: path, size, mode, type (, target)."""
        return self._results(task_id, "files")

    def file(self, task_id: str, path: str) -> bytes:
        """One file of the final workspace (``path`` relative to it)."""
        return self._results(task_id, "file", path)

    def archive(self, task_id: str) -> bytes:
        """The final workspace as a tar.gz."""
        return self._results(task_id, "archive")

    def _results(self, task_id: str, what: str, path: str = "") -> Any:
        return self._call(self.supervisor.results, task_id, what, path)

    # Agents and environments: every version is logged, so a restart keeps them all.
    def put_spec(
        self, kind: str, spec: dict[str, Any], expected_version: int | None = None
    ) -> dict[str, Any]:
        """Create or update an ``agent`` or ``environment`` (the next version); its view
        (``name``, ``version``, ``archived``, ``spec``). SpecConflict when
        ``expected_version`` is given and is not the current one."""
        return self._call(self.supervisor.put_spec, kind, spec, expected_version)

    def get_spec(self, kind: str, name: str, version: int | None = None) -> dict[str, Any] | None:
        """The current version of a name (or that ``version``); None when there is none."""
        return ray.get(self.supervisor.get_spec.remote(kind, name, version))

    def spec_versions(self, kind: str, name: str) -> list[dict[str, Any]] | None:
        """Every version of a name, oldest first; None for an unknown name."""
        return ray.get(self.supervisor.spec_versions.remote(kind, name))

    def archive_spec(self, kind: str, name: str) -> CommandResult:
        """New tasks may no longer name it; tasks that started with it keep their version."""
        return ray.get(self.supervisor.archive_spec.remote(kind, name))

    # Files a task's ``resources`` place in its workspace.
    def upload(
        self,
        source: str | os.PathLike[str] | bytes,
        filename: str | None = None,
        media_type: str = "application/octet-stream",
    ) -> dict[str, Any]:
        """Keep a file (bytes, or the file at a path) for tasks' ``resources``; its metadata,
        whose ``id`` (the SHA-256 of the bytes) a resource names. FileTooLarge over the
        ``max_file_bytes`` setting."""
        if isinstance(source, bytes):
            data = source
        else:
            path = Path(source)
            data = path.read_bytes()
            filename = path.name if filename is None else filename
        return self._call(self.supervisor.put_file, data, filename or "", media_type)

    def file_info(self, file_id: str) -> dict[str, Any] | None:
        """An uploaded file's metadata; None when there is no file of that id."""
        return ray.get(self.supervisor.get_file.remote(file_id))

    def _call(self, method: Any, *args: Any) -> Any:
        """A supervisor call whose FleetError reaches the caller as itself."""
        try:
            return ray.get(method.remote(*args))
        except ray.exceptions.RayTaskError as exc:
            cause = root_cause(exc)
            if isinstance(cause, FleetError):
                raise cause from None
            raise

    # Secrets: values go in, never out (see core/vault.py). The operator's own calls.
    def put_secret(self, name: str, value: str, create: bool = False) -> SecretInfo:
        """Create (``create``: refuse an existing name) or rotate a stored secret, scope
        ``operator``; answers its name, scope and times. Raises ``core.vault``'s
        SecretConflict (it exists, or the config defines it) or an InputError."""
        try:
            return ray.get(self.supervisor.put_secret.remote(name, value, "operator", create))
        except ray.exceptions.RayTaskError as exc:
            cause = root_cause(exc)
            if isinstance(cause, FleetError):
                raise cause from None
            raise

    def secrets(self) -> list[SecretInfo]:
        """Every secret's name, scope, origin, creation and rotation times (no values)."""
        return ray.get(self.supervisor.list_secrets.remote(None))

    def status(self) -> dict[str, Any]:
        return ray.get(self.supervisor.status.remote())

    def flush(self) -> int:
        """Write buffered events to Parquet now (reports read only Parquet)."""
        return ray.get(self.supervisor.flush.remote())

    def shutdown(self) -> None:
        """Stop this fleet's supervisor and workers (and Ray, if this driver started it)."""
        try:
            for attempt in range(3):
                try:
                    ray.get(self.supervisor.shutdown.remote())
                    break
                except ray.exceptions.RayActorError:
                    if attempt == 2:
                        raise
                    time.sleep(1.0)  # it died under the call and restarts: ask the new life
            ray.kill(self.supervisor, no_restart=True)
        finally:
            if self._owns_ray:
                ray.shutdown()

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


@ray.remote(num_cpus=0, max_retries=0)
def _resolve_kind_remote(kind: str) -> str:
    return resolve_kind(kind)


def _resolve_on_head(kind: str, on_head: bool) -> str:
    """``kind`` made concrete where the supervisor runs (this process, if it is the head)."""
    if kind != "auto" or on_head:
        return resolve_kind(kind)
    task = _resolve_kind_remote.options(resources={"node:__internal_head__": 0.001})
    return ray.get(task.remote(kind))


def _refuse_local_fallback(requested: str, kind: str) -> None:
    if kind == "local" and requested != "local":
        raise FleetUnavailable(
            "refusing to serve with local sandboxes: no Docker engine answered on the head, "
            "so client tasks would run as host processes, not isolated; start Docker, or pass "
            "--sandbox local (or FLEET_SANDBOX=local) to accept that"
        )
