"""Anthropic Messages (`POST /v1/messages`, `POST /v1/messages/count_tokens`) <-> canonical. Pure, no I/O.

Wire reference: https://docs.anthropic.com/en/api/messages and anthropic-sdk-python's
`types/message_create_params.py` (`MessageParam`, `ContentBlockParam`, `ToolParam`, `ToolChoiceParam`).
Rendering (the Message object, the SSE event sequence, errors) is in `_anthropic_render.py`.

Validation follows the API's: `max_tokens` required, `messages` non-empty with roles `user` and
`assistant`, content a string or content blocks, every message non-empty except a final assistant
prefill. Consecutive turns of one role are accepted, as the API accepts them and merges them into one
turn; providers merge or keep them as their wire needs.

What has no canonical counterpart is carried, never dropped:
- `top_k`, `thinking`, `service_tier`, `container`, `mcp_servers`, `context_management` and any field
  this module does not know go to `extra["anthropic"]` as they are. An Anthropic upstream gets them
  verbatim (and validates them); another provider maps, ignores (when harmless) or refuses each one
  with a 400 (`providers/_carry.py`).
- `cache_control` and `citations` on blocks and tools go to the part's, call's or tool's `extra`.
- `thinking` / `redacted_thinking` blocks become droppable `NativePart`s; `document`, `search_result`,
  server-tool blocks and any other block type become non-droppable ones.
- A provider-defined tool (`web_search_*`, `bash_*`, `text_editor_*`, ...) becomes a Tool whose
  `extra` is its whole definition.
- `output_config.format` (structured outputs) is the canonical JSON-schema response format.
"""

from __future__ import annotations

from typing import Any

import orjson

from ai_gateway.dialects._anthropic_render import (
    StreamRenderer,
    error_type,
    render_count,
    render_error,
    render_response,
)
from ai_gateway.dialects._validate import opt_bool, opt_int, opt_number, opt_str, reject_forbidden, type_name
from ai_gateway.errors import InvalidRequestError
from ai_gateway.types import (
    ChatRequest,
    ImagePart,
    Message,
    NativePart,
    Part,
    ResponseFormat,
    TextPart,
    Tool,
    ToolCall,
    ToolChoice,
)

__all__ = [
    "FAMILY",
    "StreamRenderer",
    "error_type",
    "parse_count_request",
    "parse_request",
    "render_count",
    "render_error",
    "render_response",
]

FAMILY = "anthropic"
# https://docs.anthropic.com/en/docs/build-with-claude/vision#ensuring-image-quality
_MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
_DROPPABLE = frozenset({"thinking", "redacted_thinking"})
_PART_EXTRAS = ("cache_control", "citations")
_TOOL_KEYS = frozenset({"name", "description", "input_schema", "strict", "type"})
_TOOL_CHOICES = {"auto": "auto", "any": "required", "tool": "named", "none": "none"}
# Fields read into canonical ones; any other top-level field goes to extra["anthropic"].
_HANDLED = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "system",
        "stop_sequences",
        "temperature",
        "top_p",
        "tools",
        "tool_choice",
        "metadata",
        "stream",
        "output_config",
        "output_format",
    }
)


def _bad(message: str, param: str, code: str = "invalid_value") -> InvalidRequestError:
    return InvalidRequestError(message, param=param, code=code)


def parse_request(body: Any, max_messages: int, max_output_tokens: int) -> ChatRequest:
    return _parse(body, max_messages, max_output_tokens, counting=False)


def parse_count_request(body: Any, max_messages: int, max_output_tokens: int) -> ChatRequest:
    """A `count_tokens` body: the same as a create body, without `max_tokens` (ignored when sent)."""
    return _parse(body, max_messages, max_output_tokens, counting=True)


