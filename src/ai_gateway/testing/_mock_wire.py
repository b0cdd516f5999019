"""Wire formats for :mod:`ai_gateway.testing.mock_upstream` (see its docstring).

Pure functions, no I/O: :func:`parse_prompt` reads a chat request body of one of the
four dialects into a :class:`Prompt`; a :class:`Reply` (what the fake model "said") is
rendered into the native JSON body, or into a list of stream :class:`Frame` objects.
Native error bodies are rendered here too.
"""

from __future__ import annotations

import math
import re
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

from ai_gateway.testing._mock_inspect import Seen, inspect

Json = dict[str, Any]
Dialect = Literal["openai", "openrouter", "anthropic", "ollama"]
Finish = Literal["stop", "length", "tool_calls", "stop_sequence"]

ERROR_MARKER = "MOCK-UPSTREAM-ERROR-BODY"
COST_PER_TOKEN = 0.000001
GARBAGE_BODY = b'{"id": "MOCK-GARBAGE", "choices": [{"message": '
OPENROUTER_COMMENT = b": OPENROUTER PROCESSING\n\n"


def rand_hex(n: int) -> str:
    return uuid.uuid4().hex[:n]


@dataclass(frozen=True)
class ToolCall:
    """One tool invocation the fake model decided to make."""

    id: str
    name: str
    arguments: Json

    @property
    def arguments_json(self) -> str:
        return orjson.dumps(self.arguments).decode()


@dataclass(frozen=True)
class Reply:
    """Dialect-neutral description of a completed model answer."""

    model: str
    pieces: tuple[str, ...]
    tool_calls: tuple[ToolCall, ...] = ()
    finish: Finish = "stop"
    stop_sequence: str | None = None
    input_tokens: int = 1
    output_tokens: int = 0
    usage: bool = True
    stream_usage: bool = False
    cached_tokens: int = 0  # read from a prompt cache (part of input_tokens)
    cache_write_tokens: int = 0  # written to a prompt cache (part of input_tokens)
    thinking: str | None = None  # Anthropic: a thinking block before the answer
    rid: str = field(default_factory=lambda: rand_hex(24))
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def text(self) -> str:
        return "".join(self.pieces)


@dataclass(frozen=True)
class Frame:
    """One write on a streaming response. ``content`` frames carry model output."""

    data: bytes
    content: bool = False
    text: str = ""
    tools: int = 0


def _sse(
    obj: Json, event: str | None = None, *, content: bool = False, text: str = "", tools: int = 0
) -> Frame:
    head = f"event: {event}\n".encode() if event else b""
    return Frame(head + b"data: " + orjson.dumps(obj) + b"\n\n", content, text, tools)


def _split_fragments(s: str, parts: int = 3) -> list[str]:
    size = max(1, math.ceil(len(s) / parts))
    return [s[i : i + size] for i in range(0, len(s), size)]


# --------------------------------------------------------------------------- request parsing

DIRECTIVE_RE = re.compile(r"\[\[mock\b(.*?)\]\]", re.DOTALL)


def strip_directives(text: str) -> str:
    return DIRECTIVE_RE.sub(" ", text).strip()


@dataclass(frozen=True)
class Prompt:
    """What the mock needs to know about a chat request, dialect-neutral."""

    model: str
    texts: list[str]
    last_user: str
    tools: list[str]
    forced_tool: str | None
    tools_disabled: bool
    max_tokens: int | None
    stops: list[str]
    stream: bool
    stream_usage: bool
    seen: Seen = field(default_factory=Seen)


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(_text_of(part) for part in content)
    if isinstance(content, dict):
        text = content.get("text")
        return text if isinstance(text, str) else _text_of(content.get("content"))
    return ""


def _messages(body: Json) -> list[Json]:
    msgs = body.get("messages")
    return [m for m in msgs if isinstance(m, dict)] if isinstance(msgs, list) else []


def raw_texts(dialect: Dialect, body: Json) -> list[str]:
    texts = [_text_of(m.get("content")) for m in _messages(body)]
    if dialect == "anthropic":
        texts.insert(0, _text_of(body.get("system")))
    return texts


def _tool_names(dialect: Dialect, body: Json) -> list[str]:
    names: list[str] = []
    tools = body.get("tools")
    for tool in tools if isinstance(tools, list) else []:
        spec = tool.get("function", tool) if isinstance(tool, dict) and dialect != "anthropic" else tool
        if isinstance(spec, dict) and isinstance(spec.get("name"), str):
            names.append(spec["name"])
    return names


