"""OpenAI adapter: canonical <-> Chat Completions in both directions, then against the mock upstream."""

from __future__ import annotations

from decimal import Decimal

import pytest

from ai_gateway.errors import ProviderError, UnsupportedFeatureError
from ai_gateway.providers._http import HttpClient
from ai_gateway.providers.openai import OpenAIProvider
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
    UsageEvent,
)
from tests.providers import (
    MARKER,
    live,
    request,
    run,
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


def provider(base_url: str = "http://compat.local/v1", api_key: str | None = "sk-test") -> OpenAIProvider:
    return OpenAIProvider(settings("openai", base_url, api_key=api_key), HttpClient())


def conversation() -> list[Message]:
    return [
        Message("system", [TextPart("be brief")]),
        Message(
            "user",
            [
                TextPart("what is this?"),
                ImagePart(url="https://img.example/cat.png", detail="low"),
                ImagePart(data="QUJD", media_type="image/jpeg"),
            ],
        ),
        Message("assistant", [], tool_calls=[ToolCall("call_1", "get_weather", '{"city":"Paris"}')]),
        Message("tool", [TextPart("sunny")], tool_call_id="call_1"),
        Message("assistant", [TextPart("It is sunny.")]),
        user("thanks"),
    ]


# --- canonical -> wire ------------------------------------------------------------------------------


def test_maps_messages_of_every_role() -> None:
    payload = provider()._map_request(ChatRequest(model="x", messages=conversation()), "gpt-4o", False)
    assert payload["model"] == "gpt-4o"
    assert payload["messages"] == [
        {"role": "system", "content": "be brief"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": "https://img.example/cat.png", "detail": "low"}},
                {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,QUJD"}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "assistant", "content": "It is sunny."},
        {"role": "user", "content": "thanks"},
    ]
    assert "stream" not in payload


def test_maps_sampling_tools_and_format() -> None:
    req = request(
        max_tokens=50,
        temperature=0.2,
        top_p=0.9,
        stop=["END"],
        seed=7,
        user="u-1",
        tools=[WEATHER],
        tool_choice=ToolChoice("named", name="get_weather", parallel=False),
        response_format=ResponseFormat("json_schema", schema={"type": "object"}, name="out", strict=True),
    )
    payload = provider()._map_request(req, "m", False)
    assert payload["max_tokens"] == 50 and "max_completion_tokens" not in payload
    assert (payload["temperature"], payload["top_p"], payload["stop"], payload["seed"], payload["user"]) == (
        0.2,
        0.9,
        ["END"],
        7,
        "u-1",
    )
    assert payload["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": WEATHER.parameters,
                "description": "Weather for a city",
            },
        }
    ]
    assert payload["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert payload["parallel_tool_calls"] is False
    assert payload["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "out", "schema": {"type": "object"}, "strict": True},
    }


@pytest.mark.parametrize("mode", ["auto", "none", "required"])
def test_tool_choice_modes_are_wire_strings(mode: str) -> None:
    req = request(tools=[WEATHER], tool_choice=ToolChoice(mode))  # type: ignore[arg-type]
    payload = provider()._map_request(req, "m", False)
    assert payload["tool_choice"] == mode
    assert "parallel_tool_calls" not in payload


def test_tool_choice_without_tools_is_not_sent() -> None:
    payload = provider()._map_request(request(tool_choice=ToolChoice("none", parallel=True)), "m", False)
    assert "tool_choice" not in payload and "parallel_tool_calls" not in payload and "tools" not in payload


def test_json_object_mode() -> None:
    payload = provider()._map_request(request(response_format=ResponseFormat("json_object")), "m", False)
    assert payload["response_format"] == {"type": "json_object"}


def test_api_openai_com_gets_max_completion_tokens() -> None:
    payload = provider("https://api.openai.com/v1")._map_request(request(max_tokens=9), "m", False)
    assert payload["max_completion_tokens"] == 9 and "max_tokens" not in payload


def test_streams_always_ask_for_usage() -> None:
    payload = provider()._map_request(request(stream=True, include_usage=False), "m", True)
    assert payload["stream"] is True
    assert payload["stream_options"] == {"include_usage": True}


def test_extra_passes_through() -> None:
    payload = provider()._map_request(
        request(extra={"openai": {"logprobs": True}, "x": {"y": 1}}), "m", False
    )
    assert payload["logprobs"] is True and "y" not in payload


def test_headers_carry_the_key_only_when_set() -> None:
    assert provider()._headers()["Authorization"] == "Bearer sk-test"
    assert "Authorization" not in provider(api_key=None)._headers()
    assert provider()._url(False) == "http://compat.local/v1/chat/completions"


def test_check_refuses_images_outside_user_messages() -> None:
    req = ChatRequest(model="m", messages=[Message("system", [ImagePart(url="https://x/y.png")])])
    with pytest.raises(UnsupportedFeatureError) as err:
        provider().check(req)
    assert err.value.param == "messages[0].content" and "openai" in err.value.message
    provider().check(ChatRequest(model="m", messages=conversation()))


# --- wire -> canonical ------------------------------------------------------------------------------


def test_processes_text_response_with_usage() -> None:
    body = {
        "id": "chatcmpl-1",
        "model": "gpt-4o-2024",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "length"}
        ],
        "usage": {
            "prompt_tokens": 100,
            "completion_tokens": 20,
            "prompt_tokens_details": {"cached_tokens": 60},
            "completion_tokens_details": {"reasoning_tokens": 5},
        },
    }
    resp = scripted_complete(provider(), body)
    assert (resp.id, resp.model, resp.text(), resp.finish_reason) == (
        "chatcmpl-1",
        "gpt-4o-2024",
        "hi",
        "length",
    )
    assert resp.usage == Usage(100, 20, cached_input_tokens=60, reasoning_tokens=5)