def _parse(body: Any, max_messages: int, max_output_tokens: int, counting: bool) -> ChatRequest:
    if not isinstance(body, dict):
        raise InvalidRequestError(
            f"The request body must be a JSON object, not {type_name(body)}.", code="invalid_json"
        )
    reject_forbidden(body)
    model = _req(body, "model", str, "a string")
    if not model.strip():
        raise _bad("model: String should have at least 1 character", "model")
    max_tokens: int | None = None
    if not counting:
        _req(body, "max_tokens", int, "an integer")
        # 0 is valid upstream: it warms the prompt cache without generating an answer.
        max_tokens = opt_int(body, "max_tokens", 0, max_output_tokens)
    messages = _parse_system(body.get("system"))
    messages += _parse_messages(body.get("messages"), max_messages)
    extra: dict[str, Any] = {k: v for k, v in body.items() if k not in _HANDLED and v is not None}
    if counting:
        extra.pop("top_k", None)  # sampling does not change the count
    elif "top_k" in extra:
        opt_int(body, "top_k", 0, 2**31 - 1)
    if "thinking" in extra and not isinstance(extra["thinking"], dict):
        raise _bad("thinking: Input should be an object", "thinking", "invalid_type")
    req = ChatRequest(
        model=model.strip(),
        messages=messages,
        max_tokens=max_tokens,
        temperature=None if counting else opt_number(body, "temperature", 0.0, 1.0),
        top_p=None if counting else opt_number(body, "top_p", 0.0, 1.0),
        stop=[] if counting else _parse_stop(body.get("stop_sequences")),
        tools=_parse_tools(body.get("tools")),
        tool_choice=_parse_tool_choice(body.get("tool_choice")),
        response_format=_parse_output_config(body, extra),
        user=_parse_metadata(body.get("metadata")),
        stream=False if counting else bool(opt_bool(body, "stream")),
        include_usage=True,
    )
    if extra:
        req.extra[FAMILY] = extra
    return req


def _req(body: dict[str, Any], key: str, kind: type, expected: str) -> Any:
    value = body.get(key)
    if value is None:
        raise _bad(f"{key}: Field required", key, "missing_required")
    if not isinstance(value, kind) or isinstance(value, bool):
        raise _bad(f"{key}: Input should be {expected}", key, "invalid_type")
    return value


def _extra(block: dict[str, Any]) -> dict[str, Any] | None:
    found = {k: block[k] for k in _PART_EXTRAS if block.get(k) is not None}
    return found or None


def _parse_system(raw: object) -> list[Message]:
    if raw is None or raw == "":
        return []
    if isinstance(raw, str):
        return [Message(role="system", content=[TextPart(raw)])]
    if not isinstance(raw, list):
        raise _bad("system: Input should be a string or an array of text blocks", "system", "invalid_type")
    parts: list[Part] = []
    for i, block in enumerate(raw):
        path = f"system.{i}"
        if not isinstance(block, dict) or block.get("type") != "text":
            raise _bad(f"{path}: system blocks must be text blocks", path, "invalid_type")
        parts.append(_text_part(block, path))
    return [Message(role="system", content=parts)] if parts else []


def _text_part(block: dict[str, Any], path: str) -> TextPart:
    text = block.get("text")
    if not isinstance(text, str):
        raise _bad(f"{path}.text: Field required", f"{path}.text", "missing_required")
    if not text:
        raise _bad(f"{path}: text content blocks must be non-empty", f"{path}.text")
    return TextPart(text, _extra(block))


def _parse_messages(raw: object, max_messages: int) -> list[Message]:
    if raw is None:
        raise _bad("messages: Field required", "messages", "missing_required")
    if not isinstance(raw, list):
        raise _bad("messages: Input should be a valid list", "messages", "invalid_type")
    if not raw:
        raise _bad("messages: at least one message is required", "messages")
    if len(raw) > max_messages:
        raise _bad(
            f"messages: {len(raw)} messages; at most {max_messages} are allowed",
            "messages",
            "too_many_messages",
        )
    out: list[Message] = []
    for i, item in enumerate(raw):
        path = f"messages.{i}"
        if not isinstance(item, dict):
            raise _bad(f"{path}: Input should be an object", path, "invalid_type")
        role = item.get("role")
        if role not in ("user", "assistant"):
            raise _bad(f"{path}.role: Input should be 'user' or 'assistant'", f"{path}.role")
        content = item.get("content")
        if content is None:
            raise _bad(f"{path}.content: Field required", f"{path}.content", "missing_required")
        final_assistant = role == "assistant" and i == len(raw) - 1
        if content in ("", []) and not final_assistant:
            raise _bad(
                f"{path}: all messages must have non-empty content except for the optional final "
                "assistant message",
                f"{path}.content",
            )
        if isinstance(content, str):
            out.append(Message(role=role, content=[TextPart(content)] if content else []))
        elif isinstance(content, list):
            out += _parse_user(content, path) if role == "user" else [_parse_assistant(content, path)]
        else:
            raise _bad(f"{path}.content: Input should be a string or a list of content blocks", path)
    return out


