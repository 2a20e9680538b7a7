"""Tools the agent calls. A tool is an async Python function; its argument schema comes from
its type hints through pydantic, so the model sees a JSON schema and bad arguments become an
error result the model can fix, never a crash.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, get_type_hints

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from sandboxes.base import Sandbox, SandboxError


@dataclass
class ToolContext:
    sandbox: Sandbox
    output_limit: int = 10_000
    command_timeout_s: float = 120.0


@dataclass
class ToolOutput:
    """What a tool returns: text for the model, plus typed fields for the event log."""

    text: str
    is_error: bool = False
    exit_code: int | None = None
    data: dict[str, Any] = field(default_factory=dict)
    final: bool = False
    """True for a tool that ends the session (finish, handoff)."""


ToolFn = Callable[..., Awaitable[ToolOutput]]


@dataclass
class Tool:
    name: str
    description: str
    args_model: type[BaseModel]
    fn: ToolFn

    def schema(self) -> dict[str, Any]:
        params = self.args_model.model_json_schema()
        params.pop("title", None)
        return {"name": self.name, "description": self.description, "parameters": params}


def tool(fn: ToolFn) -> Tool:
    """Make a Tool of ``async def name(ctx: ToolContext, arg: type = default, ...)``."""
    hints = get_type_hints(fn)
    fields: dict[str, Any] = {}
    for pname, param in list(inspect.signature(fn).parameters.items())[1:]:
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[pname] = (hints[pname], default)
    model = create_model(f"{fn.__name__}_args", __config__=ConfigDict(extra="forbid"), **fields)
    doc = inspect.getdoc(fn) or fn.__name__
    return Tool(name=fn.__name__, description=doc, args_model=model, fn=fn)


def truncate(text: str, limit: int) -> str:
    """Keep the head and tail of ``text``, saying how much was elided in between."""
    if len(text) <= limit:
        return text
    half = limit // 2
    elided = len(text) - 2 * half
    return f"{text[:half]}\n[... {elided} characters elided ...]\n{text[-half:]}"


@tool
async def shell(ctx: ToolContext, command: str, timeout_s: float = 60.0) -> ToolOutput:
    """Run a bash command in the workspace. Returns exit code, stdout and stderr."""
    result = await ctx.sandbox.exec(command, timeout_s=min(timeout_s, ctx.command_timeout_s))
    half = ctx.output_limit // 2
    stdout, stderr = truncate(result.stdout, half), truncate(result.stderr, half)
    text = f"exit code: {result.exit_code}\n"
    if stdout:
        text += f"stdout:\n{stdout}\n"
    if stderr:
        text += f"stderr:\n{stderr}\n"
    return ToolOutput(
        text=text,
        is_error=result.exit_code != 0,
        exit_code=result.exit_code,
        data={"stdout": stdout, "stderr": stderr, "timed_out": result.timed_out},
    )


@tool
async def read_file(ctx: ToolContext, path: str) -> ToolOutput:
    """Read a text file from the workspace."""
    data = await ctx.sandbox.read_file(path)
    return ToolOutput(text=truncate(data.decode(errors="replace"), ctx.output_limit))


@tool
async def write_file(ctx: ToolContext, path: str, content: str) -> ToolOutput:
    """Create or overwrite a file in the workspace with the given content."""
    await ctx.sandbox.write_file(path, content.encode())
    return ToolOutput(text=f"wrote {len(content.encode())} bytes to {path}")


@tool
async def finish(ctx: ToolContext, summary: str = "") -> ToolOutput:
    """Call when the task is done, with a short summary of what you did."""
    return ToolOutput(text="finished", final=True, data={"summary": summary})


BUILTINS: dict[str, Tool] = {t.name: t for t in (shell, read_file, write_file, finish)}


class ToolBox:
    """The tools one agent may use, and the one place tool calls are validated and run."""

    def __init__(self, names: list[str], registry: dict[str, Tool] | None = None) -> None:
        registry = registry or BUILTINS
        unknown = [n for n in names if n not in registry]
        if unknown:
            raise ValueError(f"unknown tools: {', '.join(unknown)}")
        self.tools = {n: registry[n] for n in names}
        if "finish" not in self.tools:
            self.tools["finish"] = registry.get("finish", finish)

    def schemas(self) -> list[dict[str, Any]]:
        return [t.schema() for t in self.tools.values()]

    async def call(self, ctx: ToolContext, name: str, arguments: str) -> ToolOutput:
        tool_ = self.tools.get(name)
        if tool_ is None:
            known = ", ".join(self.tools)
            return ToolOutput(text=f"error: unknown tool {name!r}; tools: {known}", is_error=True)
        try:
            raw = json.loads(arguments or "{}")
            if not isinstance(raw, dict):
                raise ValueError("arguments must be a JSON object")
            args = tool_.args_model.model_validate(raw)
        except (ValueError, ValidationError) as exc:
            return ToolOutput(text=f"error: bad arguments for {name}: {exc}", is_error=True)
        try:
            return await tool_.fn(ctx, **args.model_dump())
        except SandboxError as exc:
            return ToolOutput(text=f"error: {exc}", is_error=True)
        except OSError as exc:
            return ToolOutput(text=f"error: {type(exc).__name__}: {exc}", is_error=True)