def _tool_choice(dialect: Dialect, body: Json) -> tuple[bool, str | None]:
    """(tools disabled, forced tool name; ``""`` = any tool, ``None`` = not forced)."""
    choice = body.get("tool_choice")
    if dialect == "anthropic":
        if not isinstance(choice, dict):
            return False, None
        kind = choice.get("type")
        if kind == "tool":
            return False, str(choice.get("name") or "")
        return kind == "none", ("" if kind == "any" else None)
    if choice == "none":
        return True, None
    if choice == "required":
        return False, ""
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        return False, str(choice["function"].get("name") or "")
    return False, None


def _max_tokens(dialect: Dialect, body: Json) -> int | None:
    if dialect == "ollama":
        opts = body.get("options")
        value = opts.get("num_predict") if isinstance(opts, dict) else None
    elif dialect == "anthropic":
        value = body.get("max_tokens")
    else:
        value = body.get("max_completion_tokens", body.get("max_tokens"))
    return value if isinstance(value, int) and value >= 0 else None


def _stops(dialect: Dialect, body: Json) -> list[str]:
    if dialect == "ollama":
        opts = body.get("options")
        value = opts.get("stop") if isinstance(opts, dict) else None
    else:
        value = body.get("stop_sequences" if dialect == "anthropic" else "stop")
    items = [value] if isinstance(value, str) else value if isinstance(value, list) else []
    return [s for s in items if isinstance(s, str) and s]


def wants_stream(dialect: Dialect, body: Json | None) -> bool:
    value = body.get("stream") if isinstance(body, dict) else None
    return value is not False if dialect == "ollama" else bool(value)


def parse_prompt(dialect: Dialect, body: Json) -> Prompt:
    users = [_text_of(m.get("content")) for m in _messages(body) if m.get("role") == "user"]
    disabled, forced = _tool_choice(dialect, body)
    opts = body.get("stream_options")
    seen = inspect(dialect, body)
    if seen.ends_with_tool_results:
        # The answer after a tool round: what the tools returned, so a test sees the results arrived.
        users = [" | ".join(str(r["content"]) for r in seen.tool_results if r["content"])]
    return Prompt(
        model=str(body.get("model") or ""),
        texts=[strip_directives(t) for t in raw_texts(dialect, body)],
        last_user=strip_directives(users[-1]) if users else "",
        tools=_tool_names(dialect, body),
        forced_tool=forced,
        tools_disabled=disabled,
        max_tokens=_max_tokens(dialect, body),
        stops=_stops(dialect, body),
        stream=wants_stream(dialect, body),
        stream_usage=isinstance(opts, dict) and bool(opts.get("include_usage")),
        seen=seen,
    )


# --------------------------------------------------------------------------- OpenAI / OpenRouter


def _oa_finish(r: Reply) -> str:
    return "stop" if r.finish == "stop_sequence" else r.finish


def _oa_usage(r: Reply, openrouter: bool) -> Json:
    total = r.input_tokens + r.output_tokens
    usage: Json = {
        "prompt_tokens": r.input_tokens,
        "completion_tokens": r.output_tokens,
        "total_tokens": total,
        "prompt_tokens_details": {"cached_tokens": r.cached_tokens, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }
    if openrouter:
        # https://openrouter.ai/docs/use-cases/usage-accounting
        usage["prompt_tokens_details"]["cache_write_tokens"] = r.cache_write_tokens
        usage["cost"] = round(total * COST_PER_TOKEN, 12)
        usage["is_byok"] = False
        usage["cost_details"] = {"upstream_inference_cost": None}
    return usage


def _oa_envelope(r: Reply, openrouter: bool, obj: str) -> Json:
    env: Json = {
        "id": ("gen-" if openrouter else "chatcmpl-") + r.rid,
        "object": obj,
        "created": r.created,
        "model": r.model,
    }
    if openrouter:
        env["provider"] = "MockProvider"
    else:
        env["service_tier"] = "default"
    env["system_fingerprint"] = "fp_mock"
    return env


def _oa_tool_call(c: ToolCall) -> Json:
    return {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments_json}}


