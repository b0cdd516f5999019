"""Anthropic adapter: canonical <-> Messages API in both directions, then against the mock upstream."""

from __future__ import annotations

import orjson
import pytest

from ai_gateway.errors import InvalidRequestError, ProviderError, UnsupportedFeatureError
from ai_gateway.providers._http import HttpClient
from ai_gateway.providers.anthropic import DEFAULT_MAX_TOKENS, AnthropicProvider
from ai_gateway.types import (
    ChatRequest,
    ImagePart,
    Message,
    NativeEvent,
    ResponseFormat,
    StreamEnd,
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
from tests.providers import (
    MARKER,
    live,
    request,
    scripted_complete,
    scripted_stream,
    settings,
    sse,
    text_of,
    user,
)
from tests.support import KEYS

WEATHER = Tool(
    "get_weather", "Weather for a city", {"type": "object", "properties": {"city": {"type": "string"}}}
)


def provider() -> AnthropicProvider:
    ps = settings(
        "anthropic", "https://api.anthropic.com", api_key="sk-ant-x", anthropic_version="2023-06-01"
    )
    return AnthropicProvider(ps, HttpClient())


def events_sse(*events: dict[str, object]) -> bytes:
    return b"".join(sse(e, event=str(e["type"])) for e in events)


# --- canonical -> wire ------------------------------------------------------------------------------


def test_system_goes_top_level_and_turns_alternate() -> None:
    msgs = [
        Message("system", [TextPart("be brief")]),
        user("first"),
        user("second"),
        Message(
            "assistant",
            [TextPart("let me look")],
            tool_calls=[
                ToolCall("tu_1", "get_weather", '{"city":"Paris"}'),
                ToolCall("tu_2", "get_weather", ""),
            ],
        ),
        Message("tool", [TextPart("sunny")], tool_call_id="tu_1"),
        Message("tool", [TextPart("no such city")], tool_call_id="tu_2", is_error=True),
        user("thanks"),
        Message("system", [TextPart("answer in French")]),
    ]
    payload = provider()._map_request(ChatRequest(model="x", messages=msgs), "claude-haiku-4-5", False)
    assert payload["model"] == "claude-haiku-4-5" and payload["max_tokens"] == DEFAULT_MAX_TOKENS
    assert payload["system"] == "be brief\n\nanswer in French"
    assert payload["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "first"}, {"type": "text", "text": "second"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "let me look"},
                {"type": "tool_use", "id": "tu_1", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "tu_2", "name": "get_weather", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "tu_1", "content": "sunny"},
                {"type": "tool_result", "tool_use_id": "tu_2", "content": "no such city", "is_error": True},
                {"type": "text", "text": "thanks"},
            ],
        },
    ]
    assert "stream" not in payload


def test_single_text_turn_is_a_string_and_extras_make_system_blocks() -> None:
    msgs = [
        Message("system", [TextPart("cached", extra={"cache_control": {"type": "ephemeral"}})]),
        user("hi"),
    ]
    payload = provider()._map_request(ChatRequest(model="x", messages=msgs), "m", True)
    assert payload["system"] == [{"type": "text", "text": "cached", "cache_control": {"type": "ephemeral"}}]
    assert payload["messages"] == [{"role": "user", "content": "hi"}]
    assert payload["stream"] is True


def test_images_by_base64_data_url_and_url() -> None:
    msg = Message(
        "user",
        [
            ImagePart(data="QUJD", media_type="image/png"),
            ImagePart(url="data:image/jpeg;base64,/9j/"),
            ImagePart(url="https://img.example/cat.webp", detail="high"),
            TextPart("what are these?"),
        ],
    )
    payload = provider()._map_request(ChatRequest(model="x", messages=[msg]), "m", False)
    assert payload["messages"][0]["content"][:3] == [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "QUJD"}},
        {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/"}},
        {"type": "image", "source": {"type": "url", "url": "https://img.example/cat.webp"}},
    ]


