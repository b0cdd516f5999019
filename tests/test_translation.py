"""The translation matrix: ingress dialect x provider x stream/non-stream x feature, every cell a test.

Each cell asks through the official SDK of its dialect (openai for Chat Completions, anthropic for
Messages) and proves the feature was carried, not just accepted: the mock upstream's `echo` directive
answers with what it saw on its own wire (system prompt, roles, images, tool calls and results),
JSON modes answer JSON, stop sequences cut, cache counts come back.

Opt-outs (`OPT_OUTS`) are the combinations a target truly cannot carry; their cells assert the clear
400 naming the feature and the provider, and that no upstream was called. The Anthropic dialect has
no schema-less JSON mode, so it has no `json_object` cell (its JSON mode is `json_schema`).
"""

from __future__ import annotations

from typing import Any

import anthropic
import openai
import pytest

from ai_gateway.testing._mock_inspect import inspect
from tests.support import PROVIDERS, Proc, Upstreams
from tests.translation_support import (
    CLOCK,
    IMAGE_URL,
    INGRESSES,
    MODELS,
    PNG_B64,
    WEATHER,
    Call,
    Ingress,
    Result,
    Turn,
    ask,
    clients,
    user,
)

FEATURES = (
    "text",
    "system",
    "tools",
    "tool_choice",
    "tool_none",
    "parallel_tools",
    "tool_results",
    "images",
    "image_urls",
    "json_object",
    "json_schema",
    "stop",
    "usage",
)
# (ingress or "*", provider, feature) -> the words the 400 must contain, and why.
OPT_OUTS: dict[tuple[str, str, str], tuple[str, str]] = {
    ("*", "ollama", "tool_choice"): ("cannot force", "Ollama has no tool_choice; the model always decides"),
    ("*", "ollama", "image_urls"): ("http(s) URL", "Ollama takes images only inline, as base64"),
    ("openai", "anthropic", "json_object"): (
        "schema-less JSON mode",
        "Anthropic structured outputs need a schema; json_schema is carried",
    ),
}
SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "temp": {"type": "integer"}},
    "required": ["city", "temp"],
    "additionalProperties": False,
}
CALL_W = Call("call_w1", "get_weather", {"city": "Paris"})
CALL_T = Call("call_t2", "get_time", {})


def _cells() -> list[Any]:
    cells = []
    for ingress in INGRESSES:
        for provider in PROVIDERS:
            for stream in (False, True):
                for feature in FEATURES:
                    if ingress == "anthropic" and feature == "json_object":
                        continue
                    cell_id = f"{ingress}-{provider}-{'stream' if stream else 'once'}-{feature}"
                    cells.append(pytest.param(ingress, provider, stream, feature, id=cell_id))
    return cells


def _opt_out(ingress: str, provider: str, feature: str) -> tuple[str, str] | None:
    return OPT_OUTS.get((ingress, provider, feature)) or OPT_OUTS.get(("*", provider, feature))


@pytest.fixture(scope="module")
def sdk(gateway: Proc) -> tuple[openai.OpenAI, anthropic.Anthropic]:
    return clients(gateway)


def _echo(result: Result) -> dict[str, Any]:
    seen: dict[str, Any] = result.json()
    return seen


def _request(feature: str) -> dict[str, Any]:
    """The conversation and options each feature sends (the same through both dialects)."""
    tools = [WEATHER, CLOCK]
    directive = '[[mock tool=1 tool_args=\'{"city": "Paris"}\']]'
    history = [
        user("weather and time in Paris?"),
        Turn("assistant", "checking", calls=[CALL_W, CALL_T]),
        Turn("results", results=[(CALL_W, "sunny, 21C", False), (CALL_T, "clock broken", True)]),
    ]
    return {
        "text": {"turns": [user("hello matrix world")]},
        "system": {
            "turns": [user("first"), Turn("assistant", "ok"), user("what did you see [[mock echo]]")],
            "system": "be brief",
        },
        "tools": {"turns": [user(f"weather? {directive}")], "tools": tools},
        "tool_choice": {
            "turns": [user("what time is it")],
            "tools": tools,
            "tool_choice": ("named", "get_time"),
        },
        "tool_none": {"turns": [user(f"no tools please {directive}")], "tools": tools, "tool_choice": "none"},
        "parallel_tools": {"turns": [user("both [[mock tools=2 preamble='let me check']]")], "tools": tools},
        "tool_results": {"turns": history, "tools": tools},
        "images": {"turns": [user("describe [[mock echo]]", [("base64", PNG_B64)])]},
        "image_urls": {"turns": [user("describe [[mock echo]]", [("url", IMAGE_URL)])]},
        "json_object": {"turns": [user("weather as json")], "json_mode": "object"},
        "json_schema": {"turns": [user("weather as json")], "json_mode": SCHEMA},
        "stop": {"turns": [user("one two three four")], "stop": ["three"]},
        "usage": {"turns": [user("count these four words [[mock cached=2 cache_write=1]]")]},
    }[feature]


