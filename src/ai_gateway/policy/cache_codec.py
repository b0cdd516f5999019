"""The cache's data: the canonical form of a request (for the key), stored answers as versioned JSON,
and the two ways an answer moves between its whole and its streamed shape.

`replay_events` turns a stored answer into the events a provider would have streamed: StreamStart,
the prompt's usage, text in word-sized deltas, each tool call as a head (id, name) then argument
fragments, native blocks as start/delta/stop, the full UsageEvent, StreamEnd; so every dialect's stream
renderer emits a replay exactly as it emits a live answer. `StreamRecorder` does the reverse for a
live stream, so a streamed answer can be stored too; it yields nothing for a stream that did not end
cleanly.
"""

from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson

from ai_gateway.types import (
    ChatRequest,
    ChatResponse,
    ImagePart,
    NativeEvent,
    NativePart,
    Part,
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
    "CacheHit",
    "StreamRecorder",
    "cacheable",
    "canonical_json",
    "canonical_request",
    "decode_entry",
    "encode_entry",
    "replay_events",
]

_ENTRY_VERSION = 1
# Request fields that never change the answer; everything else is part of the key, including fields
# added to ChatRequest later (a new field can only split entries, never merge two different requests).
_NOT_IN_KEY = frozenset({"stream", "include_usage", "user"})
_CACHEABLE_FINISH = frozenset({"stop", "length", "tool_calls"})
_PARTS: dict[str, type[Part]] = {cls.__name__: cls for cls in (TextPart, ImagePart, NativePart)}
_WORDS = re.compile(r"\s*\S+")
_ARGUMENT_CHUNK = 24


@dataclass(frozen=True, slots=True)
class CacheHit:
    response: ChatResponse
    provider: str  # the target that produced the answer, for rendering and the ledger's "cost saved"
    model: str
    stored_at: float  # Unix time

    @property
    def age_s(self) -> float:
        return max(0.0, time.time() - self.stored_at)


def canonical_request(request: ChatRequest) -> dict[str, Any]:
    """Every answer-changing field, as plain JSON values; dataclasses tagged with their type."""
    return {
        name: _plain(getattr(request, name)) for name in _field_names(ChatRequest) if name not in _NOT_IN_KEY
    }


def canonical_json(head: list[Any], request: ChatRequest) -> bytes:
    """`orjson.dumps([*head, canonical_request(request)], option=OPT_SORT_KEYS)`, byte for byte, without
    building the plain copy first: orjson walks the dataclasses itself and hands each to `_tagged`
    (a third of the cost). Raises TypeError where orjson cannot encode a value (integers beyond 64 bits)."""
    fields = {name: getattr(request, name) for name in _REQUEST_KEY_FIELDS}
    return orjson.dumps([*head, fields], default=_tagged, option=_KEY_OPTIONS)


# Field names per dataclass, looked up once: `dataclasses.fields()` on every request showed in profiles.
_FIELD_NAMES: dict[type, tuple[str, ...]] = {}
_SCALARS = (str, int, float, bool, type(None))


def _field_names(cls: type) -> tuple[str, ...]:
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return names


_KEY_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_DATACLASS
_REQUEST_KEY_FIELDS = tuple(name for name in _field_names(ChatRequest) if name not in _NOT_IN_KEY)


def _tagged(value: object) -> Any:
    """orjson's `default` for the key: what `_plain` makes of a dataclass or a Decimal, one level deep."""
    cls = type(value)
    names = _FIELD_NAMES.get(cls)
    if names is None:
        if isinstance(value, Decimal):
            return str(value)
        if not dataclasses.is_dataclass(value) or isinstance(value, type):
            raise TypeError(f"cannot encode {cls.__name__} in a cache key")
        names = _field_names(cls)
    return {"@": cls.__name__, **{name: getattr(value, name) for name in names}}


def _plain(value: object) -> Any:
    if type(value) in _SCALARS:
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        cls = type(value)
        fields = {name: _plain(getattr(value, name)) for name in _field_names(cls)}
        return {"@": cls.__name__, **fields}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Decimal):
        return str(value)
    return value


def cacheable(response: ChatResponse) -> bool:
    """A complete, successful answer: it finished normally and said something."""
    return response.finish_reason in _CACHEABLE_FINISH and bool(response.content or response.tool_calls)


# --- stored entries ----------------------------------------------------------------------------------


def encode_entry(response: ChatResponse, provider: str, model: str) -> bytes:
    body: dict[str, Any] = {
        name: getattr(response, name)
        for name in _field_names(ChatResponse)
        if name not in ("content", "tool_calls", "usage")
    }
    body["content"] = [{"kind": type(p).__name__, **_fields(p)} for p in response.content]
    body["tool_calls"] = [_fields(c) for c in response.tool_calls]
    body["usage"] = None if response.usage is None else _fields(response.usage)
    entry = {"v": _ENTRY_VERSION, "provider": provider, "model": model, "at": time.time(), "response": body}
    return orjson.dumps(entry, default=_json_default)


def decode_entry(raw: bytes) -> CacheHit:
    """The stored answer; ValueError if the entry is not one this version wrote."""
    try:
        entry = orjson.loads(raw)
        if entry.get("v") != _ENTRY_VERSION:
            raise ValueError(f"entry version {entry.get('v')!r}")
        body = dict(entry["response"])
        body["content"] = [_PARTS[p.pop("kind")](**p) for p in body["content"]]
        body["tool_calls"] = [ToolCall(**c) for c in body["tool_calls"]]
        if body["usage"] is not None:
            usage = body["usage"]
            cost = usage.get("cost_usd")
            body["usage"] = Usage(**{**usage, "cost_usd": None if cost is None else Decimal(cost)})
        response = ChatResponse(**body)
        return CacheHit(response, str(entry["provider"]), str(entry["model"]), float(entry["at"]))
    except (KeyError, TypeError, AttributeError, InvalidOperation) as exc:
        raise ValueError(f"malformed cache entry ({type(exc).__name__})") from exc


