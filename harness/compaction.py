"""Context compaction: keep a long session's history inside the model's window.

The history is Chat Completions messages. ``messages[:prefix_len]`` (the system prompt and
the task prompt) is never touched, so a provider's prompt cache keeps hitting on it; the last
``keep_recent`` model turns are kept whole. When the estimated size passes ``trigger`` of the
window, older content is cut in three passes, oldest first, until it is under ``target``:

1. elide old tool outputs (a short head stays, with the size that went) and long string
   arguments of old tool calls (the arguments stay valid JSON);
2. drop the oldest whole turns (an assistant message, its tool results and the user
   messages between) and put one extractive summary of them right after the prefix;
3. elide the recent turns' tool outputs too, except the very last turn's.

Compaction is deterministic and needs no model call. It rewrites history rarely and by a
lot (trigger 0.75, target 0.5 by default), so the rewritten history stays a stable prefix for
many turns after each compaction.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

CHARS_PER_TOKEN = 4
MESSAGE_OVERHEAD_CHARS = 16
"""Roughly what a message's role and framing cost, in characters."""
ELIDED_MARK = "[elided to save context"
SUMMARY_MARK = "[context compacted:"
OLDER_LEFT_OUT = "- (older turns left out)"


@dataclass
class CompactionPolicy:
    window_tokens: int
    trigger: float = 0.75
    """Compact when the estimate passes this fraction of the window."""
    target: float = 0.5
    """Compact down to this fraction of the window."""
    keep_recent: int = 3
    """Model turns at the end kept whole (pass 3 aside)."""
    head_chars: int = 200
    """Characters of an elided output kept, for the model to recognise it."""
    summary_line_chars: int = 160

    @property
    def trigger_tokens(self) -> int:
        return int(self.window_tokens * self.trigger)

    @property
    def target_tokens(self) -> int:
        return int(self.window_tokens * self.target)


def message_chars(message: dict[str, Any]) -> int:
    size = MESSAGE_OVERHEAD_CHARS
    content = message.get("content")
    if isinstance(content, str):
        size += len(content)
    elif content is not None:
        size += len(json.dumps(content))
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        size += len(function.get("name") or "") + len(function.get("arguments") or "") + 24
    return size


def estimate_tokens(messages: list[dict[str, Any]]) -> int:
    """A rough token count: characters / 4."""
    return sum(message_chars(m) for m in messages) // CHARS_PER_TOKEN


def compact(
    messages: list[dict[str, Any]],
    policy: CompactionPolicy,
    prefix_len: int = 2,
    target_tokens: int | None = None,
) -> dict[str, Any]:
    """Shrink ``messages`` in place until ``estimate_tokens(messages)`` is at most
    ``target_tokens`` (default: the policy's target) or nothing more can go; returns what was
    done. Callers pass a lower target to leave room for what the estimate does not see
    (tool schemas, a tokenizer denser than chars/4)."""
    before = estimate_tokens(messages)
    goal = policy.target_tokens if target_tokens is None else target_tokens
    target_chars = max(0, goal) * CHARS_PER_TOKEN
    total = before * CHARS_PER_TOKEN
    report: dict[str, Any] = {"tokens_before": before, "elided": 0, "dropped": 0}

    def recent_start() -> int:
        """Index of the first message of the last ``keep_recent`` turns."""
        seen = 0
        for i in range(len(messages) - 1, prefix_len - 1, -1):
            if messages[i].get("role") == "assistant":
                seen += 1
                if seen == policy.keep_recent:
                    return i
        return prefix_len

    def elide_range(start: int, stop: int) -> None:
        nonlocal total
        for i in range(start, stop):
            if total <= target_chars:
                return
            saved = _elide(messages[i], policy)
            if saved:
                total -= saved
                report["elided"] += 1

    # Pass 1: old tool outputs and arguments.
    elide_range(prefix_len, recent_start())
    # Pass 2: drop the oldest turns into one summary message after the prefix.
    if total > target_chars:
        total = _drop_oldest(
            messages, prefix_len, recent_start(), total, target_chars, policy, report
        )
    # Pass 3: the recent turns, all but the last.
    if total > target_chars:
        last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=0)
        elide_range(recent_start(), last)
    report["tokens_after"] = estimate_tokens(messages)
    return report