def _blocks(content: list[Any], path: str) -> list[tuple[str, str, dict[str, Any]]]:
    found: list[tuple[str, str, dict[str, Any]]] = []
    for j, block in enumerate(content):
        bpath = f"{path}.content.{j}"
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise _bad(f"{bpath}: content blocks must be objects with a 'type'", bpath, "invalid_type")
        found.append((block["type"], bpath, block))
    return found


def _parse_user(content: list[Any], path: str) -> list[Message]:
    """One user turn as canonical messages: a `tool` message per tool_result (the API wants them first
    in the turn), then one user message with everything else."""
    results: list[Message] = []
    parts: list[Part] = []
    for kind, bpath, block in _blocks(content, path):
        if kind == "tool_result":
            results.append(_tool_result(block, bpath))
        else:
            parts.append(_part(kind, block, bpath))
    return results + ([Message(role="user", content=parts)] if parts else [])


def _parse_assistant(content: list[Any], path: str) -> Message:
    msg = Message(role="assistant")
    for kind, bpath, block in _blocks(content, path):
        if kind == "tool_use":
            name = block.get("name")
            call_id = block.get("id")
            args = block.get("input", {})
            if not isinstance(call_id, str) or not isinstance(name, str) or not isinstance(args, dict):
                raise _bad(f"{bpath}: tool_use blocks need 'id', 'name' and an object 'input'", bpath)
            msg.tool_calls.append(ToolCall(call_id, name, orjson.dumps(args).decode(), _extra(block)))
        else:
            msg.content.append(_part(kind, block, bpath))
    return msg


def _part(kind: str, block: dict[str, Any], path: str) -> Part:
    if kind == "text":
        return _text_part(block, path)
    if kind == "image":
        return _image(block, path)
    # thinking, documents, server-tool blocks and block types added later: carried for Anthropic only.
    return NativePart(FAMILY, block, droppable=kind in _DROPPABLE)


def _image(block: dict[str, Any], path: str) -> Part:
    source = block.get("source")
    spath = f"{path}.source"
    if not isinstance(source, dict):
        raise _bad(f"{spath}: Field required", spath, "missing_required")
    kind = source.get("type")
    if kind == "base64":
        media_type, data = source.get("media_type"), source.get("data")
        if media_type not in _MEDIA_TYPES:
            allowed = ", ".join(f"'{m}'" for m in _MEDIA_TYPES)
            raise _bad(f"{spath}.media_type: Input should be {allowed}", f"{spath}.media_type")
        if not isinstance(data, str) or not data:
            raise _bad(f"{spath}.data: Field required", f"{spath}.data", "missing_required")
        return ImagePart(data=data, media_type=media_type, extra=_extra(block))
    if kind == "url":
        url = source.get("url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise _bad(f"{spath}.url: an http(s) URL is required", f"{spath}.url")
        return ImagePart(url=url, extra=_extra(block))
    return NativePart(FAMILY, block)  # a Files API `file` source: only Anthropic can resolve it


def _tool_result(block: dict[str, Any], path: str) -> Message:
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str) or not call_id:
        raise _bad(f"{path}.tool_use_id: Field required", f"{path}.tool_use_id", "missing_required")
    is_error = opt_bool(block, "is_error", f"{path}.is_error")
    raw = block.get("content")
    parts: list[Part] = []
    if isinstance(raw, str):
        parts = [TextPart(raw)] if raw else []
    elif isinstance(raw, list):
        for kind, bpath, inner in _blocks(raw, path):
            parts.append(_part(kind, inner, bpath))
    elif raw is not None:
        raise _bad(f"{path}.content: Input should be a string or a list of content blocks", path)
    cache = block.get("cache_control")
    if cache is not None and parts and not isinstance(parts[-1], NativePart):
        # The result's breakpoint moves onto its last inner block: the cached prefix ends at the same
        # place (https://docs.anthropic.com/en/docs/build-with-claude/prompt-caching).
        last = parts[-1]
        last.extra = {**(last.extra or {}), "cache_control": cache}
    return Message(role="tool", content=parts, tool_call_id=call_id, is_error=bool(is_error))


