"""One conversation, asked through either ingress dialect with its official SDK, read back the same way.

A test writes the conversation once (`Turn`s, `ToolSpec`s, a JSON mode, stop sequences); `ask` sends it
as Chat Completions (openai SDK) or as Messages (anthropic SDK), streamed or not, and returns a
dialect-neutral `Result`, so every cell of the translation matrix asserts the same things.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

import anthropic
import openai

from tests.support import Proc

Ingress = Literal["openai", "anthropic"]
INGRESSES: tuple[Ingress, ...] = ("openai", "anthropic")
MODELS = {
    "ollama": "ollama/llama3.2",
    "openai": "openai/gpt-4o-mini",
    "anthropic": "anthropic/claude-haiku-4-5",
    "openrouter": "openrouter/meta-llama/llama-3.1-8b-instruct:free",
}
# A 1x1 transparent PNG.
PNG_B64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
IMAGE_URL = "https://example.com/cat.png"


@dataclass
class ToolSpec:
    name: str
    description: str
    schema: dict[str, Any]


WEATHER = ToolSpec(
    "get_weather",
    "Weather for a city",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
CLOCK = ToolSpec("get_time", "The time now", {"type": "object", "properties": {}})


@dataclass
class Call:
    id: str
    name: str
    args: dict[str, Any]


@dataclass
class Turn:
    """A user turn (text, images), an assistant turn (text, calls) or the results of calls."""

    role: Literal["user", "assistant", "results"]
    text: str = ""
    images: list[tuple[str, str]] = field(default_factory=list)  # ("base64", data) | ("url", url)
    calls: list[Call] = field(default_factory=list)
    results: list[tuple[Call, str, bool]] = field(default_factory=list)  # (call, content, is_error)


def user(text: str, images: list[tuple[str, str]] | None = None) -> Turn:
    return Turn("user", text, images or [])


@dataclass
class Result:
    text: str
    calls: list[Call]
    finish: str  # canonical: stop | length | tool_calls
    stop_sequence: str | None
    usage: dict[str, int]  # input (cache included), output, cached, cache_write
    headers: dict[str, str]
    raw: Any

    def json(self) -> Any:
        return json.loads(self.text)


def clients(gateway: Proc) -> tuple[openai.OpenAI, anthropic.Anthropic]:
    oai = openai.OpenAI(base_url=gateway.url + "/v1", api_key="sk-anything", max_retries=0, timeout=20)
    ant = anthropic.Anthropic(base_url=gateway.url, api_key="sk-anything", max_retries=0, timeout=20)
    return oai, ant


# --- OpenAI Chat Completions ------------------------------------------------------------------------


def _oa_messages(system: str | None, turns: list[Turn]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    for t in turns:
        if t.role == "user":
            parts: list[dict[str, Any]] = [{"type": "text", "text": t.text}]
            for kind, value in t.images:
                url = f"data:image/png;base64,{value}" if kind == "base64" else value
                parts.append({"type": "image_url", "image_url": {"url": url}})
            out.append({"role": "user", "content": parts if t.images else t.text})
        elif t.role == "assistant":
            calls = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": json.dumps(c.args)},
                }
                for c in t.calls
            ]
            out.append(
                {"role": "assistant", "content": t.text or None, **({"tool_calls": calls} if calls else {})}
            )
        else:  # Chat Completions has no error flag on a result
            out += [{"role": "tool", "tool_call_id": c.id, "content": content} for c, content, _ in t.results]
    return out


def _oa_choice(choice: Any) -> str | dict[str, Any]:
    if choice == "required" or choice in ("auto", "none"):
        return str(choice)
    return {"type": "function", "function": {"name": choice[1]}}


def _ask_openai(client: openai.OpenAI, model: str, stream: bool, spec: dict[str, Any]) -> Result:
    kw: dict[str, Any] = {"model": model, "messages": _oa_messages(spec["system"], spec["turns"])}
    if spec["tools"]:
        kw["tools"] = [
            {
                "type": "function",
                "function": {"name": t.name, "description": t.description, "parameters": t.schema},
            }
            for t in spec["tools"]
        ]
    if spec["tool_choice"] is not None:
        kw["tool_choice"] = _oa_choice(spec["tool_choice"])
    if spec["json"] == "object":
        kw["response_format"] = {"type": "json_object"}
    elif spec["json"] is not None:
        kw["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": spec["json"]},
        }
    if spec["stop"]:
        kw["stop"] = spec["stop"]
    kw["max_tokens"] = spec["max_tokens"]
    kw.update(spec["extra"])
    if not stream:
        raw = client.chat.completions.with_raw_response.create(**kw)
        resp = raw.parse()
        msg = resp.choices[0].message
        calls = [Call(c.id, c.function.name, json.loads(c.function.arguments)) for c in msg.tool_calls or []]
        return Result(
            msg.content or "",
            calls,
            resp.choices[0].finish_reason,
            None,
            _oa_usage(resp.usage),
            dict(raw.headers),
            resp,
        )
    kw["stream_options"] = {"include_usage": True}
    with client.chat.completions.with_streaming_response.create(stream=True, **kw) as raw:
        chunks = list(raw.parse())
        headers = dict(raw.headers)
    text, finish, frags = "", "", {}
    for chunk in chunks:
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
            for tc in choice.delta.tool_calls or []:
                entry = frags.setdefault(tc.index, {"id": "", "name": "", "args": ""})
                entry["id"] = tc.id or entry["id"]
                entry["name"] = (tc.function.name if tc.function else None) or entry["name"]
                entry["args"] += (tc.function.arguments if tc.function else None) or ""
    calls = [Call(f["id"], f["name"], json.loads(f["args"] or "{}")) for _, f in sorted(frags.items())]
    usage = next((c.usage for c in chunks if c.usage is not None), None)
    return Result(text, calls, finish, None, _oa_usage(usage), headers, chunks)


def _oa_usage(usage: Any) -> dict[str, int]:
    if usage is None:
        return {}
    details = usage.prompt_tokens_details
    cached = (details.cached_tokens if details else 0) or 0
    return {"input": usage.prompt_tokens, "output": usage.completion_tokens, "cached": cached}


# --- Anthropic Messages -----------------------------------------------------------------------------


def _an_messages(turns: list[Turn]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for t in turns:
        if t.role == "user":
            blocks: list[dict[str, Any]] = [{"type": "text", "text": t.text}]
            for kind, value in t.images:
                source = (
                    {"type": "base64", "media_type": "image/png", "data": value}
                    if kind == "base64"
                    else {"type": "url", "url": value}
                )
                blocks.append({"type": "image", "source": source})
            out.append({"role": "user", "content": blocks if t.images else t.text})
        elif t.role == "assistant":
            content: list[dict[str, Any]] = [{"type": "text", "text": t.text}] if t.text else []
            content += [{"type": "tool_use", "id": c.id, "name": c.name, "input": c.args} for c in t.calls]
            out.append({"role": "assistant", "content": content})
        else:
            results = [
                {"type": "tool_result", "tool_use_id": c.id, "content": text, "is_error": err}
                for c, text, err in t.results
            ]
            out.append({"role": "user", "content": results})
    return out


def _an_choice(choice: Any) -> dict[str, Any]:
    if choice in ("auto", "none"):
        return {"type": choice}
    if choice == "required":
        return {"type": "any"}
    return {"type": "tool", "name": choice[1]}


_AN_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls"}


def _ask_anthropic(client: anthropic.Anthropic, model: str, stream: bool, spec: dict[str, Any]) -> Result:
    kw: dict[str, Any] = {
        "model": model,
        "max_tokens": spec["max_tokens"],
        "messages": _an_messages(spec["turns"]),
    }
    if spec["system"]:
        kw["system"] = spec["system"]
    if spec["tools"]:
        kw["tools"] = [
            {"name": t.name, "description": t.description, "input_schema": t.schema} for t in spec["tools"]
        ]
    if spec["tool_choice"] is not None:
        kw["tool_choice"] = _an_choice(spec["tool_choice"])
    if spec["json"] is not None:
        kw["output_config"] = {"format": {"type": "json_schema", "schema": spec["json"]}}
    if spec["stop"]:
        kw["stop_sequences"] = spec["stop"]
    kw.update(spec["extra"])
    if stream:
        with client.messages.stream(**kw) as s:
            events = list(s)
            message = s.get_final_message()
            headers = dict(s.response.headers)
        return _an_result(message, headers, events)
    raw = client.messages.with_raw_response.create(**kw)
    return _an_result(raw.parse(), dict(raw.headers), None)


def _an_result(message: Any, headers: dict[str, str], events: Any) -> Result:
    text = "".join(b.text for b in message.content if b.type == "text")
    calls = [Call(b.id, b.name, dict(b.input)) for b in message.content if b.type == "tool_use"]
    u = message.usage
    read, write = u.cache_read_input_tokens or 0, u.cache_creation_input_tokens or 0
    usage = {
        "input": u.input_tokens + read + write,
        "output": u.output_tokens,
        "cached": read,
        "cache_write": write,
    }
    result = Result(
        text, calls, _AN_FINISH[message.stop_reason], message.stop_sequence, usage, headers, message
    )
    result.raw = (message, events)
    return result


def ask(
    clients_: tuple[openai.OpenAI, anthropic.Anthropic],
    ingress: Ingress,
    provider: str,
    stream: bool,
    turns: list[Turn],
    *,
    system: str | None = None,
    tools: list[ToolSpec] | None = None,
    tool_choice: Any = None,
    json_mode: Any = None,
    stop: list[str] | None = None,
    max_tokens: int = 200,
    extra: dict[str, Any] | None = None,
) -> Result:
    """`json_mode`: "object", or a JSON schema. `tool_choice`: "auto", "none", "required" or ("named", name)."""
    spec = {
        "turns": turns,
        "system": system,
        "tools": tools or [],
        "tool_choice": tool_choice,
        "json": json_mode,
        "stop": stop or [],
        "max_tokens": max_tokens,
        "extra": extra or {},
    }
    model = MODELS[provider]
    if ingress == "openai":
        return _ask_openai(clients_[0], model, stream, spec)
    return _ask_anthropic(clients_[1], model, stream, spec)
