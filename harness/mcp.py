"""An agent's MCP servers: started with each session, their tools offered to the model next
to the built-ins, under the name ``mcp__<server>__<tool>``.

A server is a command that speaks MCP over stdio or a streamable HTTP URL
(``core.specs.McpServerSpec``). A stdio server runs in the session's sandbox by default
(``Sandbox.spawn``: in the workspace, with the sandbox's environment and network policy),
or on the worker's host (``where: harness``) in a directory of its own; a URL is reached from
the worker. The official ``mcp`` package is the client; for a stdio server it runs over
:func:`process_transport`, newline-delimited JSON-RPC on the process's stdin and stdout,
wherever the process is.

A server that does not start (exits, never answers, lists no valid tools) fails the
session's start with :class:`McpError`, whose message ends with its stderr. One that stops
mid-session answers every later call of its tools with an error result the model reads; the
session goes on. Servers are started afresh by each session (a resumed one too): their state
does not outlive it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import shutil
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from core.errors import FleetError
from core.settings import host_variable
from core.specs import MCP_TOOL_PREFIX, TOOL_NAME, McpServerSpec, json_schema
from harness.tools import Tool, ToolContext, ToolOutput, truncate
from sandboxes.base import Sandbox, SandboxError, SandboxProcess
from sandboxes.local import HostProcess

log = logging.getLogger("harness.mcp")

MAX_LINE = 16 << 20
"""A stdout line (one JSON-RPC message) longer than this ends the connection."""
NOISE_LINES = 5
"""Lines of a stdio server's stdout that are not JSON-RPC kept for its error message."""


class McpError(FleetError, RuntimeError):
    """An agent's MCP server cannot be started or reached; the message names the server and
    says why (its exit code and the end of its stderr)."""


def tool_name(server: str, name: str) -> str:
    """The name the model sees for ``server``'s tool ``name``: ``mcp__<server>__<name>``,
    with characters model APIs refuse made ``_``; McpError when it would be too long."""
    full = MCP_TOOL_PREFIX + server + "__" + re.sub(r"[^A-Za-z0-9_-]", "_", name)
    if not TOOL_NAME.fullmatch(full):
        raise McpError(f"MCP server {server!r}: tool {name!r} makes a name over 64 characters")
    return full


@asynccontextmanager
async def process_transport(
    process: SandboxProcess, noise: list[str] | None = None
) -> AsyncIterator[tuple[Any, Any]]:
    """An ``mcp`` transport (read and write streams of ``SessionMessage``) over a process's
    stdin and stdout: one JSON-RPC message per line. Lines that are not JSON-RPC are kept in
    ``noise`` (the last few: what a failing command printed) and skipped. The read stream
    ends when the process closes its stdout; leaving closes the process."""
    import anyio
    import mcp_types
    from mcp.shared.message import SessionMessage

    incoming_send, incoming = anyio.create_memory_object_stream[Any](0)
    outgoing, outgoing_receive = anyio.create_memory_object_stream[Any](0)
    noise = noise if noise is not None else []

    async def read() -> None:
        buffer = b""
        async with incoming_send:
            while chunk := await process.read():
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                if len(buffer) > MAX_LINE:
                    noise.append(f"[a line of over {MAX_LINE} bytes: connection closed]")
                    return
                for line in lines:
                    if not line.strip():
                        continue
                    try:
                        message = mcp_types.jsonrpc_message_adapter.validate_json(
                            line, by_name=False
                        )
                    except ValueError:
                        noise.append(line[:500].decode(errors="replace").strip())
                        del noise[:-NOISE_LINES]
                        continue
                    try:
                        await incoming_send.send(SessionMessage(message))
                    except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                        return  # the client is gone, or the writer ended the connection

    async def write() -> None:
        async with outgoing_receive:
            async for item in outgoing_receive:
                data = item.message.model_dump_json(by_alias=True, exclude_unset=True)
                try:
                    await process.write(data.encode() + b"\n")
                except SandboxError:
                    await incoming_send.aclose()  # the session sees the connection end
                    return

    async with anyio.create_task_group() as group:
        group.start_soon(read)
        group.start_soon(write)
        try:
            yield incoming, outgoing
        finally:
            with anyio.CancelScope(shield=True):
                await process.close()
            group.cancel_scope.cancel()