def _parse_stop(raw: object) -> list[str]:
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(s, str) for s in raw):
        raise _bad("stop_sequences: Input should be a list of strings", "stop_sequences", "invalid_type")
    return list(raw)


def _parse_tools(raw: object) -> list[Tool]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise _bad("tools: Input should be a valid list", "tools", "invalid_type")
    tools: list[Tool] = []
    for i, item in enumerate(raw):
        path = f"tools.{i}"
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"]:
            raise _bad(f"{path}.name: Field required", f"{path}.name", "missing_required")
        kind = item.get("type")
        if kind not in (None, "custom"):
            tools.append(Tool(name=item["name"], parameters={}, extra=dict(item)))
            continue
        schema = item.get("input_schema")
        if not isinstance(schema, dict):
            raise _bad(f"{path}.input_schema: Field required", f"{path}.input_schema", "missing_required")
        rest = {k: v for k, v in item.items() if k not in _TOOL_KEYS and v is not None}
        tools.append(
            Tool(
                name=item["name"],
                description=opt_str(item, "description", f"{path}.description"),
                parameters=schema,
                strict=opt_bool(item, "strict", f"{path}.strict"),
                extra=rest or None,
            )
        )
    return tools


def _parse_tool_choice(raw: object) -> ToolChoice | None:
    if raw is None:
        return None
    kind = raw.get("type") if isinstance(raw, dict) else None
    if not isinstance(raw, dict) or kind not in _TOOL_CHOICES:
        raise _bad(
            "tool_choice: Input should be an object with 'type' 'auto', 'any', 'tool' or 'none'",
            "tool_choice",
        )
    name = raw.get("name")
    if kind == "tool" and (not isinstance(name, str) or not name):
        raise _bad("tool_choice.name: Field required", "tool_choice.name", "missing_required")
    disable = opt_bool(raw, "disable_parallel_tool_use", "tool_choice.disable_parallel_tool_use")
    mode = _TOOL_CHOICES[kind]
    return ToolChoice(
        mode=mode,  # type: ignore[arg-type]  # the values of _TOOL_CHOICES are ToolChoice modes
        name=name if kind == "tool" else None,
        parallel=False if disable else None,
    )


def _parse_metadata(raw: object) -> str | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise _bad("metadata: Input should be an object", "metadata", "invalid_type")
    for key in raw:
        if key != "user_id":
            raise _bad(f"metadata.{key}: Extra inputs are not permitted", f"metadata.{key}")
    return opt_str(raw, "user_id", "metadata.user_id")


def _parse_output_config(body: dict[str, Any], extra: dict[str, Any]) -> ResponseFormat | None:
    """`output_config.format` (and the beta's `output_format`) as the canonical JSON-schema format; the
    rest of `output_config` (`effort`) stays Anthropic's."""
    config = body.get("output_config")
    fmt = body.get("output_format")
    if config is not None:
        if not isinstance(config, dict):
            raise _bad("output_config: Input should be an object", "output_config", "invalid_type")
        rest = {k: v for k, v in config.items() if k != "format" and v is not None}
        if rest:
            extra["output_config"] = rest
        fmt = config.get("format") or fmt
    if fmt is None:
        return None
    param = "output_config.format"
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        raise _bad(f"{param}.type: Input should be 'json_schema'", f"{param}.type")
    schema = fmt.get("schema")
    if not isinstance(schema, dict):
        raise _bad(f"{param}.schema: Field required", f"{param}.schema", "missing_required")
    return ResponseFormat(type="json_schema", schema=schema)
