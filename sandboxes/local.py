"""Local process sandbox: a temporary workspace directory and subprocesses.

This is isolation for bookkeeping, not security: commands run as the worker's user on the
host, so they can read and write what that user can (the host's files, other workspaces,
``/proc/<worker pid>/environ``), reach the network and the host's services, and signal the
user's processes. Use the docker backend for untrusted agents.

What it does: commands get their own process group (a timeout kills the whole tree), capped
output, and an environment built from an allow-list (``_env``): a safe PATH, HOME set to the
workspace, the locale, TMPDIR, then the environment spec's declared ``env``. Nothing else of
the worker's environment (FLEET_* settings, API tokens and keys, cloud credentials, RAY_*)
is passed on.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import shutil
import signal
import tarfile
import tempfile
import time
from pathlib import Path

from sandboxes.base import (
    STDERR_TAIL,
    CappedOutput,
    ExecResult,
    SandboxError,
    SandboxLost,
    tar_directory,
    workspace_relative,
)

SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PASSED_ON = ("LANG", "LANGUAGE", "TZ", "TMPDIR")
"""The only variables of the worker's environment that commands see (with LC_*)."""


class LocalSandbox:
    kind = "local"

    def __init__(
        self,
        env: dict[str, str] | None = None,
        output_limit: int = 1_000_000,
        root: str | None = None,
        name: str = "sandbox",
    ) -> None:
        self._extra_env = dict(env or {})
        self._output_limit = output_limit
        self._root = root
        self._name = name
        self.workdir = ""
        self._processes: list[HostProcess] = []
        """What ``spawn`` started: ended by ``close``."""

    async def start(self) -> None:
        self.workdir = tempfile.mkdtemp(prefix=f"fleet-{self._name}-", dir=self._root)

    def _env(self, extra: dict[str, str] | None) -> dict[str, str]:
        python_dir = os.path.dirname(
            os.path.realpath(shutil.which("python3") or "/usr/bin/python3")
        )
        env = {
            "PATH": f"{SAFE_PATH}:{python_dir}",
            "HOME": self.workdir,
            "LANG": "C.UTF-8",
            "TERM": "dumb",
            "SHELL": "/bin/bash",
            "GIT_AUTHOR_NAME": "fleet-agent",
            "GIT_AUTHOR_EMAIL": "agent@fleet.local",
            "GIT_COMMITTER_NAME": "fleet-agent",
            "GIT_COMMITTER_EMAIL": "agent@fleet.local",
        }
        # Not a setting: the worker's own environment, passed on through the allow-list.
        env.update((k, v) for k, v in os.environ.items() if k in PASSED_ON or k.startswith("LC_"))
        env.update(self._extra_env)  # declared by the environment spec
        env.update(extra or {})
        return env

    def _check_alive(self) -> None:
        """Raise SandboxLost when the workspace folder is gone (nothing can run or land)."""
        if not self.workdir:
            raise SandboxError("sandbox not started")
        if not os.path.isdir(self.workdir):
            raise SandboxLost(f"workspace {self.workdir} is gone")

    async def exec(
        self, command: str, timeout_s: float = 60.0, env: dict[str, str] | None = None
    ) -> ExecResult:
        self._check_alive()
        started = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            "/bin/bash",
            "-c",
            command,
            cwd=self.workdir,
            env=self._env(env),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        out, err = CappedOutput(self._output_limit), CappedOutput(self._output_limit)
        readers = [
            asyncio.create_task(_pump(proc.stdout, out)),
            asyncio.create_task(_pump(proc.stderr, err)),
        ]
        timed_out = False
        try:
            await asyncio.wait_for(_exited(proc.pid), timeout_s)
        except TimeoutError:
            timed_out = True
        except BaseException:  # cancelled: leave nothing running behind
            _kill_group(proc.pid)
            for reader in readers:
                reader.cancel()
            raise
        # Kill what is left of the process group: the command itself on timeout, and
        # anything it left running in the background (which would hold the pipes open).
        _kill_group(proc.pid)
        try:
            await asyncio.wait_for(asyncio.gather(*readers), 2.0)
        except TimeoutError:
            for reader in readers:
                reader.cancel()
        code = await proc.wait()
        return ExecResult(
            exit_code=124 if timed_out else code,
            stdout=out.text(),
            stderr=err.text() + (f"\n[timed out after {timeout_s:g}s]" if timed_out else ""),
            duration_ms=(time.perf_counter() - started) * 1000,
            timed_out=timed_out,
            truncated=out.truncated or err.truncated,
        )

    def _host_path(self, path: str) -> Path:
        self._check_alive()
        rel = workspace_relative(path, self.workdir)
        host = Path(self.workdir, rel)
        real = os.path.realpath(host)
        if real != os.path.realpath(self.workdir) and not real.startswith(
            os.path.realpath(self.workdir) + os.sep
        ):
            raise SandboxError(f"path {path!r} resolves outside the workspace")
        return host

    async def read_file(self, path: str) -> bytes:
        host = self._host_path(path)
        try:
            return await asyncio.to_thread(host.read_bytes)
        except FileNotFoundError:
            raise SandboxError(f"no such file: {path}") from None
        except IsADirectoryError:
            raise SandboxError(f"{path} is a directory") from None

    async def write_file(self, path: str, data: bytes) -> None:
        host = self._host_path(path)

        def write() -> None:
            host.parent.mkdir(parents=True, exist_ok=True)
            host.write_bytes(data)

        await asyncio.to_thread(write)

    async def snapshot(self) -> bytes:
        self._check_alive()
        return await asyncio.to_thread(tar_directory, Path(self.workdir))

    async def restore(self, archive: bytes) -> None:
        self._check_alive()

        def unpack() -> None:
            with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
                tar.extractall(self.workdir, filter=_workspace_filter)

        await asyncio.to_thread(unpack)

    async def spawn(self, argv: list[str], env: dict[str, str] | None = None) -> HostProcess:
        """A long-lived process in the workspace, with the commands' environment (plus
        ``env``); ``close`` ends it if nothing did before."""
        self._check_alive()
        process = await HostProcess.start(argv, self.workdir, self._env(env))
        self._processes.append(process)
        return process

    async def close(self) -> None:
        processes, self._processes = self._processes, []
        for process in processes:
            await process.close()
        if self.workdir:
            await asyncio.to_thread(shutil.rmtree, self.workdir, True)


