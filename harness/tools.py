"""Tools the agent calls. A built-in tool is an async Python function; its argument schema
comes from its type hints through pydantic, so the model sees a JSON schema and bad arguments
become an error result the model can fix, never a crash.

Tools that come with their own JSON Schema (an MCP server's, ``harness/mcp.py``; a custom
tool the API client runs, :func:`custom_tool`) sit in the same :class:`ToolBox`: their
arguments are checked against that schema with ``jsonschema``, with the same error results.
"""

from __future__ import annotations

import inspect
import json
import logging
import re
import shlex
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_type_hints

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from core.settings import FleetSettings
from core.specs import MCP_TOOL_PREFIX, CustomToolSpec
from sandboxes.base import Sandbox, SandboxError, SandboxLost, workspace_relative

log = logging.getLogger("harness.tools")


_DEFAULTS = FleetSettings.model_fields


@dataclass
class ToolContext:
    """What the tools of one session work on and may do (defaults: the settings' defaults)."""

    sandbox: Sandbox
    output_limit: int = _DEFAULTS["tool_output_limit"].default
    command_timeout_s: float = _DEFAULTS["command_timeout_s"].default
    handoff_targets: list[str] | None = None
    """Agents ``handoff`` may name; None accepts any name (the supervisor checks it)."""
    max_followups: int = _DEFAULTS["max_followups"].default
    """Follow-up task requests one session may make."""


@dataclass
class ToolOutput:
    """What a tool returns: text for the model, plus typed fields for the event log."""

    text: str
    is_error: bool = False
    exit_code: int | None = None
    data: dict[str, Any] = field(default_factory=dict)
    final: bool = False
    """True for a tool that ends the session (finish, handoff)."""
    handoff_to: str | None = None
    """Set with ``final`` by ``handoff``: the agent that takes the task over."""
    followup: dict[str, Any] | None = None
    """A follow-up task request (TaskSpec fields) the loop adds to the outcome."""


ToolFn = Callable[..., Awaitable[ToolOutput]]
"""A built-in tool: ``fn(ctx, **args)``; a schema tool (``input_schema``): ``fn(ctx, args)``."""
ToolKind = Literal["builtin", "mcp", "custom"]


@dataclass
class Tool:
    name: str
    description: str
    args_model: type[BaseModel] | None
    fn: ToolFn | None
    input_schema: dict[str, Any] | None = None
    """A JSON Schema given as is (MCP and custom tools), instead of ``args_model``."""
    kind: ToolKind = "builtin"
    """``mcp``: a tool of an MCP server; ``custom``: the API client runs it (no ``fn``: the
    loop waits for the client's result)."""
    origin: dict[str, str] = field(default_factory=dict)
    """An MCP tool's ``server`` and ``name`` (the server's own name for it)."""
    output_schema: dict[str, Any] | None = None
    """A custom tool's: what its results must match (checked where they come in)."""

    def schema(self) -> dict[str, Any]:
        """The tool as the model sees it (built once: pydantic's schema generation is slow)."""
        cached = _SCHEMAS.get(id(self))
        if cached is None or cached[0] is not self:
            if self.input_schema is not None:
                params = self.input_schema
            else:
                assert self.args_model is not None
                params = self.args_model.model_json_schema()
                params.pop("title", None)
            schema = {"name": self.name, "description": self.description, "parameters": params}
            cached = _SCHEMAS[id(self)] = (self, schema)
        return cached[1]

    def check(self, args: dict[str, Any]) -> dict[str, Any]:
        """``args`` validated: by the pydantic model (with defaults filled in) or the JSON
        Schema; ValueError (or pydantic's ValidationError) says what is wrong."""
        if self.input_schema is None:
            assert self.args_model is not None
            return self.args_model.model_validate(args).model_dump()
        problem = schema_problem(self.input_schema, args)
        if problem:
            raise ValueError(problem)
        return args


_SCHEMAS: dict[int, tuple[Tool, dict[str, Any]]] = {}


