"""The Sandbox protocol every backend implements, and helpers they share."""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from core.errors import FleetError
from core.vault import Redactor


class SandboxError(FleetError, RuntimeError):
    """A sandbox could not do what was asked (start, a path outside the workspace, ...)."""


class SandboxLost(SandboxError):
    """The sandbox is gone (container or agent died); the session cannot go on."""


@dataclass
class ExecResult:
    exit_code: int
    stdout: str
    stderr: str
    duration_ms: float
    timed_out: bool = False
    truncated: bool = False
    """True when output went past the cap and its middle was dropped while streaming."""


STDERR_TAIL = 4096
"""Bytes of a spawned process's stderr kept (its last ones: why it failed)."""


@runtime_checkable
class SandboxProcess(Protocol):
    """A long-lived process started by :meth:`Sandbox.spawn` (a stdio MCP server): bytes go
    to its stdin and come from its stdout; the end of its stderr is kept."""

    async def read(self) -> bytes:
        """The next bytes of its stdout (at most a chunk); ``b""`` once it closed it."""
        ...

    async def write(self, data: bytes) -> None:
        """Send ``data`` to its stdin; SandboxError once it cannot take any more."""
        ...

    def stderr_tail(self) -> str:
        """The last ``STDERR_TAIL`` bytes it wrote to stderr, as text."""
        ...

    async def wait(self, timeout_s: float) -> int | None:
        """Its exit code, waiting up to ``timeout_s`` for it to exit; None if it has not."""
        ...

    async def close(self) -> None:
        """End it: its stdin closed, then killed if it does not exit at once."""
        ...


@runtime_checkable
class Sandbox(Protocol):
    """One isolated place where one session runs commands and edits files.

    Paths given to the file methods are relative to ``workdir`` (absolute paths must lie
    inside it). ``snapshot`` returns the workspace as a tar archive; ``restore`` unpacks
    one into the workspace (also how a workspace is seeded with a task's files). ``spawn``
    starts a process that outlives commands, with a stream to its stdin and from its stdout.
    """

    kind: str
    workdir: str

    async def start(self) -> None: ...

    async def exec(
        self, command: str, timeout_s: float = 60.0, env: dict[str, str] | None = None
    ) -> ExecResult: ...

    async def read_file(self, path: str) -> bytes: ...

    async def write_file(self, path: str, data: bytes) -> None: ...

    async def snapshot(self) -> bytes: ...

    async def restore(self, archive: bytes) -> None: ...

    async def spawn(self, argv: list[str], env: dict[str, str] | None = None) -> SandboxProcess:
        """Start a long-lived process in the workspace, with the sandbox's environment (plus
        ``env``) and network: it runs until closed or the sandbox closes, and commands run
        meanwhile do not end it."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class Resettable(Protocol):
    """A sandbox that can be made as it was when it started, for another session of the same
    environment (the warm pool's ``reuse``)."""

    async def reset(self) -> None:
        """Make it as it started, or raise SandboxError (then it must not be used again)."""
        ...


class SessionSandbox:
    """A started sandbox as one session uses it: every command gets the session's secret
    variables (``env``: the values of the secrets its environment declares, given to each
    exec, never to the image nor to the container's config), and the values the
    ``redactor`` knows are replaced with ``[secret:NAME]`` in what commands print and in the
    files tools read, so that neither the model, the history, the events nor a checkpoint
    holds one. Everything else is the wrapped sandbox's."""

    def __init__(self, sandbox: Sandbox, env: Mapping[str, str], redactor: Redactor) -> None:
        self.sandbox = sandbox
        self.kind = sandbox.kind
        self._env = dict(env)
        self._redactor = redactor

    @property
    def workdir(self) -> str:
        return self.sandbox.workdir

    async def start(self) -> None:
        await self.sandbox.start()

    async def exec(
        self, command: str, timeout_s: float = 60.0, env: dict[str, str] | None = None
    ) -> ExecResult:
        result = await self.sandbox.exec(command, timeout_s, {**self._env, **(env or {})})
        if self._redactor:
            result.stdout = self._redactor.text(result.stdout)
            result.stderr = self._redactor.text(result.stderr)
        return result

    async def spawn(self, argv: list[str], env: dict[str, str] | None = None) -> SandboxProcess:
        """A long-lived process (an MCP server) with the session's secret variables, as a
        command gets them."""
        return await self.sandbox.spawn(argv, {**self._env, **(env or {})})

    async def read_file(self, path: str) -> bytes:
        return self._redactor.data(await self.sandbox.read_file(path))

    async def write_file(self, path: str, data: bytes) -> None:
        await self.sandbox.write_file(path, data)

    async def snapshot(self) -> bytes:
        return await self.sandbox.snapshot()

    async def restore(self, archive: bytes) -> None:
        await self.sandbox.restore(archive)

    async def close(self) -> None:
        await self.sandbox.close()


@dataclass
class CappedOutput:
    """Keeps at most ``limit`` bytes of a stream as it arrives: the head and the tail."""

    limit: int
    head: bytearray = field(default_factory=bytearray)
    tail: bytearray = field(default_factory=bytearray)
    total: int = 0

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        half = self.limit // 2
        room = half - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if chunk:
            self.tail += chunk
            if len(self.tail) > self.limit - half:
                del self.tail[: len(self.tail) - (self.limit - half)]

    @property
    def truncated(self) -> bool:
        return self.total > len(self.head) + len(self.tail)

    def text(self) -> str:
        head = self.head.decode(errors="replace")
        if not self.truncated:
            return head + self.tail.decode(errors="replace")
        elided = self.total - len(self.head) - len(self.tail)
        tail = self.tail.decode(errors="replace")
        return f"{head}\n[... {elided} bytes elided ...]\n{tail}"


def tar_directory(root: Path, prefix: str = "") -> bytes:
    """Archive the contents of ``root`` (not the folder itself)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for entry in sorted(root.iterdir()):
            tar.add(entry, arcname=os.path.join(prefix, entry.name) if prefix else entry.name)
    return buf.getvalue()


def tar_files(files: dict[str, bytes]) -> bytes:
    """Archive in-memory files given as relative path -> content."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name=workspace_relative(name, "/"))
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def workspace_relative(path: str, workdir: str) -> str:
    """Normalise a path given by an agent to one relative to ``workdir``.

    Raises SandboxError for a path that lies outside the workspace.
    """
    if os.path.isabs(path):
        rel = os.path.relpath(os.path.normpath(path), workdir)
    else:
        rel = os.path.normpath(path)
    if rel == ".." or rel.startswith("../") or os.path.isabs(rel):
        raise SandboxError(f"path {path!r} is outside the workspace {workdir}")
    return rel
