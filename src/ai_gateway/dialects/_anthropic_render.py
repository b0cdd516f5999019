"""Canonical -> Anthropic Messages wire: the Message object, the SSE event sequence, errors. Pure, no I/O.

References: https://docs.anthropic.com/en/api/messages, https://docs.anthropic.com/en/docs/build-with-claude/streaming,
https://docs.anthropic.com/en/api/errors, and anthropic-sdk-python's `types/message.py`, `usage.py`,
`raw_message_stream_event.py`.

A stream is exactly: `message_start`, then per content block `content_block_start`, its
`content_block_delta`s (`text_delta`, `input_json_delta`, or a thinking block's own deltas) and
`content_block_stop`, a `ping` after the first block opens, then `message_delta` (stop reason and
cumulative usage) and `message_stop`. Blocks never overlap, so a text delta after a tool call opens a
new block at the next index. A failure after the response started is one `event: error` and no
`message_stop`.
"""

from __future__ import annotations

from typing import Any

import orjson

from ai_gateway.errors import GatewayError, UpstreamError
from ai_gateway.types import (
    ChatResponse,
    FinishReason,
    NativeEvent,
    NativePart,
    StreamEnd,
    StreamEvent,
    StreamStart,
    TextDelta,
    TextPart,
    ToolCall,
    ToolCallDelta,
    Usage,
    UsageEvent,
)

__all__ = [
    "StreamRenderer",
    "error_type",
    "render_count",
    "render_error",
    "render_response",
    "render_usage",
    "stop_reason",
]

_FAMILY = "anthropic"
_STOP_REASONS: dict[FinishReason, str] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
    "error": "end_turn",
}
# https://docs.anthropic.com/en/api/errors#http-errors; other 4xx are invalid_request_error, as there.
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_OVERLOADED_CODES = frozenset({"upstream_overloaded", "all_providers_unavailable", "draining"})


def error_type(err: GatewayError) -> str:
    if err.code in _OVERLOADED_CODES:
        return "overloaded_error"
    found = _ERROR_TYPES.get(err.status)
    if found is not None:
        return found
    return "invalid_request_error" if 400 <= err.status < 500 else "api_error"


def render_error(err: GatewayError, request_id: str) -> dict[str, Any]:
    return {
        "type": "error",
        "error": {"type": error_type(err), "message": err.message},
        "request_id": request_id,
    }


def render_count(input_tokens: int) -> dict[str, Any]:
    return {"input_tokens": input_tokens}


def render_usage(usage: Usage | None) -> dict[str, Any]:
    """Anthropic's `input_tokens` excludes cache reads and writes; the canonical count includes them."""
    u = usage or Usage()
    return {
        "input_tokens": max(0, u.input_tokens - u.cached_input_tokens - u.cache_creation_tokens),
        "cache_creation_input_tokens": u.cache_creation_tokens,
        "cache_read_input_tokens": u.cached_input_tokens,
        "output_tokens": u.output_tokens,
    }


def stop_reason(finish: FinishReason, stop_sequence: str | None) -> str:
    # OpenAI-family and Ollama upstreams do not say which stop sequence ended the answer, so their
    # stops render as `end_turn` (https://platform.openai.com/docs/api-reference/chat/object).
    return "stop_sequence" if stop_sequence is not None and finish == "stop" else _STOP_REASONS[finish]


def _tool_input(call: ToolCall) -> Any:
    try:
        value = orjson.loads(call.arguments or "{}")
    except orjson.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise UpstreamError(
            f"The upstream model called tool '{call.name}' with arguments that are not a JSON object, "
            "which the Messages API cannot express.",
            code="upstream_bad_response",
        )
    return value


def render_response(resp: ChatResponse, message_id: str, model: str) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    for part in resp.content:
        if isinstance(part, TextPart) and part.text:
            content.append({"type": "text", "text": part.text})
        elif isinstance(part, NativePart) and part.family == _FAMILY:
            content.append(part.block)
    content += [
        {"type": "tool_use", "id": c.id, "name": c.name, "input": _tool_input(c)} for c in resp.tool_calls
    ]
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(resp.finish_reason, resp.stop_sequence),
        "stop_sequence": resp.stop_sequence,
        "usage": render_usage(resp.usage),
    }


