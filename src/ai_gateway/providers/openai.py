"""OpenAI Chat Completions, and any server that speaks it at another base URL (vLLM, LM Studio, ...).

Wire reference: https://platform.openai.com/docs/api-reference/chat and the openai-python types
(`ChatCompletion`, `ChatCompletionChunk`, `ChatCompletionMessageParam`). OpenRouter reuses this adapter
(`openrouter.py`), overriding only what differs.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any, ClassVar
from urllib.parse import urlsplit

import orjson

from ai_gateway.errors import ProviderError, UnsupportedFeatureError, scrub
from ai_gateway.providers._carry import error_marked, refuse_foreign
from ai_gateway.providers._http import HttpClient, UpstreamResponse
from ai_gateway.providers.base import Provider
from ai_gateway.settings import ProviderSettings
from ai_gateway.types import (
    ChatRequest,
    ChatResponse,
    FinishReason,
    ImagePart,
    Message,
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
    ToolChoice,
    Usage,
    UsageEvent,
)

__all__ = ["OpenAIProvider"]

# Payload keys the gateway owns: a pass-through extra must not turn off stream usage (billing) or
# swap the model or conversation.
_RESERVED = frozenset({"model", "messages", "stream", "stream_options"})

_FINISH: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",  # the deprecated pre-tools name for the same thing
    "content_filter": "content_filter",
    "error": "error",  # OpenRouter ends a failed stream with it
}


class OpenAIProvider(Provider):
    family = "openai"
    # Which `request.extra` entries are merged into the payload as they are, in this order.
    extra_keys: ClassVar[tuple[str, ...]] = ("openai",)
    # Whether TextPart.extra (e.g. Anthropic `cache_control`) is sent inside content parts. OpenAI itself
    # caches automatically and rejects unknown fields, so it is off here; OpenRouter forwards it.
    keep_part_extras: ClassVar[bool] = False
    # Fields of other dialects this adapter carries itself (`_carry.refuse_foreign`).
    maps: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, settings: ProviderSettings, http: HttpClient) -> None:
        super().__init__(settings, http)
        # api.openai.com deprecated `max_tokens` (reasoning models refuse it) in favour of
        # `max_completion_tokens`; compatible servers and OpenRouter only know `max_tokens`.
        # https://platform.openai.com/docs/api-reference/chat/create#chat-create-max_tokens
        host = urlsplit(settings.base_url).hostname
        self._max_tokens_field = "max_completion_tokens" if host == "api.openai.com" else "max_tokens"
        # api.openai.com takes at most 4 stop sequences; Anthropic clients may send more.
        # https://platform.openai.com/docs/api-reference/chat/create#chat-create-stop
        self._max_stops = 4 if host == "api.openai.com" else None

    def check(self, request: ChatRequest) -> None:
        refuse_foreign(request, self.name, self.family, self.maps)
        if self._max_stops is not None and len(request.stop) > self._max_stops:
            raise UnsupportedFeatureError(
                f"{self.name} takes at most {self._max_stops} stop sequences, not {len(request.stop)}",
                param="stop",
            )
        for i, msg in enumerate(request.messages):
            if msg.role != "user" and any(isinstance(p, ImagePart) for p in msg.content):
                raise UnsupportedFeatureError(
                    f"{self.name} cannot take images in {msg.role} messages (Chat Completions carries "
                    "images only in user messages)",
                    param=f"messages[{i}].content",
                )

    # --- going out ----------------------------------------------------------------------------------
    def _url(self, stream: bool) -> str:
        return f"{self.settings.base_url}/chat/completions"

    def _headers(self) -> dict[str, str]:
        headers = dict(self.settings.headers)
        if self.settings.api_key:
            headers["Authorization"] = f"Bearer {self.settings.api_key}"
        return headers

    def _map_request(self, request: ChatRequest, model: str, stream: bool) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "model": model,
            "messages": [self._map_message(m) for m in request.messages],
        }
        if stream:
            payload["stream"] = True
            # Always: the gateway bills every stream, whatever the client asked for.
            payload["stream_options"] = {"include_usage": True}
        if request.max_tokens is not None:
            payload[self._max_tokens_field] = request.max_tokens
        for key in ("temperature", "top_p", "seed", "user"):
            value = getattr(request, key)
            if value is not None:
                payload[key] = value
        if request.stop:
            payload["stop"] = list(request.stop)
        if request.tools:
            payload["tools"] = [_map_tool(t) for t in request.tools]
            # OpenAI rejects tool_choice / parallel_tool_calls without tools, so they only go with them.
            if request.tool_choice is not None:
                payload["tool_choice"] = _map_tool_choice(request.tool_choice)
                if request.tool_choice.parallel is not None:
                    payload["parallel_tool_calls"] = request.tool_choice.parallel
        fmt = request.response_format
        if fmt is not None and fmt.type == "json_object":
            payload["response_format"] = {"type": "json_object"}
        elif fmt is not None and fmt.type == "json_schema":
            schema: dict[str, Any] = {"name": fmt.name or "response", "schema": fmt.schema or {}}
            if fmt.strict is not None:
                schema["strict"] = fmt.strict
            payload["response_format"] = {"type": "json_schema", "json_schema": schema}
        for key in self.extra_keys:
            payload.update((k, v) for k, v in request.extra.get(key, {}).items() if k not in _RESERVED)
        return payload

    def _map_message(self, msg: Message) -> dict[str, Any]:
        out: dict[str, Any] = {"role": msg.role}
        if msg.role == "tool":
            out["tool_call_id"] = msg.tool_call_id
            out["content"] = error_marked(msg, self._map_content(msg.content, as_string=True))
            return out
        if msg.role == "assistant":
            text = msg.text()
            out["content"] = self._map_content(msg.content, as_string=True) if text else None
            if msg.tool_calls:
                out["tool_calls"] = [
                    {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                    for c in msg.tool_calls
                ]
        else:
            out["content"] = self._map_content(msg.content, as_string=msg.role == "system")
        if msg.name:
            out["name"] = msg.name
        return out

    def _map_content(self, parts: list[Part], as_string: bool) -> str | list[dict[str, Any]]:
        """A plain string when that loses nothing, else a list of content parts."""
        # Reasoning blocks of another family are dropped here; `check` refused every other native block.
        parts = [p for p in parts if not isinstance(p, NativePart)]
        extras = self.keep_part_extras and any(isinstance(p, TextPart) and _cache_mark(p) for p in parts)
        if not extras and (as_string or all(isinstance(p, TextPart) for p in parts)):
            return "".join(p.text for p in parts if isinstance(p, TextPart))
        mapped: list[dict[str, Any]] = []
        for part in parts:
            if isinstance(part, TextPart):
                block: dict[str, Any] = {"type": "text", "text": part.text}
                if self.keep_part_extras:
                    block.update(_cache_mark(part))
                mapped.append(block)
            elif isinstance(part, ImagePart):
                url = part.url or f"data:{part.media_type or 'image/png'};base64,{part.data}"
                image: dict[str, Any] = {"url": url}
                if part.detail:
                    image["detail"] = part.detail
                mapped.append({"type": "image_url", "image_url": image})
        return mapped

    # --- coming back --------------------------------------------------------------------------------
    def _process_response(self, data: Any, model: str) -> ChatResponse:
        if data.get("error"):
            # Some compatible servers (and OpenRouter) report failures inside a 200 body.
            raise self._map_body_error(data["error"])
        choice = data["choices"][0]
        message = choice["message"]
        # A refusal is the model's answer too; dropping it would leave the client with nothing.
        text = message.get("content") or message.get("refusal") or ""
        calls = [
            ToolCall(
                id=c.get("id") or _new_id("call_"),
                name=c["function"]["name"],
                arguments=c["function"].get("arguments") or "{}",
            )
            for c in message.get("tool_calls") or []
        ]
        return ChatResponse(
            id=data.get("id") or _new_id("chatcmpl-"),
            model=data.get("model") or model,
            content=[TextPart(text)] if text else [],
            tool_calls=calls,
            finish_reason=_map_finish(choice.get("finish_reason"), bool(calls)),
            usage=self._map_usage(data.get("usage")),
        )

    async def _process_stream(self, resp: UpstreamResponse, model: str) -> AsyncIterator[StreamEvent]:
        started = False
        finish: str | None = None
        saw_tools = False
        usage: Usage | None = None
        async for event in resp.sse():
            data = event.data.strip()
            if not data:
                continue
            if data == "[DONE]":
                if not started:
                    raise ProviderError("bad_response", f"{self.name}: stream ended before any chunk")
                yield StreamEnd(_map_finish(finish, saw_tools), usage)
                return
            chunk = orjson.loads(data)
            if chunk.get("error"):
                raise self._map_body_error(chunk["error"])
            if not started:
                started = True
                yield StreamStart(chunk.get("id") or _new_id("chatcmpl-"), chunk.get("model") or model)
            for choice in chunk.get("choices") or ():
                if choice.get("index", 0) != 0:
                    continue  # the gateway never asks for n > 1
                delta = choice.get("delta") or {}
                text = delta.get("content") or delta.get("refusal")
                if text:
                    yield TextDelta(text)
                for pos, call in enumerate(delta.get("tool_calls") or ()):
                    saw_tools = True
                    fn = call.get("function") or {}
                    yield ToolCallDelta(
                        index=call.get("index", pos),
                        id=call.get("id"),
                        name=fn.get("name"),
                        arguments=fn.get("arguments") or "",
                    )
                finish = choice.get("finish_reason") or finish
            if chunk.get("usage"):
                # With include_usage the last chunk carries usage and no choices; some compatible
                # servers put it on the finish chunk instead, so it is read from any chunk.
                usage = self._map_usage(chunk["usage"])
                if usage is not None:
                    yield UsageEvent(usage)
        if started and finish is not None:
            # Finished but no `[DONE]`: some compatible servers omit the terminator.
            yield StreamEnd(_map_finish(finish, saw_tools), usage)
            return
        raise ProviderError("reset", f"{self.name}: stream ended before the answer was complete")

    def _map_usage(self, usage: Any) -> Usage | None:
        if not isinstance(usage, dict):
            return None
        prompt = usage.get("prompt_tokens_details") or {}
        completion = usage.get("completion_tokens_details") or {}
        return Usage(
            input_tokens=usage.get("prompt_tokens") or 0,  # includes cached tokens
            output_tokens=usage.get("completion_tokens") or 0,  # includes reasoning tokens
            cached_input_tokens=prompt.get("cached_tokens") or 0,
            reasoning_tokens=completion.get("reasoning_tokens") or 0,
        )

    def _map_body_error(self, error: Any) -> ProviderError:
        """An `{"error": ...}` object inside a 2xx body or a stream: status from its code when numeric."""
        code = error.get("code") if isinstance(error, dict) else None
        if isinstance(code, str) and code.isdigit():
            code = int(code)
        status = code if isinstance(code, int) and 400 <= code <= 599 else 502
        message = error.get("message") if isinstance(error, dict) else error
        return ProviderError(
            "status",
            f"{self.name} reported an error in its response (status {status})",
            status=status,
            upstream_message=scrub(message) if isinstance(message, str) and message else None,
        )

    # --- models -------------------------------------------------------------------------------------
    async def list_models(self, deadline: float) -> list[str]:
        if self.settings.not_configured:
            raise ProviderError("not_configured", f"{self.name}: {self.settings.not_configured}")
        url = f"{self.settings.base_url}/models"
        data = await self._http.get_json(url, self._headers(), self.settings.timeouts, deadline, self.name)
        try:
            return [str(m["id"]) for m in data["data"]]
        except (KeyError, TypeError) as exc:
            raise ProviderError("bad_response", f"{self.name}: unexpected model list shape") from exc


def _cache_mark(part: TextPart) -> dict[str, Any]:
    """Anthropic `cache_control`, the one part extra OpenRouter passes on (to Anthropic and Gemini)."""
    mark = (part.extra or {}).get("cache_control")
    return {"cache_control": mark} if mark is not None else {}


def _map_tool(tool: Tool) -> dict[str, Any]:
    fn: dict[str, Any] = {"name": tool.name, "parameters": tool.parameters}
    if tool.description:
        fn["description"] = tool.description
    if tool.strict is not None:
        fn["strict"] = tool.strict
    return {"type": "function", "function": fn}


def _map_tool_choice(choice: ToolChoice) -> str | dict[str, Any]:
    if choice.mode == "named":
        return {"type": "function", "function": {"name": choice.name}}
    return choice.mode  # "auto" | "none" | "required" are the wire values too


def _map_finish(reason: str | None, saw_tools: bool) -> FinishReason:
    finish = _FINISH.get(reason or "stop", "stop")
    # Some compatible servers (older Ollama /v1, llama.cpp) say "stop" after emitting tool calls.
    return "tool_calls" if saw_tools and finish == "stop" else finish


def _new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(12)
