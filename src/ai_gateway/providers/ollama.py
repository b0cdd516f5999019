"""Ollama's native chat API, `POST /api/chat`, streamed as NDJSON.

Wire reference: https://github.com/ollama/ollama/blob/main/docs/api.md#generate-a-chat-completion and
the `ollama` Python SDK types (`Message`, `ChatResponse`). The native API is used rather than Ollama's
OpenAI-compatible `/v1` because it reports `done_reason` and token counts on every answer.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

import orjson

from ai_gateway.errors import InvalidRequestError, ProviderError, UnsupportedFeatureError, scrub
from ai_gateway.providers._carry import error_marked, refuse_foreign
from ai_gateway.providers._http import UpstreamResponse
from ai_gateway.providers.base import Provider
from ai_gateway.types import (
    ChatRequest,
    ChatResponse,
    FinishReason,
    ImagePart,
    Message,
    StreamEnd,
    StreamEvent,
    StreamStart,
    TextDelta,
    TextPart,
    ToolCall,
    ToolCallDelta,
    Usage,
)

__all__ = ["OllamaProvider"]

# Sampling fields of other dialects that Ollama takes as `options` of the same name:
# https://github.com/ollama/ollama/blob/main/docs/api.md#generate-request-with-options
_OPTIONS = {"anthropic": ("top_k",), "openai": ("presence_penalty", "frequency_penalty")}
_MAPS = frozenset(f"{family}.{key}" for family, keys in _OPTIONS.items() for key in keys)


class OllamaProvider(Provider):
    family = "ollama"

    def check(self, request: ChatRequest) -> None:
        refuse_foreign(request, self.name, self.family, _MAPS)
        choice = request.tool_choice
        if request.tools and choice is not None:
            # Ollama has no tool_choice: the model always decides for itself.
            if choice.mode in ("required", "named"):
                what = "a required tool call" if choice.mode == "required" else "a named tool_choice"
                raise UnsupportedFeatureError(
                    f"{self.name} cannot force {what}: Ollama has no tool_choice; use 'auto' or 'none'",
                    param="tool_choice",
                )
            if choice.parallel is False and choice.mode != "none":
                raise UnsupportedFeatureError(
                    f"{self.name} cannot turn off parallel tool calls: Ollama has no such switch",
                    param="parallel_tool_calls",
                )
        for i, msg in enumerate(request.messages):
            for j, part in enumerate(msg.content):
                if isinstance(part, ImagePart) and part.data is None and not _is_data_url(part.url):
                    raise UnsupportedFeatureError(
                        f"{self.name} cannot take images by http(s) URL; send them inline as base64 or "
                        "a data: URL",
                        param=f"messages[{i}].content[{j}]",
                    )
            for j, call in enumerate(msg.tool_calls):
                _parse_arguments(call, f"messages[{i}].tool_calls[{j}].function.arguments")

    # --- going out ----------------------------------------------------------------------------------
    def _url(self, stream: bool) -> str:
        return f"{self.settings.base_url}/api/chat"

    def _headers(self) -> dict[str, str]:
        headers = dict(self.settings.headers)
        if self.settings.api_key:  # Ollama itself needs none; a proxy or ollama.com in front may
            headers["Authorization"] = f"Bearer {self.settings.api_key}"
        return headers

    def _map_request(self, request: ChatRequest, model: str, stream: bool) -> dict[str, Any]:
        # `stream` always explicit: the upstream default is true.
        payload: dict[str, Any] = {
            "model": model,
            "messages": _map_messages(request.messages),
            "stream": stream,
        }
        options: dict[str, Any] = {}
        if request.max_tokens is not None:
            options["num_predict"] = request.max_tokens
        for key in ("temperature", "top_p", "seed"):
            value = getattr(request, key)
            if value is not None:
                options[key] = value
        if request.stop:
            options["stop"] = list(request.stop)
        for family, keys in _OPTIONS.items():
            fields = request.extra.get(family, {})
            options.update((k, fields[k]) for k in keys if fields.get(k) is not None)
        fmt = request.response_format
        if fmt is not None and fmt.type == "json_object":
            payload["format"] = "json"
        elif fmt is not None and fmt.type == "json_schema":
            # Ollama constrains output to the schema itself; `name`/`strict` have no counterpart.
            payload["format"] = fmt.schema or {"type": "object"}
        # tool_choice "none" is carried by not offering the tools; "auto" is Ollama's only behaviour.
        # A tool's `strict` has no counterpart (Ollama does not constrain tool arguments).
        if request.tools and not (request.tool_choice and request.tool_choice.mode == "none"):
            payload["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": t.name,
                        "description": t.description or "",
                        "parameters": t.parameters,
                    },
                }
                for t in request.tools
            ]
        # `user` has no counterpart and does not change the answer (it is abuse-tracking metadata).
        extra = dict(request.extra.get("ollama", {}))
        options.update(extra.pop("options", {}))
        if options:
            payload["options"] = options
        payload.update((k, v) for k, v in extra.items() if k not in ("model", "messages", "stream"))
        return payload

    # --- coming back --------------------------------------------------------------------------------
    def _process_response(self, data: Any, model: str) -> ChatResponse:
        if data.get("error"):
            raise self._map_body_error(data["error"])
        message = data.get("message") or {}
        text = message.get("content") or ""
        calls = [_map_tool_call(c) for c in message.get("tool_calls") or ()]
        return ChatResponse(
            id=_new_id("chatcmpl-"),
            model=data.get("model") or model,
            content=[TextPart(text)] if text else [],
            tool_calls=calls,
            finish_reason=_map_finish(data.get("done_reason"), bool(calls)),
            usage=self._map_usage(data),
        )

    async def _process_stream(self, resp: UpstreamResponse, model: str) -> AsyncIterator[StreamEvent]:
        started = False
        tools = 0
        async for line in resp.lines():
            if not line.strip():
                continue
            chunk = orjson.loads(line)
            if chunk.get("error"):
                raise self._map_body_error(chunk["error"])
            if not started:
                started = True
                yield StreamStart(_new_id("chatcmpl-"), chunk.get("model") or model)
            message = chunk.get("message") or {}
            if message.get("content"):
                yield TextDelta(message["content"])
            # Ollama sends each tool call whole, in one chunk, never in fragments.
            for raw in message.get("tool_calls") or ():
                call = _map_tool_call(raw)
                yield ToolCallDelta(index=tools, id=call.id, name=call.name, arguments=call.arguments)
                tools += 1
            if chunk.get("done"):
                yield StreamEnd(_map_finish(chunk.get("done_reason"), tools > 0), self._map_usage(chunk))
                return
        raise ProviderError("reset", f"{self.name}: stream ended before the final `done` object")

    def _map_usage(self, data: Any) -> Usage | None:
        if "prompt_eval_count" not in data and "eval_count" not in data:
            return None
        # Ollama does not report prompt-cache hits; its KV-cache reuse is invisible on the wire.
        return Usage(
            input_tokens=data.get("prompt_eval_count") or 0, output_tokens=data.get("eval_count") or 0
        )

    def _map_body_error(self, error: Any) -> ProviderError:
        """Ollama reports failures as `{"error": "text"}`, with no code; mid-stream that means the runner
        broke, which another attempt may well survive."""
        return ProviderError(
            "status",
            f"{self.name} reported an error in its response (status 502)",
            status=502,
            upstream_message=scrub(error) if isinstance(error, str) and error else None,
        )

    # --- models -------------------------------------------------------------------------------------
    async def list_models(self, deadline: float) -> list[str]:
        if self.settings.not_configured:
            raise ProviderError("not_configured", f"{self.name}: {self.settings.not_configured}")
        url = f"{self.settings.base_url}/api/tags"
        data = await self._http.get_json(url, self._headers(), self.settings.timeouts, deadline, self.name)
        try:
            names = [str(m.get("name") or m["model"]) for m in data["models"]]
        except (KeyError, TypeError, AttributeError) as exc:
            raise ProviderError("bad_response", f"{self.name}: unexpected model list shape") from exc
        # `llama3.2:latest` is addressed as `llama3.2`; other tags stay part of the name.
        return list(dict.fromkeys(n.removesuffix(":latest") for n in names))


def _map_messages(messages: list[Message]) -> list[dict[str, Any]]:
    call_names: dict[str, str] = {}
    out: list[dict[str, Any]] = []
    for i, msg in enumerate(messages):
        text = msg.text()
        item: dict[str, Any] = {"role": msg.role, "content": error_marked(msg, text)}
        images = [_image_base64(p) for p in msg.content if isinstance(p, ImagePart)]
        if images:
            item["images"] = images
        if msg.tool_calls:
            item["tool_calls"] = [
                {"function": {"name": c.name, "arguments": _parse_arguments(c, f"messages[{i}].tool_calls")}}
                for c in msg.tool_calls
            ]
            call_names.update((c.id, c.name) for c in msg.tool_calls)
        if msg.role == "tool":
            # Ollama matches results to calls by tool name, not id (it has no call ids). Like Chat
            # Completions it has no error flag on results: the result text says so.
            name = msg.name or call_names.get(msg.tool_call_id or "")
            if name:
                item["tool_name"] = name
        out.append(item)
    return out


def _image_base64(part: ImagePart) -> str:
    """Raw base64, as Ollama wants it: a data: URL loses its `data:<type>;base64,` prefix."""
    if part.data is not None:
        return part.data
    url = part.url or ""
    if not _is_data_url(url):
        raise UnsupportedFeatureError("ollama cannot take images by http(s) URL", param="messages")
    return url.partition(",")[2]


def _is_data_url(url: str | None) -> bool:
    return url is not None and url.startswith("data:") and url.partition(",")[0].endswith(";base64")


def _parse_arguments(call: ToolCall, param: str) -> dict[str, Any]:
    """Ollama takes a tool call's arguments as a JSON object, not text."""
    try:
        value = orjson.loads(call.arguments or "{}")
    except orjson.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise InvalidRequestError(
            f"tool call {call.id!r} has arguments that are not a JSON object; Ollama needs one",
            param=param,
        )
    return value


def _map_tool_call(raw: Any) -> ToolCall:
    fn = raw["function"]
    args = fn.get("arguments")
    text = args if isinstance(args, str) else orjson.dumps(args or {}).decode()
    return ToolCall(id=raw.get("id") or _new_id("call_"), name=fn["name"], arguments=text)


def _map_finish(reason: str | None, has_tools: bool) -> FinishReason:
    # Ollama reports "stop" even when the answer is a tool call.
    if has_tools:
        return "tool_calls"
    return "length" if reason == "length" else "stop"


def _new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(12)