def test_processes_tool_calls_and_function_call_finish() -> None:
    body = {
        "id": "c",
        "model": "m",
        "choices": [
            {
                "message": {
                    "content": None,
                    "tool_calls": [
                        {"id": "call_9", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                    ],
                },
                "finish_reason": "function_call",
            }
        ],
    }
    resp = scripted_complete(provider(), body)
    assert resp.tool_calls == [ToolCall("call_9", "f", "{}")]
    assert resp.finish_reason == "tool_calls" and resp.content == [] and resp.usage is None


def test_content_filter_and_refusal() -> None:
    body = {
        "id": "c",
        "choices": [{"message": {"content": None, "refusal": "no"}, "finish_reason": "content_filter"}],
    }
    resp = scripted_complete(provider(), body)
    assert resp.text() == "no" and resp.finish_reason == "content_filter"


def test_error_object_in_a_200_body() -> None:
    with pytest.raises(ProviderError) as err:
        scripted_complete(provider(), {"error": {"message": f"boom {MARKER}", "code": 429}})
    assert (err.value.kind, err.value.status, err.value.retryable) == ("status", 429, True)
    assert MARKER not in err.value.message


def test_unexpected_shape_is_bad_response() -> None:
    with pytest.raises(ProviderError) as err:
        scripted_complete(provider(), {"id": "x", "choices": []})
    assert err.value.kind == "bad_response"


def _chunk(delta: dict[str, object], finish: str | None = None) -> dict[str, object]:
    return {
        "id": "chatcmpl-s",
        "model": "gpt-x",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def test_stream_text_tools_usage_and_done() -> None:
    body = b": keep-alive\n\n\n" + sse(
        _chunk({"role": "assistant", "content": ""}),
        _chunk({"content": "Hel"}),
        _chunk({"content": "lo"}),
        _chunk({"tool_calls": [{"index": 0, "id": "call_1", "function": {"name": "f", "arguments": ""}}]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"a":'}}]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}),
        _chunk({}, "tool_calls"),
        {"id": "chatcmpl-s", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}},
        "data: [DONE]",
    )
    events, error = scripted_stream(provider(), body)
    assert error is None
    assert events[0] == StreamStart("chatcmpl-s", "gpt-x")
    assert text_of(events) == "Hello"
    assert [e for e in events if isinstance(e, ToolCallDelta)] == [
        ToolCallDelta(0, "call_1", "f", ""),
        ToolCallDelta(0, None, None, '{"a":'),
        ToolCallDelta(0, None, None, "1}"),
    ]
    assert events[-2] == UsageEvent(Usage(3, 4))
    assert events[-1] == StreamEnd("tool_calls", Usage(3, 4))


def test_stream_without_done_but_finished_still_ends() -> None:
    events, error = scripted_stream(provider(), sse(_chunk({"content": "a"}), _chunk({}, "stop")))
    assert error is None and events[-1] == StreamEnd("stop", None)


def test_stream_cut_before_finish_is_a_reset() -> None:
    events, error = scripted_stream(provider(), sse(_chunk({"content": "a"})))
    assert isinstance(error, ProviderError) and error.kind == "reset" and error.retryable
    assert events == [StreamStart("chatcmpl-s", "gpt-x"), TextDelta("a")]


def test_stream_error_object_numeric_code() -> None:
    body = sse(_chunk({"content": "a"}), {"error": {"message": f"rate {MARKER}", "code": 429}})
    events, error = scripted_stream(provider(), body)
    assert error is not None and (error.kind, error.status) == ("status", 429)
    assert MARKER not in error.message and len(events) == 2


def test_stream_error_object_before_first_chunk_yields_nothing() -> None:
    events, error = scripted_stream(provider(), sse({"error": {"message": MARKER, "code": "server_error"}}))
    assert events == [] and error is not None and error.status == 502 and MARKER not in error.message


def test_stream_garbage_chunk_is_bad_response() -> None:
    _, error = scripted_stream(provider(), b"data: {not json\n\n")
    assert error is not None and error.kind == "bad_response"


# --- against the mock upstream ------------------------------------------------------------------------


@pytest.fixture
def oa(upstream):  # type: ignore[no-untyped-def]
    return live(OpenAIProvider, settings("openai", upstream.url + "/v1", api_key=KEYS["openai"]))


def test_live_complete(oa) -> None:  # type: ignore[no-untyped-def]
    resp = oa.complete(
        ChatRequest(model="m", messages=[Message("system", [TextPart("sys")]), user("hi there")])
    )
    assert resp.text() == "mock reply: hi there" and resp.model == "mock-model"
    assert resp.finish_reason == "stop" and resp.usage is not None and resp.usage.output_tokens == 4
    assert resp.usage.input_tokens == 3


def test_live_stream_has_usage_even_when_client_did_not_ask(oa, upstream) -> None:  # type: ignore[no-untyped-def]
    events, error = oa.stream(request("one two three", include_usage=False))
    assert error is None
    assert isinstance(events[0], StreamStart) and text_of(events) == "mock reply: one two three"
    end = events[-1]
    assert isinstance(end, StreamEnd) and end.usage is not None and end.usage.output_tokens == 5
    assert upstream.calls_log()[-1]["body"]["stream_options"] == {"include_usage": True}


def test_live_tool_call(oa) -> None:  # type: ignore[no-untyped-def]
    resp = oa.complete(request("[[mock tool=1]] weather?", tools=[WEATHER]))
    assert resp.finish_reason == "tool_calls" and resp.tool_calls[0].name == "get_weather"
    events, error = oa.stream(request("[[mock tool=1]] weather?", tools=[WEATHER]))
    args = "".join(e.arguments for e in events if isinstance(e, ToolCallDelta))
    assert error is None and args == '{"arg":"value"}'
    assert isinstance(events[-1], StreamEnd) and events[-1].finish_reason == "tool_calls"


def test_live_status_error_keeps_retry_after_and_drops_body(oa) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ProviderError) as err:
        oa.complete(request("[[mock status=503 retry_after=2]] hi"))
    assert (err.value.kind, err.value.status, err.value.retry_after, err.value.retryable) == (
        "status",
        503,
        2.0,
        True,
    )
    assert MARKER not in err.value.message


def test_live_bad_key_is_not_echoed(upstream) -> None:  # type: ignore[no-untyped-def]
    key = "invalid-key-0123456789abcdef0123456789"
    drive = live(OpenAIProvider, settings("openai", upstream.url + "/v1", api_key=key))
    with pytest.raises(ProviderError) as err:
        drive.complete(request())
    assert err.value.status == 401 and not err.value.retryable
    assert key not in err.value.message and err.value.upstream_message is None


def test_live_client_fault_is_400(oa) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ProviderError) as err:
        oa.complete(request("[[mock status=400]] hi"))
    assert err.value.client_fault and not err.value.retryable and MARKER not in err.value.message


def test_live_bad_json(oa) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ProviderError) as err:
        oa.complete(request("[[mock bad_json=1]] hi"))
    assert err.value.kind == "bad_response"
    _, error = oa.stream(request("[[mock bad_json=1]] hi"))
    assert error is not None and error.kind == "bad_response"