def _event(kind: str, data: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class StreamRenderer:
    """Canonical stream events to the Messages SSE sequence (one renderer per response)."""

    __slots__ = (
        "_failed",
        "_id",
        "_index",
        "_model",
        "_open",
        "_pinged",
        "_request_id",
        "_started",
        "_tools",
        "_usage",
    )

    def __init__(self, message_id: str, model: str, request_id: str) -> None:
        self._id = message_id
        self._model = model
        self._request_id = request_id
        self._usage: Usage | None = None
        self._started = False  # message_start is sent lazily, so usage known early can go in it
        self._index = -1  # the index of the newest block
        self._open: str | None = None  # the kind of the open block: "text", "tool" or "native"
        self._tools: dict[int, int] = {}  # canonical tool call index -> block index
        self._pinged = False
        self._failed = False  # an error event was sent: nothing may follow it

    def render(self, event: StreamEvent) -> bytes:
        if self._failed:
            return b""
        if isinstance(event, TextDelta):
            if not event.text:
                return b""
            out = self._begin("text", {"type": "text", "text": ""}) if self._open != "text" else b""
            delta = {"type": "text_delta", "text": event.text}
            return out + self._delta(delta)
        if isinstance(event, ToolCallDelta):
            return self._tool(event)
        if isinstance(event, UsageEvent):
            self._usage = event.usage
            return b""
        if isinstance(event, NativeEvent):
            return self._native(event) if event.family == _FAMILY else b""
        if isinstance(event, StreamEnd):
            return self._end(event)
        if isinstance(event, StreamStart):
            return b""
        raise TypeError(f"unknown stream event {event!r}")

    def render_error(self, err: GatewayError) -> bytes:
        self._failed = True
        return _event("error", render_error(err, self._request_id))

    # --- pieces -------------------------------------------------------------------------------------
    def _message_start(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        message: dict[str, Any] = {
            "id": self._id,
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": render_usage(self._usage),
        }
        return _event("message_start", {"type": "message_start", "message": message})

    def _close(self) -> bytes:
        if self._open is None:
            return b""
        self._open = None
        return _event("content_block_stop", {"type": "content_block_stop", "index": self._index})

    def _begin(self, kind: str, block: dict[str, Any]) -> bytes:
        out = self._message_start() + self._close()
        self._index += 1
        self._open = kind
        out += _event(
            "content_block_start",
            {"type": "content_block_start", "index": self._index, "content_block": block},
        )
        if not self._pinged:
            self._pinged = True
            out += _event("ping", {"type": "ping"})
        return out

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return _event(
            "content_block_delta", {"type": "content_block_delta", "index": self._index, "delta": delta}
        )

    def _tool(self, event: ToolCallDelta) -> bytes:
        out = b""
        block = self._tools.get(event.index)
        if block is None:
            call_id = event.id or f"toolu_{self._id.removeprefix('msg_')}_{event.index}"
            tool_use = {"type": "tool_use", "id": call_id, "name": event.name or "", "input": {}}
            out = self._begin("tool", tool_use)
            self._tools[event.index] = self._index
        elif block != self._index or self._open != "tool":
            # Blocks cannot reopen. OpenAI-family, Ollama and Anthropic upstreams finish one call's
            # fragments before the next call starts; one that does not has broken its own protocol.
            err = UpstreamError(
                "The upstream interleaved the fragments of parallel tool calls, which the Messages "
                "stream cannot express.",
                code="upstream_bad_response",
            )
            return self.render_error(err)
        if event.arguments:
            out += self._delta({"type": "input_json_delta", "partial_json": event.arguments})
        return out

    def _native(self, event: NativeEvent) -> bytes:
        kind = event.data.get("type")
        if kind == "content_block_start":
            return self._begin("native", event.data["content_block"])
        if kind == "content_block_delta" and self._open == "native":
            return self._delta(event.data["delta"])
        if kind == "content_block_stop" and self._open == "native":
            return self._close()
        return b""

    def _end(self, event: StreamEnd) -> bytes:
        if event.usage is not None:
            self._usage = event.usage
        out = self._message_start() + self._close()
        if not self._pinged:
            self._pinged = True
            out += _event("ping", {"type": "ping"})
        if event.finish_reason == "error":
            err = UpstreamError("The upstream ended the answer with an error.", code="upstream_stream_error")
            return out + self.render_error(err)
        delta = {
            "type": "message_delta",
            "delta": {
                "stop_reason": stop_reason(event.finish_reason, event.stop_sequence),
                "stop_sequence": event.stop_sequence,
            },
            "usage": render_usage(self._usage),
        }
        return out + _event("message_delta", delta) + _event("message_stop", {"type": "message_stop"})
