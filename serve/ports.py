"""What the routes need from the fleet: :class:`SupervisorPort`, the Supervisor actor's
methods as plain coroutines. :class:`ActorPort` is it over a Ray actor handle (``await
port.get(ids)`` is ``await handle.get.remote(ids)``); tests pass an in-process one."""

from typing import Any, Protocol

import ray

from core.events import Event
from core.records import CommandResult, TaskRecord
from core.settings import FleetSettings
from core.specs import SavedReport
from core.vault import SecretInfo


class SupervisorPort(Protocol):
    """The calls the HTTP routes make (shapes as :class:`actors.supervisor.Supervisor`).
    Commands answer a :class:`CommandResult`: its ``reason`` is the refusal's detail."""

    async def get_settings(self) -> FleetSettings: ...
    async def saved_reports(self) -> dict[str, SavedReport]: ...
    async def get(self, task_ids: list[str]) -> list[TaskRecord | None]: ...
    async def submit(self, tasks: list[dict[str, Any]], batch: str | None) -> dict[str, Any]: ...
    async def list_tasks(
        self, state: str | None, label: str | None, limit: int, offset: int
    ) -> list[TaskRecord]: ...
    async def cancel(self, task_id: str) -> CommandResult: ...
    async def review(self, task_id: str, approve: bool, message: str) -> CommandResult: ...
    async def steer(self, task_id: str, text: str) -> CommandResult: ...
    async def interrupt(self, task_id: str) -> CommandResult: ...
    async def close_task(self, task_id: str) -> CommandResult: ...
    async def decide_approval(
        self, task_id: str, call_id: str, allow: bool, message: str
    ) -> CommandResult: ...
    async def custom_tool_result(
        self, task_id: str, call_id: str, content: str | list[dict[str, Any]], is_error: bool
    ) -> CommandResult: ...
    async def events_since(
        self, task_id: str, after_seq: int, timeout_s: float, limit: int
    ) -> list[Event]: ...
    async def stream_since(
        self, cursor: int, timeout_s: float, limit: int
    ) -> tuple[list[Event], int]: ...
    async def results(self, task_id: str, what: str, path: str) -> Any:
        """A task's ``diff`` (str), ``files`` (listing), ``file`` (bytes at ``path``) or
        ``archive`` (tar.gz bytes); raises ``actors.results.NoResults`` or ``UnsafePath``
        (behind Ray's wrapper over an actor)."""
        ...

    async def status(self) -> dict[str, Any]: ...
    async def flush(self) -> int: ...
    async def put_spec(
        self, kind: str, spec: dict[str, Any], expected_version: int | None
    ) -> dict[str, Any]: ...
    async def get_spec(
        self, kind: str, name: str, version: int | None = None
    ) -> dict[str, Any] | None: ...
    async def spec_versions(self, kind: str, name: str) -> list[dict[str, Any]] | None: ...
    async def list_specs(self, kind: str, include_archived: bool) -> list[dict[str, Any]]: ...
    async def archive_spec(self, kind: str, name: str) -> CommandResult: ...
    async def put_file(self, data: bytes, filename: str, media_type: str) -> dict[str, Any]:
        """Keep an uploaded file; its metadata. Raises ``actors.files.FileTooLarge``."""
        ...

    async def get_file(self, file_id: str) -> dict[str, Any] | None: ...
    async def file_content(self, file_id: str) -> bytes:
        """Raises ``actors.files.NoSuchFile``."""
        ...

    async def put_secret(self, name: str, value: str, scope: str, create: bool) -> SecretInfo:
        """Create or rotate a stored secret; raises ``core.vault``'s UnknownSecret,
        SecretDenied, SecretConflict or an InputError (behind Ray's wrapper)."""
        ...

    async def list_secrets(self, scope: str | None) -> list[SecretInfo]: ...


