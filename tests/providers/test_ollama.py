"""Ollama adapter: canonical <-> native /api/chat (NDJSON streams), then against the mock upstream."""

from __future__ import annotations

import orjson
import pytest

from ai_gateway.errors import InvalidRequestError, ProviderError, UnsupportedFeatureError
from ai_gateway.providers._http import HttpClient
from ai_gateway.providers.ollama import OllamaProvider
from ai_gateway.types import (
    ChatRequest,
    ImagePart,
    Message,
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
)
from tests.providers import (
    MARKER,
    live,
    request,
    run,
    scripted_complete,
    scripted_stream,
    settings,
    text_of,
    user,
)

WEATHER = Tool(
    "get_weather", "Weather for a city", {"type": "object", "properties": {"city": {"type": "string"}}}
)


def provider(api_key: str | None = None) -> OllamaProvider:
    return OllamaProvider(settings("ollama", "http://localhost:11434", api_key=api_key), HttpClient())


def ndjson(*objs: dict[str, object]) -> bytes:
    return b"".join(orjson.dumps(o) + b"\n" for o in objs)


# --- canonical -> wire ------------------------------------------------------------------------------


def test_maps_messages_images_tool_calls_and_results() -> None:
    msgs = [
        Message("system", [TextPart("be brief")]),
        Message(
            "user",
            [
                TextPart("look"),
                ImagePart(data="QUJD", media_type="image/png"),
                ImagePart(url="data:image/gif;base64,R0lG"),
            ],
        ),
        Message("assistant", [], tool_calls=[ToolCall("call_1", "get_weather", '{"city":"Paris"}')]),
        Message("tool", [TextPart("sunny")], tool_call_id="call_1"),
        user("thanks"),
    ]
    payload = provider()._map_request(ChatRequest(model="x", messages=msgs), "llama3.2", False)
    assert payload["model"] == "llama3.2" and payload["stream"] is False
    assert payload["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "look", "images": ["QUJD", "R0lG"]},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
        },
        {"role": "tool", "content": "sunny", "tool_name": "get_weather"},
        {"role": "user", "content": "thanks"},
    ]
    assert "options" not in payload and "tools" not in payload and "format" not in payload


def test_stream_flag_is_always_explicit() -> None:
    assert provider()._map_request(request(), "m", True)["stream"] is True
    assert provider()._map_request(request(), "m", False)["stream"] is False


def test_maps_options_tools_and_format() -> None:
    req = request(
        max_tokens=64,
        temperature=0.1,
        top_p=0.5,
        stop=["\n\n"],
        seed=3,
        tools=[WEATHER],
        tool_choice=ToolChoice("auto"),
        response_format=ResponseFormat("json_schema", schema={"type": "object", "properties": {}}),
        extra={"ollama": {"options": {"num_ctx": 8192}, "keep_alive": "10m"}},
    )
    payload = provider()._map_request(req, "m", False)
    assert payload["options"] == {
        "num_predict": 64,
        "temperature": 0.1,
        "top_p": 0.5,
        "seed": 3,
        "stop": ["\n\n"],
        "num_ctx": 8192,
    }
    assert payload["format"] == {"type": "object", "properties": {}}
    assert payload["keep_alive"] == "10m"
    assert payload["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": WEATHER.parameters,
            },
        }
    ]


def test_json_object_and_tool_choice_none() -> None:
    req = request(
        response_format=ResponseFormat("json_object"), tools=[WEATHER], tool_choice=ToolChoice("none")
    )
    payload = provider()._map_request(req, "m", False)
    assert payload["format"] == "json" and "tools" not in payload


def test_headers() -> None:
    assert "Authorization" not in provider()._headers()
    assert provider("k")._headers()["Authorization"] == "Bearer k"
    assert provider()._url(True) == "http://localhost:11434/api/chat"


@pytest.mark.parametrize(
    ("req", "param"),
    [
        (
            ChatRequest(model="m", messages=[Message("user", [ImagePart(url="https://x/cat.png")])]),
            "messages[0].content[0]",
        ),
        (request(tools=[WEATHER], tool_choice=ToolChoice("required")), "tool_choice"),
        (request(tools=[WEATHER], tool_choice=ToolChoice("named", name="get_weather")), "tool_choice"),
        (request(tools=[WEATHER], tool_choice=ToolChoice("auto", parallel=False)), "parallel_tool_calls"),
    ],
)
def test_check_refuses_what_ollama_cannot_carry(req: ChatRequest, param: str) -> None:
    with pytest.raises(UnsupportedFeatureError) as err:
        provider().check(req)
    assert err.value.param == param and "ollama" in err.value.message


def test_image_url_message_says_what_to_do() -> None:
    req = ChatRequest(model="m", messages=[Message("user", [ImagePart(url="http://x/cat.png")])])
    with pytest.raises(UnsupportedFeatureError, match="send them inline as base64 or a data: URL"):
        provider().check(req)


def test_check_refuses_unparseable_tool_arguments() -> None:
    msg = Message("assistant", [], tool_calls=[ToolCall("c", "f", "{nope")])
    with pytest.raises(InvalidRequestError) as err:
        provider().check(ChatRequest(model="m", messages=[user("x"), msg]))
    assert err.value.param == "messages[1].tool_calls[0].function.arguments"


def test_check_accepts_the_rest() -> None:
    provider().check(request(tools=[WEATHER], tool_choice=ToolChoice("none", parallel=False)))
    provider().check(
        ChatRequest(model="m", messages=[Message("user", [ImagePart(url="data:image/png;base64,QQ==")])])
    )


# --- wire -> canonical ------------------------------------------------------------------------------