class HostProcess:
    """A process of this host with pipes to its stdin and stdout (a
    :class:`sandboxes.base.SandboxProcess`): what :meth:`LocalSandbox.spawn` starts, and
    what runs an agent's MCP server on the worker's side. In its own process group, which
    ``close`` kills."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self._proc = proc
        self._stderr = bytearray()
        self._stderr_pump = asyncio.create_task(self._pump_stderr())

    @classmethod
    async def start(cls, argv: list[str], cwd: str, env: dict[str, str]) -> HostProcess:
        """Start ``argv`` in ``cwd`` with exactly ``env`` (its PATH finds the program)."""
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                cwd=cwd,
                env=env,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
        except (OSError, ValueError) as exc:
            raise SandboxError(f"cannot start {argv[0]!r}: {exc}") from None
        return cls(proc)

    async def _pump_stderr(self) -> None:
        assert self._proc.stderr is not None
        with contextlib.suppress(OSError, ValueError):
            while chunk := await self._proc.stderr.read(65536):
                self._stderr += chunk
                del self._stderr[:-STDERR_TAIL]

    async def read(self) -> bytes:
        assert self._proc.stdout is not None
        try:
            return await self._proc.stdout.read(65536)
        except (OSError, ValueError):
            return b""

    async def write(self, data: bytes) -> None:
        stdin = self._proc.stdin
        assert stdin is not None
        try:
            stdin.write(data)
            await stdin.drain()
        except (OSError, RuntimeError) as exc:  # closed pipe, or a transport already closed
            raise SandboxError(f"the process does not read its input any more: {exc}") from None

    def stderr_tail(self) -> str:
        return self._stderr.decode(errors="replace")

    async def wait(self, timeout_s: float) -> int | None:
        # Not Process.wait(): it also waits for the pipes, which a child may hold open.
        deadline = time.monotonic() + timeout_s
        while self._proc.returncode is None and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return self._proc.returncode

    async def close(self) -> None:
        if self._proc.stdin is not None:
            with contextlib.suppress(OSError, RuntimeError):
                self._proc.stdin.close()
        if await self.wait(0.5) is None:
            _kill_group(self._proc.pid)
            await self.wait(2.0)
        else:  # what it left running in its group goes too
            _kill_group(self._proc.pid)
        with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(self._stderr_pump, 1.0)


def _workspace_filter(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
    """Like tarfile's 'data' filter, but keeps symlinks that point outside (an agent may make
    them); nothing is ever written through one, as every member's own path is checked."""
    try:
        return tarfile.data_filter(member, dest)
    except (tarfile.AbsoluteLinkError, tarfile.LinkOutsideDestinationError):
        if member.issym():
            return tarfile.tar_filter(member, dest)
        raise


async def _exited(pid: int) -> None:
    """Wait until ``pid`` exits, without waiting for its pipes to close (a background child
    can hold them open) and without reaping it."""
    loop = asyncio.get_running_loop()
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        fd = -1
    if fd >= 0:
        done = loop.create_future()
        loop.add_reader(fd, lambda: done.done() or done.set_result(None))
        try:
            await done
        finally:
            loop.remove_reader(fd)
            os.close(fd)
        return
    while True:  # no pidfd: poll
        try:
            info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return
        if info is not None:
            return
        await asyncio.sleep(0.005)


async def _pump(stream: asyncio.StreamReader | None, sink: CappedOutput) -> None:
    if stream is None:
        return
    while chunk := await stream.read(65536):
        sink.feed(chunk)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
