"""Docker sandbox: a container per session, driven through an in-container exec agent.

The container's main process is ``exec_agent.py`` (see there for the wire format). The host
attaches to its stdin/stdout once, before the container starts, over the Docker socket, and
then sends one request per command or file operation: a round trip costs a couple of
milliseconds instead of the 70-90 ms of a ``docker exec``.

Safe defaults: uid 1000, read-only root filesystem, ``/workspace``, ``/tmp`` and the home
directory on size-limited tmpfs mounts (filling the "disk" fills only those; the memory limit
is raised by their sizes so a full tmpfs cannot starve the processes), all capabilities
dropped, no-new-privileges, cpu/memory/pids limits from the environment, no host mounts and
no host environment. Network per ``environment.network`` (see ``sandboxes.network``).
Containers are labelled ``agent-fleet=1`` (plus their fleet, sandbox name, environment and
owner process; a warm container has no task yet: the session's ``session.ended`` event names
the container it ran in) and removed by ``close``, ``reap_containers`` or ``reap_orphans``.

The agent runs as the same uid as the commands, so it seals itself (see ``exec_agent``) and
the host trusts no frame bigger than the largest legitimate reply: an oversize frame or a
dead agent raises ``SandboxLost`` and the sandbox is not used again.

A container serves one session at a time. ``reset`` makes it as it started (the agent kills
every process, removes what the sandbox user wrote and checks it) so that the next session
of the same environment on the same worker can use it without a new container (the warm
pool's ``reuse``); a container that cannot be reset is removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import socket
import time
import uuid
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from core.settings import host_variable
from sandboxes import images, network
from sandboxes.base import (
    STDERR_TAIL,
    CappedOutput,
    ExecResult,
    SandboxError,
    SandboxLost,
    tar_files,
    workspace_relative,
)
from sandboxes.local import SAFE_PATH

if TYPE_CHECKING:
    import docker

    from core.specs import EnvironmentSpec

log = logging.getLogger(__name__)

LABEL = "agent-fleet"
OWNER = f"{socket.gethostname()}-{os.getpid()}"
PREFIX_SIZE = 12
READY_TIMEOUT_S = 30.0
GRACE_S = 15.0
"""How long past a command's own timeout the host waits for the agent before giving up."""
RESET_TIMEOUT_S = 10.0
"""How long the exec agent may take to reset a container (a slower one is removed)."""
MAX_HEADER = 1 << 20
"""The largest frame header the host accepts (real ones are a few hundred bytes)."""


def _container_name(name: str) -> str:
    safe = re.sub(r"[^a-zA-Z0-9_.-]", "-", name)[:60].strip("-.") or "sandbox"
    return f"fleet-{safe}-{uuid.uuid4().hex[:8]}"