def result_text(result: Any) -> str:
    """An MCP ``CallToolResult`` as text for the model: its text blocks, a note for each
    other block, or its structured content as JSON when it has no blocks."""
    parts: list[str] = []
    for block in result.content or []:
        kind = getattr(block, "type", "")
        if kind == "text":
            parts.append(block.text)
        elif kind == "resource" and hasattr(block.resource, "text"):
            parts.append(block.resource.text)
        elif kind == "resource":
            parts.append(f"[resource {block.resource.uri}]")
        elif kind == "resource_link":
            parts.append(f"[resource link {block.uri}]")
        else:
            parts.append(f"[{kind} content: {getattr(block, 'mime_type', '') or 'not shown'}]")
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content))
    return "\n".join(parts)


def _root(exc: BaseException) -> BaseException:
    """The first leaf of an exception group (anyio task groups wrap what failed)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


class McpServer:
    """One MCP server of one session: started, its tools listed, called, closed.

    The ``mcp`` client lives in a task of its own (its task groups are entered and left
    there); calls go through it from the agent loop's task."""

    def __init__(self, spec: McpServerSpec, sandbox: Sandbox | None) -> None:
        self.spec = spec
        self.sandbox = sandbox
        self.tools: list[Tool] = []
        self.process: SandboxProcess | None = None
        self.noise: list[str] = []
        self._client: Any = None
        self._home: str | None = None
        self._ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._owner: asyncio.Task[None] | None = None

    @property
    def where(self) -> str:
        if self.spec.url is not None:
            return self.spec.url
        return "the sandbox" if self.spec.runs_in_sandbox else "the worker"

    async def start(self, timeout_s: float) -> None:
        """Start the server and list its tools; McpError (with its stderr) if it cannot."""
        self._owner = asyncio.create_task(self._serve(), name=f"mcp-{self.spec.name}")
        ready = asyncio.create_task(self._ready.wait())
        try:
            await asyncio.wait(
                {self._owner, ready}, timeout=timeout_s, return_when="FIRST_COMPLETED"
            )
        finally:
            ready.cancel()
        if self._ready.is_set():
            return
        if self._owner.done():
            error = self._owner.exception()
            why = f"{type(_root(error)).__name__}: {_root(error)}" if error else "it stopped"
            why = await self._why(why)
        else:  # (its exit code would be our kill's)
            await self.close()
            why = await self._why(f"no answer within {timeout_s:g}s", exit_code=False)
        await self.close()
        raise McpError(f"MCP server {self.spec.name!r} ({self.where}) did not start: {why}")

    async def _serve(self) -> None:
        from mcp import Client

        async with contextlib.AsyncExitStack() as stack:
            if self.spec.url is not None:
                target: Any = self.spec.url
            else:
                self.process = await self._spawn()
                target = process_transport(self.process, self.noise)
            self._client = await stack.enter_async_context(Client(target, cache=None))
            self.tools = await self._list_tools()
            self._ready.set()
            await self._stop.wait()

    async def _spawn(self) -> SandboxProcess:
        spec = self.spec
        assert spec.command is not None
        argv = [spec.command, *spec.args]
        if spec.runs_in_sandbox:
            spawn = getattr(self.sandbox, "spawn", None)
            if spawn is None:  # never quietly on the worker instead
                kind = getattr(self.sandbox, "kind", "this")
                raise McpError(f"the {kind} sandbox cannot run a stdio MCP server")
            return await spawn(argv, dict(spec.env))
        self._home = tempfile.mkdtemp(prefix=f"fleet-mcp-{spec.name}-")
        env = {
            "PATH": host_variable("PATH") or "/usr/bin:/bin",
            "HOME": self._home,
            "LANG": "C.UTF-8",
            **spec.env,
        }
        return await HostProcess.start(argv, self._home, env)

    async def _list_tools(self) -> list[Tool]:
        tools: list[Tool] = []
        cursor = None
        for _ in range(100):  # pages
            listing = await self._client.list_tools(cursor=cursor)
            for listed in listing.tools:
                tools.append(self._tool(listed))
            cursor = listing.next_cursor
            if cursor is None:
                break
        names = [t.name for t in tools]
        for name in names:
            if names.count(name) > 1:
                raise McpError(f"two tools of MCP server {self.spec.name!r} are named {name!r}")
        return tools

    def _tool(self, listed: Any) -> Tool:
        schema = dict(listed.input_schema or {"type": "object", "properties": {}})
        schema.setdefault("type", "object")
        try:
            json_schema(schema)
        except ValueError as exc:
            raise McpError(f"MCP server {self.spec.name!r}, tool {listed.name!r}: {exc}") from None
        remote = listed.name

        async def call(ctx: ToolContext, args: dict[str, Any]) -> ToolOutput:
            return await self.call(remote, args, ctx)

        return Tool(
            name=tool_name(self.spec.name, remote),
            description=listed.description or listed.title or remote,
            args_model=None,
            fn=call,
            input_schema=schema,
            kind="mcp",
            origin={"server": self.spec.name, "name": remote},
        )

    async def call(self, name: str, args: dict[str, Any], ctx: ToolContext) -> ToolOutput:
        """Call the server's tool ``name``: its result, or an error result saying why there
        is none (the server stopped, timed out, or answered an error)."""
        from mcp.shared.exceptions import MCPError

        timeout_s = ctx.command_timeout_s
        try:
            result = await asyncio.wait_for(
                self._client.call_tool(name, args, read_timeout_seconds=timeout_s),
                timeout_s + 5,
            )
        except TimeoutError:
            return ToolOutput(
                text=f"error: MCP server {self.spec.name!r} did not answer within {timeout_s:g}s",
                is_error=True,
            )
        except MCPError as exc:
            if self.process is not None and await self.process.wait(1.0) is not None:
                why = await self._why("it stopped")
                text = f"error: MCP server {self.spec.name!r} is not running: {why}"
                return ToolOutput(text=text, is_error=True)
            return ToolOutput(text=f"error: MCP server {self.spec.name!r}: {exc}", is_error=True)
        except Exception as exc:
            log.warning("MCP call %s of %s failed", name, self.spec.name, exc_info=True)
            return ToolOutput(text=f"error: {type(exc).__name__}: {exc}", is_error=True)
        return ToolOutput(
            text=truncate(result_text(result), ctx.output_limit), is_error=bool(result.is_error)
        )

    async def _why(self, what: str, exit_code: bool = True) -> str:
        """``what`` (or its exit code), and the end of the stderr of a stdio server."""
        if self.process is None:
            return what
        code = await self.process.wait(1.0) if exit_code else None
        if code is not None:
            what = f"exited with code {code}"
        said = self.process.stderr_tail().strip() or "\n".join(self.noise).strip()
        return f"{what}; it said: {said[-2000:]}" if said else f"{what} (no output)"

    async def close(self) -> None:
        """Stop the server (a stdio one's stdin closed, then killed)."""
        self._stop.set()
        owner = self._owner
        if owner is not None and not owner.done() and not self._ready.is_set():
            owner.cancel()  # still starting: nothing to finish
        if owner is not None and not owner.done():
            done, _ = await asyncio.wait({owner}, timeout=10)
            if not done:
                owner.cancel()
                await asyncio.wait({owner}, timeout=5)
        if owner is not None and owner.done() and not owner.cancelled():
            owner.exception()  # seen here (start reported it): not "never retrieved"
        if self.process is not None:
            await self.process.close()
        if self._home is not None:
            await asyncio.to_thread(shutil.rmtree, self._home, True)
            self._home = None