@pytest.mark.parametrize(("ingress", "provider", "stream", "feature"), _cells())
def test_cell(
    sdk: tuple[openai.OpenAI, anthropic.Anthropic],
    mocks: Upstreams,
    ingress: Ingress,
    provider: str,
    stream: bool,
    feature: str,
) -> None:
    spec = _request(feature)
    opt_out = _opt_out(ingress, provider, feature)
    if opt_out is not None:
        error = anthropic.BadRequestError if ingress == "anthropic" else openai.BadRequestError
        with pytest.raises(error) as exc:
            ask(sdk, ingress, provider, stream, **spec)
        assert exc.value.status_code == 400
        message = str(exc.value)
        assert opt_out[0] in message and provider in message, message
        assert mocks.total_calls() == 0
        return
    result = ask(sdk, ingress, provider, stream, **spec)
    assert result.headers["x-aigw-provider"] == provider
    CHECKS[feature](result, ingress, provider)
    if feature == "tool_results" and provider != "ollama":
        # The mock, like the real upstream, refuses results that do not answer the calls by id.
        refs = [r["ref"] for r in _sent_results(mocks, provider)]
        assert refs == ["call_w1", "call_t2"]


def _sent_results(mocks: Upstreams, provider: str) -> list[dict[str, Any]]:
    return inspect(provider, mocks.mocks[provider].calls_log()[-1]["body"]).tool_results


# --- what each feature must show ----------------------------------------------------------------------


def _text(r: Result, ingress: str, provider: str) -> None:
    assert r.text == "mock reply: hello matrix world"
    assert r.finish == "stop" and r.calls == []


def _system(r: Result, ingress: str, provider: str) -> None:
    seen = _echo(r)
    assert seen["system"] == "be brief"
    # Anthropic takes the system prompt top-level; the others as the first message.
    expected = (
        ["user", "assistant", "user"] if provider == "anthropic" else ["system", "user", "assistant", "user"]
    )
    assert seen["roles"] == expected


def _tools(r: Result, ingress: str, provider: str) -> None:
    assert r.finish == "tool_calls" and len(r.calls) == 1
    assert r.calls[0].name == "get_weather" and r.calls[0].args == {"city": "Paris"} and r.calls[0].id


def _tool_choice(r: Result, ingress: str, provider: str) -> None:
    assert [c.name for c in r.calls] == ["get_time"] and r.finish == "tool_calls"


def _tool_none(r: Result, ingress: str, provider: str) -> None:
    assert r.calls == [] and r.text.startswith("mock reply: no tools please") and r.finish == "stop"


def _parallel(r: Result, ingress: str, provider: str) -> None:
    assert r.text == "let me check"
    assert [c.name for c in r.calls] == ["get_weather", "get_time"] and r.finish == "tool_calls"
    assert len({c.id for c in r.calls}) == 2 and all(c.args == {"arg": "value"} for c in r.calls)
    if ingress == "anthropic":
        message = r.raw[0]
        assert [b.type for b in message.content] == ["text", "tool_use", "tool_use"]


def _tool_results(r: Result, ingress: str, provider: str) -> None:
    # Both results reached the upstream and the final answer is built from them.
    flagged = ingress == "anthropic" and provider == "anthropic"
    second = "clock broken" if flagged or ingress == "openai" else "Error: clock broken"
    assert r.text == f"mock reply: sunny, 21C | {second}"
    assert r.finish == "stop" and r.calls == []


def _images(r: Result, ingress: str, provider: str) -> None:
    assert _echo(r)["images"] == ["base64"]


def _image_urls(r: Result, ingress: str, provider: str) -> None:
    assert _echo(r)["images"] == ["url"]


def _json_object(r: Result, ingress: str, provider: str) -> None:
    assert r.json() == {"reply": "mock reply: weather as json"}


def _json_schema(r: Result, ingress: str, provider: str) -> None:
    assert r.json() == {"city": "mock reply: weather as json", "temp": 1}


