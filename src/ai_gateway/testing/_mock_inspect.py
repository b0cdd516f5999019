"""What the mock upstream saw in a chat request, and the checks a real upstream makes on its shape.

Pure functions, no I/O. :func:`inspect` reads images, tool calls and results, JSON mode and sampling
fields out of a body of any of the four wire formats into one dialect-neutral :class:`Seen`, which
the ``echo`` directive sends back, so a test can prove a feature was carried, not just accepted.
:func:`validate` rejects what the real upstream rejects (a gateway translation bug), e.g. an OpenAI
tool message that answers no call, an Anthropic ``tool_use`` without its ``tool_result`` in the next
turn, or an Ollama image that is not raw base64.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import asdict, dataclass, field
from typing import Any

Json = dict[str, Any]

_OPENAI_ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
_OLLAMA_ROLES = frozenset({"system", "user", "assistant", "tool"})
# https://docs.anthropic.com/en/docs/build-with-claude/vision#ensuring-image-quality
_AN_MEDIA = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
_AN_USER_BLOCKS = frozenset({"text", "image", "tool_result", "document", "search_result"})
_AN_ASSISTANT_BLOCKS = frozenset(
    {"text", "tool_use", "thinking", "redacted_thinking", "server_tool_use", "web_search_tool_result"}
)
_AN_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")


@dataclass
class Seen:
    """The features of one request, whatever its wire format."""

    system: str = ""
    roles: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)  # "base64" or "url", in order
    tool_calls: list[str] = field(default_factory=list)  # names of tool calls in the history
    tool_results: list[Json] = field(default_factory=list)  # {"ref", "content", "is_error"}
    tools: list[str] = field(default_factory=list)
    json: str | None = None  # "object" or "schema"
    schema: Json | None = None
    stops: list[str] = field(default_factory=list)
    top_k: int | None = None
    thinking: bool = False
    ends_with_tool_results: bool = False

    def summary(self) -> Json:
        out = asdict(self)
        out.pop("schema")
        return out


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(_text(p) for p in content if isinstance(p, dict) and p.get("type") == "text")
    if isinstance(content, dict) and isinstance(content.get("text"), str):
        return str(content["text"])
    return ""


def _messages(body: Json) -> list[Json]:
    raw = body.get("messages")
    return [m for m in raw if isinstance(m, dict)] if isinstance(raw, list) else []


# --------------------------------------------------------------------------- inspect


def inspect(dialect: str, body: Json) -> Seen:
    seen = Seen()
    if dialect == "anthropic":
        _inspect_anthropic(body, seen)
    elif dialect == "ollama":
        _inspect_ollama(body, seen)
    else:
        _inspect_openai(body, seen)
    return seen


def _inspect_openai(body: Json, seen: Seen) -> None:
    msgs = _messages(body)
    for m in msgs:
        role = str(m.get("role"))
        seen.roles.append(role)
        content = m.get("content")
        if role in ("system", "developer"):
            seen.system += _text(content)
        for part in content if isinstance(content, list) else []:
            if isinstance(part, dict) and part.get("type") == "image_url":
                url = str((part.get("image_url") or {}).get("url", ""))
                seen.images.append("base64" if url.startswith("data:") else "url")
        seen.tool_calls += [str(c.get("function", {}).get("name")) for c in m.get("tool_calls") or []]
        if role == "tool":
            seen.tool_results.append(
                {"ref": m.get("tool_call_id"), "content": _text(content), "is_error": False}
            )
    seen.ends_with_tool_results = bool(msgs) and msgs[-1].get("role") == "tool"
    seen.tools = [str(t.get("function", {}).get("name")) for t in body.get("tools") or []]
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_object":
        seen.json = "object"
    elif fmt.get("type") == "json_schema":
        seen.json, seen.schema = "schema", (fmt.get("json_schema") or {}).get("schema") or {}
    stop = body.get("stop")
    seen.stops = [stop] if isinstance(stop, str) else list(stop or [])
    seen.top_k = body.get("top_k")


def _inspect_anthropic(body: Json, seen: Seen) -> None:
    seen.system = _text(body.get("system"))
    msgs = _messages(body)
    for m in msgs:
        seen.roles.append(str(m.get("role")))
        content = m.get("content")
        for block in content if isinstance(content, list) else []:
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "image":
                seen.images.append("base64" if block["source"].get("type") == "base64" else "url")
            elif kind == "tool_use":
                seen.tool_calls.append(str(block.get("name")))
            elif kind == "tool_result":
                inner = block.get("content")
                for sub in inner if isinstance(inner, list) else []:
                    if isinstance(sub, dict) and sub.get("type") == "image":
                        seen.images.append("base64" if sub["source"].get("type") == "base64" else "url")
                seen.tool_results.append(
                    {
                        "ref": block.get("tool_use_id"),
                        "content": _text(inner),
                        "is_error": bool(block.get("is_error")),
                    }
                )
    last = msgs[-1].get("content") if msgs else None
    seen.ends_with_tool_results = isinstance(last, list) and any(
        isinstance(b, dict) and b.get("type") == "tool_result" for b in last
    )
    seen.tools = [str(t.get("name")) for t in body.get("tools") or []]
    fmt = (body.get("output_config") or {}).get("format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        seen.json, seen.schema = "schema", fmt.get("schema") or {}
    seen.stops = list(body.get("stop_sequences") or [])
    seen.top_k = body.get("top_k")
    thinking = body.get("thinking")
    seen.thinking = isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive")


def _inspect_ollama(body: Json, seen: Seen) -> None:
    msgs = _messages(body)
    for m in msgs:
        role = str(m.get("role"))
        seen.roles.append(role)
        if role == "system":
            seen.system += _text(m.get("content"))
        seen.images += ["base64" for _ in m.get("images") or []]
        seen.tool_calls += [str(c.get("function", {}).get("name")) for c in m.get("tool_calls") or []]
        if role == "tool":
            seen.tool_results.append(
                {"ref": m.get("tool_name"), "content": _text(m.get("content")), "is_error": False}
            )
    seen.ends_with_tool_results = bool(msgs) and msgs[-1].get("role") == "tool"
    seen.tools = [str(t.get("function", {}).get("name")) for t in body.get("tools") or []]
    fmt = body.get("format")
    if fmt == "json":
        seen.json = "object"
    elif isinstance(fmt, dict):
        seen.json, seen.schema = "schema", fmt
    options = body.get("options") or {}
    seen.stops = list(options.get("stop") or [])
    seen.top_k = options.get("top_k")


# --------------------------------------------------------------------------- validate


def validate(dialect: str, body: Json) -> str | None:
    """The error message the real upstream would give this body, or None when it would take it."""
    if dialect == "anthropic":
        return _validate_anthropic(body)
    if dialect == "ollama":
        return _validate_ollama(body)
    return _validate_openai(body, limit_stops=dialect == "openai")


def _validate_openai(body: Json, limit_stops: bool) -> str | None:
    pending: set[str] = set()
    for i, m in enumerate(_messages(body)):
        role = m.get("role")
        if role not in _OPENAI_ROLES:
            return f"Invalid value: '{role}'. Supported values are: {sorted(_OPENAI_ROLES)}"
        if role == "tool":
            if m.get("tool_call_id") not in pending:
                return (
                    f"messages[{i}]: messages with role 'tool' must be a response to a preceding 'tool_calls'"
                )
            pending.discard(str(m["tool_call_id"]))
            continue
        if pending:
            return (
                f"An assistant message with 'tool_calls' must be followed by tool messages: {sorted(pending)}"
            )
        content = m.get("content")
        for part in content if isinstance(content, list) else []:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "image_url" and role != "user":
                return f"messages[{i}]: image_url is only supported for user messages"
            if kind == "image_url" and not str(part["image_url"].get("url", "")).startswith(
                ("http://", "https://", "data:image/")
            ):
                return f"messages[{i}]: invalid image URL"
            if kind not in ("text", "image_url"):
                return f"messages[{i}]: invalid content part type {kind!r}"
        for call in m.get("tool_calls") or []:
            if not isinstance(call.get("function", {}).get("arguments"), str):
                return f"messages[{i}].tool_calls: function.arguments must be a string"
            pending.add(str(call.get("id")))
    if pending:
        return f"An assistant message with 'tool_calls' must be followed by tool messages: {sorted(pending)}"
    stop = body.get("stop")
    if limit_stops and isinstance(stop, list) and len(stop) > 4:
        return "'stop': at most 4 sequences are allowed"
    return None


def _merged_turns(msgs: list[Json]) -> list[tuple[str, list[Json]]]:
    """Anthropic merges consecutive turns of one role before it checks them."""
    turns: list[tuple[str, list[Json]]] = []
    for m in msgs:
        content = m.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else list(content or [])
        if turns and turns[-1][0] == m.get("role"):
            turns[-1][1].extend(blocks)
        else:
            turns.append((str(m.get("role")), blocks))
    return turns


def _validate_anthropic(body: Json) -> str | None:
    system = body.get("system")
    if isinstance(system, list) and not all(isinstance(b, dict) and b.get("type") == "text" for b in system):
        return "system: Input should be a valid list of text blocks"
    temperature = body.get("temperature")
    if isinstance(temperature, int | float) and not 0 <= temperature <= 1:
        return "temperature: Input should be less than or equal to 1"
    for i, tool in enumerate(body.get("tools") or []):
        if not _AN_TOOL_NAME.match(str(tool.get("name"))):
            return f"tools.{i}.name: String should match pattern '^[a-zA-Z0-9_-]{{1,128}}$'"
        if tool.get("type") in (None, "custom") and not isinstance(tool.get("input_schema"), dict):
            return f"tools.{i}.input_schema: Field required"
    open_calls: set[str] = set()
    for i, (role, blocks) in enumerate(_merged_turns(_messages(body))):
        if role not in ("user", "assistant"):
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
        allowed = _AN_USER_BLOCKS if role == "user" else _AN_ASSISTANT_BLOCKS
        results = {str(b.get("tool_use_id")) for b in blocks if b.get("type") == "tool_result"}
        if open_calls - results:
            return f"messages.{i}: `tool_use` ids were found without `tool_result` blocks immediately after"
        if results - open_calls:
            unexpected = sorted(results - open_calls)
            return f"messages.{i}: unexpected `tool_use_id` found in `tool_result` blocks: {unexpected}"
        open_calls = set()
        for j, block in enumerate(blocks):
            problem = _an_block(block, allowed)
            if problem:
                return f"messages.{i}.content.{j}: {problem}"
            if block.get("type") == "tool_use":
                open_calls.add(str(block.get("id")))
    return None


def _an_block(block: Json, allowed: frozenset[str]) -> str | None:
    kind = block.get("type")
    if kind not in allowed:
        return f"Input tag '{kind}' found using 'type' does not match any of the expected tags"
    if kind == "text" and not block.get("text"):
        return "text content blocks must be non-empty"
    if kind == "image":
        return _an_image(block.get("source") or {})
    if kind == "tool_use" and not isinstance(block.get("input"), dict):
        return "tool_use.input: Input should be a valid dictionary"
    if kind == "tool_result":
        inner = block.get("content")
        for sub in inner if isinstance(inner, list) else []:
            problem = _an_block(sub, frozenset({"text", "image", "document", "search_result"}))
            if problem:
                return problem
    return None


def _an_image(source: Json) -> str | None:
    if source.get("type") == "url":
        return None if str(source.get("url", "")).startswith(("http://", "https://")) else "invalid image url"
    if source.get("type") != "base64" or source.get("media_type") not in _AN_MEDIA:
        allowed = ", ".join(f"'{m}'" for m in sorted(_AN_MEDIA))
        return f"image.source.base64.media_type: Input should be {allowed}"
    if not _is_base64(source.get("data")):
        return "image.source.base64.data: invalid base64 data"
    return None


def _is_base64(data: object) -> bool:
    if not isinstance(data, str) or not data:
        return False
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def _validate_ollama(body: Json) -> str | None:
    for i, m in enumerate(_messages(body)):
        if m.get("role") not in _OLLAMA_ROLES:
            return f"invalid role: {m.get('role')}"
        if not isinstance(m.get("content", ""), str):
            return "json: cannot unmarshal array into Go struct field Message.messages.content of type string"
        for image in m.get("images") or []:
            if not _is_base64(image):
                return f"messages[{i}]: illegal base64 data in images"
        for call in m.get("tool_calls") or []:
            if not isinstance(call.get("function", {}).get("arguments"), dict):
                return "json: cannot unmarshal string into Go struct field ToolCallFunction.arguments"
    fmt = body.get("format")
    if fmt is not None and fmt != "json" and not isinstance(fmt, dict):
        return f"invalid format: {fmt!r}"
    return None


# --------------------------------------------------------------------------- JSON answers


def json_answer(schema: Json | None, text: str) -> Any:
    """A value of `schema` (the simple subset tests use), strings filled with `text`."""
    if not schema:
        return {"reply": text}
    kind = schema.get("type")
    if "enum" in schema:
        return schema["enum"][0]
    if kind == "object" or "properties" in schema:
        props = schema.get("properties") or {}
        return {name: json_answer(sub, text) for name, sub in props.items()}
    if kind == "array":
        return [json_answer(schema.get("items") or {"type": "string"}, text)]
    return {"integer": 1, "number": 1.5, "boolean": True, "null": None}.get(str(kind), text)