class ActorPort:
    """A :class:`SupervisorPort` over the Supervisor actor's handle. Ray's errors (the actor
    is down or restarting) pass through: the app answers 503."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    async def get_settings(self) -> FleetSettings:
        return await self.handle.get_settings.remote()

    async def saved_reports(self) -> dict[str, SavedReport]:
        return await self.handle.saved_reports.remote()

    async def get(self, task_ids: list[str]) -> list[TaskRecord | None]:
        return await self.handle.get.remote(task_ids)

    async def submit(self, tasks: list[dict[str, Any]], batch: str | None) -> dict[str, Any]:
        return await self.handle.submit.remote(tasks, batch)

    async def list_tasks(
        self, state: str | None, label: str | None, limit: int, offset: int
    ) -> list[TaskRecord]:
        return await self.handle.list_tasks.remote(state, label, limit, offset)

    async def cancel(self, task_id: str) -> CommandResult:
        return await self.handle.cancel.remote(task_id)

    async def review(self, task_id: str, approve: bool, message: str) -> CommandResult:
        return await self.handle.review.remote(task_id, approve, message)

    async def steer(self, task_id: str, text: str) -> CommandResult:
        return await self.handle.steer.remote(task_id, text)

    async def interrupt(self, task_id: str) -> CommandResult:
        return await self.handle.interrupt.remote(task_id)

    async def close_task(self, task_id: str) -> CommandResult:
        return await self.handle.close_task.remote(task_id)

    async def decide_approval(
        self, task_id: str, call_id: str, allow: bool, message: str
    ) -> CommandResult:
        return await self.handle.decide_approval.remote(task_id, call_id, allow, message)

    async def custom_tool_result(
        self, task_id: str, call_id: str, content: str | list[dict[str, Any]], is_error: bool
    ) -> CommandResult:
        return await self.handle.custom_tool_result.remote(task_id, call_id, content, is_error)

    async def events_since(
        self, task_id: str, after_seq: int, timeout_s: float, limit: int
    ) -> list[Event]:
        return await self.handle.events_since.remote(task_id, after_seq, timeout_s, limit)

    async def stream_since(
        self, cursor: int, timeout_s: float, limit: int
    ) -> tuple[list[Event], int]:
        return await self.handle.stream_since.remote(cursor, timeout_s, limit)

    async def results(self, task_id: str, what: str, path: str) -> Any:
        return await self.handle.results.remote(task_id, what, path)

    async def status(self) -> dict[str, Any]:
        return await self.handle.status.remote()

    async def flush(self) -> int:
        return await self.handle.flush.remote()

    async def put_spec(
        self, kind: str, spec: dict[str, Any], expected_version: int | None
    ) -> dict[str, Any]:
        return await self.handle.put_spec.remote(kind, spec, expected_version)

    async def get_spec(
        self, kind: str, name: str, version: int | None = None
    ) -> dict[str, Any] | None:
        return await self.handle.get_spec.remote(kind, name, version)

    async def spec_versions(self, kind: str, name: str) -> list[dict[str, Any]] | None:
        return await self.handle.spec_versions.remote(kind, name)

    async def list_specs(self, kind: str, include_archived: bool) -> list[dict[str, Any]]:
        return await self.handle.list_specs.remote(kind, include_archived)

    async def archive_spec(self, kind: str, name: str) -> CommandResult:
        return await self.handle.archive_spec.remote(kind, name)

    async def put_file(self, data: bytes, filename: str, media_type: str) -> dict[str, Any]:
        return await self.handle.put_file.remote(data, filename, media_type)

    async def get_file(self, file_id: str) -> dict[str, Any] | None:
        return await self.handle.get_file.remote(file_id)

    async def file_content(self, file_id: str) -> bytes:
        return await self.handle.file_content.remote(file_id)

    async def put_secret(self, name: str, value: str, scope: str, create: bool) -> SecretInfo:
        return await self.handle.put_secret.remote(name, value, scope, create)

    async def list_secrets(self, scope: str | None) -> list[SecretInfo]:
        return await self.handle.list_secrets.remote(scope)


def port_of(fleet: Any) -> SupervisorPort:
    """The port for a :class:`fleet.api.Fleet`, a Supervisor actor handle, or a port."""
    if isinstance(fleet, ray.actor.ActorHandle):
        return ActorPort(fleet)
    if isinstance(getattr(fleet, "supervisor", None), ray.actor.ActorHandle):
        return ActorPort(fleet.supervisor)  # a Fleet
    return fleet
