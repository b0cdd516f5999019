from __future__ import annotations

import json
from typing import Any

import pytest

from ai_gateway.dialects import anthropic_messages as am
from ai_gateway.errors import (
    DeadlineExceededError,
    GatewayError,
    InvalidRequestError,
    NotFoundError,
    RateLimitError,
    RequestTooLargeError,
    ServiceUnavailableError,
    UnsupportedMediaTypeError,
    UpstreamError,
)
from ai_gateway.types import (
    ChatRequest,
    ChatResponse,
    ImagePart,
    NativeEvent,
    NativePart,
    StreamEnd,
    StreamStart,
    TextDelta,
    TextPart,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    Usage,
    UsageEvent,
)

MARK = {"type": "ephemeral"}


def parse(**body: Any) -> ChatRequest:
    base: dict[str, Any] = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    base.update(body)
    return am.parse_request(base, 100, 10_000)


def test_full_request_maps_to_canonical() -> None:
    req = parse(
        system=[{"type": "text", "text": "be brief", "cache_control": MARK}],
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "look"},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": "QQ=="},
                    },
                    {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}},
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "s"},
                    {"type": "text", "text": "calling"},
                    {"type": "tool_use", "id": "tu_1", "name": "f", "input": {"a": 1}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "tu_1", "content": "boom", "is_error": True},
                    {"type": "text", "text": "and?"},
                ],
            },
        ],
        stop_sequences=["END"],
        temperature=0.5,
        top_p=0.9,
        top_k=7,
        tools=[{"name": "f", "description": "d", "input_schema": {"type": "object"}, "cache_control": MARK}],
        tool_choice={"type": "tool", "name": "f", "disable_parallel_tool_use": True},
        metadata={"user_id": "u1"},
        thinking={"type": "enabled", "budget_tokens": 1024},
        output_config={"format": {"type": "json_schema", "schema": {"type": "object"}}, "effort": "low"},
        service_tier="auto",
        stream=True,
    )
    system, user, assistant, result, tail = req.messages
    assert system.role == "system" and system.content == [TextPart("be brief", {"cache_control": MARK})]
    assert user.content == [
        TextPart("look"),
        ImagePart(data="QQ==", media_type="image/png"),
        ImagePart(url="https://x/y.png"),
    ]
    assert assistant.content[0] == NativePart(
        "anthropic", {"type": "thinking", "thinking": "hmm", "signature": "s"}, True
    )
    assert assistant.content[1] == TextPart("calling")
    assert assistant.tool_calls == [ToolCall("tu_1", "f", '{"a":1}')]
    assert (result.role, result.tool_call_id, result.is_error, result.text()) == (
        "tool",
        "tu_1",
        True,
        "boom",
    )
    assert tail.role == "user" and tail.text() == "and?"
    assert (req.max_tokens, req.temperature, req.top_p, req.stop, req.user) == (10, 0.5, 0.9, ["END"], "u1")
    assert req.tools[0].extra == {"cache_control": MARK} and req.tools[0].parameters == {"type": "object"}
    assert req.tool_choice == ToolChoice("named", "f", parallel=False)
    assert req.response_format is not None and req.response_format.type == "json_schema"
    assert req.extra["anthropic"] == {
        "top_k": 7,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "output_config": {"effort": "low"},
        "service_tier": "auto",
    }
    assert req.stream is True


def test_tool_results_come_first_and_keep_their_cache_mark() -> None:
    req = parse(
        messages=[
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "a", "name": "f", "input": {}}]},
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "a",
                        "content": [{"type": "text", "text": "r"}],
                        "cache_control": MARK,
                    }
                ],
            },
        ]
    )
    assert req.messages[-1].role == "tool"
    assert req.messages[-1].content == [TextPart("r", {"cache_control": MARK})]


