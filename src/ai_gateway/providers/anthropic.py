"""Anthropic Messages API, `POST /v1/messages`.

Wire reference: https://docs.anthropic.com/en/api/messages, https://docs.anthropic.com/en/api/messages-streaming
and the anthropic-sdk-python types (`MessageParam`, `Message`, `RawMessageStreamEvent`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from ai_gateway.errors import InvalidRequestError, ProviderError, UnsupportedFeatureError, scrub
from ai_gateway.providers._carry import refuse_foreign
from ai_gateway.providers._http import UpstreamResponse
from ai_gateway.providers.base import Provider
from ai_gateway.types import (
    ChatRequest,
    ChatResponse,
    FinishReason,
    ImagePart,
    Message,
    NativeEvent,
    NativePart,
    Part,
    StreamEnd,
    StreamEvent,
    StreamStart,
    TextDelta,
    TextPart,
    Tool,
    ToolCall,
    ToolCallDelta,
    Usage,
    UsageEvent,
)

__all__ = ["AnthropicProvider"]

# `max_tokens` is required upstream. When the client gave none we ask for this much, plus any extended
# thinking budget (which must fit inside max_tokens).
DEFAULT_MAX_TOKENS = 4096

# https://docs.anthropic.com/en/build-with-claude/vision#ensuring-image-quality
_MEDIA_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})

_DROPPABLE = frozenset({"thinking", "redacted_thinking"})

_TOOL_CHOICE = {"auto": "auto", "none": "none", "required": "any", "named": "tool"}

_STOP: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",  # a server tool paused a long turn; the client may continue it
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
# What `POST /v1/messages/count_tokens` takes: https://docs.anthropic.com/en/api/messages-count-tokens
_COUNT_KEYS = frozenset(
    {
        "model",
        "messages",
        "system",
        "tools",
        "tool_choice",
        "thinking",
        "cache_control",
        "output_config",
        "speed",
    }
)
# Headers a client may have forwarded: beta flags (Claude Code sends several).
_FORWARD_HEADERS = ("anthropic-beta",)


class AnthropicProvider(Provider):
    family = "anthropic"

    def check(self, request: ChatRequest) -> None:
        refuse_foreign(request, self.name, self.family)
        fmt = request.response_format
        if fmt is not None and fmt.type == "json_object":
            # Structured outputs need a schema, and an object schema there must close its properties
            # (https://docs.anthropic.com/en/docs/build-with-claude/structured-outputs), so "any JSON
            # object" has no counterpart.
            raise UnsupportedFeatureError(
                f"{self.name} has no schema-less JSON mode (response_format json_object); send "
                "response_format json_schema with a schema instead",
                param="response_format",
            )
        if request.seed is not None:
            raise UnsupportedFeatureError(f"{self.name} does not take a sampling seed", param="seed")
        if request.temperature is not None and request.temperature > 1:
            raise UnsupportedFeatureError(
                f"{self.name} takes temperature from 0 to 1, not {request.temperature}", param="temperature"
            )
        for i, msg in enumerate(request.messages):
            for j, part in enumerate(msg.content):
                if isinstance(part, ImagePart):
                    self._check_image(part, msg, f"messages[{i}].content[{j}]")
            for j, call in enumerate(msg.tool_calls):
                _parse_input(call, f"messages[{i}].tool_calls[{j}].function.arguments")

    def _check_image(self, part: ImagePart, msg: Message, param: str) -> None:
        if msg.role in ("system", "assistant"):
            raise UnsupportedFeatureError(
                f"{self.name} cannot take images in {msg.role} messages", param=param
            )
        media_type, inline = part.media_type, part.data is not None
        if not inline and part.url and part.url.startswith("data:"):
            media_type, data = _split_data_url(part.url)
            if data is None:
                raise UnsupportedFeatureError(
                    f"{self.name} takes data: URL images only base64-encoded", param=param
                )
            inline = True
        if inline and media_type not in _MEDIA_TYPES:
            raise UnsupportedFeatureError(
                f"{self.name} cannot take images of type {media_type!r}; it takes JPEG, PNG, GIF or WebP",
                param=param,
            )

    # --- going out ----------------------------------------------------------------------------------
    def _url(self, stream: bool) -> str:
        return f"{self.settings.base_url}/v1/messages"

    def _headers(self) -> dict[str, str]:
        headers = dict(self.settings.headers)
        if self.settings.api_key:
            headers["x-api-key"] = self.settings.api_key
        headers["anthropic-version"] = self.settings.anthropic_version
        return headers

    def _request_headers(self, request: ChatRequest) -> dict[str, str]:
        sent = request.extra.get("anthropic-headers", {})
        return {k: str(sent[k]) for k in _FORWARD_HEADERS if sent.get(k)}

    def _map_request(self, request: ChatRequest, model: str, stream: bool) -> dict[str, Any]:
        extra = request.extra.get("anthropic", {})
        max_tokens = request.max_tokens
        if max_tokens is None:
            thinking = extra.get("thinking")
            budget = thinking.get("budget_tokens") if isinstance(thinking, dict) else None
            max_tokens = DEFAULT_MAX_TOKENS + (budget if isinstance(budget, int) else 0)
        system, messages = _map_messages(request.messages)
        payload: dict[str, Any] = {"model": model, "max_tokens": max_tokens}
        if system:
            payload["system"] = system
        payload["messages"] = messages
        if stream:
            payload["stream"] = True
        if request.temperature is not None:
            payload["temperature"] = request.temperature
        if request.top_p is not None:
            payload["top_p"] = request.top_p
        if request.stop:
            payload["stop_sequences"] = list(request.stop)
        if request.user:
            payload["metadata"] = {"user_id": request.user}
        if request.tools:
            payload["tools"] = [_map_tool(t) for t in request.tools]
            choice = request.tool_choice
            if choice is not None:
                wire: dict[str, Any] = {"type": _TOOL_CHOICE[choice.mode]}
                if choice.mode == "named":
                    wire["name"] = choice.name
                if choice.parallel is False and choice.mode != "none":
                    wire["disable_parallel_tool_use"] = True
                payload["tool_choice"] = wire
        # Anthropic-only fields (`thinking`, `top_k`, `metadata`, ...) pass through as given; the model,
        # the conversation and the stream switch stay the gateway's.
        payload.update((k, v) for k, v in extra.items() if k not in ("model", "messages", "stream"))
        fmt = request.response_format
        if fmt is not None and fmt.type == "json_schema":
            # Structured outputs: https://docs.anthropic.com/en/docs/build-with-claude/structured-outputs
            config = dict(payload.get("output_config") or {})
            config["format"] = {"type": "json_schema", "schema": fmt.schema or {}}
            payload["output_config"] = config
        return payload

    # --- coming back --------------------------------------------------------------------------------
    def _process_response(self, data: Any, model: str) -> ChatResponse:
        if data.get("type") == "error":
            raise self._map_body_error(data.get("error"))
        content: list[Part] = []
        calls: list[ToolCall] = []
        for block in data["content"]:
            kind = block.get("type")
            if kind == "text":
                content.append(TextPart(block["text"]))
            elif kind == "tool_use":
                calls.append(
                    ToolCall(block["id"], block["name"], orjson.dumps(block.get("input") or {}).decode())
                )
            else:  # thinking, server-tool blocks: an Anthropic client needs them back verbatim
                content.append(NativePart(self.family, block, droppable=kind in _DROPPABLE))
        return ChatResponse(
            id=data["id"],
            model=data.get("model") or model,
            content=content,
            tool_calls=calls,
            finish_reason=_STOP.get(data.get("stop_reason") or "end_turn", "stop"),
            usage=self._map_usage(data.get("usage") or {}),
            stop_sequence=data.get("stop_sequence"),
        )

    async def _process_stream(self, resp: UpstreamResponse, model: str) -> AsyncIterator[StreamEvent]:
        usage: dict[str, Any] = {}
        finish: FinishReason = "stop"
        stop_sequence: str | None = None
        tool_index: dict[int, int] = {}  # content block index -> n-th tool call
        native: set[int] = set()  # indices of blocks passed on verbatim (thinking, server tools)
        async for event in resp.sse():
            data = orjson.loads(event.data)
            kind = data.get("type") or event.event
            if kind == "message_start":
                message = data["message"]
                usage.update(message.get("usage") or {})
                yield StreamStart(message["id"], message.get("model") or model)
                # Input counts are known from the start; an Anthropic-dialect client gets them there too.
                yield UsageEvent(self._map_usage(usage))
            elif kind == "content_block_start":
                block = data["content_block"]
                if block.get("type") == "tool_use":
                    tool_index[data["index"]] = len(tool_index)
                    yield ToolCallDelta(tool_index[data["index"]], id=block["id"], name=block["name"])
                elif block.get("type") == "text":
                    if block.get("text"):
                        yield TextDelta(block["text"])
                else:
                    native.add(data["index"])
                    yield NativeEvent(self.family, {"type": kind, "content_block": block})
            elif kind == "content_block_delta":
                delta = data["delta"]
                if data["index"] in native:
                    yield NativeEvent(self.family, {"type": kind, "delta": delta})
                elif delta.get("type") == "text_delta" and delta.get("text"):
                    yield TextDelta(delta["text"])
                elif delta.get("type") == "input_json_delta" and delta.get("partial_json"):
                    yield ToolCallDelta(tool_index[data["index"]], arguments=delta["partial_json"])
            elif kind == "content_block_stop":
                if data.get("index") in native:
                    yield NativeEvent(self.family, {"type": kind})
            elif kind == "message_delta":
                delta = data.get("delta") or {}
                finish = _STOP.get(delta.get("stop_reason") or "end_turn", "stop")
                stop_sequence = delta.get("stop_sequence")
                # These counts are cumulative, not increments: the latest value replaces the last.
                usage.update({k: v for k, v in (data.get("usage") or {}).items() if v is not None})
                yield UsageEvent(self._map_usage(usage))
            elif kind == "message_stop":
                yield StreamEnd(finish, self._map_usage(usage), stop_sequence)
                return
            elif kind == "error":
                raise self._map_body_error(data.get("error"))
            # `ping` and event types added later are ignored, as the docs ask:
            # https://docs.anthropic.com/en/api/messages-streaming#other-events
        raise ProviderError("reset", f"{self.name}: stream ended before `message_stop`")

    def _map_usage(self, usage: Any) -> Usage:
        cached = usage.get("cache_read_input_tokens") or 0
        created = usage.get("cache_creation_input_tokens") or 0
        return Usage(
            # Anthropic's input_tokens excludes both cache counts; the canonical one includes them.
            input_tokens=(usage.get("input_tokens") or 0) + cached + created,
            output_tokens=usage.get("output_tokens") or 0,
            cached_input_tokens=cached,
            cache_creation_tokens=created,
        )

    def _map_body_error(self, error: Any) -> ProviderError:
        """An `error` event mid-stream: overloaded is 529 (as over HTTP), anything else a 500."""
        kind = error.get("type") if isinstance(error, dict) else None
        message = error.get("message") if isinstance(error, dict) else None
        status = 529 if kind == "overloaded_error" else 500
        return ProviderError(
            "status",
            f"{self.name} reported an error in its response (status {status})",
            status=status,
            upstream_message=scrub(message) if isinstance(message, str) and message else None,
        )

    async def count_tokens(self, request: ChatRequest, model: str, deadline: float) -> int | None:
        """The upstream's own count: https://docs.anthropic.com/en/api/messages-count-tokens"""
        mapped = self._map_request(request, model, stream=False)
        payload = {k: v for k, v in mapped.items() if k in _COUNT_KEYS}
        url = f"{self.settings.base_url}/v1/messages/count_tokens"
        resp = await self._post_json(url, payload, request, deadline)
        try:
            data = await resp.json()
        finally:
            resp.release()
        count = data.get("input_tokens") if isinstance(data, dict) else None
        if not isinstance(count, int) or isinstance(count, bool):
            raise ProviderError("bad_response", f"{self.name}: unexpected token count shape")
        return count

    # --- models -------------------------------------------------------------------------------------
    async def list_models(self, deadline: float) -> list[str]:
        if self.settings.not_configured:
            raise ProviderError("not_configured", f"{self.name}: {self.settings.not_configured}")
        url = f"{self.settings.base_url}/v1/models?limit=1000"
        data = await self._http.get_json(url, self._headers(), self.settings.timeouts, deadline, self.name)
        try:
            return [str(m["id"]) for m in data["data"]]
        except (KeyError, TypeError) as exc:
            raise ProviderError("bad_response", f"{self.name}: unexpected model list shape") from exc


