"""What each provider does with what only another family understands (providers/_carry.py): map it,
leave it out when it cannot change the answer, or refuse with a 400 naming the field and the provider."""

from __future__ import annotations

from typing import Any

import pytest

from ai_gateway.dialects import openai_chat
from ai_gateway.errors import UnsupportedFeatureError
from ai_gateway.providers._http import HttpClient
from ai_gateway.providers.anthropic import AnthropicProvider
from ai_gateway.providers.base import Provider
from ai_gateway.providers.ollama import OllamaProvider
from ai_gateway.providers.openai import OpenAIProvider
from ai_gateway.providers.openrouter import OpenRouterProvider
from ai_gateway.types import (
    ChatRequest,
    ImagePart,
    Message,
    NativeEvent,
    NativePart,
    TextPart,
    Tool,
    ToolCall,
)
from tests.providers import request, settings, user

THINKING = NativePart("anthropic", {"type": "thinking", "thinking": "t", "signature": "s"}, droppable=True)
DOCUMENT = NativePart("anthropic", {"type": "document", "source": {}})


def make(kind: str) -> Provider:
    cls: Any = {
        "openai": OpenAIProvider,
        "openrouter": OpenRouterProvider,
        "ollama": OllamaProvider,
        "anthropic": AnthropicProvider,
    }[kind]
    provider: Provider = cls(settings(kind, api_key="k"), HttpClient())
    return provider


def with_extra(family: str, **fields: Any) -> ChatRequest:
    req = request()
    req.extra[family] = fields
    return req


@pytest.mark.parametrize(
    ("kind", "req", "param"),
    [
        ("openai", with_extra("anthropic", top_k=3), "top_k"),
        ("ollama", with_extra("anthropic", container="c"), "container"),
        ("anthropic", with_extra("openai", logprobs=True), "logprobs"),
        ("ollama", with_extra("openai", logit_bias={"1": 2}), "logit_bias"),
        ("openai", ChatRequest(model="m", messages=[Message("user", [DOCUMENT])]), "messages[0].content[0]"),
        (
            "openai",
            ChatRequest(model="m", messages=[user("x")], tools=[Tool("s", extra={"type": "bash_1"})]),
            "tools[0]",
        ),
        ("ollama", ChatRequest(model="m", messages=[user("x")], max_tokens=0), "max_tokens"),
        (
            "openrouter",
            ChatRequest(model="m", messages=[user("x")], tools=[Tool("f", extra={"input_examples": [{}]})]),
            "tools[0]",
        ),
    ],
)
def test_refuses_what_would_change_the_answer(kind: str, req: ChatRequest, param: str) -> None:
    with pytest.raises(UnsupportedFeatureError) as err:
        make(kind).check(req)
    assert err.value.param == param and kind in err.value.message and err.value.status == 400


@pytest.mark.parametrize("kind", ["openai", "openrouter", "ollama"])
def test_leaves_out_what_cannot_change_the_answer(kind: str) -> None:
    req = with_extra(
        "anthropic",
        thinking={"type": "enabled", "budget_tokens": 2000},
        output_config={"effort": "low"},
        service_tier="auto",
        context_management={},
    )
    req.extra["anthropic-headers"] = {"anthropic-beta": "x"}
    req.messages = [
        Message("system", [TextPart("s", {"cache_control": {"type": "ephemeral"}})]),
        user("q"),
        Message("assistant", [THINKING, TextPart("a")], [ToolCall("c", "f", "{}", {"cache_control": {}})]),
        Message("tool", [TextPart("r")], tool_call_id="c"),
    ]
    req.tools = [Tool("f", extra={"cache_control": {"type": "ephemeral"}})]
    provider = make(kind)
    provider.check(req)
    payload = provider._map_request(req, "m", False)
    assert "thinking" not in str(payload) and "effort" not in str(payload) and "beta" not in str(payload)


def test_maps_sampling_fields_it_has() -> None:
    req = with_extra("anthropic", top_k=4)
    req.extra["openai"] = {"presence_penalty": 0.5, "frequency_penalty": 0.1}
    ollama = make("ollama")
    ollama.check(req)
    assert ollama._map_request(req, "m", False)["options"] == {
        "top_k": 4,
        "presence_penalty": 0.5,
        "frequency_penalty": 0.1,
    }
    openrouter = make("openrouter")
    openrouter.check(req)
    assert openrouter._map_request(req, "m", False)["top_k"] == 4


def test_failed_tool_results_are_marked_where_there_is_no_flag() -> None:
    req = ChatRequest(
        model="m",
        messages=[
            user("q"),
            Message("assistant", [], [ToolCall("c", "f", "{}")]),
            Message("tool", [TextPart("boom")], tool_call_id="c", is_error=True),
        ],
    )
    assert make("openai")._map_request(req, "m", False)["messages"][2]["content"] == "Error: boom"
    assert make("ollama")._map_request(req, "m", False)["messages"][2]["content"] == "Error: boom"
    block = make("anthropic")._map_request(req, "m", False)["messages"][2]["content"][0]
    assert block == {"type": "tool_result", "tool_use_id": "c", "content": "boom", "is_error": True}


def test_anthropic_sends_native_blocks_extras_and_provider_tools_as_they_came() -> None:
    search = {"type": "web_search_20250305", "name": "web_search", "max_uses": 1}
    mark = {"type": "ephemeral"}
    req = ChatRequest(
        model="m",
        messages=[
            Message("user", [DOCUMENT, ImagePart(url="https://x/y.png", extra={"cache_control": mark})]),
            Message("assistant", [THINKING], [ToolCall("c", "f", '{"a": 1}', {"cache_control": mark})]),
            Message("tool", [TextPart("r")], tool_call_id="c"),
        ],
        tools=[
            Tool("web_search", parameters={}, extra=search),
            Tool("f", strict=True, extra={"cache_control": mark}),
        ],
    )
    req.extra["anthropic-headers"] = {"anthropic-beta": "b1"}
    provider = make("anthropic")
    provider.check(req)
    payload = provider._map_request(req, "m", False)
    assert payload["messages"][0]["content"] == [
        DOCUMENT.block,
        {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}, "cache_control": mark},
    ]
    assert payload["messages"][1]["content"] == [
        THINKING.block,
        {"type": "tool_use", "id": "c", "name": "f", "input": {"a": 1}, "cache_control": mark},
    ]
    assert payload["tools"] == [
        search,
        {
            "name": "f",
            "input_schema": {"type": "object", "properties": {}},
            "strict": True,
            "cache_control": mark,
        },
    ]
    assert provider._request_headers(req) == {"anthropic-beta": "b1"}


def test_api_openai_com_takes_four_stop_sequences() -> None:
    official = OpenAIProvider(settings("openai", "https://api.openai.com/v1", api_key="k"), HttpClient())
    with pytest.raises(UnsupportedFeatureError) as err:
        official.check(request(stop=["a", "b", "c", "d", "e"]))
    assert err.value.param == "stop"
    make("openai").check(request(stop=["a", "b", "c", "d", "e"]))  # compatible servers decide for themselves


def test_openai_dialect_stream_skips_native_events() -> None:
    renderer = openai_chat.StreamRenderer("c", "m", False)
    assert renderer.render(NativeEvent("anthropic", {"type": "content_block_stop"})) == b""