class _AgentChannel:
    """The host end of the attach stream: Docker's stdout/stderr multiplexing, then frames."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, max_body: int
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._buf = bytearray()
        self.agent_stderr = bytearray()
        self.max_body = max_body
        """Frames claiming a bigger body are refused before any of it is buffered."""

    @classmethod
    async def attach(cls, api: docker.APIClient, container_id: str, max_body: int) -> _AgentChannel:
        path = (
            f"/v{api.api_version}/containers/{container_id}/attach"
            "?stream=1&stdin=1&stdout=1&stderr=1"
        )
        reader, writer = await _hijack(path, what="attach to container")
        return cls(reader, writer, max_body)

    def send(self, header: dict[str, Any], body: bytes = b"") -> None:
        head = json.dumps(header).encode()
        self._writer.write(len(head).to_bytes(4, "big") + len(body).to_bytes(8, "big") + head)
        if body:
            self._writer.write(body)

    async def drain(self) -> None:
        await self._writer.drain()

    async def _need(self, n: int) -> None:
        """Read Docker frames until ``n`` bytes of the agent's stdout are buffered."""
        while len(self._buf) < n:
            try:
                prefix = await self._reader.readexactly(8)
                payload = await self._reader.readexactly(int.from_bytes(prefix[4:8], "big"))
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                said = self.agent_stderr.decode(errors="replace")[-2000:].strip()
                raise SandboxLost(
                    f"exec agent is gone (container exited or was removed) {said}".strip()
                ) from exc
            if prefix[0] == 2:
                self.agent_stderr += payload
                del self.agent_stderr[:-8192]
            else:
                self._buf += payload

    async def recv(self) -> tuple[dict[str, Any], bytes]:
        await self._need(PREFIX_SIZE)
        hlen = int.from_bytes(self._buf[0:4], "big")
        blen = int.from_bytes(self._buf[4:12], "big")
        if hlen > MAX_HEADER or blen > self.max_body:
            raise SandboxLost(
                f"exec agent sent a frame of {hlen} + {blen} bytes, over the limit of "
                f"{MAX_HEADER} + {self.max_body}: the channel is not trusted any more"
            )
        await self._need(PREFIX_SIZE + hlen + blen)
        try:
            header = json.loads(bytes(self._buf[PREFIX_SIZE : PREFIX_SIZE + hlen]))
        except ValueError:
            header = None
        if not isinstance(header, dict):
            raise SandboxLost("exec agent sent a malformed frame: the channel is out of step")
        body = bytes(self._buf[PREFIX_SIZE + hlen : PREFIX_SIZE + hlen + blen])
        del self._buf[: PREFIX_SIZE + hlen + blen]
        return header, body

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._writer.close()


async def _hijack(
    path: str, body: dict[str, Any] | None = None, what: str = "request"
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """POST ``path`` to the Docker engine and take over the connection as a raw stream (the
    attach and exec-start endpoints): Docker's stdout/stderr frames come back on it."""
    base = host_variable("DOCKER_HOST") or "unix:///var/run/docker.sock"
    url = urlparse(base)
    if url.scheme == "unix":
        reader, writer = await asyncio.open_unix_connection(url.path, limit=1 << 22)
    elif url.scheme in ("tcp", "http") and not host_variable("DOCKER_TLS_VERIFY"):
        reader, writer = await asyncio.open_connection(url.hostname, url.port, limit=1 << 22)
    else:
        raise SandboxError(f"exec agent attach does not support DOCKER_HOST={base}")
    data = json.dumps(body).encode() if body is not None else b""
    kind = "Content-Type: application/json\r\n" if body is not None else ""
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: docker\r\n{kind}Content-Length: {len(data)}\r\n"
        "Connection: Upgrade\r\nUpgrade: tcp\r\n\r\n".encode()
        + data
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READY_TIMEOUT_S)
    status = head.split(b"\r\n", 1)[0]
    if b" 101 " not in status and b" 200 " not in status:
        writer.close()
        raise SandboxError(f"{what} failed: {status.decode(errors='replace')}")
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family != socket.AF_UNIX:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return reader, writer