def _map_messages(messages: list[Message]) -> tuple[str | list[dict[str, Any]], list[dict[str, Any]]]:
    """Canonical messages as (system, turns). All system text goes top-level; consecutive turns of the
    same role are merged, since Anthropic requires user and assistant turns to alternate."""
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for i, msg in enumerate(messages):
        if msg.role == "system":
            system.extend(_text_block(p) for p in msg.content if isinstance(p, TextPart) and p.text)
            continue
        blocks: list[dict[str, Any]]
        if msg.role == "tool":
            blocks = [_tool_result(msg)]
        else:
            blocks = [_map_part(p) for p in msg.content if not (isinstance(p, TextPart) and not p.text)]
            for j, call in enumerate(msg.tool_calls):
                input_ = _parse_input(call, f"messages[{i}].tool_calls[{j}].function.arguments")
                blocks.append({"type": "tool_use", "id": call.id, "name": call.name, "input": input_})
                blocks[-1].update(call.extra or {})
        if not blocks:
            continue  # Anthropic rejects empty turns; an empty message carries nothing
        role = "assistant" if msg.role == "assistant" else "user"
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    for turn in turns:
        only = turn["content"][0]
        if len(turn["content"]) == 1 and only["type"] == "text" and only.keys() == {"type", "text"}:
            turn["content"] = only["text"]
    if any(block.keys() != {"type", "text"} for block in system):
        return system, turns  # blocks carry extras such as cache_control: keep them as blocks
    return "\n\n".join(block["text"] for block in system), turns