def schema_problem(schema: dict[str, Any], value: Any) -> str:
    """What is wrong with ``value`` under the JSON Schema ``schema`` (its most relevant
    error, with where in the value), or empty when it matches."""
    from jsonschema.exceptions import best_match
    from jsonschema.validators import validator_for

    error = best_match(validator_for(schema)(schema).iter_errors(value))
    if error is None:
        return ""
    where = "/".join(str(part) for part in error.absolute_path)
    return f"{error.message} (at {where})" if where else error.message


def custom_tool(spec: CustomToolSpec) -> Tool:
    """The tool the model sees for a custom tool the API client runs."""
    return Tool(
        name=spec.name,
        description=spec.description or spec.name,
        args_model=None,
        fn=None,
        input_schema=spec.input_schema,
        kind="custom",
        output_schema=spec.output_schema,
    )


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
async def edit_file(ctx: ToolContext, path: str, old_str: str, new_str: str) -> ToolOutput:
    """Replace one exact occurrence of old_str with new_str in a workspace file. old_str must
    match the file exactly (whitespace included) and occur exactly once: include enough
    surrounding lines to make it unique. Use write_file to create a file."""
    if not old_str:
        return ToolOutput(
            text="error: old_str is empty; use write_file to create a file", is_error=True
        )
    raw = await ctx.sandbox.read_file(path)
    try:
        text = raw.decode()
    except UnicodeDecodeError as exc:
        return ToolOutput(
            text=f"error: {path} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset "
            f"{exc.start}); edit_file only edits UTF-8 files and left it unchanged. Use shell "
            "to change binary or otherwise encoded files.",
            is_error=True,
        )
    count = text.count(old_str)
    if count == 0:
        hint = ""
        if old_str.strip() and old_str.strip() in text:
            hint = " (it occurs with different leading/trailing whitespace)"
        return ToolOutput(text=f"error: old_str not found in {path}{hint}", is_error=True)
    if count > 1:
        lines = _match_lines(text, old_str)
        return ToolOutput(
            text=f"error: old_str occurs {count} times in {path} (lines {lines}); "
            "include more surrounding text so it matches once",
            is_error=True,
        )
    start = text.index(old_str)
    await ctx.sandbox.write_file(
        path, (text[:start] + new_str + text[start + len(old_str) :]).encode()
    )
    line = text.count("\n", 0, start) + 1
    return ToolOutput(text=f"edited {path}: replaced 1 occurrence at line {line}")


def _match_lines(text: str, needle: str, limit: int = 10) -> str:
    lines, start = [], 0
    while (found := text.find(needle, start)) != -1 and len(lines) < limit:
        lines.append(str(text.count("\n", 0, found) + 1))
        start = found + 1
    return ", ".join(lines)


LIST_SKIP = (".git", "__pycache__", "node_modules", ".venv", ".mypy_cache", ".pytest_cache")


@tool
async def list_files(
    ctx: ToolContext, path: str = ".", depth: int = 3, limit: int = 300
) -> ToolOutput:
    """List files and folders under a workspace path (folders end with '/'), down to `depth`
    levels, at most `limit` entries. .git, __pycache__, node_modules and .venv are skipped."""
    rel = workspace_relative(path, ctx.sandbox.workdir)
    depth, limit = max(1, min(depth, 10)), max(1, min(limit, 2000))
    skip = " -o ".join(f"-name {name}" for name in LIST_SKIP)
    command = (
        f"cd -- {shlex.quote(rel)} && find . -mindepth 1 -maxdepth {depth} "
        f"\\( {skip} \\) -prune -o -type d -exec printf '%s/\\n' {{}} + -o -print "
        f"| LC_ALL=C sort | head -n {limit + 1}"
    )
    result = await ctx.sandbox.exec(command, timeout_s=min(30.0, ctx.command_timeout_s))
    if result.exit_code != 0:
        return ToolOutput(
            text=f"error: cannot list {path}: {result.stderr.strip()}",
            is_error=True,
            exit_code=result.exit_code,
        )
    entries = [e.removeprefix("./") for e in result.stdout.splitlines() if e]
    more = len(entries) > limit
    entries = entries[:limit]
    text = "\n".join(entries) if entries else "(empty)"
    if more:
        text += f"\n[more than {limit} entries: list a subfolder or lower depth]"
    return ToolOutput(text=truncate(text, ctx.output_limit), data={"entries": len(entries)})


