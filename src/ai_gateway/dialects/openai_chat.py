"""OpenAI Chat Completions <-> canonical. Pure functions, no I/O.

Wire reference: https://platform.openai.com/docs/api-reference/chat and openai-python's
`types/chat/chat_completion*.py`. Streams: a role delta first, content/tool-call deltas, a chunk carrying
`finish_reason`, the usage chunk (`choices: []`) when `stream_options.include_usage`, then `data: [DONE]`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson

from ai_gateway.dialects._validate import (
    opt_bool,
    opt_int,
    opt_number,
    opt_str,
    reject_forbidden,
    req_str,
    type_name,
)
from ai_gateway.errors import GatewayError, InvalidRequestError, UnsupportedFeatureError
from ai_gateway.types import (
    ChatRequest,
    ChatResponse,
    ImagePart,
    Message,
    NativeEvent,
    Part,
    ResponseFormat,
    Role,
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

__all__ = [
    "StreamRenderer",
    "parse_messages",
    "parse_request",
    "render_error",
    "render_response",
    "render_usage",
]

_ROLES: dict[str, Role] = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
}
# Accepted and forwarded only to OpenAI-family upstreams (they change the output, so they are never
# dropped silently: other providers refuse them in their `check`).
_OPENAI_ONLY = (
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "reasoning_effort",
    "service_tier",
    "prediction",
    "modalities",
    "audio",
)


def parse_request(body: Any, max_messages: int, max_output_tokens: int) -> ChatRequest:
    if not isinstance(body, dict):
        raise InvalidRequestError(
            f"The request body must be a JSON object, not {type_name(body)}.", code="invalid_json"
        )
    reject_forbidden(body)
    model = req_str(body, "model")
    if not model.strip():
        raise InvalidRequestError("'model' must not be empty.", param="model", code="invalid_value")
    messages = parse_messages(body.get("messages"), max_messages)
    max_tokens = opt_int(body, "max_completion_tokens", 1, max_output_tokens)
    if max_tokens is None:
        max_tokens = opt_int(body, "max_tokens", 1, max_output_tokens)
    elif body.get("max_tokens") is not None:
        raise InvalidRequestError(
            "Set only one of 'max_tokens' and 'max_completion_tokens'.", param="max_tokens"
        )
    n = opt_int(body, "n", 1, 128)
    if n is not None and n != 1:
        raise UnsupportedFeatureError("Only n=1 is supported by the gateway.", param="n")
    stream = bool(opt_bool(body, "stream"))
    include_usage = False
    stream_options = body.get("stream_options")
    if stream_options is not None:
        if not isinstance(stream_options, dict):
            raise InvalidRequestError("'stream_options' must be an object.", param="stream_options")
        include_usage = bool(opt_bool(stream_options, "include_usage", "stream_options.include_usage"))
    req = ChatRequest(
        model=model.strip(),
        messages=messages,
        max_tokens=max_tokens,
        temperature=opt_number(body, "temperature", 0.0, 2.0),
        top_p=opt_number(body, "top_p", 0.0, 1.0),
        stop=_parse_stop(body.get("stop")),
        tools=_parse_tools(body.get("tools")),
        tool_choice=_parse_tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls")),
        response_format=_parse_response_format(body.get("response_format")),
        seed=opt_int(body, "seed", -(2**63), 2**63 - 1),
        user=opt_str(body, "user"),
        stream=stream,
        include_usage=include_usage,
    )
    extra = {k: body[k] for k in _OPENAI_ONLY if body.get(k) is not None}
    if extra:
        req.extra["openai"] = extra
    return req


def parse_messages(raw: object, max_messages: int) -> list[Message]:
    if raw is None:
        raise InvalidRequestError(
            "Missing required parameter: 'messages'.", param="messages", code="missing_required"
        )
    if not isinstance(raw, list):
        raise InvalidRequestError(
            f"Invalid type for 'messages': expected an array, but got {type_name(raw)}.",
            param="messages",
            code="invalid_type",
        )
    if not raw:
        raise InvalidRequestError("'messages' must contain at least one message.", param="messages")
    if len(raw) > max_messages:
        raise InvalidRequestError(
            f"'messages' has {len(raw)} entries; at most {max_messages} are allowed.",
            param="messages",
            code="too_many_messages",
        )
    return [_parse_message(m, f"messages[{i}]") for i, m in enumerate(raw)]


def _parse_message(raw: object, path: str) -> Message:
    if not isinstance(raw, dict):
        raise InvalidRequestError(f"'{path}' must be an object.", param=path, code="invalid_type")
    role_raw = raw.get("role")
    role = _ROLES.get(role_raw) if isinstance(role_raw, str) else None
    if role is None:
        raise InvalidRequestError(
            f"Invalid value for '{path}.role': {role_raw!r}; expected one of "
            "'system', 'developer', 'user', 'assistant', 'tool'.",
            param=f"{path}.role",
            code="invalid_value",
        )
    msg = Message(role=role, content=_parse_content(raw.get("content"), f"{path}.content", role))
    msg.name = opt_str(raw, "name", f"{path}.name")
    if role == "assistant":
        msg.tool_calls = _parse_tool_calls(raw.get("tool_calls"), f"{path}.tool_calls")
        if not msg.content and not msg.tool_calls and raw.get("content") is None:
            raise InvalidRequestError(f"'{path}' needs 'content' or 'tool_calls'.", param=f"{path}.content")
    elif raw.get("content") is None:
        raise InvalidRequestError(
            f"Missing required parameter: '{path}.content'.", param=f"{path}.content", code="missing_required"
        )
    if role == "tool":
        msg.tool_call_id = req_str(raw, "tool_call_id", f"{path}.tool_call_id")
    return msg


def _parse_content(raw: object, path: str, role: Role) -> list[Part]:
    if raw is None:
        return []
    if isinstance(raw, str):
        return [TextPart(raw)] if raw or role != "assistant" else []
    if not isinstance(raw, list):
        raise InvalidRequestError(
            f"Invalid type for '{path}': expected a string or an array of content parts, "
            f"but got {type_name(raw)}.",
            param=path,
            code="invalid_type",
        )
    parts: list[Part] = []
    for i, item in enumerate(raw):
        ppath = f"{path}[{i}]"
        if not isinstance(item, dict):
            raise InvalidRequestError(f"'{ppath}' must be an object.", param=ppath, code="invalid_type")
        kind = item.get("type")
        if kind == "text":
            parts.append(TextPart(req_str(item, "text", f"{ppath}.text")))
        elif kind == "image_url":
            if role not in ("user", "system"):
                raise InvalidRequestError(
                    f"Images are only allowed in user messages ('{ppath}').", param=ppath
                )
            image = item.get("image_url")
            if isinstance(image, str):
                image = {"url": image}
            if not isinstance(image, dict):
                raise InvalidRequestError(
                    f"'{ppath}.image_url' must be an object.", param=f"{ppath}.image_url"
                )
            url = req_str(image, "url", f"{ppath}.image_url.url")
            parts.append(_image_from_url(url, f"{ppath}.image_url.url", opt_str(image, "detail")))
        elif kind == "refusal" and role == "assistant":
            parts.append(TextPart(req_str(item, "refusal", f"{ppath}.refusal")))
        else:
            raise UnsupportedFeatureError(
                f"Content part type {kind!r} at '{ppath}' is not supported; use 'text' or 'image_url'.",
                param=f"{ppath}.type",
            )
    return parts


def _image_from_url(url: str, path: str, detail: str | None) -> ImagePart:
    if url.startswith("data:"):
        header, sep, data = url.partition(",")
        if not sep or ";base64" not in header:
            raise InvalidRequestError(f"'{path}' is not a base64 data URL.", param=path)
        return ImagePart(data=data, media_type=header[5:].split(";")[0] or None, detail=detail)
    if url.startswith(("http://", "https://")):
        return ImagePart(url=url, detail=detail)
    raise InvalidRequestError(f"'{path}' must be an http(s) URL or a base64 data URL.", param=path)


def _parse_tool_calls(raw: object, path: str) -> list[ToolCall]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise InvalidRequestError(f"'{path}' must be an array.", param=path, code="invalid_type")
    calls: list[ToolCall] = []
    for i, item in enumerate(raw):
        cpath = f"{path}[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("function"), dict):
            raise InvalidRequestError(f"'{cpath}.function' must be an object.", param=f"{cpath}.function")
        fn = item["function"]
        calls.append(
            ToolCall(
                id=req_str(item, "id", f"{cpath}.id"),
                name=req_str(fn, "name", f"{cpath}.function.name"),
                arguments=opt_str(fn, "arguments", f"{cpath}.function.arguments") or "{}",
            )
        )
    return calls


def _parse_stop(raw: object) -> list[str]:
    if raw is None:
        return []
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, list) and all(isinstance(s, str) for s in raw):
        if len(raw) > 4:
            raise InvalidRequestError("'stop' may hold at most 4 sequences.", param="stop")
        return list(raw)
    raise InvalidRequestError(
        "Invalid type for 'stop': expected a string or an array of strings.",
        param="stop",
        code="invalid_type",
    )


def _parse_tools(raw: object) -> list[Tool]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise InvalidRequestError("'tools' must be an array.", param="tools", code="invalid_type")
    tools: list[Tool] = []
    for i, item in enumerate(raw):
        path = f"tools[{i}]"
        if not isinstance(item, dict) or item.get("type", "function") != "function":
            raise UnsupportedFeatureError(
                f"'{path}' must be a tool of type 'function'.", param=f"{path}.type"
            )
        fn = item.get("function")
        if not isinstance(fn, dict):
            raise InvalidRequestError(f"'{path}.function' must be an object.", param=f"{path}.function")
        params = fn.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise InvalidRequestError(
                f"'{path}.function.parameters' must be a JSON Schema object.",
                param=f"{path}.function.parameters",
            )
        tools.append(
            Tool(
                name=req_str(fn, "name", f"{path}.function.name"),
                description=opt_str(fn, "description", f"{path}.function.description"),
                parameters=params if params is not None else {"type": "object", "properties": {}},
                strict=opt_bool(fn, "strict", f"{path}.function.strict"),
            )
        )
    return tools


def _parse_tool_choice(raw: object, parallel: object) -> ToolChoice | None:
    if parallel is not None and not isinstance(parallel, bool):
        raise InvalidRequestError("'parallel_tool_calls' must be a boolean.", param="parallel_tool_calls")
    if raw is None:
        return ToolChoice(parallel=parallel) if parallel is not None else None
    if raw in ("auto", "none", "required"):
        return ToolChoice(mode=raw, parallel=parallel)
    if isinstance(raw, dict) and isinstance(raw.get("function"), dict):
        name = raw["function"].get("name")
        if isinstance(name, str) and name:
            return ToolChoice(mode="named", name=name, parallel=parallel)
    raise InvalidRequestError(
        "'tool_choice' must be 'auto', 'none', 'required' or "
        '{"type": "function", "function": {"name": ...}}.',
        param="tool_choice",
    )


def _parse_response_format(raw: object) -> ResponseFormat | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise InvalidRequestError("'response_format' must be an object.", param="response_format")
    kind = raw.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return ResponseFormat(type="json_object")
    if kind == "json_schema":
        spec = raw.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
            raise InvalidRequestError(
                "'response_format.json_schema' must be an object with a 'schema'.",
                param="response_format.json_schema",
            )
        return ResponseFormat(
            type="json_schema",
            schema=spec.get("schema") or {},
            name=opt_str(spec, "name", "response_format.json_schema.name") or "response",
            strict=opt_bool(spec, "strict", "response_format.json_schema.strict"),
        )
    raise InvalidRequestError(
        f"Invalid value for 'response_format.type': {kind!r}; "
        "expected 'text', 'json_object' or 'json_schema'.",
        param="response_format.type",
    )


# --- rendering ---------------------------------------------------------------------------------------


def render_usage(usage: Usage | None) -> dict[str, Any] | None:
    if usage is None:
        return None
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_input_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


def _render_tool_calls(calls: list[ToolCall]) -> list[dict[str, Any]]:
    return [
        {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
        for c in calls
    ]


def render_response(
    resp: ChatResponse, completion_id: str, model: str, cost_usd: float | None = None
) -> dict[str, Any]:
    """`cost_usd`, when known, rides in `usage` (CONTRACT §4); SDKs keep unknown usage fields."""
    message: dict[str, Any] = {"role": "assistant", "content": resp.text() or None, "refusal": None}
    if resp.tool_calls:
        message["tool_calls"] = _render_tool_calls(resp.tool_calls)
    elif message["content"] is None:
        message["content"] = ""
    out: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": resp.finish_reason}],
        "usage": render_usage(resp.usage or Usage()),
    }
    if cost_usd is not None:
        out["usage"]["cost_usd"] = cost_usd
    return out


class StreamRenderer:
    """Turns canonical stream events into OpenAI `chat.completion.chunk` SSE frames."""

    __slots__ = ("_cost", "_head", "_include_usage", "_tool_ids", "_usage")

    def __init__(
        self,
        completion_id: str,
        model: str,
        include_usage: bool,
        cost: Callable[[Usage], float | None] | None = None,
    ) -> None:
        self._cost = cost
        created = int(time.time())
        # Every chunk starts with the same fields; pre-encode them once.
        self._head = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
        }
        self._include_usage = include_usage
        self._tool_ids: dict[int, str] = {}
        self._usage: Usage | None = None

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        body = {
            **self._head,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        return b"data: " + orjson.dumps(body) + b"\n\n"

    def render(self, event: StreamEvent) -> bytes:
        if isinstance(event, TextDelta):
            return self._chunk({"content": event.text}) if event.text else b""
        if isinstance(event, StreamStart):
            return self._chunk({"role": "assistant", "content": ""})
        if isinstance(event, ToolCallDelta):
            return self._chunk({"tool_calls": [self._tool_fragment(event)]})
        if isinstance(event, UsageEvent):
            self._usage = event.usage
            return b""
        if isinstance(event, StreamEnd):
            out = self._chunk({}, event.finish_reason)
            usage = event.usage or self._usage
            if self._include_usage:
                final = usage or Usage()
                rendered = render_usage(final)
                cost = self._cost(final) if self._cost is not None else None
                if rendered is not None and cost is not None:
                    rendered["cost_usd"] = cost
                body = {**self._head, "choices": [], "usage": rendered}
                out += b"data: " + orjson.dumps(body) + b"\n\n"
            return out + b"data: [DONE]\n\n"
        if isinstance(event, NativeEvent):
            return b""  # another family's reasoning or server-tool block: no Chat Completions counterpart
        raise TypeError(f"unknown stream event {event!r}")

    def _tool_fragment(self, event: ToolCallDelta) -> dict[str, Any]:
        if event.index not in self._tool_ids:
            self._tool_ids[event.index] = event.id or f"call_{event.index}"
            return {
                "index": event.index,
                "id": self._tool_ids[event.index],
                "type": "function",
                "function": {"name": event.name or "", "arguments": event.arguments},
            }
        return {"index": event.index, "function": {"arguments": event.arguments}}

    @staticmethod
    def render_error(err: GatewayError, request_id: str) -> bytes:
        """A mid-stream failure: an error object, then the stream ends without `[DONE]`."""
        return b"data: " + orjson.dumps(render_error(err, request_id)) + b"\n\n"


def render_error(err: GatewayError, request_id: str) -> dict[str, Any]:
    return {
        "error": {"message": err.message, "type": err.type, "param": err.param, "code": err.code},
        "request_id": request_id,
    }