def openai_body(r: Reply, openrouter: bool) -> Json:
    message: Json = {
        "role": "assistant",
        "content": (r.text or None) if r.tool_calls else r.text,
        "refusal": None,
        "annotations": [],
    }
    if r.tool_calls:
        message["tool_calls"] = [_oa_tool_call(c) for c in r.tool_calls]
    choice: Json = {"index": 0, "message": message, "logprobs": None, "finish_reason": _oa_finish(r)}
    if openrouter:
        choice["native_finish_reason"] = _oa_finish(r)
    body = _oa_envelope(r, openrouter, "chat.completion")
    body["choices"] = [choice]
    if r.usage:
        body["usage"] = _oa_usage(r, openrouter)
    return body


def _oa_tool_frames(r: Reply, chunk: Any) -> list[Frame]:
    frames: list[Frame] = []
    for i, c in enumerate(r.tool_calls):
        head = {"index": i, "id": c.id, "type": "function", "function": {"name": c.name, "arguments": ""}}
        frames.append(chunk({"tool_calls": [head]}, tools=1))
        for frag in _split_fragments(c.arguments_json):
            frames.append(chunk({"tool_calls": [{"index": i, "function": {"arguments": frag}}]}))
    return frames


def openai_stream(r: Reply, openrouter: bool) -> list[Frame]:
    """``chat.completion.chunk`` SSE frames, ending with ``data: [DONE]``."""
    env = _oa_envelope(r, openrouter, "chat.completion.chunk")
    with_usage = r.usage and (r.stream_usage or openrouter)

    def chunk(delta: Json, finish: str | None = None, *, text: str = "", tools: int = 0) -> Frame:
        choice: Json = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        if openrouter:
            choice["native_finish_reason"] = finish
        obj = {**env, "choices": [choice]}
        if with_usage and not openrouter:
            obj["usage"] = None
        is_content = finish is None and "role" not in delta
        return _sse(obj, content=is_content, text=text, tools=tools)

    first: Json = {"role": "assistant", "content": None if r.tool_calls else "", "refusal": None}
    body = [chunk({"content": p}, text=p) for p in r.pieces] + _oa_tool_frames(r, chunk)
    if openrouter and len(body) > 2:
        body.insert(2, Frame(OPENROUTER_COMMENT))
    frames = [Frame(OPENROUTER_COMMENT)] if openrouter else []
    frames += [chunk(first), *body, chunk({}, _oa_finish(r))]
    if with_usage:
        frames.append(_sse({**env, "choices": [], "usage": _oa_usage(r, openrouter)}))
    frames.append(Frame(b"data: [DONE]\n\n"))
    return frames


# --------------------------------------------------------------------------- Anthropic

_AN_STOP = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "stop_sequence": "stop_sequence",
}


def _an_usage(r: Reply, output_tokens: int) -> Json:
    # Anthropic's input_tokens leaves out what was read from or written to the prompt cache.
    return {
        "input_tokens": max(0, r.input_tokens - r.cached_tokens - r.cache_write_tokens),
        "cache_creation_input_tokens": r.cache_write_tokens,
        "cache_read_input_tokens": r.cached_tokens,
        "output_tokens": output_tokens,
        "service_tier": "standard",
    }


def _an_message(r: Reply, content: list[Json], final: bool) -> Json:
    msg: Json = {
        "id": "msg_01" + r.rid[:22],
        "type": "message",
        "role": "assistant",
        "model": r.model,
        "content": content,
        "stop_reason": _AN_STOP[r.finish] if final else None,
        "stop_sequence": r.stop_sequence if final else None,
    }
    if r.usage:
        msg["usage"] = _an_usage(r, r.output_tokens if final else 1)
    return msg


def _an_thinking(r: Reply) -> Json:
    return {"type": "thinking", "thinking": r.thinking or "", "signature": "sig-" + r.rid}


def anthropic_body(r: Reply) -> Json:
    content: list[Json] = [_an_thinking(r)] if r.thinking else []
    if r.text or not r.tool_calls:
        content.append({"type": "text", "text": r.text})
    content += [{"type": "tool_use", "id": c.id, "name": c.name, "input": c.arguments} for c in r.tool_calls]
    return _an_message(r, content, final=True)


def _an_block(index: int, block: Json, deltas: list[tuple[Json, str]], **start: Any) -> list[Frame]:
    """One content block: start, its deltas (each with the text it carries), stop."""
    frames = [
        _sse(
            {"type": "content_block_start", "index": index, "content_block": block},
            "content_block_start",
            **start,
        )
    ]
    for delta, text in deltas:
        body = {"type": "content_block_delta", "index": index, "delta": delta}
        frames.append(
            _sse(body, "content_block_delta", content=bool(text), text=text if delta.get("text") else "")
        )
    frames.append(_sse({"type": "content_block_stop", "index": index}, "content_block_stop"))
    return frames


