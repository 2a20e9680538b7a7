"""A local stand-in for the OpenAI HTTP API, speaking the real wire formats.

Serves ``POST /v1/chat/completions`` and ``POST /v1/responses``, plain JSON or streamed as
server-sent events (chat chunks ending with ``data: [DONE]``; typed Responses events ending
with ``response.completed``). Tests queue replies in order: a ``Reply`` (text, tool calls,
usage) is rendered in whichever shape the request asks for, an ``ErrorReply`` answers with a
status code, body and headers. Every request is recorded (path, headers, JSON body).
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest


@dataclass
class Reply:
    text: str | None = None
    tool_calls: list[tuple[str, str, str]] = field(default_factory=list)
    """``(call_id, name, raw_arguments)`` for each call, in order."""
    input_tokens: int = 10
    cached_tokens: int = 0
    output_tokens: int = 5
    delay_s: float = 0.0
    """Wait this long before answering (to provoke client timeouts)."""
    stream_error: str | None = None
    """When streaming, fail after the first event with this message."""


@dataclass
class ErrorReply:
    status: int
    message: str = "error"
    headers: dict[str, str] = field(default_factory=dict)
    echo_auth: bool = False
    """Put the request's Authorization header in the error message (a leaky server)."""


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


_ids = itertools.count(1)


def _pieces(text: str, size: int = 4) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


class FakeOpenAI:
    def __init__(self) -> None:
        self.replies: deque[Reply | ErrorReply] = deque()
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def queue(self, *replies: Reply | ErrorReply) -> None:
        with self._lock:
            self.replies.extend(replies)

    def start(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _next(self, request: Request) -> Reply | ErrorReply:
        with self._lock:
            self.requests.append(request)
            if not self.replies:
                return ErrorReply(599, "fake server: no reply queued")
            return self.replies.popleft()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                headers = {k.lower(): v for k, v in self.headers.items()}
                path = self.path.split("?")[0]
                reply = fake._next(Request(path, headers, body))
                if isinstance(reply, ErrorReply):
                    self._error(reply, headers)
                    return
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                try:
                    if path == "/v1/chat/completions":
                        if body.get("stream"):
                            self._sse(chat_chunks(reply, body), done=True)
                        else:
                            self._json(200, chat_completion(reply, body))
                    elif path == "/v1/responses":
                        if body.get("stream"):
                            self._sse(response_events(reply, body), done=False)
                        else:
                            self._json(200, response_object(reply, body))
                    else:
                        self._error(ErrorReply(404, f"no route {path}"), headers)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test)

            def _error(self, reply: ErrorReply, headers: dict[str, str]) -> None:
                message = reply.message
                if reply.echo_auth:
                    message += f" (you sent {headers.get('authorization')})"
                error = {"message": message, "type": "test_error", "param": None, "code": None}
                self._json(reply.status, {"error": error}, reply.headers)

            def _json(self, status: int, data: Any, extra: dict[str, str] | None = None) -> None:
                raw = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(raw)))
                for name, value in (extra or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(raw)

            def _sse(self, events: Iterator[tuple[str | None, dict[str, Any]]], done: bool) -> None:
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                for name, data in events:
                    head = f"event: {name}\n" if name else ""
                    self._chunk(f"{head}data: {json.dumps(data)}\n\n")
                if done:
                    self._chunk("data: [DONE]\n\n")
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()

            def _chunk(self, text: str) -> None:
                raw = text.encode()
                self.wfile.write(f"{len(raw):x}\r\n".encode() + raw + b"\r\n")
                self.wfile.flush()

        return Handler


# --- Chat Completions shapes -------------------------------------------------------------


def _chat_usage(reply: Reply) -> dict[str, Any]:
    return {
        "prompt_tokens": reply.input_tokens,
        "completion_tokens": reply.output_tokens,
        "total_tokens": reply.input_tokens + reply.output_tokens,
        "prompt_tokens_details": {"cached_tokens": reply.cached_tokens, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
    }


def _finish_reason(reply: Reply) -> str:
    return "tool_calls" if reply.tool_calls else "stop"


def chat_completion(reply: Reply, body: dict[str, Any]) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": reply.text, "refusal": None}
    if reply.tool_calls:
        message["tool_calls"] = [
            {"id": cid, "type": "function", "function": {"name": name, "arguments": args}}
            for cid, name, args in reply.tool_calls
        ]
    return {
        "id": f"chatcmpl-{next(_ids)}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", ""),
        "system_fingerprint": "fp_fake",
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": _finish_reason(reply),
            }
        ],
        "usage": _chat_usage(reply),
    }