def _stop(r: Result, ingress: str, provider: str) -> None:
    assert r.text == "mock reply: one two " and r.finish == "stop"
    if ingress == "anthropic":
        # Only Anthropic says which sequence matched; the others' stops render as end_turn.
        message = r.raw[0]
        if provider == "anthropic":
            assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "three")
        else:
            assert (message.stop_reason, message.stop_sequence) == ("end_turn", None)


def _usage(r: Result, ingress: str, provider: str) -> None:
    cached = 0 if provider == "ollama" else 2  # Ollama reports no prompt-cache hits
    assert (r.usage["input"], r.usage["output"], r.usage["cached"]) == (4, 6, cached)
    if ingress == "anthropic":
        # OpenAI's usage has no cache-write count; OpenRouter's and Anthropic's do.
        assert r.usage["cache_write"] == (1 if provider in ("anthropic", "openrouter") else 0)
        assert r.raw[0].usage.input_tokens == 4 - cached - r.usage["cache_write"]


CHECKS = {
    "text": _text,
    "system": _system,
    "tools": _tools,
    "tool_choice": _tool_choice,
    "tool_none": _tool_none,
    "parallel_tools": _parallel,
    "tool_results": _tool_results,
    "images": _images,
    "image_urls": _image_urls,
    "json_object": _json_object,
    "json_schema": _json_schema,
    "stop": _stop,
    "usage": _usage,
}


def test_every_feature_has_a_check() -> None:
    assert set(CHECKS) == set(FEATURES)


# --- the Done-when round trips ------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_anthropic_sdk_streamed_tool_round_trip(
    sdk: tuple[openai.OpenAI, anthropic.Anthropic], mocks: Upstreams, provider: str
) -> None:
    """Claude-style agent loop: stream a tool call, run the tool, stream the final answer."""
    client = sdk[1]
    tools = [{"name": WEATHER.name, "description": WEATHER.description, "input_schema": WEATHER.schema}]
    messages: list[Any] = [
        {"role": "user", "content": 'weather in Paris? [[mock tool=1 tool_args=\'{"city": "Paris"}\']]'}
    ]
    model = MODELS[provider]
    with client.messages.stream(model=model, max_tokens=100, tools=tools, messages=messages) as s:
        first = s.get_final_message()
    assert first.stop_reason == "tool_use"
    call = next(b for b in first.content if b.type == "tool_use")
    assert call.name == "get_weather" and call.input == {"city": "Paris"}
    messages += [
        {"role": "assistant", "content": first.content},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny, 21C"}],
        },
    ]
    with client.messages.stream(model=model, max_tokens=100, tools=tools, messages=messages) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == "mock reply: sunny, 21C" and final.stop_reason == "end_turn"
    assert mocks.mocks[provider].calls() == 2


def test_openai_sdk_streamed_tool_round_trip_to_anthropic(
    sdk: tuple[openai.OpenAI, anthropic.Anthropic], mocks: Upstreams
) -> None:
    client = sdk[0]
    tools = [{"type": "function", "function": {"name": WEATHER.name, "parameters": WEATHER.schema}}]
    messages: list[Any] = [
        {"role": "user", "content": 'weather in Paris? [[mock tool=1 tool_args=\'{"city": "Paris"}\']]'}
    ]
    kw: dict[str, Any] = {"model": "anthropic/claude-haiku-4-5", "tools": tools, "stream": True}
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in client.chat.completions.create(messages=messages, **kw):
        for tc in chunk.choices[0].delta.tool_calls or [] if chunk.choices else []:
            entry = calls.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
            entry["id"] = tc.id or entry["id"]
            entry["name"] = (tc.function and tc.function.name) or entry["name"]
            entry["arguments"] += (tc.function and tc.function.arguments) or ""
        finish = (chunk.choices and chunk.choices[0].finish_reason) or finish
    assert finish == "tool_calls" and list(calls) == [0]
    call = calls[0]
    assert call["name"] == "get_weather" and call["id"].startswith("toolu_")
    assert call["arguments"].replace(" ", "") == '{"city":"Paris"}'
    messages += [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call["id"],
                    "type": "function",
                    "function": {"name": call["name"], "arguments": call["arguments"]},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call["id"], "content": "sunny, 21C"},
    ]
    text = "".join(
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(messages=messages, **kw)
        if c.choices
    )
    assert text == "mock reply: sunny, 21C"
    assert mocks.mocks["anthropic"].calls() == 2