def test_processes_response_with_tool_calls() -> None:
    body = {
        "model": "llama3.2",
        "message": {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
        },
        "done": True,
        "done_reason": "stop",
        "prompt_eval_count": 12,
        "eval_count": 3,
    }
    resp = scripted_complete(provider(), body)
    assert resp.id.startswith("chatcmpl-") and resp.model == "llama3.2"
    assert resp.finish_reason == "tool_calls" and resp.content == []
    [call] = resp.tool_calls
    assert (
        call.id.startswith("call_")
        and call.name == "get_weather"
        and orjson.loads(call.arguments) == {"city": "Paris"}
    )
    assert resp.usage == Usage(12, 3)


def test_processes_length_and_missing_usage() -> None:
    resp = scripted_complete(
        provider(), {"model": "m", "message": {"content": "cut"}, "done": True, "done_reason": "length"}
    )
    assert resp.text() == "cut" and resp.finish_reason == "length" and resp.usage is None


def test_error_body_is_provider_error() -> None:
    with pytest.raises(ProviderError) as err:
        scripted_complete(provider(), {"error": f"runner died {MARKER}"})
    assert err.value.kind == "status" and MARKER not in err.value.message


def test_stream_text_tools_and_done() -> None:
    body = ndjson(
        {"model": "m", "message": {"role": "assistant", "content": "Hel"}, "done": False},
        {"model": "m", "message": {"role": "assistant", "content": "lo"}, "done": False},
        {
            "model": "m",
            "message": {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"function": {"name": "f", "arguments": {"a": 1}}},
                    {"function": {"name": "g", "arguments": {}}},
                ],
            },
            "done": False,
        },
        {
            "model": "m",
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": "stop",
            "prompt_eval_count": 5,
            "eval_count": 7,
        },
    )
    events, error = scripted_stream(provider(), b"\n" + body)
    assert error is None
    assert (
        isinstance(events[0], StreamStart) and events[0].id.startswith("chatcmpl-") and events[0].model == "m"
    )
    assert events[1:3] == [TextDelta("Hel"), TextDelta("lo")]
    calls = [e for e in events if isinstance(e, ToolCallDelta)]
    assert [(c.index, c.name, c.arguments) for c in calls] == [(0, "f", '{"a":1}'), (1, "g", "{}")]
    assert all(c.id and c.id.startswith("call_") for c in calls)
    assert events[-1] == StreamEnd("tool_calls", Usage(5, 7))


def test_stream_without_done_is_reset() -> None:
    events, error = scripted_stream(
        provider(), ndjson({"model": "m", "message": {"content": "a"}, "done": False})
    )
    assert error is not None and error.kind == "reset" and text_of(events) == "a"


def test_stream_error_line() -> None:
    body = ndjson({"model": "m", "message": {"content": "a"}, "done": False}, {"error": f"boom {MARKER}"})
    _, error = scripted_stream(provider(), body)
    assert error is not None and error.kind == "status" and error.retryable and MARKER not in error.message


def test_list_models_strips_latest() -> None:
    p = provider()

    async def get_json(url, headers, timeouts, deadline, label):  # type: ignore[no-untyped-def]
        assert url == "http://localhost:11434/api/tags"
        return {"models": [{"name": "llama3.2:latest"}, {"name": "qwen2.5:0.5b"}, {"model": "llama3.2"}]}

    p._http.get_json = get_json  # type: ignore[method-assign]
    assert run(p.list_models(1e12)) == ["llama3.2", "qwen2.5:0.5b"]


# --- against the mock upstream ------------------------------------------------------------------------


@pytest.fixture
def ol(upstream):  # type: ignore[no-untyped-def]
    return live(OllamaProvider, settings("ollama", upstream.url))


def test_live_complete_and_stream(ol, upstream) -> None:  # type: ignore[no-untyped-def]
    resp = ol.complete(request("hi there"), "llama3.2")
    assert resp.text() == "mock reply: hi there" and resp.usage == Usage(2, 4)
    assert upstream.calls_log()[-1]["body"]["stream"] is False
    events, error = ol.stream(request("a b c"), "llama3.2")
    assert error is None and text_of(events) == "mock reply: a b c"
    assert isinstance(events[-1], StreamEnd) and events[-1].usage == Usage(3, 5)


def test_live_tool_call(ol) -> None:  # type: ignore[no-untyped-def]
    resp = ol.complete(request("[[mock tool=1]] weather", tools=[WEATHER]), "llama3.2")
    assert resp.finish_reason == "tool_calls" and resp.tool_calls[0].arguments == '{"arg":"value"}'
    events, _ = ol.stream(request("[[mock tool=1]] weather", tools=[WEATHER]), "llama3.2")
    assert [e.name for e in events if isinstance(e, ToolCallDelta)] == ["get_weather"]
    assert isinstance(events[-1], StreamEnd) and events[-1].finish_reason == "tool_calls"


def test_live_errors(ol) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ProviderError) as err:
        ol.complete(request("hi"), "missing-model")
    assert err.value.status == 404 and MARKER not in err.value.message
    with pytest.raises(ProviderError) as err:
        ol.complete(request("[[mock status=500]] hi"), "llama3.2")
    assert err.value.status == 500 and err.value.retryable and MARKER not in err.value.message
    events, error = ol.stream(request("[[mock drop_after=1]] a b c"), "llama3.2")
    assert error is not None and error.kind == "reset" and isinstance(events[0], StreamStart)
    events, error = ol.stream(request("[[mock error_after=1]] a b c"), "llama3.2")
    assert error is not None and error.kind == "status" and MARKER not in error.message
    _, error = ol.stream(request("[[mock bad_json=1]] a b c"), "llama3.2")
    assert error is not None and error.kind == "bad_response"


def test_live_list_models(ol) -> None:  # type: ignore[no-untyped-def]
    assert ol.models() == ["llama3.2", "qwen2.5:0.5b"]
