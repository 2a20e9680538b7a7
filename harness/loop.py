"""The agent loop: model turn -> tool calls -> tool results -> next turn.

The loop knows nothing of Ray: it talks to a model client, a tool box (whose tools act on the
sandbox), its hooks (steering, interrupts, approvals) and reports through ``emit``. Limits end
it with an outcome, never with an exception. Everything it knows is plain JSON
(:meth:`AgentLoop.state`), so a stopped session resumes anywhere with :meth:`AgentLoop.resume`.

How a session ends:

| status      | when                                                   | ``state`` |
| ----------- | ------------------------------------------------------ | --------- |
| finished    | the agent called ``finish``                            | no        |
| handoff     | the agent called ``handoff`` (``handoff_history`` set)  | no        |
| parked      | a call needs approval and no decision came in time, or | yes       |
|             | a custom tool's result did not come in time            |           |
| interrupted | ``hooks.interrupted()`` at a safe point                | yes       |
| budget      | the token or cost budget was spent (checked per turn)  | yes       |
| max_turns   | ``max_turns`` model turns done                         | yes       |
| timeout     | ``time_limit_s`` of active time used (across resumes)  | yes       |
| error       | the model failed after its retries, or the sandbox was | yes       |
|             | lost (reason ``sandbox lost: ...``)                    |           |

A custom tool (run by the API client) emits ``agent.custom_tool_use`` and waits the same way
for the client's result (``hooks.tool_result``), parking after ``approval_wait_s``; a result
that came just after it parked rides in the parked state (:func:`carry_tool_result`). An MCP
server's tool is logged as ``agent.mcp_tool_use`` / ``agent.mcp_tool_result``, under the same
approval rules as a built-in.

Safe points are before each model turn and before each tool call. Tool calls of one turn run
one at a time, in the order the model gave them. A call that needs approval emits
``approval.requested`` and waits up to ``approval_wait_s`` on ``hooks.approval``; with no
decision the session parks, and ``resume`` asks again for that same call (without a second
``approval.requested``) before running the rest of the turn. A decision that reached the
session just after it parked is put in the parked state (:func:`carry_decision`): ``resume``
then uses it without asking the hooks.

Budgets (``max_tokens``, ``max_cost_usd``) count what this loop spends from its ``run`` or
``resume``: the caller passes what is left of the task's budget.

The checkpoint hook is called at each safe point before a model turn with a zero-argument
callable that builds :meth:`AgentLoop.state`; the hook calls it only when it takes a
checkpoint (so a turn without one costs no state), and the loop awaits the hook when it
returns an awaitable (so a workspace snapshot taken there matches the state).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from core.events import EventType
from core.records import RESUMABLE, OutcomeStatus, SessionOutcome
from harness.compaction import (
    CHARS_PER_TOKEN,
    CompactionPolicy,
    compact,
    estimate_tokens,
    message_chars,
)
from harness.hooks import Decision, SessionHooks, ToolResult
from harness.models.base import ModelClient, ModelError, ToolCall
from harness.tools import (
    Tool,
    ToolBox,
    ToolContext,
    ToolOutput,
    approval_needed,
    custom_tool,
    truncate,
)
from sandboxes.base import SandboxLost

if TYPE_CHECKING:
    from core.specs import AgentSpec
    from harness.skills import Skill

Emit = Callable[..., None]
"""``emit(event_type, payload, **typed_columns)``"""
StateFn = Callable[[], dict[str, Any]]
Checkpoint = Callable[[StateFn], Awaitable[None] | None]
"""Called at each safe point before a model turn with a callable that builds
:meth:`AgentLoop.state` (call it only when a checkpoint is taken); awaited if it returns an
awaitable."""

NUDGE = "No tool was called. Use a tool to make progress, or call finish when the task is done."
STATE_VERSION = 1
DEFAULT_APPROVAL_WAIT_S = 30.0
HANDOFF_HISTORY_CHARS = 12_000


class AgentLoop:
    def __init__(
        self,
        instructions: str,
        model: ModelClient,
        toolbox: ToolBox,
        ctx: ToolContext,
        emit: Emit,
        max_turns: int,
        time_limit_s: float,
        *,
        hooks: SessionHooks | None = None,
        approvals: dict[str, Any] | None = None,
        approval_wait_s: float = DEFAULT_APPROVAL_WAIT_S,
        max_tokens: int | None = None,
        max_cost_usd: float | None = None,
        context_window: int | None = None,
        compact_at: float = 0.75,
        checkpoint: Checkpoint | None = None,
        agent_name: str = "agent",
    ) -> None:
        self.instructions = instructions
        self.model = model
        self.toolbox = toolbox
        self.ctx = ctx
        self.emit = emit
        self.max_turns = max_turns
        self.time_limit_s = time_limit_s
        self.hooks = hooks or SessionHooks()
        self.approvals = dict(approvals or {})
        for name in self.approvals:  # a bad policy fails here, not at the first call
            approval_needed(self.approvals, name, {})
        self.approval_wait_s = approval_wait_s
        self.max_tokens = max_tokens
        self.max_cost_usd = max_cost_usd
        self.compaction = (
            CompactionPolicy(
                context_window, trigger=compact_at, target=min(0.5, compact_at * 2 / 3)
            )
            if context_window
            else None
        )
        self.checkpoint = checkpoint
        self.agent_name = agent_name

        self.messages: list[dict[str, Any]] = []
        self.turns = 0
        self.tool_calls = 0
        self.tokens_in = 0
        self.cached_tokens_in = 0
        self.tokens_out = 0
        self.cost_usd = 0.0
        self.followups: list[dict[str, Any]] = []
        self._pending: list[ToolCall] = []
        """Calls of the last model turn not answered yet, in order."""
        self._approval: dict[str, Any] | None = None
        """The first pending call's approval request, once emitted."""
        self._custom: dict[str, Any] | None = None
        """The first pending call when it is a custom tool's that waits for the client:
        call_id, tool, input (and ``result`` once one came in after the session parked)."""
        self._prefix_len = 2
        self._compactions = 0
        self._reported_input = 0
        """Input tokens the model reported for its last turn (0 after a compaction)."""
        self._reported_at = 0
        """How many messages that turn was sent."""
        self._elapsed_before = 0.0
        self._segment_started: float | None = None
        self._schema_tokens = len(json.dumps(toolbox.schemas())) // CHARS_PER_TOKEN
        self._counted = 0
        """Messages whose characters are in ``_chars``."""
        self._chars = 0
        self._budget_base = (0, 0.0)
        """Tokens and cost spent when this run or resume started (budgets count from here)."""

    @classmethod
    def from_spec(
        cls,
        agent: AgentSpec,
        *,
        model: ModelClient,
        ctx: ToolContext,
        emit: Emit,
        max_turns: int,
        time_limit_s: float,
        skills: list[Skill] | None = None,
        mcp_tools: Sequence[Tool] = (),
        **kwargs: Any,
    ) -> AgentLoop:
        """A loop configured from an agent's spec: its tools (built-ins, custom tools, and
        ``mcp_tools``: its MCP servers' tools, from :class:`harness.mcp.McpTools`),
        approvals, budgets, window, handoff targets, and instructions with the skills section
        appended. ``kwargs`` go to the constructor (hooks, approval_wait_s, checkpoint) and
        override the spec's (e.g. ``max_tokens``: what is left of the task's budget)."""
        from harness.skills import with_skills

        if agent.handoffs:
            ctx.handoff_targets = list(agent.handoffs)
        options: dict[str, Any] = {
            "approvals": agent.approvals,
            "max_tokens": agent.max_tokens,
            "max_cost_usd": agent.max_cost_usd,
            "context_window": agent.context_window,
            "compact_at": agent.compact_at,
            "agent_name": agent.name,
        }
        return cls(
            with_skills(agent.instructions, skills or []),
            model,
            ToolBox(agent.tools, extra=[*map(custom_tool, agent.custom_tools), *mcp_tools]),
            ctx,
            emit,
            max_turns,
            time_limit_s,
            **(options | kwargs),
        )

    # --- entry points -------------------------------------------------------------------

    async def run(self, prompt: str, history: list[dict[str, Any]] | None = None) -> SessionOutcome:
        """Start a session on ``prompt``. ``history`` (e.g. a handoff's ``handoff_history``)
        follows the task prompt and, like it, is never compacted: keep it short."""
        self.messages = [
            {"role": "system", "content": self.instructions},
            {"role": "user", "content": prompt},
            *(history or []),
        ]
        self._prefix_len = len(self.messages)
        self._counted, self._chars = 0, 0
        self._budget_base = (self.tokens_in + self.tokens_out, self.cost_usd)
        return await self._segment()

    async def resume(self, state: dict[str, Any]) -> SessionOutcome:
        """Continue a session from :meth:`state` exactly where it stopped."""
        self.load_state(state)
        self._budget_base = (self.tokens_in + self.tokens_out, self.cost_usd)
        return await self._segment()

    def state(self) -> dict[str, Any]:
        """Everything needed to resume, as plain JSON (a copy)."""
        state = {
            "version": STATE_VERSION,
            "agent": self.agent_name,
            "messages": self.messages,
            "turns": self.turns,
            "tool_calls": self.tool_calls,
            "usage": {
                "tokens_in": self.tokens_in,
                "cached_tokens_in": self.cached_tokens_in,
                "tokens_out": self.tokens_out,
                "cost_usd": self.cost_usd,
            },
            "pending_calls": [
                {"id": c.id, "name": c.name, "arguments": c.arguments} for c in self._pending
            ],
            "pending_approval": self._approval,
            "pending_custom_tool": self._custom,
            "followups": self.followups,
            "model_position": getattr(self.model, "position", None),
            "elapsed_s": self._elapsed(),
            "prefix_len": self._prefix_len,
            "compaction": {
                "count": self._compactions,
                "reported_input_tokens": self._reported_input,
                "reported_at": self._reported_at,
            },
        }
        return json.loads(json.dumps(state))

    def load_state(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported agent state version {state.get('version')!r}")
        self.messages = [dict(m) for m in state["messages"]]
        self._counted, self._chars = 0, 0
        self.turns = state["turns"]
        self.tool_calls = state["tool_calls"]
        usage = state["usage"]
        self.tokens_in = usage["tokens_in"]
        self.cached_tokens_in = usage["cached_tokens_in"]
        self.tokens_out = usage["tokens_out"]
        self.cost_usd = usage["cost_usd"]
        self._pending = [
            ToolCall(c["id"], c["name"], c["arguments"]) for c in state["pending_calls"]
        ]
        self._approval = state["pending_approval"]
        self._custom = state.get("pending_custom_tool")
        self.followups = list(state["followups"])
        self._elapsed_before = state["elapsed_s"]
        self._prefix_len = state["prefix_len"]
        compaction = state["compaction"]
        self._compactions = compaction["count"]
        self._reported_input = compaction["reported_input_tokens"]
        self._reported_at = compaction["reported_at"]
        position = state.get("model_position")
        seek = getattr(self.model, "seek", None)
        if position is not None and seek is not None:
            seek(position)

    # --- the loop -----------------------------------------------------------------------

    def _elapsed(self) -> float:
        if self._segment_started is None:
            return self._elapsed_before
        return self._elapsed_before + time.perf_counter() - self._segment_started

    async def _segment(self) -> SessionOutcome:
        """Run until the session stops, within what is left of the time limit."""
        left = self.time_limit_s - self._elapsed_before
        limit = f"time limit of {self.time_limit_s:g}s reached"
        if left <= 0:
            return self._outcome("timeout", limit)
        self._segment_started = time.perf_counter()
        try:
            async with asyncio.timeout(left):
                return await self._drive()
        except TimeoutError:
            return self._outcome("timeout", limit)
        except ModelError as exc:
            return self._outcome("error", f"model error: {exc}")
        except SandboxLost as exc:  # no tool can work any more: end now, not per call
            return self._outcome("error", f"sandbox lost: {exc}")
        finally:
            self._elapsed_before = self._elapsed()
            self._segment_started = None

    async def _drive(self) -> SessionOutcome:
        schemas = self.toolbox.schemas()
        while True:
            while self._pending:
                stop = await self._next_call()
                if stop is not None:
                    return stop
            if self.checkpoint is not None:
                pending = self.checkpoint(self.state)
                if pending is not None:
                    await pending
            if self.turns >= self.max_turns:
                return self._outcome("max_turns", f"stopped after {self.max_turns} turns")
            if self.hooks.interrupted():
                return self._outcome("interrupted", f"interrupted before turn {self.turns + 1}")
            for text in await self.hooks.user_messages():
                self.messages.append({"role": "user", "content": text})
                self.emit(
                    EventType.user_message, {"text": text, "delivered_at_turn": self.turns + 1}
                )
            spent = self._budget_spent()
            if spent:
                return self._outcome("budget", spent)
            self._maybe_compact()
            sent = len(self.messages)
            asked = time.perf_counter()
            turn = await self.model.complete(self.messages, schemas)
            latency_ms = (time.perf_counter() - asked) * 1000
            self.turns += 1
            usage = turn.usage
            if usage.input_tokens or usage.output_tokens:
                self.tokens_in += usage.input_tokens
                self.cached_tokens_in += usage.cached_input_tokens
                self.tokens_out += usage.output_tokens
                self.cost_usd += usage.cost_usd
                self._reported_input, self._reported_at = usage.input_tokens, sent
            self.emit(  # one per turn: the `turns` view of the history
                EventType.usage,
                {
                    "cached_input_tokens": usage.cached_input_tokens,
                    "model": self.model.name,
                    "turn": self.turns,
                },
                tokens_in=usage.input_tokens,
                tokens_out=usage.output_tokens,
                cost_usd=usage.cost_usd,
                duration_ms=latency_ms,
            )
            self.messages.append(turn.as_message())
            if turn.text:
                self.emit(EventType.agent_message, {"text": turn.text, "turn": self.turns})
            if not turn.tool_calls:
                self.messages.append({"role": "user", "content": NUDGE})
            self._pending = list(turn.tool_calls)

    async def _next_call(self) -> SessionOutcome | None:
        """Run the first pending call; an outcome when the session stops there."""
        call = self._pending[0]
        parsed = self.toolbox.parse(call.name, call.arguments)
        tool_ = None if isinstance(parsed, ToolOutput) else parsed[0]
        if self._custom is not None:  # resumed, waiting for the client's result
            if tool_ is None or tool_.kind != "custom":  # the agent no longer has that tool
                self._custom = None
                gone = f"error: the agent no longer has the custom tool {call.name!r}"
                out = ToolOutput(gone, is_error=True)
                return self._answer(call, None, out, time.perf_counter())
            return await self._custom_call(call, tool_, self._custom["input"])
        resumed_approval = self._approval is not None
        carried = self._approval.get("decision") if self._approval is not None else None
        if not resumed_approval:
            if self.hooks.interrupted():
                return self._outcome("interrupted", f"interrupted before tool call {call.id}")
            self.tool_calls += 1
            if tool_ is not None and tool_.kind == "custom":
                assert not isinstance(parsed, ToolOutput)
                return await self._custom_call(call, tool_, parsed[1])
            self._emit_use(call, tool_)
        started = time.perf_counter()
        if isinstance(parsed, ToolOutput):
            out = parsed
        else:
            tool_, args = parsed
            decision: Decision | None = None
            if resumed_approval or approval_needed(self.approvals, tool_.name, args):
                if not resumed_approval:
                    plain_args = json.loads(json.dumps(args))
                    self._approval = {"call_id": call.id, "tool": call.name, "args": plain_args}
                    self.emit(EventType.approval_requested, dict(self._approval), tool=call.name)
                if carried:  # it reached the session just after it parked
                    decision = Decision(
                        bool(carried["allow"]),
                        str(carried.get("message", "")),
                        recorded=bool(carried.get("recorded")),
                    )
                else:
                    decision = await self.hooks.approval(
                        call.id, call.name, args, wait_s=self.approval_wait_s
                    )
                if decision is None:
                    if self.hooks.interrupted():
                        return self._outcome(
                            "interrupted", f"interrupted awaiting approval of {call.id}"
                        )
                    return self._outcome("parked", f"{call.name} call {call.id} awaits approval")
                self._approval = None
                if not decision.recorded:
                    self.emit(
                        EventType.approval_decided,
                        {
                            "call_id": call.id,
                            "allow": decision.allow,
                            "message": decision.message,
                            "by": "",
                        },
                        tool=call.name,
                    )
                started = time.perf_counter()
            if decision is not None and not decision.allow:
                why = f": {decision.message}" if decision.message else ""
                out = ToolOutput(
                    text=f"denied: the {call.name} call was not approved{why}. "
                    "Do something else, or explain why it is needed.",
                    is_error=True,
                    data={"denied": True},
                )
            else:
                out = await self.toolbox.run(self.ctx, tool_, args)
        return self._answer(call, tool_, out, started)

    def _emit_use(self, call: ToolCall, tool_: Tool | None) -> None:
        """The event of a call about to run: ``agent.mcp_tool_use`` for an MCP server's tool,
        else ``agent.tool_use`` (a built-in, or a call that is not valid)."""
        payload = {"call_id": call.id, "args": truncate(call.arguments, 4000), "turn": self.turns}
        if tool_ is not None and tool_.kind == "mcp":
            payload |= tool_.origin
            self.emit(EventType.agent_mcp_tool_use, payload, tool=call.name)
        else:
            self.emit(EventType.agent_tool_use, payload, tool=call.name)

    async def _custom_call(
        self, call: ToolCall, tool_: Tool, args: dict[str, Any]
    ) -> SessionOutcome | None:
        """A custom tool: the API client runs it. ``agent.custom_tool_use`` goes out once;
        the session waits up to ``approval_wait_s`` for the result, then parks (resuming
        waits on the same call; a result that came meanwhile is in the parked state)."""
        if self._custom is None:
            self._custom = {"call_id": call.id, "tool": call.name, "input": args}
            payload = {"call_id": call.id, "name": call.name, "input": args, "turn": self.turns}
            self.emit(EventType.agent_custom_tool_use, payload, tool=call.name)
        started = time.perf_counter()
        carried = self._custom.get("result")
        if carried:
            result: ToolResult | None = ToolResult(
                str(carried.get("text", "")), bool(carried.get("is_error"))
            )
        else:
            result = await self.hooks.tool_result(call.id, call.name, wait_s=self.approval_wait_s)
        if result is None:
            if self.hooks.interrupted():
                return self._outcome("interrupted", f"interrupted awaiting the result of {call.id}")
            return self._outcome("parked", f"{call.name} call {call.id} awaits the client's result")
        self._custom = None
        text = truncate(result.text, self.ctx.output_limit)
        return self._answer(call, tool_, ToolOutput(text, is_error=result.is_error), started)

    def _answer(
        self, call: ToolCall, tool_: Tool | None, out: ToolOutput, started: float
    ) -> SessionOutcome | None:
        """Give the model a call's result and log it (an MCP tool's as
        ``agent.mcp_tool_result``; a custom tool's result is the client's own event); an
        outcome when the call ends the session."""
        if out.followup is not None:
            if len(self.followups) >= self.ctx.max_followups:
                limit = self.ctx.max_followups
                out = ToolOutput(
                    text=f"error: at most {limit} follow-ups per session", is_error=True
                )
            else:
                self.followups.append(out.followup)
        kind = tool_.kind if tool_ is not None else "builtin"
        if kind != "custom":
            payload = {"call_id": call.id, "output": out.text, "is_error": out.is_error}
            if kind == "mcp":
                payload |= tool_.origin if tool_ is not None else {}
            self.emit(
                EventType.agent_mcp_tool_result if kind == "mcp" else EventType.agent_tool_result,
                payload | out.data,
                tool=call.name,
                exit_code=out.exit_code,
                duration_ms=(time.perf_counter() - started) * 1000,
            )
        self._pending.pop(0)
        self.messages.append({"role": "tool", "tool_call_id": call.id, "content": out.text})
        if not out.final:
            return None
        self._pending.clear()  # calls after a final one are dropped
        if out.handoff_to:
            note = str(out.data.get("note", ""))
            outcome = self._outcome("handoff", f"handed off to {out.handoff_to}")
            outcome.handoff_to, outcome.handoff_note = out.handoff_to, note
            outcome.handoff_history = handoff_history(
                self.messages, self.agent_name, note, self._prefix_len
            )
            return outcome
        return self._outcome("finished", summary=str(out.data.get("summary", "")))

    def _budget_spent(self) -> str:
        """Why the budget is spent, or empty (counted from this run or resume)."""
        tokens, cost = self._budget_base
        used = self.tokens_in + self.tokens_out - tokens
        spent = self.cost_usd - cost
        if self.max_tokens is not None and used >= self.max_tokens:
            return f"token budget of {self.max_tokens} reached ({used} used)"
        if self.max_cost_usd is not None and spent >= self.max_cost_usd - 1e-12:
            return f"cost budget of ${self.max_cost_usd:g} reached (${spent:.4f} used)"
        return ""

    def context_tokens(self) -> int:
        """The history's estimated size in tokens: the model's count for what it was last
        sent plus chars/4 for what came after, or chars/4 throughout, tool schemas included."""
        if self._reported_input:
            return self._reported_input + estimate_tokens(self.messages[self._reported_at :])
        return self._history_chars() // CHARS_PER_TOKEN + self._schema_tokens

    def _history_chars(self) -> int:
        """Characters in the history, counted incrementally (the history only grows between
        compactions; anything that rewrites it resets ``_counted``)."""
        if self._counted > len(self.messages):
            self._counted, self._chars = 0, 0
        for message in self.messages[self._counted :]:
            self._chars += message_chars(message)
        self._counted = len(self.messages)
        return self._chars

    def _maybe_compact(self) -> None:
        policy = self.compaction
        if policy is None:
            return
        before = self.context_tokens()
        if before <= policy.trigger_tokens:
            return
        # Aim the chars/4 estimate of the messages so that the full count lands on target:
        # scale by how much denser the model's count is, and leave room for the tool schemas.
        plain = estimate_tokens(self.messages) + self._schema_tokens
        density = max(1.0, before / plain)
        goal = int(policy.target_tokens / density) - self._schema_tokens
        report = compact(self.messages, policy, self._prefix_len, goal)
        self._counted, self._chars = 0, 0
        self._reported_input = 0
        self._compactions += 1
        report |= {
            "estimated_before": before,
            "estimated_after": self.context_tokens(),
            "window": policy.window_tokens,
            "turn": self.turns + 1,
            "count": self._compactions,
        }
        self.emit(EventType.agent_message, {"compaction": report})

    def _outcome(
        self, status: OutcomeStatus, reason: str = "", summary: str = ""
    ) -> SessionOutcome:
        return SessionOutcome(
            status=status,
            reason=reason,
            summary=summary,
            turns=self.turns,
            tool_calls=self.tool_calls,
            followups=list(self.followups),
            tokens_in=self.tokens_in,
            tokens_out=self.tokens_out,
            cost_usd=self.cost_usd,
            state=self.state() if status in RESUMABLE else None,
        )


def carry_decision(state: dict[str, Any], call_id: str, decision: Decision) -> bool:
    """Put ``decision`` into a parked ``state`` when it answers the call the state waits on
    (``pending_approval.decision``); :meth:`AgentLoop.resume` then uses it without asking
    the hooks. False (state unchanged) when the state waits on no such call."""
    pending = state.get("pending_approval")
    if not pending or pending.get("call_id") != call_id:
        return False
    pending["decision"] = {"allow": decision.allow, "message": decision.message}
    if decision.recorded:
        pending["decision"]["recorded"] = True
    return True


def carry_tool_result(state: dict[str, Any], call_id: str, result: ToolResult) -> bool:
    """Put the client's ``result`` into a parked ``state`` when it answers the custom tool
    call the state waits on (``pending_custom_tool.result``), as :func:`carry_decision`.
    False (state unchanged) when the state waits on no such call."""
    pending = state.get("pending_custom_tool")
    if not pending or pending.get("call_id") != call_id:
        return False
    pending["result"] = {"text": result.text, "is_error": result.is_error}
    return True


def handoff_history(
    messages: list[dict[str, Any]],
    from_agent: str,
    note: str,
    prefix_len: int = 2,
    limit_chars: int = HANDOFF_HISTORY_CHARS,
) -> list[dict[str, Any]]:
    """What the agent taking over a task sees after the task prompt: one user message with
    the note and a digest of what the previous agent did (its tool calls with the start of
    each result, what it said, and what users told it), newest kept when it is long.

    A digest rather than the raw messages: the target may have other tools, and it needs
    the gist, not 200 turns of output."""
    results = {
        m.get("tool_call_id"): m.get("content") or "" for m in messages if m.get("role") == "tool"
    }
    lines: list[str] = []
    for message in messages[prefix_len:]:
        role = message.get("role")
        content = message.get("content")
        text = " ".join(content.split()) if isinstance(content, str) else ""
        if role == "assistant":
            if text:
                lines.append(f"- said: {text[:300]}")
            for call in message.get("tool_calls") or ():
                function = call.get("function") or {}
                name = function.get("name", "")
                if name == "handoff":
                    continue
                result = " ".join(str(results.get(call.get("id"), "(no result)")).split())
                args = function.get("arguments") or ""
                lines.append(f"- {name} {args[:200]} -> {result[:300]}")
        elif role == "user" and text and text != NUDGE:
            lines.append(f"- user: {text[:300]}")
    kept: list[str] = []
    size = 0
    for line in reversed(lines):
        if size + len(line) > limit_chars:
            kept.append(f"- ({len(lines) - len(kept)} earlier steps left out)")
            break
        kept.append(line)
        size += len(line) + 1
    digest = "\n".join(reversed(kept)) or "- (no tool calls)"
    content = (
        f"[handoff] Agent {from_agent!r} worked on this task and handed it to you.\n"
        f"Their note: {note}\n\n"
        f"What they did, oldest first (arguments and results shortened):\n{digest}\n\n"
        "Their changes are in the workspace. Continue the task from here."
    )
    return [{"role": "user", "content": content}]