@tool
async def search(
    ctx: ToolContext,
    pattern: str,
    path: str = ".",
    glob: str | None = None,
    fixed_strings: bool = False,
    ignore_case: bool = False,
    max_results: int = 100,
) -> ToolOutput:
    """Search file contents under a workspace path (grep -rn): prints file:line:text for each
    match. `pattern` is an extended regex unless fixed_strings; `glob` limits the files
    searched (e.g. '*.py'). Binary files and .git are skipped."""
    rel = workspace_relative(path, ctx.sandbox.workdir)
    max_results = max(1, min(max_results, 1000))
    flags = "-rnI" + ("F" if fixed_strings else "E") + ("i" if ignore_case else "")
    parts = ["grep", flags, "--exclude-dir=.git", "--exclude-dir=node_modules"]
    if glob:
        parts.append(f"--include={shlex.quote(glob)}")
    parts += ["-e", shlex.quote(pattern), "--", shlex.quote(rel)]
    command = f"{' '.join(parts)} | head -n {max_results + 1}; exit ${{PIPESTATUS[0]}}"
    result = await ctx.sandbox.exec(command, timeout_s=min(60.0, ctx.command_timeout_s))
    # grep: 0 matches found, 1 none, 2 trouble; 141 (SIGPIPE) when head stopped reading.
    if result.exit_code == 1:
        return ToolOutput(text=f"no matches for {pattern!r} in {path}", exit_code=1)
    if result.exit_code not in (0, 141):
        return ToolOutput(
            text=f"error: search failed: {result.stderr.strip() or result.exit_code}",
            is_error=True,
            exit_code=result.exit_code,
        )
    lines = [
        (line if len(line) <= 300 else line[:300] + " [line cut]").removeprefix("./")
        for line in result.stdout.splitlines()
    ]
    more = len(lines) > max_results
    lines = lines[:max_results]
    text = "\n".join(lines)
    if more:
        text += f"\n[more than {max_results} matches: narrow the pattern, path or glob]"
    return ToolOutput(
        text=truncate(text, ctx.output_limit), exit_code=0, data={"matches": len(lines)}
    )


@tool
async def finish(ctx: ToolContext, summary: str = "") -> ToolOutput:
    """Call when the task is done, with a short summary of what you did."""
    return ToolOutput(text="finished", final=True, data={"summary": summary})


@tool
async def handoff(ctx: ToolContext, agent: str, note: str) -> ToolOutput:
    """Hand the task over to another agent and end your session. The note tells it what you
    did, what is left and anything it must know; it works on the same workspace."""
    targets = ctx.handoff_targets
    if targets is not None and agent not in targets:
        known = ", ".join(targets) or "none"
        return ToolOutput(
            text=f"error: cannot hand off to {agent!r}; agents: {known}", is_error=True
        )
    return ToolOutput(
        text=f"handed off to {agent}", final=True, handoff_to=agent, data={"note": note}
    )


@tool
async def create_followup(
    ctx: ToolContext,
    prompt: str,
    labels: tuple[str, ...] = (),
    agent: str | None = None,
    priority: int = 0,
) -> ToolOutput:
    """Ask for a separate follow-up task (work outside this task's scope that you noticed).
    It is created when this session ends; this does not end your session."""
    if not prompt.strip():
        return ToolOutput(text="error: the follow-up prompt is empty", is_error=True)
    request: dict[str, Any] = {"prompt": prompt, "labels": list(labels), "priority": priority}
    if agent:
        request["agent"] = agent
    return ToolOutput(text="follow-up task requested", followup=request)


BUILTINS: dict[str, Tool] = {
    t.name: t
    for t in (
        shell,
        read_file,
        write_file,
        edit_file,
        list_files,
        search,
        finish,
        handoff,
        create_followup,
    )
}
CODING_TOOLS = ["shell", "read_file", "write_file", "edit_file", "list_files", "search", "finish"]


# --- approvals ------------------------------------------------------------------------

APPROVAL_DEFAULT_KEY = "*"