def test_tool_result_with_image_is_a_block_list() -> None:
    msg = Message(
        "tool", [TextPart("chart:"), ImagePart(data="QQ==", media_type="image/png")], tool_call_id="tu"
    )
    payload = provider()._map_request(ChatRequest(model="x", messages=[msg]), "m", False)
    assert payload["messages"][0]["content"][0]["content"] == [
        {"type": "text", "text": "chart:"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "QQ=="}},
    ]


def test_sampling_stop_tools_and_user() -> None:
    req = request(
        max_tokens=100,
        temperature=0.5,
        top_p=0.9,
        stop=["END"],
        user="u-1",
        tools=[WEATHER],
        tool_choice=ToolChoice("auto", parallel=False),
    )
    payload = provider()._map_request(req, "m", False)
    assert (payload["max_tokens"], payload["temperature"], payload["top_p"]) == (100, 0.5, 0.9)
    assert payload["stop_sequences"] == ["END"] and payload["metadata"] == {"user_id": "u-1"}
    assert payload["tools"] == [
        {"name": "get_weather", "input_schema": WEATHER.parameters, "description": "Weather for a city"}
    ]
    assert payload["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}


@pytest.mark.parametrize(
    ("choice", "wire"),
    [
        (ToolChoice("none"), {"type": "none"}),
        (ToolChoice("required"), {"type": "any"}),
        (ToolChoice("named", name="get_weather"), {"type": "tool", "name": "get_weather"}),
    ],
)
def test_tool_choice_modes(choice: ToolChoice, wire: dict[str, object]) -> None:
    assert (
        provider()._map_request(request(tools=[WEATHER], tool_choice=choice), "m", False)["tool_choice"]
        == wire
    )


def test_extra_passes_through_and_thinking_budget_raises_default_max_tokens() -> None:
    req = request(extra={"anthropic": {"thinking": {"type": "enabled", "budget_tokens": 2000}, "top_k": 5}})
    payload = provider()._map_request(req, "m", False)
    assert payload["thinking"] == {"type": "enabled", "budget_tokens": 2000} and payload["top_k"] == 5
    assert payload["max_tokens"] == DEFAULT_MAX_TOKENS + 2000


def test_headers() -> None:
    headers = provider()._headers()
    assert headers["x-api-key"] == "sk-ant-x" and headers["anthropic-version"] == "2023-06-01"
    assert "Authorization" not in headers
    assert provider()._url(False) == "https://api.anthropic.com/v1/messages"


@pytest.mark.parametrize(
    ("req", "param", "words"),
    [
        (request(response_format=ResponseFormat("json_object")), "response_format", "JSON mode"),
        (request(seed=1), "seed", "seed"),
        (request(temperature=1.5), "temperature", "temperature"),
        (
            ChatRequest(model="m", messages=[Message("assistant", [ImagePart(url="https://x/y.png")])]),
            "messages[0].content[0]",
            "assistant",
        ),
        (
            ChatRequest(
                model="m", messages=[Message("user", [ImagePart(data="QQ==", media_type="image/bmp")])]
            ),
            "messages[0].content[0]",
            "image/bmp",
        ),
        (
            ChatRequest(
                model="m", messages=[Message("user", [ImagePart(url="data:image/svg+xml;base64,QQ==")])]
            ),
            "messages[0].content[0]",
            "svg",
        ),
        (
            ChatRequest(model="m", messages=[Message("user", [ImagePart(url="data:image/png,rawbytes")])]),
            "messages[0].content[0]",
            "base64",
        ),
    ],
)
def test_check_refuses_what_anthropic_cannot_carry(req: ChatRequest, param: str, words: str) -> None:
    with pytest.raises(UnsupportedFeatureError) as err:
        provider().check(req)
    assert err.value.param == param and words in err.value.message and "anthropic" in err.value.message


def test_json_schema_goes_as_structured_output() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    req = request(response_format=ResponseFormat("json_schema", schema=schema))
    req.extra["anthropic"] = {"output_config": {"effort": "low"}}
    provider().check(req)
    payload = provider()._map_request(req, "m", False)
    assert payload["output_config"] == {"effort": "low", "format": {"type": "json_schema", "schema": schema}}


def test_invalid_tool_arguments_name_the_param() -> None:
    msg = Message("assistant", [], tool_calls=[ToolCall("tu", "f", "[1, 2]")])
    for call in (provider().check, lambda r: provider()._map_request(r, "m", False)):
        with pytest.raises(InvalidRequestError) as err:
            call(ChatRequest(model="m", messages=[user("x"), msg]))
        assert err.value.param == "messages[1].tool_calls[0].function.arguments"


# --- wire -> canonical ------------------------------------------------------------------------------


def test_processes_response_blocks_usage_and_stop() -> None:
    body = {
        "id": "msg_1",
        "type": "message",
        "model": "claude-x",
        "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "s"},
            {"type": "text", "text": "Let me check."},
            {"type": "tool_use", "id": "tu_1", "name": "get_weather", "input": {"city": "Paris"}},
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 10,
            "cache_read_input_tokens": 100,
            "cache_creation_input_tokens": 5,
            "output_tokens": 7,
        },
    }
    resp = scripted_complete(provider(), body)
    assert (resp.id, resp.model, resp.text(), resp.finish_reason) == (
        "msg_1",
        "claude-x",
        "Let me check.",
        "tool_calls",
    )
    assert resp.tool_calls == [ToolCall("tu_1", "get_weather", '{"city":"Paris"}')]
    assert resp.usage == Usage(115, 7, cached_input_tokens=100, cache_creation_tokens=5)