def _elide(message: dict[str, Any], policy: CompactionPolicy) -> int:
    """Shorten one message's tool output or tool-call arguments; returns characters saved."""
    before = message_chars(message)
    role = message.get("role")
    if role == "tool":
        content = message.get("content")
        text = content if isinstance(content, str) else json.dumps(content)
        if text.startswith(ELIDED_MARK) or len(text) <= policy.head_chars + 80:
            return 0
        head = text[: policy.head_chars]
        message["content"] = f"{ELIDED_MARK}; {len(text)} characters, began with:]\n{head}"
    elif role == "assistant":
        for call in message.get("tool_calls") or ():
            function = call.get("function") or {}
            function["arguments"] = _shorten_arguments(function.get("arguments") or "", policy)
    return max(0, before - message_chars(message))


def _shorten_arguments(arguments: str, policy: CompactionPolicy) -> str:
    limit = policy.head_chars
    if len(arguments) <= limit + 80:
        return arguments
    try:
        args = json.loads(arguments)
    except ValueError:
        return json.dumps({"elided_arguments": arguments[:limit]})
    if not isinstance(args, dict):
        return json.dumps({"elided_arguments": arguments[:limit]})
    for key, value in args.items():
        if isinstance(value, str) and len(value) > limit:
            args[key] = f"{value[:limit]}{ELIDED_MARK}; {len(value)} characters]"
    return json.dumps(args)


def _drop_oldest(
    messages: list[dict[str, Any]],
    prefix_len: int,
    stop: int,
    total: int,
    target_chars: int,
    policy: CompactionPolicy,
    report: dict[str, Any],
) -> int:
    """Remove whole turns from the front of ``messages[prefix_len:stop]`` into one summary
    message; returns the new size in characters."""
    start = prefix_len
    lines: list[str] = []
    if start < stop and _is_summary(messages[start]):
        lines = messages[start]["content"].splitlines()[1:]  # extend the earlier summary
        total -= message_chars(messages[start])
        start += 1
    budget = max(target_chars // 4, 2000)  # the summary must not become the problem
    header = 160 + MESSAGE_OVERHEAD_CHARS
    lines_size = sum(len(line) + 1 for line in lines)
    end = start
    while end < stop and total + header + min(lines_size, budget) > target_chars:
        group_end = end + 1  # a turn: one message, plus the tool results that answer it
        while group_end < stop and messages[group_end].get("role") == "tool":
            group_end += 1
        for message in messages[end:group_end]:
            line = _summary_line(message, policy.summary_line_chars)
            lines.append(line)
            lines_size += len(line) + 1
            total -= message_chars(message)
        end = group_end
    if end == start:
        return sum(message_chars(m) for m in messages)
    report["dropped"] += end - start
    cut = 0
    while len(lines) > 1 and lines_size > budget:
        lines_size -= len(lines.pop(0)) + 1
        cut += 1
    if cut:
        lines.insert(0, OLDER_LEFT_OUT)
    summary = {
        "role": "user",
        "content": f"{SUMMARY_MARK} earlier turns, oldest first; re-run a command or re-read "
        "a file if you need its output again]\n" + "\n".join(lines),
    }
    messages[prefix_len:end] = [summary]
    return sum(message_chars(m) for m in messages)


def _is_summary(message: dict[str, Any]) -> bool:
    content = message.get("content")
    return (
        message.get("role") == "user"
        and isinstance(content, str)
        and content.startswith(SUMMARY_MARK)
    )


def _summary_line(message: dict[str, Any], limit: int) -> str:
    role = message.get("role")
    content = message.get("content")
    text = content if isinstance(content, str) else json.dumps(content) if content else ""
    text = " ".join(text.split())
    if role == "assistant":
        calls = [
            f"{(c.get('function') or {}).get('name')}({(c.get('function') or {}).get('arguments')})"
            for c in message.get("tool_calls") or ()
        ]
        said = f" saying {text[:limit]!r}" if text else ""
        return (
            f"- called {'; '.join(calls)[:limit]}{said}"
            if calls
            else f"- assistant: {text[:limit]}"
        )
    if role == "tool":
        return f"  -> {text[: limit // 2]}"
    return f"- {role}: {text[:limit]}"