def test_blocks_only_anthropic_understands_are_carried_not_dropped() -> None:
    doc = {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "x"}}
    search = {"type": "web_search_20250305", "name": "web_search"}
    req = parse(messages=[{"role": "user", "content": [doc]}], tools=[search], future_field={"x": 1})
    assert req.messages[0].content == [NativePart("anthropic", doc, droppable=False)]
    assert req.tools[0].name == "web_search" and req.tools[0].extra == search
    assert req.extra["anthropic"]["future_field"] == {"x": 1}


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"max_tokens": None}, "max_tokens"),
        ({"max_tokens": "5"}, "max_tokens"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "system", "content": "x"}]}, "messages.0.role"),
        ({"messages": [{"role": "user", "content": []}]}, "messages.0.content"),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": ""}]}]},
            "messages.0.content.0.text",
        ),
        ({"temperature": 1.2}, "temperature"),
        ({"top_k": -1}, "top_k"),
        ({"system": 5}, "system"),
        ({"tool_choice": {"type": "tool"}}, "tool_choice.name"),
        ({"tools": [{"name": "f"}]}, "tools.0.input_schema"),
        ({"metadata": {"user_id": "u", "tenant": "x"}}, "metadata.tenant"),
        ({"output_config": {"format": {"type": "json_object"}}}, "output_config.format.type"),
        ({"api_key": "sk-x"}, "api_key"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "image",
                                "source": {"type": "base64", "media_type": "image/bmp", "data": "QQ=="},
                            }
                        ],
                    }
                ]
            },
            "messages.0.content.0.source.media_type",
        ),
    ],
)
def test_invalid_requests_name_the_field(change: dict[str, Any], param: str) -> None:
    base: dict[str, Any] = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    for key, value in change.items():
        if value is None:
            base.pop(key)
        else:
            base[key] = value
    with pytest.raises(InvalidRequestError) as err:
        am.parse_request(base, 100, 10_000)
    assert err.value.param == param and err.value.status == 400


def test_final_assistant_prefill_may_be_empty_and_count_needs_no_max_tokens() -> None:
    req = parse(messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}])
    assert req.messages[-1].role == "assistant" and req.messages[-1].content == []
    counted = am.parse_count_request(
        {"model": "m", "messages": [{"role": "user", "content": "q"}], "top_k": 3}, 10, 10
    )
    assert counted.max_tokens is None and "anthropic" not in counted.extra


# --- rendering ---------------------------------------------------------------------------------------


def test_response_usage_excludes_cache_counts_and_maps_stop_reasons() -> None:
    usage = Usage(input_tokens=100, output_tokens=7, cached_input_tokens=60, cache_creation_tokens=30)
    thinking = NativePart("anthropic", {"type": "thinking", "thinking": "t", "signature": "s"}, True)
    resp = ChatResponse(
        "x", "m", [thinking, TextPart("hi")], [ToolCall("tu", "f", '{"a": 1}')], "tool_calls", usage
    )
    out = am.render_response(resp, "msg_1", "anthropic/m")
    assert out["content"] == [
        thinking.block,
        {"type": "text", "text": "hi"},
        {"type": "tool_use", "id": "tu", "name": "f", "input": {"a": 1}},
    ]
    assert out["stop_reason"] == "tool_use"
    assert out["usage"] == {
        "input_tokens": 10,
        "cache_creation_input_tokens": 30,
        "cache_read_input_tokens": 60,
        "output_tokens": 7,
    }
    for finish, seq, reason in [
        ("stop", None, "end_turn"),
        ("stop", "X", "stop_sequence"),
        ("length", None, "max_tokens"),
        ("content_filter", None, "refusal"),
    ]:
        resp = ChatResponse("x", "m", [TextPart("a")], finish_reason=finish, stop_sequence=seq)  # type: ignore[arg-type]
        assert am.render_response(resp, "i", "m")["stop_reason"] == reason


def test_tool_arguments_that_are_not_an_object_are_a_502() -> None:
    resp = ChatResponse("x", "m", [], [ToolCall("c", "f", "[1]")], "tool_calls")
    with pytest.raises(UpstreamError):
        am.render_response(resp, "i", "m")


@pytest.mark.parametrize(
    ("err", "kind"),
    [
        (InvalidRequestError("x"), "invalid_request_error"),
        (NotFoundError("x"), "not_found_error"),
        (RequestTooLargeError("x"), "request_too_large"),
        (UnsupportedMediaTypeError("x"), "invalid_request_error"),
        (RateLimitError("x"), "rate_limit_error"),
        (UpstreamError("x"), "api_error"),
        (UpstreamError("x", code="upstream_overloaded"), "overloaded_error"),
        (ServiceUnavailableError("x", code="all_providers_unavailable"), "overloaded_error"),
        (ServiceUnavailableError("x", code="provider_not_configured"), "api_error"),
        (DeadlineExceededError("x"), "timeout_error"),
        (GatewayError("x"), "api_error"),
    ],
)
def test_error_types(err: GatewayError, kind: str) -> None:
    assert am.render_error(err, "r1") == {
        "type": "error",
        "error": {"type": kind, "message": "x"},
        "request_id": "r1",
    }