def test_live_stream_drop_is_reset(oa) -> None:  # type: ignore[no-untyped-def]
    events, error = oa.stream(request("[[mock drop_after=2]] a b c d e"))
    assert error is not None and error.kind == "reset" and MARKER not in error.message
    assert isinstance(events[0], StreamStart) and not isinstance(events[-1], StreamEnd)


def test_live_stream_error_event(oa) -> None:  # type: ignore[no-untyped-def]
    events, error = oa.stream(request("[[mock error_after=1]] a b c"))
    assert error is not None and (error.kind, error.status) == ("status", 502)
    assert MARKER not in error.message and text_of(events).strip() == "mock"


def test_live_max_tokens_length(oa) -> None:  # type: ignore[no-untyped-def]
    resp = oa.complete(request("a b c d e f", max_tokens=2))
    assert resp.finish_reason == "length" and resp.text() == "mock reply:"


def test_live_connect_error() -> None:
    drive = live(OpenAIProvider, settings("openai", "http://127.0.0.1:9/v1", api_key="k"))
    with pytest.raises(ProviderError) as err:
        drive.complete(request())
    assert err.value.kind == "connect"


def test_live_not_configured_makes_no_call(upstream) -> None:  # type: ignore[no-untyped-def]
    ps = settings("openai", upstream.url + "/v1", not_configured="set OPENAI_API_KEY")
    with pytest.raises(ProviderError) as err:
        live(OpenAIProvider, ps).complete(request())
    assert err.value.kind == "not_configured" and "OPENAI_API_KEY" in err.value.message
    assert upstream.calls() == 0