def _fields(obj: Any) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in _field_names(type(obj))}


def _json_default(value: object) -> str:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in the cache")


# --- replay and record -------------------------------------------------------------------------------


def replay_events(response: ChatResponse) -> list[StreamEvent]:
    """The stream a provider would have sent for `response`."""
    events: list[StreamEvent] = [StreamStart(response.id, response.model)]
    if response.usage is not None:
        # The prompt's side of the usage is known before any text, and Anthropic reports it then (in
        # `message_start`): so does a replay. The answer's side follows at the end, as live.
        prompt_side = dataclasses.replace(response.usage, output_tokens=0, reasoning_tokens=0, cost_usd=None)
        events.append(UsageEvent(prompt_side))
    for part in response.content:
        if isinstance(part, TextPart):
            events += (TextDelta(chunk) for chunk in _text_chunks(part.text))
        elif isinstance(part, NativePart):
            events += _native_events(part)
    for index, call in enumerate(response.tool_calls):
        events.append(ToolCallDelta(index, id=call.id, name=call.name))
        args = call.arguments
        events += (
            ToolCallDelta(index, arguments=args[i : i + _ARGUMENT_CHUNK])
            for i in range(0, len(args), _ARGUMENT_CHUNK)
        )
    if response.usage is not None:
        events.append(UsageEvent(response.usage))
    events.append(StreamEnd(response.finish_reason, response.usage, response.stop_sequence))
    return events


def _text_chunks(text: str) -> list[str]:
    """Word-sized pieces (leading whitespace attached, as tokenizers do) that join back to `text`."""
    chunks = _WORDS.findall(text)
    rest = text[sum(map(len, chunks)) :]
    if rest:
        chunks.append(rest)  # trailing whitespace
    return chunks


def _native_events(part: NativePart) -> list[StreamEvent]:
    block = part.block
    if part.family == "anthropic" and block.get("type") == "thinking":
        # Anthropic streams a thinking block empty, then its text and signature as deltas.
        head = {**block, "thinking": "", "signature": ""}
        deltas = [
            {"type": "thinking_delta", "thinking": block.get("thinking", "")},
            {"type": "signature_delta", "signature": block.get("signature", "")},
        ]
    else:
        head, deltas = block, []
    return [
        NativeEvent(part.family, {"type": "content_block_start", "content_block": head}),
        *(NativeEvent(part.family, {"type": "content_block_delta", "delta": d}) for d in deltas),
        NativeEvent(part.family, {"type": "content_block_stop"}),
    ]


class StreamRecorder:
    """Collects a live stream's events into the answer they add up to, for storing it."""

    __slots__ = ("_broken", "_calls", "_content", "_end", "_id", "_model", "_native", "_usage")

    def __init__(self) -> None:
        self._id = ""
        self._model = ""
        self._content: list[Part] = []
        self._calls: dict[int, ToolCall] = {}
        self._native: NativePart | None = None  # the native block being streamed
        self._usage: Usage | None = None
        self._end: StreamEnd | None = None
        self._broken = False

    def feed(self, event: StreamEvent) -> None:
        if isinstance(event, TextDelta):
            last = self._content[-1] if self._content else None
            if isinstance(last, TextPart) and last.extra is None:
                last.text += event.text
            else:
                self._content.append(TextPart(event.text))
        elif isinstance(event, ToolCallDelta):
            call = self._calls.setdefault(event.index, ToolCall(event.id or "", event.name or "", ""))
            call.id, call.name = call.id or event.id or "", call.name or event.name or ""
            call.arguments += event.arguments
        elif isinstance(event, NativeEvent):
            self._feed_native(event)
        elif isinstance(event, UsageEvent):
            self._usage = event.usage
        elif isinstance(event, StreamStart):
            self._id, self._model = event.id, event.model
        elif isinstance(event, StreamEnd):
            self._end = event

    def _feed_native(self, event: NativeEvent) -> None:
        kind = event.data.get("type")
        if kind == "content_block_start":
            self._native = NativePart(event.family, dict(event.data.get("content_block") or {}))
            self._content.append(self._native)
        elif kind == "content_block_delta" and self._native is not None:
            delta = event.data.get("delta") or {}
            block = self._native.block
            if delta.get("type") == "thinking_delta":
                block["thinking"] = block.get("thinking", "") + delta.get("thinking", "")
            elif delta.get("type") == "signature_delta":
                block["signature"] = block.get("signature", "") + delta.get("signature", "")
            else:
                self._broken = True  # a delta this recorder cannot fold: do not store a guess
        elif kind == "content_block_stop":
            self._native = None

    @property
    def usage(self) -> Usage | None:
        """The latest usage seen, even for a stream that did not finish (for settling limits)."""
        return self._end.usage if self._end is not None and self._end.usage else self._usage

    def response(self) -> ChatResponse | None:
        """The whole answer, or None if the stream did not end (or cannot be stored faithfully)."""
        if self._end is None or self._broken or not self._id:
            return None
        calls = [self._calls[i] for i in sorted(self._calls)]
        usage = self._end.usage or self._usage
        return ChatResponse(
            self._id,
            self._model,
            self._content,
            calls,
            self._end.finish_reason,
            usage,
            self._end.stop_sequence,
        )