def _an_block_frames(r: Reply) -> list[Frame]:
    """Every block in order (thinking, text, tool calls), with a ping after the first one opens."""
    blocks: list[list[Frame]] = []
    if r.thinking:
        deltas = [
            ({"type": "thinking_delta", "thinking": r.thinking}, ""),
            ({"type": "signature_delta", "signature": "sig-" + r.rid}, ""),
        ]
        blocks.append(_an_block(len(blocks), {"type": "thinking", "thinking": "", "signature": ""}, deltas))
    if r.pieces or not r.tool_calls:
        text_deltas = [({"type": "text_delta", "text": p}, p) for p in r.pieces]
        blocks.append(_an_block(len(blocks), {"type": "text", "text": ""}, text_deltas))
    for c in r.tool_calls:
        frags = [
            ({"type": "input_json_delta", "partial_json": f}, f)
            for f in ["", *_split_fragments(c.arguments_json)]
        ]
        block = {"type": "tool_use", "id": c.id, "name": c.name, "input": {}}
        blocks.append(_an_block(len(blocks), block, frags, content=True, tools=1))
    frames = [f for block_frames in blocks for f in block_frames]
    return [frames[0], _sse({"type": "ping"}, "ping"), *frames[1:]]


def anthropic_stream(r: Reply) -> list[Frame]:
    """The exact Messages SSE event sequence (``event:`` + ``data:`` lines)."""
    message_delta: Json = {
        "type": "message_delta",
        "delta": {"stop_reason": _AN_STOP[r.finish], "stop_sequence": r.stop_sequence},
    }
    if r.usage:
        message_delta["usage"] = {"output_tokens": r.output_tokens}
    return [
        _sse({"type": "message_start", "message": _an_message(r, [], final=False)}, "message_start"),
        *_an_block_frames(r),
        _sse(message_delta, "message_delta"),
        _sse({"type": "message_stop"}, "message_stop"),
    ]


# --------------------------------------------------------------------------- Ollama


def _now_rfc3339() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _ol_line(obj: Json, *, content: bool = False, text: str = "", tools: int = 0) -> Frame:
    return Frame(orjson.dumps(obj) + b"\n", content, text, tools)


def _ol_final(r: Reply, message: Json) -> Json:
    final: Json = {
        "model": r.model,
        "created_at": _now_rfc3339(),
        "message": message,
        "done": True,
        "done_reason": "length" if r.finish == "length" else "stop",
    }
    if r.usage:
        final |= {
            "total_duration": 1_000_000 * (10 + r.input_tokens + r.output_tokens),
            "load_duration": 1_000_000,
            "prompt_eval_count": r.input_tokens,
            "prompt_eval_duration": 1_000_000 * r.input_tokens,
            "eval_count": r.output_tokens,
            "eval_duration": 1_000_000 * max(1, r.output_tokens),
        }
    return final


def _ol_tool_calls(r: Reply) -> list[Json]:
    return [{"function": {"name": c.name, "arguments": c.arguments}} for c in r.tool_calls]


def ollama_body(r: Reply) -> Json:
    message: Json = {"role": "assistant", "content": r.text}
    if r.tool_calls:
        message["tool_calls"] = _ol_tool_calls(r)
    return _ol_final(r, message)


def ollama_stream(r: Reply) -> list[Frame]:
    """NDJSON lines: ``done: false`` deltas then the ``done: true`` summary line."""

    def delta(message: Json, *, text: str = "", tools: int = 0) -> Frame:
        obj = {"model": r.model, "created_at": _now_rfc3339(), "message": message, "done": False}
        return _ol_line(obj, content=True, text=text, tools=tools)

    frames = [delta({"role": "assistant", "content": p}, text=p) for p in r.pieces]
    if r.tool_calls:
        msg = {"role": "assistant", "content": "", "tool_calls": _ol_tool_calls(r)}
        frames.append(delta(msg, tools=len(r.tool_calls)))
    frames.append(_ol_line(_ol_final(r, {"role": "assistant", "content": ""})))
    return frames


# --------------------------------------------------------------------------- dispatch