def chat_chunks(reply: Reply, body: dict[str, Any]) -> Iterator[tuple[None, dict[str, Any]]]:
    """Chunks as OpenAI streams them; the arguments of parallel calls are interleaved."""
    base = {
        "id": f"chatcmpl-{next(_ids)}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": body.get("model", ""),
        "system_fingerprint": "fp_fake",
    }
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

    def chunk(delta: dict[str, Any], finish: str | None = None) -> tuple[None, dict[str, Any]]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        data = {**base, "choices": [choice]}
        if include_usage:
            data["usage"] = None
        return None, data

    yield chunk({"role": "assistant", "content": "" if reply.text else None, "refusal": None})
    if reply.stream_error:
        yield None, {"error": {"message": reply.stream_error, "type": "server_error"}}
        return
    for piece in _pieces(reply.text or "") if reply.text else []:
        yield chunk({"content": piece})
    for index, (cid, name, _args) in enumerate(reply.tool_calls):
        head = {"index": index, "id": cid, "type": "function"}
        yield chunk({"tool_calls": [{**head, "function": {"name": name, "arguments": ""}}]})
    fragments = [_pieces(args, 3) for _cid, _name, args in reply.tool_calls]
    for round_ in itertools.zip_longest(*fragments):
        for index, piece in enumerate(round_):
            if piece:
                yield chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
    yield chunk({}, _finish_reason(reply))
    if include_usage:
        yield None, {**base, "choices": [], "usage": _chat_usage(reply)}


# --- Responses shapes --------------------------------------------------------------------


def _message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    content = [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
    return {
        "type": "message",
        "id": item_id,
        "status": status,
        "role": "assistant",
        "content": content if status == "completed" else [],
    }


def _call_item(item_id: str, call: tuple[str, str, str], done: bool) -> dict[str, Any]:
    cid, name, args = call
    return {
        "type": "function_call",
        "id": item_id,
        "call_id": cid,
        "name": name,
        "arguments": args if done else "",
        "status": "completed" if done else "in_progress",
    }


def response_object(
    reply: Reply, body: dict[str, Any], status: str = "completed", rid: str | None = None
) -> dict[str, Any]:
    output: list[dict[str, Any]] = []
    if status == "completed":
        if reply.text:
            output.append(_message_item("msg_0", reply.text))
        output += [_call_item(f"fc_{i}", call, True) for i, call in enumerate(reply.tool_calls)]
    usage = {
        "input_tokens": reply.input_tokens,
        "input_tokens_details": {"cached_tokens": reply.cached_tokens},
        "output_tokens": reply.output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": reply.input_tokens + reply.output_tokens,
    }
    return {
        "id": rid or f"resp_{next(_ids)}",
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "model": body.get("model", ""),
        "output": output,
        "parallel_tool_calls": True,
        "temperature": body.get("temperature"),
        "tool_choice": "auto",
        "tools": body.get("tools", []),
        "top_p": 1.0,
        "usage": usage if status == "completed" else None,
    }


def response_events(reply: Reply, body: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """The Responses streaming events, in the order the API sends them."""
    seq = itertools.count()
    rid = f"resp_{next(_ids)}"

    def event(kind: str, **fields: Any) -> tuple[str, dict[str, Any]]:
        return kind, {"type": kind, "sequence_number": next(seq), **fields}

    started = response_object(reply, body, status="in_progress", rid=rid)
    yield event("response.created", response=started)
    yield event("response.in_progress", response=started)
    if reply.stream_error:
        failed = {**started, "status": "failed"}
        failed["error"] = {"code": "server_error", "message": reply.stream_error}
        yield event("response.failed", response=failed)
        return
    index = 0
    if reply.text:
        item_id = "msg_0"
        yield event(
            "response.output_item.added",
            output_index=index,
            item=_message_item(item_id, "", "in_progress"),
        )
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        where = {"item_id": item_id, "output_index": index, "content_index": 0}
        yield event("response.content_part.added", **where, part=part)
        for piece in _pieces(reply.text):
            yield event("response.output_text.delta", **where, delta=piece, logprobs=[])
        yield event("response.output_text.done", **where, text=reply.text, logprobs=[])
        yield event("response.content_part.done", **where, part={**part, "text": reply.text})
        yield event(
            "response.output_item.done", output_index=index, item=_message_item(item_id, reply.text)
        )
        index += 1
    for call in reply.tool_calls:
        item_id = f"fc_{index}"
        yield event(
            "response.output_item.added", output_index=index, item=_call_item(item_id, call, False)
        )
        for piece in _pieces(call[2], 3):
            yield event(
                "response.function_call_arguments.delta",
                item_id=item_id,
                output_index=index,
                delta=piece,
            )
        yield event(
            "response.function_call_arguments.done",
            item_id=item_id,
            output_index=index,
            arguments=call[2],
        )
        yield event(
            "response.output_item.done", output_index=index, item=_call_item(item_id, call, True)
        )
        index += 1
    yield event("response.completed", response=response_object(reply, body, rid=rid))


@pytest.fixture(name="fake_server")
def fake_server_fixture() -> Iterator[FakeOpenAI]:
    """A running ``FakeOpenAI``; import this into a test module to use ``fake_server``."""
    server = FakeOpenAI().start()
    try:
        yield server
    finally:
        server.stop()