def _text_block(part: TextPart) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "text", "text": part.text}
    if part.extra:
        block.update(part.extra)
    return block


def _map_tool(tool: Tool) -> dict[str, Any]:
    if tool.extra and tool.extra.get("type") not in (None, "custom"):
        return tool.extra  # a provider-defined tool (web_search_*, bash_*, ...), as the client sent it
    wire: dict[str, Any] = {"name": tool.name, "input_schema": tool.parameters}
    if tool.description:
        wire["description"] = tool.description
    if tool.strict is not None:
        # Strict tool use: https://docs.anthropic.com/en/docs/build-with-claude/structured-outputs
        wire["strict"] = tool.strict
    wire.update(tool.extra or {})
    return wire


def _map_part(part: Part) -> dict[str, Any]:
    if isinstance(part, TextPart):
        return _text_block(part)
    if isinstance(part, NativePart):
        return part.block
    if part.data is not None:
        source = {"type": "base64", "media_type": part.media_type, "data": part.data}
    elif part.url and part.url.startswith("data:"):
        media_type, data = _split_data_url(part.url)
        source = {"type": "base64", "media_type": media_type, "data": data}
    else:
        # Image `detail` has no counterpart: Anthropic picks the resolution itself.
        source = {"type": "url", "url": part.url}
    return {"type": "image", "source": source} | (part.extra or {})


def _tool_result(msg: Message) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": msg.tool_call_id}
    plain = all(isinstance(p, TextPart) and not p.extra for p in msg.content)
    # Tool results may carry images too, as a list of content blocks.
    block["content"] = msg.text() if plain else [_map_part(p) for p in msg.content]
    if msg.is_error:
        block["is_error"] = True
    return block


def _split_data_url(url: str) -> tuple[str | None, str | None]:
    """`data:image/png;base64,AAAA` as (media type, base64 data); data is None when not base64."""
    head, _, data = url.partition(",")
    meta = head.removeprefix("data:").split(";")
    return (meta[0] or None), (data if "base64" in meta[1:] else None)


def _parse_input(call: ToolCall, param: str) -> Any:
    """Anthropic takes a tool call's input as a JSON object, not text."""
    try:
        value = orjson.loads(call.arguments or "{}")
    except orjson.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise InvalidRequestError(
            f"tool call {call.id!r} has arguments that are not a JSON object; Anthropic needs one",
            param=param,
        )
    return value