class McpTools:
    """An agent's MCP servers for one session: ``start`` (or ``async with``) starts them all
    (McpError when one does not start: the others are stopped), ``tools`` are their tools
    for the :class:`harness.tools.ToolBox`, and ``close`` (or leaving) stops them."""

    def __init__(
        self, specs: Sequence[McpServerSpec], sandbox: Sandbox | None, start_timeout_s: float
    ) -> None:
        self.servers = [McpServer(spec, sandbox) for spec in specs]
        self.start_timeout_s = start_timeout_s

    @property
    def tools(self) -> list[Tool]:
        return [t for server in self.servers for t in server.tools]

    async def start(self) -> None:
        """Start every server, one after the other; McpError names the first that does not
        start (the ones started are stopped)."""
        try:
            for server in self.servers:
                await server.start(self.start_timeout_s)
        except BaseException:
            await self.close()
            raise

    async def __aenter__(self) -> McpTools:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        for server in self.servers:
            with contextlib.suppress(Exception):
                await server.close()


async def probe(specs: Sequence[McpServerSpec], start_timeout_s: float) -> tuple[int, str] | None:
    """Start once, and stop, the servers that run outside any sandbox (on the worker's side,
    or at a URL): the index and error of the first that does not start, or None. What creates
    an agent calls this, here (the API's host standing in for a worker); servers in a sandbox
    need the session's and are checked when it starts."""
    for index, spec in enumerate(specs):
        if spec.runs_in_sandbox:
            continue
        try:
            async with McpTools([spec], None, start_timeout_s):
                pass
        except McpError as exc:
            return index, str(exc)
    return None