class DockerProcess:
    """A process started in a container by ``docker exec`` with its stdin attached (a
    :class:`sandboxes.base.SandboxProcess`): the exec agent spares it when it ends what a
    command left running (see ``exec_agent.kill_others``)."""

    MAX_CHUNK = 16 << 20
    """A Docker frame bigger than this ends the stream (the process is cut off)."""

    def __init__(
        self,
        api: docker.APIClient,
        exec_id: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self._api = api
        self._exec_id = exec_id
        self._reader = reader
        self._writer = writer
        self._stderr = bytearray()
        self._ended = False

    async def read(self) -> bytes:
        while not self._ended:
            try:
                prefix = await self._reader.readexactly(8)
                size = int.from_bytes(prefix[4:8], "big")
                if size > self.MAX_CHUNK:
                    raise ConnectionError(f"a frame of {size} bytes")
                payload = await self._reader.readexactly(size)
            except (asyncio.IncompleteReadError, ConnectionError, OSError):
                self._ended = True
                break
            if prefix[0] == 2:
                self._stderr += payload
                del self._stderr[:-STDERR_TAIL]
            elif payload:
                return payload
        return b""

    async def write(self, data: bytes) -> None:
        try:
            self._writer.write(data)
            await self._writer.drain()
        except (OSError, RuntimeError) as exc:
            raise SandboxError(f"the process does not read its input any more: {exc}") from None

    def stderr_tail(self) -> str:
        return self._stderr.decode(errors="replace")

    async def wait(self, timeout_s: float) -> int | None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                info = await asyncio.to_thread(self._api.exec_inspect, self._exec_id)
            except Exception:  # the container is gone: so is the process
                return None
            if not info.get("Running"):
                return info.get("ExitCode")
            if time.monotonic() >= deadline:
                return None
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        """Close its stdin (a stdio server then exits) and the stream; what still runs ends
        with the container."""
        with contextlib.suppress(OSError, RuntimeError):
            if self._writer.can_write_eof():
                self._writer.write_eof()
        self._ended = True
        with contextlib.suppress(Exception):
            self._writer.close()


class DockerSandbox:
    """A sandbox in a fresh container of the environment's image."""

    kind = "docker"
    workdir = "/workspace"

    def __init__(
        self,
        environment: EnvironmentSpec,
        name: str,
        output_limit: int = 1_000_000,
        *,
        disk_mb: int | None = None,
        tmp_mb: int = 256,
        fleet: str = "",
    ) -> None:
        self.environment = environment
        self.name = name
        self.container_name = _container_name(name)
        self.container_id: str | None = None
        self.image: str | None = None
        self.fleet = fleet
        self._output_limit = output_limit
        self._disk_mb = disk_mb or int(getattr(environment, "disk_mb", None) or 1024)
        self._tmp_mb = tmp_mb
        # The largest legitimate reply: a command's output tails, or a file or snapshot of
        # the workspace (tar headers can outgrow the tmpfs for many tiny files: twice it).
        self.max_frame = max(output_limit, 2 * self._disk_mb << 20) + (1 << 20)
        self._client: docker.DockerClient | None = None
        self._channel: _AgentChannel | None = None
        self._lock = asyncio.Lock()
        self._ids = iter(range(1, 1 << 62))
        self._broken: str | None = None
        self._firewalled = False
        self._allowed: list[str] = []
        self.resets = 0
        """How many times it was reset (the sessions it served before the current one)."""

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._channel is not None:
            raise SandboxError("sandbox already started")
        try:
            self._client = await asyncio.to_thread(images.client)
            self.image = await asyncio.to_thread(
                images.ensure_environment_image, self.environment, self._client
            )
            try:
                await self._create_recorded()
            except _image_not_found():  # removed behind our back: find or build it again
                images.forget()
                self.image = await asyncio.to_thread(
                    images.ensure_environment_image, self.environment, self._client
                )
                await self._create_recorded()
            self._channel = await _AgentChannel.attach(
                self._client.api, self.container_id, self.max_frame
            )
            await asyncio.to_thread(self._client.api.start, self.container_id)
            header, _ = await asyncio.wait_for(self._channel.recv(), READY_TIMEOUT_S)
            if header.get("t") != "ready":
                raise SandboxError(f"exec agent said {header!r} instead of ready")
            if header.get("pid") != 1 or header.get("sealed") is not True:
                # Commands could then reach the agent (signals, /proc/1/fd): refuse.
                raise SandboxError(f"exec agent is not sealed as PID 1 ({header!r})")
            if isinstance(self.environment.network, list):
                await asyncio.to_thread(self._firewall)
            await self._seed()
        except BaseException:
            await self.close()
            raise

    async def _seed(self) -> None:
        """The environment's files, in the workspace (relative paths only)."""
        seed = {k: v.encode() for k, v in self.environment.files.items() if not os.path.isabs(k)}
        if seed:
            await self.restore(tar_files(seed))

    async def reset(self) -> None:
        """Make the container as it was when it started, for another session of the same
        environment: the exec agent kills every other process, removes every IPC object and
        every file the sandbox user owns on a writable mount, restores the mounts' roots, and
        checks all of it; then the environment's files are put back. Raises SandboxError (the
        caller then closes the sandbox) when any of it does not hold."""
        reply, _ = await self._request({"op": "reset"}, timeout_s=RESET_TIMEOUT_S)
        if "error" in reply:
            raise SandboxError(f"sandbox {self.name} could not be reset: {reply['error']}")
        await self._seed()
        self.resets += 1

    async def _create_recorded(self) -> None:
        """Create the container in a thread. Its id is recorded even when we are cancelled
        meanwhile, however often (the thread goes on regardless), so that ``close`` removes
        it: a container created but never started is not removed by Docker on its own."""
        job = asyncio.ensure_future(asyncio.to_thread(self._create))
        try:
            self.container_id = await asyncio.shield(job)
        except asyncio.CancelledError:
            while not job.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.shield(job)
            if not job.cancelled() and job.exception() is None:
                self.container_id = job.result()
            raise

    def _create(self) -> str:
        """Create (not start) the container; returns its id."""
        assert self._client is not None
        api = self._client.api
        env = self.environment
        host: dict[str, Any] = {}
        networking = None
        policy = env.network
        if policy == "none":
            host["network_mode"] = "none"
        else:
            net = network.ensure_network(self._client, "full" if policy == "full" else "egress")
            host["network_mode"] = net.name
            networking = api.create_networking_config({net.name: api.create_endpoint_config()})
            if isinstance(policy, list):
                self._allowed, pinned = network.resolve(policy)
                host["extra_hosts"] = pinned
                # No DNS upstream (so no DNS tunnel out); allowed names are pinned in
                # /etc/hosts, other lookups fail within about two seconds.
                host["dns"] = ["127.0.0.1"]
                host["dns_opt"] = ["timeout:1", "attempts:1"]
        memory = f"{env.memory_mb + self._disk_mb + 2 * self._tmp_mb}m"
        opts = "rw,exec,nosuid,nodev,uid=1000,gid=1000"
        host_config = api.create_host_config(
            auto_remove=True,
            read_only=True,
            tmpfs={
                self.workdir: f"{opts},mode=0755,size={self._disk_mb}m",
                "/tmp": f"rw,exec,nosuid,nodev,mode=1777,size={self._tmp_mb}m",
                "/home/agent": f"{opts},mode=0755,size={self._tmp_mb}m",
            },
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            nano_cpus=int(env.cpus * 1e9),
            mem_limit=memory,
            memswap_limit=memory,
            pids_limit=env.pids,
            log_config={"Type": "none", "Config": {}},
            init=False,  # the exec agent must be PID 1 (see exec_agent: signals)
            **host,
        )
        created = api.create_container(
            self.image,
            name=self.container_name,
            command=["python3", "-I", images.AGENT_PATH],
            user="1000:1000",
            working_dir=self.workdir,
            hostname="sandbox",
            stdin_open=True,  # docker-py also sets StdinOnce: EOF for the agent when we go away
            tty=False,
            use_config_proxy=False,
            environment={"FLEET_WORKDIR": self.workdir},
            labels={
                LABEL: "1",
                f"{LABEL}.fleet": self.fleet[:200],
                f"{LABEL}.sandbox": self.name[:200],  # worker-made: warm before any task
                f"{LABEL}.environment": env.name,
                f"{LABEL}.owner": OWNER,
            },
            host_config=host_config,
            networking_config=networking,
        )
        return created["Id"]

    def _firewall(self) -> None:
        assert self._client is not None
        info = self._client.api.inspect_container(self.container_id)
        nets = info["NetworkSettings"]["Networks"]
        ip = nets[network.NETWORKS["egress"]]["IPAddress"]
        network.allow_only(self.container_name, ip, self._allowed)
        self._firewalled = True

    async def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        self._broken = self._broken or "closed"
        if self.container_id and self._client is not None:
            await asyncio.to_thread(_remove_container, self._client, self.container_id)
            self.container_id = None
        if self._firewalled:
            await asyncio.to_thread(network.remove_rules, self.container_name)
            self._firewalled = False
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
            self._client = None

    # ------------------------------------------------------------------ requests

    def _env(self, extra: dict[str, str] | None) -> dict[str, str]:
        env = {
            "PATH": f"{images.VENV}/bin:{SAFE_PATH}",
            "HOME": "/home/agent",
            "USER": "agent",
            "LANG": "C.UTF-8",
            "TERM": "dumb",
            "TMPDIR": "/tmp",
            "GIT_AUTHOR_NAME": "fleet-agent",
            "GIT_AUTHOR_EMAIL": "agent@fleet.local",
            "GIT_COMMITTER_NAME": "fleet-agent",
            "GIT_COMMITTER_EMAIL": "agent@fleet.local",
        }
        if images.host_ca_bundle() is not None:
            for var in ("SSL_CERT_FILE", "PIP_CERT", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
                env[var] = images.CA_PATH
        env.update(self.environment.plain_env())  # secrets come per session, in ``extra``
        env.update(extra or {})
        return env

    async def _request(
        self,
        header: dict[str, Any],
        body: bytes = b"",
        timeout_s: float = 60.0,
        on_frame: Any = None,
    ) -> tuple[dict[str, Any], bytes]:
        """Send one request and wait for its ``done`` frame (frames of older ids are dropped)."""
        if self._broken:
            raise SandboxLost(f"sandbox {self.name} is not usable: {self._broken}")
        if self._channel is None:
            raise SandboxError("sandbox not started")
        async with self._lock:
            channel = self._channel
            rid = next(self._ids)
            channel.send({**header, "id": rid}, body)
            try:
                async with asyncio.timeout(timeout_s + GRACE_S):
                    await channel.drain()
                    while True:
                        reply, data = await channel.recv()
                        if reply.get("id") != rid:
                            continue
                        if reply.get("t") == "done":
                            return reply, data
                        if on_frame is not None:
                            on_frame(reply, data)
            except asyncio.CancelledError:
                # Ask the agent to stop; its late frames are skipped by the next request.
                with contextlib.suppress(Exception):
                    channel.send({"op": "cancel", "target": rid})
                raise
            except TimeoutError:
                self._broken = "the exec agent stopped answering"
                channel.close()
                raise SandboxLost(f"sandbox {self.name}: {self._broken}") from None
            except SandboxLost as exc:
                self._broken = str(exc)
                channel.close()
                raise

    async def exec(
        self, command: str, timeout_s: float = 60.0, env: dict[str, str] | None = None
    ) -> ExecResult:
        started = time.perf_counter()
        out, err = CappedOutput(self._output_limit), CappedOutput(self._output_limit)

        def on_frame(reply: dict[str, Any], data: bytes) -> None:
            (out if reply.get("t") == "out" else err).head += data

        reply, tails = await self._request(
            {
                "op": "exec",
                "cmd": command,
                "timeout": timeout_s,
                "env": self._env(env),
                "limit": self._output_limit,
            },
            timeout_s=timeout_s,
            on_frame=on_frame,
        )
        if "error" in reply:
            raise SandboxError(reply["error"])
        split = reply["out_tail"]
        out.tail, err.tail = bytearray(tails[:split]), bytearray(tails[split:])
        out.total, err.total = reply["out_total"], reply["err_total"]
        timed_out = bool(reply["timed_out"])
        return ExecResult(
            exit_code=124 if timed_out else int(reply["code"]),
            stdout=out.text(),
            stderr=err.text() + (f"\n[timed out after {timeout_s:g}s]" if timed_out else ""),
            duration_ms=(time.perf_counter() - started) * 1000,
            timed_out=timed_out,
            truncated=out.truncated or err.truncated,
        )

    async def spawn(self, argv: list[str], env: dict[str, str] | None = None) -> DockerProcess:
        """A long-lived process in the container (``docker exec``, stdin attached), in the
        workspace, with the commands' user, environment (plus ``env``) and network."""
        if self._broken:
            raise SandboxLost(f"sandbox {self.name} is not usable: {self._broken}")
        if self._client is None or self.container_id is None:
            raise SandboxError("sandbox not started")
        api = self._client.api
        try:
            created = await asyncio.to_thread(
                api.exec_create,
                self.container_id,
                argv,
                stdout=True,
                stderr=True,
                stdin=True,
                tty=False,
                user="1000:1000",
                environment=self._env(env),
                workdir=self.workdir,
            )
        except Exception as exc:
            where = self.container_name
            raise SandboxError(f"cannot start {argv[0]!r} in {where}: {exc}") from None
        path = f"/v{api.api_version}/exec/{created['Id']}/start"
        reader, writer = await _hijack(path, {"Detach": False, "Tty": False}, f"exec {argv[0]!r}")
        return DockerProcess(api, created["Id"], reader, writer)

    async def _file_op(self, header: dict[str, Any], body: bytes = b"") -> bytes:
        reply, data = await self._request(header, body, timeout_s=120.0)
        if "error" in reply:
            path = header.get("path", "")
            if reply.get("kind") == "missing":
                raise SandboxError(f"no such file: {path}")
            if reply.get("kind") == "directory":
                raise SandboxError(f"{path} is a directory")
            raise SandboxError(f"{header['op']} {path}: {reply['error']}")
        return data

    async def read_file(self, path: str) -> bytes:
        rel = workspace_relative(path, self.workdir)
        return await self._file_op({"op": "read", "path": rel})

    async def write_file(self, path: str, data: bytes) -> None:
        rel = workspace_relative(path, self.workdir)
        if rel == ".":
            raise SandboxError("cannot write the workspace itself")
        await self._file_op({"op": "write", "path": rel}, data)

    async def snapshot(self) -> bytes:
        return await self._file_op({"op": "snapshot"})

    async def restore(self, archive: bytes) -> None:
        await self._file_op({"op": "restore"}, archive)


def _image_not_found() -> type[Exception]:
    import docker

    return docker.errors.ImageNotFound


def _remove_container(cli: docker.DockerClient, container_id: str) -> None:
    import docker

    try:
        cli.api.remove_container(container_id, force=True)
    except docker.errors.NotFound:
        pass
    except docker.errors.APIError as exc:
        if "already in progress" not in str(exc):
            raise


def reap_containers(owner: str | None = None, cli: docker.DockerClient | None = None) -> int:
    """Remove fleet containers left behind (all of them, or only ``owner``'s) and their rules.

    Call at start-up (leftovers of a crashed run) and at shutdown. Returns how many were removed.
    """
    own = cli is None
    cli = cli or images.client()
    try:
        selector = [f"{LABEL}=1"] + ([f"{LABEL}.owner={owner}"] if owner else [])
        leftovers = cli.api.containers(all=True, filters={"label": selector})
        for info in leftovers:
            _remove_container(cli, info["Id"])
        alive = {
            name.lstrip("/")
            for info in cli.api.containers(all=True, filters={"label": f"{LABEL}=1"})
            for name in info.get("Names", [])
        }
        network.remove_rules(keep=alive)
        return len(leftovers)
    finally:
        if own:
            cli.close()


def reap_orphans(cli: docker.DockerClient | None = None) -> int:
    """Remove fleet containers whose owning process on this host is gone (a crashed worker).

    Containers of live processes (another fleet's running workers) are left alone.
    """
    own = cli is None
    cli = cli or images.client()
    host = socket.gethostname()
    try:
        removed = 0
        for info in cli.api.containers(all=True, filters={"label": f"{LABEL}=1"}):
            owner = info.get("Labels", {}).get(f"{LABEL}.owner", "")
            owner_host, _, pid = owner.rpartition("-")
            if owner_host != host or not pid.isdigit() or _alive(int(pid)):
                continue
            _remove_container(cli, info["Id"])
            removed += 1
        return removed
    finally:
        if own:
            cli.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