@pytest.mark.parametrize(
    ("reason", "finish"),
    [
        ("end_turn", "stop"),
        ("max_tokens", "length"),
        ("stop_sequence", "stop"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
    ],
)
def test_stop_reasons(reason: str, finish: str) -> None:
    body = {
        "id": "m",
        "content": [],
        "stop_reason": reason,
        "stop_sequence": "END" if reason == "stop_sequence" else None,
        "usage": {},
    }
    resp = scripted_complete(provider(), body)
    assert resp.finish_reason == finish
    assert resp.stop_sequence == ("END" if reason == "stop_sequence" else None)


def _stream_events() -> list[dict[str, object]]:
    return [
        {
            "type": "message_start",
            "message": {
                "id": "msg_s",
                "model": "claude-x",
                "usage": {"input_tokens": 20, "cache_read_input_tokens": 30, "output_tokens": 1},
            },
        },
        {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "hmm"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
        {"type": "ping"},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Hi"}},
        {"type": "content_block_stop", "index": 1},
        {
            "type": "content_block_start",
            "index": 2,
            "content_block": {"type": "tool_use", "id": "tu_1", "name": "f", "input": {}},
        },
        {
            "type": "content_block_delta",
            "index": 2,
            "delta": {"type": "input_json_delta", "partial_json": ""},
        },
        {
            "type": "content_block_delta",
            "index": 2,
            "delta": {"type": "input_json_delta", "partial_json": '{"a":'},
        },
        {
            "type": "content_block_delta",
            "index": 2,
            "delta": {"type": "input_json_delta", "partial_json": "1}"},
        },
        {"type": "content_block_stop", "index": 2},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use", "stop_sequence": None},
            "usage": {"output_tokens": 15},
        },
        {"type": "message_stop"},
    ]


def test_stream_full_sequence() -> None:
    events, error = scripted_stream(provider(), events_sse(*_stream_events()))
    assert error is None
    usage = Usage(50, 15, cached_input_tokens=30)
    thinking = {"type": "thinking", "thinking": ""}
    assert events == [
        StreamStart("msg_s", "claude-x"),
        UsageEvent(Usage(50, 1, cached_input_tokens=30)),
        # The thinking block goes on verbatim, for an Anthropic-dialect client to send back.
        NativeEvent("anthropic", {"type": "content_block_start", "content_block": thinking}),
        NativeEvent(
            "anthropic",
            {"type": "content_block_delta", "delta": {"type": "thinking_delta", "thinking": "hmm"}},
        ),
        NativeEvent("anthropic", {"type": "content_block_stop"}),
        TextDelta("Hi"),
        ToolCallDelta(0, "tu_1", "f", ""),
        ToolCallDelta(0, None, None, '{"a":'),
        ToolCallDelta(0, None, None, "1}"),
        UsageEvent(usage),
        StreamEnd("tool_calls", usage),
    ]


def test_stream_without_message_stop_is_reset() -> None:
    events, error = scripted_stream(provider(), events_sse(*_stream_events()[:7]))
    assert error is not None and error.kind == "reset" and text_of(events) == "Hi"


@pytest.mark.parametrize(("kind", "status"), [("overloaded_error", 529), ("api_error", 500)])
def test_stream_error_event(kind: str, status: int) -> None:
    failure = {"type": "error", "error": {"type": kind, "message": f"Overloaded {MARKER}"}}
    events, error = scripted_stream(provider(), events_sse(*_stream_events()[:7], failure))
    assert error is not None and (error.kind, error.status, error.retryable) == ("status", status, True)
    assert MARKER not in error.message and text_of(events) == "Hi"


# --- against the mock upstream ------------------------------------------------------------------------


@pytest.fixture
def an(upstream):  # type: ignore[no-untyped-def]
    return live(AnthropicProvider, settings("anthropic", upstream.url, api_key=KEYS["anthropic"]))


def test_live_complete_and_stream(an, upstream) -> None:  # type: ignore[no-untyped-def]
    req = ChatRequest(model="m", messages=[Message("system", [TextPart("sys")]), user("hello there")])
    resp = an.complete(req)
    assert resp.text() == "mock reply: hello there" and resp.usage == Usage(3, 4)
    sent = upstream.calls_log()[-1]
    assert sent["body"]["system"] == "sys" and sent["body"]["max_tokens"] == DEFAULT_MAX_TOKENS
    assert sent["headers"].get("anthropic-version") or sent["headers"].get("Anthropic-Version")
    events, error = an.stream(request("a b"))
    assert error is None and text_of(events) == "mock reply: a b"
    assert isinstance(events[-1], StreamEnd) and events[-1].usage == Usage(2, 4)


def test_live_stop_sequence(an) -> None:  # type: ignore[no-untyped-def]
    resp = an.complete(request("one two three", stop=["two"]))
    assert resp.finish_reason == "stop" and resp.stop_sequence == "two"


def test_live_tool_call(an) -> None:  # type: ignore[no-untyped-def]
    resp = an.complete(request("weather?", tools=[WEATHER], tool_choice=ToolChoice("required")))
    assert resp.finish_reason == "tool_calls" and orjson.loads(resp.tool_calls[0].arguments) == {
        "arg": "value"
    }
    events, error = an.stream(request("weather?", tools=[WEATHER], tool_choice=ToolChoice("required")))
    args = "".join(e.arguments for e in events if isinstance(e, ToolCallDelta))
    assert error is None and orjson.loads(args) == {"arg": "value"}


def test_live_overloaded_and_mid_stream_error(an) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ProviderError) as err:
        an.complete(request("[[mock status=529]] hi"))
    assert (err.value.status, err.value.retryable) == (529, True) and MARKER not in err.value.message
    events, error = an.stream(request("[[mock error_after=1]] a b c"))
    assert isinstance(events[0], StreamStart)
    assert error is not None and error.status == 529 and MARKER not in error.message


def test_live_drop_and_bad_json(an) -> None:  # type: ignore[no-untyped-def]
    _, error = an.stream(request("[[mock drop_after=2]] a b c d"))
    assert error is not None and error.kind == "reset"
    _, error = an.stream(request("[[mock bad_json=1]] a b c d"))
    assert error is not None and error.kind == "bad_response"
    with pytest.raises(ProviderError) as err:
        an.complete(request("[[mock bad_json=1]] hi"))
    assert err.value.kind == "bad_response"
