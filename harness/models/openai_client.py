"""Real model clients over the ``openai`` package.

- ``ChatCompletionsModel``: ``POST /chat/completions``, for any OpenAI-compatible server
  (vLLM, Ollama, llama.cpp, a gateway) through ``base_url``, and for OpenAI itself.
- ``ResponsesModel``: ``POST /responses``, OpenAI's Responses API.

Both take the history in the Chat Completions shape and neutral tools
(``{"name", "description", "parameters"}``) and convert them to their wire format. Tool-call
arguments come back as the raw JSON text the model wrote, even when it is not valid JSON: the
agent loop validates them.

Retries are done here, not by the SDK (its client is built with ``max_retries=0``): 408, 429,
5xx, connection errors and timeouts are retried with exponential backoff and jitter, honouring
``Retry-After``, within a ``RetryPolicy`` budget; then ``ModelError``. Other 4xx raise
``ModelError`` at once.

API keys: see ``resolve_api_key``. Keys are never logged nor put in error messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import openai

try:
    import httpx2 as _http
except ImportError:  # openai < 3 is built on httpx
    import httpx as _http  # type: ignore[no-redef]

from core.errors import FleetError, InputError
from core.settings import FleetSettings, host_variable
from core.specs import PLAIN_NAME, AgentSpec
from core.vault import read_secret_file, secrets_dir_path
from harness.models.base import ModelClient, ModelError, ModelTurn, ToolCall, Usage
from harness.models.pricing import cost_usd, load_prices

log = logging.getLogger(__name__)

PLACEHOLDER_API_KEY = "no-key"
"""Sent to a server named by ``base_url`` when no key is configured (keyless local servers)."""
RETRYABLE_STATUS = frozenset({408, 429})
CHAT_MESSAGE_KEYS = frozenset({"role", "content", "name", "tool_calls", "tool_call_id"})

Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class RetryPolicy:
    """How long to keep trying a request that failed for a transient reason."""

    max_retries: int = 6
    base_delay_s: float = 1.0
    max_delay_s: float = 60.0
    max_total_wait_s: float = 300.0
    jitter: float = 0.5
    """Each backoff delay is scaled by a random factor in ``[1 - jitter, 1]``."""

    def backoff_s(self, retry: int) -> float:
        """The delay before retry number ``retry`` (1, 2, ...) when the server gave no hint."""
        delay = min(self.max_delay_s, self.base_delay_s * 2 ** (retry - 1))
        return delay * (1.0 - self.jitter * random.random())


def resolve_api_key(
    env_name: str, *, keyless_ok: bool, settings: FleetSettings | None = None
) -> str:
    """The API key for a client, looked up in this order:

    1. the environment variable ``env_name`` (the agent's ``api_key_env``);
    2. the file ``<secrets_dir>/<env_name>`` (e.g. a mounted secret), stripped, where
       ``secrets_dir`` is the setting (``FLEET_SECRETS_DIR``) of ``settings`` (default: this
       process's environment);
    3. when ``keyless_ok`` (the client talks to a server named by ``base_url`` or
       ``OPENAI_BASE_URL``), the placeholder ``"no-key"``, for local servers that need none.

    Otherwise a ``ModelError`` names the variable (never a value). ``env_name`` must be a
    plain name (``AgentSpec`` checks it too): a path is refused, and the file read must
    resolve inside the secrets directory (a symlink out of it is not followed).
    """
    if not PLAIN_NAME.fullmatch(env_name):
        raise ModelError(f"api_key_env {env_name[:100]!r} is not a plain variable name")
    value = (host_variable(env_name) or "").strip()
    if value:
        return value
    secrets_dir = (settings or FleetSettings()).secrets_dir
    path = secrets_dir_path(secrets_dir, env_name)
    if path is not None:
        with contextlib.suppress(InputError):  # empty or unreadable: as if absent
            return read_secret_file(path, f"api_key_env {env_name}")
    if keyless_ok:
        return PLACEHOLDER_API_KEY
    where = f"${env_name}" + (f" or {secrets_dir}/{env_name}" if secrets_dir else "")
    raise ModelError(
        f"no API key: set the environment variable {env_name} (looked in {where}), "
        "or set the agent's base_url for a server that needs no key"
    )


def chat_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Neutral tools -> Chat Completions ``tools``."""
    return [
        {
            "type": "function",
            "function": {
                "name": tool["name"],
                "description": tool.get("description", ""),
                "parameters": tool.get("parameters") or {"type": "object", "properties": {}},
            },
        }
        for tool in tools
    ]


def responses_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Neutral tools -> Responses ``tools`` (not strict: the loop validates arguments)."""
    return [
        {
            "type": "function",
            "name": tool["name"],
            "description": tool.get("description", ""),
            "parameters": tool.get("parameters") or {"type": "object", "properties": {}},
            "strict": False,
        }
        for tool in tools
    ]


def _as_text(content: Any) -> str:
    """Message content (a string, text parts or anything JSON) as plain text."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and "text" in p for p in content):
        return "".join(str(p["text"]) for p in content)
    return json.dumps(content)


def chat_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """History -> Chat Completions ``messages``: already that shape; copied, and keys other
    than the wire's (bookkeeping a caller may keep in its history) left out."""
    out = []
    for original in messages:
        message = {k: v for k, v in original.items() if k in CHAT_MESSAGE_KEYS}
        role = message.get("role")
        if role == "tool":
            message["content"] = _as_text(message.get("content"))
        elif (
            role == "assistant" and message.get("content") is None and not message.get("tool_calls")
        ):
            message["content"] = ""
        out.append(message)
    return out


def responses_input(messages: list[dict[str, Any]]) -> tuple[str | None, list[dict[str, Any]]]:
    """History -> Responses ``(instructions, input)``.

    System (and developer) messages become the instructions; an assistant's tool calls become
    ``function_call`` items and tool results ``function_call_output`` items.
    """
    instructions: list[str] = []
    items: list[dict[str, Any]] = []
    for message in messages:
        role = message.get("role")
        if role in ("system", "developer"):
            instructions.append(_as_text(message.get("content")))
        elif role == "user":
            items.append(
                {"type": "message", "role": "user", "content": _as_text(message.get("content"))}
            )
        elif role == "assistant":
            text = _as_text(message.get("content"))
            if text:
                items.append({"type": "message", "role": "assistant", "content": text})
            for call in message.get("tool_calls") or []:
                function = call.get("function") or {}
                items.append(
                    {
                        "type": "function_call",
                        "call_id": call["id"],
                        "name": function.get("name", ""),
                        "arguments": function.get("arguments") or "",
                    }
                )
        elif role == "tool":
            items.append(
                {
                    "type": "function_call_output",
                    "call_id": message["tool_call_id"],
                    "output": _as_text(message.get("content")),
                }
            )
        else:
            raise ModelError(f"cannot convert a message with role {role!r} for the Responses API")
    return ("\n\n".join(instructions) if instructions else None), items


def _retry_after_s(headers: Any) -> float | None:
    """Seconds the server asked us to wait (``retry-after-ms``, ``retry-after``), if any."""
    if headers is None:
        return None
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class _Transient(FleetError):
    """A failure worth retrying; ``reason`` is safe to show."""

    def __init__(self, reason: str, retry_after_s: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s


class _OpenAIModel:
    """What both clients share: the SDK client, key handling, retries and usage."""

    api: str = ""

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        temperature: float | None = None,
        stream: bool = False,
        retry: RetryPolicy | None = None,
        timeout_s: float | None = None,
        sleep: Sleep = asyncio.sleep,
        settings: FleetSettings | None = None,
        api_key: str | None = None,
    ) -> None:
        """``settings``: the fleet's (secrets_dir, prices, model_timeout_s); default: this
        process's environment. ``timeout_s`` overrides ``model_timeout_s``. ``api_key``:
        the key itself (a vault secret's value); None: ``resolve_api_key(api_key_env)``."""
        self._settings = settings or FleetSettings()
        self.name = model
        self.base_url = base_url
        self.api_key_env = api_key_env
        self.temperature = temperature
        self.stream = stream
        self.retry = retry or RetryPolicy()
        self.timeout_s = self._settings.model_timeout_s if timeout_s is None else timeout_s
        self._sleep = sleep
        keyless_ok = bool(base_url or host_variable("OPENAI_BASE_URL"))
        self._api_key = api_key or resolve_api_key(
            api_key_env, keyless_ok=keyless_ok, settings=self._settings
        )
        self._placeholder_key = self._api_key == PLACEHOLDER_API_KEY
        load_prices(self._settings)  # a bad prices file fails here, not in the middle of a run
        self._client: openai.AsyncOpenAI | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None
        self.requests = 0
        """HTTP requests sent, retries included."""
        self.retries = 0
        """Requests that were retries of a failed one."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.name!r}, base_url={self.base_url!r})"

    def _openai(self) -> openai.AsyncOpenAI:
        """The SDK client, made per event loop (its connection pool belongs to one loop)."""
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:
            self._client = openai.AsyncOpenAI(
                api_key=self._api_key,
                base_url=self.base_url,
                max_retries=0,
                timeout=self.timeout_s,
            )
            self._client_loop = loop
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    def _safe(self, text: str) -> str:
        """``text`` with the API key blanked out (for messages a server may have echoed)."""
        if not self._api_key or self._placeholder_key:
            return text
        return text.replace(self._api_key, "***")

    def _usage(self, input_tokens: int, cached: int, output_tokens: int) -> Usage:
        usage = Usage(input_tokens, cached, output_tokens)
        usage.cost_usd = cost_usd(self.name, usage, self._settings)
        return usage

    def _classify(self, exc: Exception) -> _Transient | ModelError:
        """Turn an SDK or transport failure into a retryable one or a final ModelError."""
        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            reason = f"HTTP {status}: {self._safe(exc.message)}"
            if status in RETRYABLE_STATUS or status >= 500:
                return _Transient(reason, _retry_after_s(exc.response.headers))
            if status == 401 and self._placeholder_key:
                reason += f" (no key was set in ${self.api_key_env}; sent a placeholder)"
            return ModelError(f"{self.name}: {reason}")
        if isinstance(exc, openai.APITimeoutError):
            return _Transient(f"timed out after {self.timeout_s:g}s")
        if isinstance(exc, openai.APIConnectionError):
            cause = exc.__cause__
            detail = f" ({type(cause).__name__})" if cause is not None else ""
            return _Transient(f"connection error{detail}")
        if isinstance(exc, _http.TimeoutException):
            return _Transient(f"timed out after {self.timeout_s:g}s (while streaming)")
        if isinstance(exc, _http.TransportError):
            return _Transient(f"connection lost while streaming ({type(exc).__name__})")
        if isinstance(exc, openai.OpenAIError):
            return ModelError(f"{self.name}: {self._safe(str(exc))}")
        raise exc

    async def complete(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
    ) -> ModelTurn:
        waited = 0.0
        attempt = 0
        while True:
            attempt += 1
            self.requests += 1
            try:
                return await self._request(messages, tools)
            except ModelError:
                raise
            except Exception as exc:
                failure = self._classify(exc)
            if isinstance(failure, ModelError):
                raise failure from None
            retry = attempt
            if retry > self.retry.max_retries:
                raise ModelError(
                    f"{self.name}: gave up after {attempt} attempts ({waited:.1f}s waiting); "
                    f"last error: {failure.reason}"
                ) from None
            delay = failure.retry_after_s
            if delay is None:
                delay = self.retry.backoff_s(retry)
            if waited + delay > self.retry.max_total_wait_s:
                raise ModelError(
                    f"{self.name}: gave up after {attempt} attempts: waiting {delay:.1f}s more "
                    f"would pass the retry budget of {self.retry.max_total_wait_s:g}s; "
                    f"last error: {failure.reason}"
                ) from None
            log.warning(
                "%s: %s; retry %d/%d in %.2fs",
                self.name,
                failure.reason,
                retry,
                self.retry.max_retries,
                delay,
            )
            await self._sleep(delay)
            waited += delay
            self.retries += 1

    async def _request(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
    ) -> ModelTurn:
        raise NotImplementedError


class _CallSlot:
    """A tool call being assembled from streamed pieces."""

    def __init__(self) -> None:
        self.id = ""
        self.name = ""
        self.arguments: list[str] = []

    def done(self, fallback_id: str) -> ToolCall:
        return ToolCall(
            id=self.id or fallback_id, name=self.name, arguments="".join(self.arguments)
        )


class ChatCompletionsModel(_OpenAIModel):
    """A model behind ``/chat/completions``: OpenAI or any OpenAI-compatible server."""

    api = "chat"

    async def _request(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
    ) -> ModelTurn:
        kwargs: dict[str, Any] = {"model": self.name, "messages": chat_messages(messages)}
        if tools:
            kwargs["tools"] = chat_tools(tools)
        if self.temperature is not None:
            kwargs["temperature"] = self.temperature
        client = self._openai()
        if not self.stream:
            return self._turn(await client.chat.completions.create(**kwargs))
        stream = await client.chat.completions.create(
            **kwargs, stream=True, stream_options={"include_usage": True}
        )
        text: list[str] = []
        slots: dict[int, _CallSlot] = {}
        usage = Usage()
        async with stream:
            async for chunk in stream:
                if chunk.usage is not None:
                    usage = self._chat_usage(chunk.usage)
                for choice in chunk.choices or []:
                    if choice.index not in (0, None):
                        continue
                    delta = choice.delta
                    if delta is None:
                        continue
                    if delta.content:
                        text.append(delta.content)
                    for position, piece in enumerate(delta.tool_calls or []):
                        index = piece.index if piece.index is not None else position
                        slot = slots.setdefault(index, _CallSlot())
                        if piece.id:
                            slot.id = piece.id
                        if piece.function is not None:
                            if piece.function.name and not slot.name:
                                slot.name = piece.function.name
                            if piece.function.arguments:
                                slot.arguments.append(piece.function.arguments)
        calls = [slots[i].done(f"call_{n}") for n, i in enumerate(sorted(slots), 1)]
        return ModelTurn(text="".join(text) or None, tool_calls=calls, usage=usage)

    def _chat_usage(self, usage: Any) -> Usage:
        details = getattr(usage, "prompt_tokens_details", None)
        cached = getattr(details, "cached_tokens", None) or 0
        return self._usage(usage.prompt_tokens or 0, cached, usage.completion_tokens or 0)

    def _turn(self, completion: Any) -> ModelTurn:
        if not completion.choices:
            raise ModelError(f"{self.name}: the response had no choices")
        message = completion.choices[0].message
        calls = []
        for n, call in enumerate(message.tool_calls or [], 1):
            function = getattr(call, "function", None)
            if function is None:
                continue  # not a function call (e.g. a custom tool); we offer none
            calls.append(
                ToolCall(
                    id=call.id or f"call_{n}", name=function.name, arguments=function.arguments
                )
            )
        usage = self._chat_usage(completion.usage) if completion.usage else Usage()
        return ModelTurn(text=message.content or None, tool_calls=calls, usage=usage)


class ResponsesModel(_OpenAIModel):
    """A model behind OpenAI's Responses API (``/responses``), sent the whole history each turn."""

    api = "responses"

    async def _request(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
    ) -> ModelTurn:
        instructions, items = responses_input(messages)
        kwargs: dict[str, Any] = {"model": self.name, "input": items, "store": False}
        if instructions is not None:
            kwargs["instructions"] = instructions
        if tools:
            kwargs["tools"] = responses_tools(tools)
        if self.temperature is not None:
            kwargs["temperature"] = self.temperature
        client = self._openai()
        if not self.stream:
            return self._turn(await client.responses.create(**kwargs))
        stream = await client.responses.create(**kwargs, stream=True)
        text: list[str] = []
        slots: dict[int, _CallSlot] = {}
        final: Any = None
        async with stream:
            async for event in stream:
                kind = event.type
                if kind == "response.output_text.delta":
                    text.append(event.delta)
                elif kind in ("response.output_item.added", "response.output_item.done"):
                    item = event.item
                    if item.type == "function_call":
                        slot = slots.setdefault(event.output_index, _CallSlot())
                        slot.id, slot.name = item.call_id, item.name
                        if kind == "response.output_item.done" or item.arguments:
                            slot.arguments = [item.arguments or ""]
                elif kind == "response.function_call_arguments.delta":
                    slots.setdefault(event.output_index, _CallSlot()).arguments.append(event.delta)
                elif kind == "response.function_call_arguments.done":
                    slots.setdefault(event.output_index, _CallSlot()).arguments = [event.arguments]
                elif kind in ("response.completed", "response.incomplete"):
                    final = event.response
                elif kind == "response.failed":
                    error = event.response.error
                    detail = f"{error.code}: {error.message}" if error else "no detail"
                    raise ModelError(f"{self.name}: the response failed ({self._safe(detail)})")
                elif kind == "error":
                    raise ModelError(f"{self.name}: stream error: {self._safe(event.message)}")
        if not text and not slots and final is not None:
            return self._turn(final)  # a server that sent only the finished response
        usage = self._responses_usage(final.usage) if final is not None and final.usage else Usage()
        calls = [slots[i].done(f"call_{n}") for n, i in enumerate(sorted(slots), 1)]
        return ModelTurn(text="".join(text) or None, tool_calls=calls, usage=usage)

    def _responses_usage(self, usage: Any) -> Usage:
        details = getattr(usage, "input_tokens_details", None)
        cached = getattr(details, "cached_tokens", None) or 0
        return self._usage(usage.input_tokens or 0, cached, usage.output_tokens or 0)

    def _turn(self, response: Any) -> ModelTurn:
        text: list[str] = []
        calls: list[ToolCall] = []
        for item in response.output or []:
            if item.type == "message":
                text.extend(p.text for p in item.content if p.type == "output_text")
            elif item.type == "function_call":
                calls.append(ToolCall(id=item.call_id, name=item.name, arguments=item.arguments))
        usage = self._responses_usage(response.usage) if response.usage else Usage()
        return ModelTurn(text="".join(text) or None, tool_calls=calls, usage=usage)


def make_api_model(
    agent: AgentSpec, settings: FleetSettings | None = None, api_key: str | None = None
) -> ModelClient:
    """The client of an OpenAI-compatible API for an agent, from its fields and the fleet's
    ``settings`` (secrets_dir, prices, model_timeout_s; default: this process's environment).

    ``api`` picks ``ChatCompletionsModel`` or ``ResponsesModel``; the key is ``api_key``
    (the value of the agent's ``api_key_secret``, given with the session), else it comes
    from ``resolve_api_key`` (``agent.api_key_env``); an agent that names a secret without
    its value given is refused. When the agent sets no ``base_url`` the openai client
    itself reads ``OPENAI_BASE_URL`` (then defaults to api.openai.com).
    """
    if agent.api_key_secret and not api_key:
        raise ModelError(
            f"agent {agent.name!r}: the value of its secret {agent.api_key_secret!r} was not "
            "given to this session"
        )
    cls = ResponsesModel if agent.api == "responses" else ChatCompletionsModel
    return cls(
        agent.model,
        base_url=agent.base_url,
        api_key_env=agent.api_key_env,
        temperature=agent.temperature,
        stream=agent.stream,
        settings=settings,
        api_key=api_key,
    )