def frames(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for frame in raw.decode().split("\n\n"):
        if frame:
            head, data = frame.split("\n")
            out.append((head.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return out


def test_stream_sequence_interleaves_blocks_in_order() -> None:
    r = am.StreamRenderer("msg_1", "p/m", "r1")
    raw = b"".join(
        r.render(e)
        for e in [
            StreamStart("up", "m"),
            UsageEvent(Usage(input_tokens=9, cached_input_tokens=4)),
            NativeEvent(
                "anthropic",
                {"type": "content_block_start", "content_block": {"type": "thinking", "thinking": ""}},
            ),
            NativeEvent(
                "anthropic",
                {"type": "content_block_delta", "delta": {"type": "thinking_delta", "thinking": "t"}},
            ),
            NativeEvent("anthropic", {"type": "content_block_stop"}),
            NativeEvent("other", {"type": "content_block_start", "content_block": {}}),
            TextDelta("Hi"),
            ToolCallDelta(0, "c1", "f", ""),
            ToolCallDelta(0, arguments='{"a":'),
            ToolCallDelta(0, arguments="1}"),
            ToolCallDelta(1, "c2", "g", "{}"),
            TextDelta("bye"),
            StreamEnd("tool_calls", Usage(input_tokens=9, output_tokens=5, cached_input_tokens=4)),
        ]
    )
    seq = frames(raw)
    assert [(n, d.get("index")) for n, d in seq] == [
        ("message_start", None),
        ("content_block_start", 0),
        ("ping", None),
        ("content_block_delta", 0),
        ("content_block_stop", 0),
        ("content_block_start", 1),
        ("content_block_delta", 1),
        ("content_block_stop", 1),
        ("content_block_start", 2),
        ("content_block_delta", 2),
        ("content_block_delta", 2),
        ("content_block_stop", 2),
        ("content_block_start", 3),
        ("content_block_delta", 3),
        ("content_block_stop", 3),
        ("content_block_start", 4),
        ("content_block_delta", 4),
        ("content_block_stop", 4),
        ("message_delta", None),
        ("message_stop", None),
    ]
    # The usage that came before any content is in message_start already.
    assert seq[0][1]["message"]["usage"]["input_tokens"] == 5
    assert seq[0][1]["message"]["usage"]["cache_read_input_tokens"] == 4
    assert seq[8][1]["content_block"] == {"type": "tool_use", "id": "c1", "name": "f", "input": {}}
    assert seq[9][1]["delta"] == {"type": "input_json_delta", "partial_json": '{"a":'}
    assert seq[-2][1]["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert seq[-2][1]["usage"] == {
        "input_tokens": 5,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 4,
        "output_tokens": 5,
    }


def test_stream_cannot_reopen_a_closed_tool_block() -> None:
    r = am.StreamRenderer("msg_1", "p/m", "r1")
    out = [
        r.render(e)
        for e in [
            StreamStart("u", "m"),
            ToolCallDelta(0, "a", "f", "{"),
            ToolCallDelta(1, "b", "g", "{}"),
            ToolCallDelta(0, arguments="}"),
        ]
    ]
    name, data = frames(out[-1])[-1]
    assert name == "error" and data["error"]["type"] == "api_error" and data["request_id"] == "r1"
    assert r.render(StreamEnd("tool_calls")) == b""  # nothing may follow an error event


def test_stream_error_and_empty_answer() -> None:
    r = am.StreamRenderer("msg_1", "p/m", "r1")
    assert r.render(StreamStart("u", "m")) == b""
    names = [n for n, _ in frames(r.render(StreamEnd("stop", stop_sequence="END")))]
    assert names == ["message_start", "ping", "message_delta", "message_stop"]
    r = am.StreamRenderer("msg_1", "p/m", "r1")
    r.render(TextDelta("a"))
    seq = frames(r.render_error(UpstreamError("broke", code="upstream_overloaded")))
    assert seq == [
        (
            "error",
            {"type": "error", "error": {"type": "overloaded_error", "message": "broke"}, "request_id": "r1"},
        )
    ]
