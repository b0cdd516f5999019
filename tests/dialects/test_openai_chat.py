from __future__ import annotations

import json

import pytest

from ai_gateway.dialects import openai_chat
from ai_gateway.errors import InvalidRequestError, UnsupportedFeatureError, UpstreamError
from ai_gateway.types import (
    ChatResponse,
    ImagePart,
    StreamEnd,
    StreamStart,
    TextDelta,
    TextPart,
    ToolCall,
    ToolCallDelta,
    Usage,
    UsageEvent,
)


def parse(**body: object) -> object:
    base: dict[str, object] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    base.update(body)
    return openai_chat.parse_request(base, 100, 10_000)


def test_full_request_maps_to_canonical() -> None:
    req = openai_chat.parse_request(
        {
            "model": " openai/gpt-4o ",
            "messages": [
                {"role": "developer", "content": "be brief"},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "look"},
                        {
                            "type": "image_url",
                            "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"},
                        },
                        {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}},
                    ],
                },
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "42"},
            ],
            "max_completion_tokens": 10,
            "temperature": 0,
            "top_p": 1,
            "stop": "END",
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
            "tool_choice": {"type": "function", "function": {"name": "f"}},
            "parallel_tool_calls": False,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "r", "schema": {"type": "object"}},
            },
            "seed": 7,
            "stream": True,
            "stream_options": {"include_usage": True},
            "presence_penalty": 0.5,
        },
        100,
        10_000,
    )
    assert req.model == "openai/gpt-4o"
    assert [m.role for m in req.messages] == ["system", "user", "assistant", "tool"]
    image = req.messages[1].content[1]
    assert isinstance(image, ImagePart) and image.data == "AAAA" and image.media_type == "image/png"
    assert req.messages[1].content[2] == ImagePart(url="https://x.test/a.png")
    assert req.messages[2].tool_calls == [ToolCall("c1", "f", "{}")]
    assert req.messages[3].tool_call_id == "c1" and req.messages[3].text() == "42"
    assert req.max_tokens == 10 and req.temperature == 0 and req.stop == ["END"]
    assert (
        req.tool_choice is not None and req.tool_choice.mode == "named" and req.tool_choice.parallel is False
    )
    assert req.response_format is not None and req.response_format.type == "json_schema"
    assert req.stream and req.include_usage and req.seed == 7
    assert req.extra == {"openai": {"presence_penalty": 0.5}}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 10_001}, "max_tokens"),
        ({"temperature": True}, "temperature"),
        (
            {"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]},
            "messages[0].content[0].type",
        ),
        ({"messages": [{"role": "assistant"}]}, "messages[0].content"),
        ({"tool_choice": {"type": "function"}}, "tool_choice"),
        ({"api_key": "sk-x"}, "api_key"),
    ],
)
def test_invalid_requests_name_the_param(body: dict[str, object], param: str) -> None:
    with pytest.raises(InvalidRequestError) as exc:
        parse(**body)
    assert exc.value.param == param


def test_n_greater_than_one_is_unsupported() -> None:
    with pytest.raises(UnsupportedFeatureError):
        parse(n=3)


def test_render_response_with_tool_calls_and_usage() -> None:
    resp = ChatResponse(
        id="x",
        model="m",
        content=[],
        tool_calls=[ToolCall("c1", "f", '{"a":1}')],
        finish_reason="tool_calls",
        usage=Usage(10, 5, cached_input_tokens=4, reasoning_tokens=2),
    )
    out = openai_chat.render_response(resp, "chatcmpl-1", "openai/m")
    choice = out["choices"][0]
    assert choice["message"]["content"] is None
    assert choice["message"]["tool_calls"][0]["function"] == {"name": "f", "arguments": '{"a":1}'}
    assert choice["finish_reason"] == "tool_calls"
    assert out["usage"]["total_tokens"] == 15
    assert out["usage"]["prompt_tokens_details"] == {"cached_tokens": 4}
    assert out["usage"]["completion_tokens_details"] == {"reasoning_tokens": 2}


def _frames(data: bytes) -> list[object]:
    return [
        line[6:] if line[6:] == "[DONE]" else json.loads(line[6:])
        for line in data.decode().split("\n")
        if line.startswith("data: ")
    ]


def test_stream_renderer_frames() -> None:
    r = openai_chat.StreamRenderer("chatcmpl-1", "openai/m", include_usage=True)
    out = b"".join(
        r.render(e)
        for e in [
            StreamStart("up", "m"),
            TextDelta("Hel"),
            TextDelta("lo"),
            ToolCallDelta(0, "c1", "f", '{"a"'),
            ToolCallDelta(0, None, None, ":1}"),
            UsageEvent(Usage(3, 2)),
            StreamEnd("tool_calls"),
        ]
    )
    frames = _frames(out)
    assert frames[-1] == "[DONE]"
    chunks = [f for f in frames if isinstance(f, dict)]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[1]["choices"][0]["delta"] == {"content": "Hel"}
    first_tool = chunks[3]["choices"][0]["delta"]["tool_calls"][0]
    assert first_tool == {
        "index": 0,
        "id": "c1",
        "type": "function",
        "function": {"name": "f", "arguments": '{"a"'},
    }
    assert chunks[4]["choices"][0]["delta"]["tool_calls"][0] == {"index": 0, "function": {"arguments": ":1}"}}
    assert chunks[5]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[6]["choices"] == [] and chunks[6]["usage"]["total_tokens"] == 5
    assert {c["id"] for c in chunks} == {"chatcmpl-1"}


def test_stream_without_include_usage_has_no_usage_chunk() -> None:
    r = openai_chat.StreamRenderer("c", "m", include_usage=False)
    frames = _frames(r.render(StreamEnd("stop", Usage(1, 1))))
    assert frames[-1] == "[DONE]" and len(frames) == 2


def test_stream_error_frame_has_no_done() -> None:
    out = openai_chat.StreamRenderer.render_error(UpstreamError("boom"), "rid")
    frames = _frames(out)
    assert frames == [
        {
            "error": {"message": "boom", "type": "api_error", "param": None, "code": "all_providers_failed"},
            "request_id": "rid",
        }
    ]


def test_text_part_round_trip() -> None:
    req = parse(
        messages=[{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    )
    assert req.messages[0].content == [TextPart("a"), TextPart("b")]  # type: ignore[attr-defined]