def approval_needed(approvals: Mapping[str, Any], tool_name: str, args: Mapping[str, Any]) -> bool:
    """Whether a call needs a decision, from an agent's ``approvals`` policy.

    ``approvals`` maps a tool name (an MCP tool's is ``mcp__<server>__<tool>``; the key
    ``mcp__<server>__*`` stands for every tool of that server not named itself; ``"*"`` for
    any other tool) to ``"always_allow"``, ``"always_ask"`` or ``{"ask_if": {argument:
    regex}}`` (ask when any named argument, as text, matches its regex anywhere). Tools not
    named are allowed.
    """
    policy = approvals.get(tool_name)
    if policy is None and tool_name.startswith(MCP_TOOL_PREFIX):
        server = tool_name.removeprefix(MCP_TOOL_PREFIX).split("__", 1)[0]
        policy = approvals.get(f"{MCP_TOOL_PREFIX}{server}__*")
    if policy is None:
        policy = approvals.get(APPROVAL_DEFAULT_KEY, "always_allow")
    if policy == "always_allow":
        return False
    if policy == "always_ask":
        return True
    if isinstance(policy, Mapping) and isinstance(policy.get("ask_if"), Mapping):
        for name, pattern in policy["ask_if"].items():
            if name not in args or args[name] is None:
                continue
            value = args[name]
            text = value if isinstance(value, str) else json.dumps(value)
            if re.search(pattern, text):
                return True
        return False
    raise ValueError(f"bad approval policy for {tool_name!r}: {policy!r}")


class ToolBox:
    """The tools one agent may use, and the one place tool calls are validated and run.

    ``names`` are taken from ``registry`` (the built-ins); ``extra`` tools (an agent's MCP
    and custom tools) come after them, under names of their own."""

    def __init__(
        self,
        names: list[str],
        registry: dict[str, Tool] | None = None,
        extra: Sequence[Tool] = (),
    ) -> None:
        registry = registry or BUILTINS
        unknown = [n for n in names if n not in registry]
        if unknown:
            raise ValueError(f"unknown tools: {', '.join(unknown)}")
        self.tools = {n: registry[n] for n in names}
        if "finish" not in self.tools:
            self.tools["finish"] = registry.get("finish", finish)
        for tool_ in extra:
            if tool_.name in self.tools or tool_.name in registry:
                raise ValueError(f"two tools are named {tool_.name!r}")
            self.tools[tool_.name] = tool_
        self._schemas = [t.schema() for t in self.tools.values()]

    def schemas(self) -> list[dict[str, Any]]:
        return self._schemas

    def parse(self, name: str, arguments: str) -> tuple[Tool, dict[str, Any]] | ToolOutput:
        """Validate a call: the tool and its arguments, or an error result for the model."""
        tool_ = self.tools.get(name)
        if tool_ is None:
            known = ", ".join(self.tools)
            return ToolOutput(text=f"error: unknown tool {name!r}; tools: {known}", is_error=True)
        try:
            raw = json.loads(arguments or "{}")
            if not isinstance(raw, dict):
                raise ValueError("arguments must be a JSON object")
            args = tool_.check(raw)
        except (ValueError, ValidationError) as exc:
            return ToolOutput(text=f"error: bad arguments for {name}: {exc}", is_error=True)
        return tool_, args

    async def run(self, ctx: ToolContext, tool_: Tool, args: dict[str, Any]) -> ToolOutput:
        """Run a validated call. Any exception the tool raises is an error result the model
        can act on, not a crash; except SandboxLost (the session cannot go on) and
        cancellation (a BaseException), which propagate."""
        if tool_.fn is None:
            return ToolOutput(text=f"error: {tool_.name} is not run here", is_error=True)
        try:
            if tool_.input_schema is not None:
                return await tool_.fn(ctx, args)
            return await tool_.fn(ctx, **args)
        except SandboxLost:
            raise
        except SandboxError as exc:
            return ToolOutput(text=f"error: {exc}", is_error=True)
        except Exception as exc:
            if not isinstance(exc, OSError | UnicodeError):
                log.warning("tool %s raised", tool_.name, exc_info=True)
            return ToolOutput(text=f"error: {type(exc).__name__}: {exc}", is_error=True)

    async def call(self, ctx: ToolContext, name: str, arguments: str) -> ToolOutput:
        parsed = self.parse(name, arguments)
        if isinstance(parsed, ToolOutput):
            return parsed
        return await self.run(ctx, *parsed)