def render_body(dialect: Dialect, r: Reply) -> Json:
    if dialect == "anthropic":
        return anthropic_body(r)
    if dialect == "ollama":
        return ollama_body(r)
    return openai_body(r, dialect == "openrouter")


def render_stream(dialect: Dialect, r: Reply) -> list[Frame]:
    if dialect == "anthropic":
        return anthropic_stream(r)
    if dialect == "ollama":
        return ollama_stream(r)
    return openai_stream(r, dialect == "openrouter")


def corrupt_stream(dialect: Dialect, frames: list[Frame]) -> list[Frame]:
    """Replace the first content frame (or the terminator) with an unparseable one."""
    if dialect == "anthropic":
        bad = b'event: content_block_delta\ndata: {"type": "content_block_delta", MOCK-GARBAGE\n\n'
    elif dialect == "ollama":
        bad = b'{"model": MOCK-GARBAGE\n'
    else:
        bad = b'data: {"choices": [MOCK-GARBAGE\n\n'
    idx = next((i for i, f in enumerate(frames) if f.content), len(frames) - 1)
    return [*frames[:idx], Frame(bad, content=True), *frames[idx + 1 :]]


def stream_error_frame(dialect: Dialect, model: str) -> Frame:
    """A mid-stream error event in the dialect's native shape."""
    msg = f"Upstream stream interrupted [{ERROR_MARKER}]"
    if dialect == "anthropic":
        return _sse({"type": "error", "error": {"type": "overloaded_error", "message": msg}}, "error")
    if dialect == "ollama":
        return Frame(orjson.dumps({"error": msg}) + b"\n")
    if dialect == "openrouter":
        obj: Json = {
            "id": "gen-" + rand_hex(24),
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "provider": "MockProvider",
            "error": {"code": 502, "message": msg},
            "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}],
        }
        return _sse(obj)
    return _sse({"error": {"message": msg, "type": "server_error", "param": None, "code": None}})


# --------------------------------------------------------------------------- errors

_OPENAI_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: (
        "invalid_request_error",
        "invalid_api_key",
        "Incorrect API key provided: {key}. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
    ),
    403: (
        "invalid_request_error",
        "unsupported_country_region_territory",
        "Country, region, or territory not supported",
    ),
    404: (
        "invalid_request_error",
        "model_not_found",
        "The model `{model}` does not exist or you do not have access to it.",
    ),
    429: (
        "requests",
        "rate_limit_exceeded",
        "Rate limit reached for {model} on requests per min (RPM). Please try again later.",
    ),
    500: ("server_error", None, "The server had an error while processing your request. Sorry about that!"),
    503: ("server_error", None, "The engine is currently overloaded, please try again later"),
}

_ANTHROPIC_ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "Invalid request"),
    401: ("authentication_error", "invalid x-api-key"),
    403: ("permission_error", "Your API key does not have permission to use the specified resource."),
    404: ("not_found_error", "model: {model}"),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit"),
    500: ("api_error", "Internal server error"),
    529: ("overloaded_error", "Overloaded"),
}

_OLLAMA_ERRORS: dict[int, str] = {
    400: "invalid request",
    404: 'model "{model}" not found, try pulling it first',
    429: "server busy, please try again.  maximum pending requests exceeded",
    500: "llama runner process has terminated: exit status 2",
    503: "server busy, please try again.  maximum pending requests exceeded",
}


def error_body(dialect: Dialect, status: int, message: str | None, *, model: str, key: str) -> Json:
    """Native error JSON; the message always carries :data:`ERROR_MARKER`."""

    def fmt(template: str) -> str:
        return f"{message or template.format(model=model, key=key)} [{ERROR_MARKER}]"

    if dialect == "anthropic":
        etype, default = _ANTHROPIC_ERRORS.get(status, ("api_error", "Upstream error"))
        return {
            "type": "error",
            "error": {"type": etype, "message": fmt(default)},
            "request_id": "req_" + rand_hex(24),
        }
    if dialect == "ollama":
        return {"error": fmt(_OLLAMA_ERRORS.get(status, "upstream error"))}
    etype, code, default = _OPENAI_ERRORS.get(status, ("server_error", None, "Upstream error"))
    if dialect == "openrouter":
        meta = {"provider_name": "MockProvider", "raw": ERROR_MARKER}
        return {"error": {"code": status, "message": fmt(default), "metadata": meta}}
    return {"error": {"message": fmt(default), "type": etype, "param": None, "code": code}}