def test_cost_is_not_reported_by_openai() -> None:
    body = {
        "id": "c",
        "choices": [{"message": {"content": "x"}, "finish_reason": "stop"}],
        "usage": {"cost": 1.0},
    }
    usage = scripted_complete(provider(), body).usage
    assert usage is not None and usage.cost_usd is None
    assert Decimal("0") == Decimal(usage.cached_input_tokens)


def test_list_models_reads_data_ids() -> None:
    p = provider()
    seen: list[str] = []

    async def get_json(url, headers, timeouts, deadline, label):  # type: ignore[no-untyped-def]
        seen.append(url)
        return {"object": "list", "data": [{"id": "gpt-4o"}, {"id": "gpt-4o-mini"}]}

    p._http.get_json = get_json  # type: ignore[method-assign]
    assert run(p.list_models(1e12)) == ["gpt-4o", "gpt-4o-mini"]
    assert seen == ["http://compat.local/v1/models"]


def test_list_models_failure_is_a_provider_error(oa) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ProviderError) as err:
        oa.models()  # the mock serves no /v1/models
    assert err.value.kind == "status" and err.value.status == 404


def test_extra_cannot_take_over_gateway_owned_keys() -> None:
    extra = {"openai": {"stream_options": {"include_usage": False}, "model": "other", "stream": False}}
    payload = provider()._map_request(request(extra=extra), "m", True)
    assert payload["stream_options"] == {"include_usage": True}
    assert payload["model"] == "m" and payload["stream"] is True
