"""OpenRouter adapter: what differs from OpenAI (usage accounting, cost, attribution, SSE comments)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from ai_gateway.errors import ProviderError
from ai_gateway.providers._http import HttpClient
from ai_gateway.providers.openai import OpenAIProvider
from ai_gateway.providers.openrouter import OpenRouterProvider
from ai_gateway.types import ChatRequest, Message, StreamEnd, StreamStart, TextPart, Usage
from tests.providers import MARKER, live, request, scripted_complete, scripted_stream, settings, sse, text_of
from tests.support import KEYS

ATTRIBUTION = (("HTTP-Referer", "https://app.example"), ("X-Title", "Example App"))


def provider() -> OpenRouterProvider:
    ps = settings("openrouter", "https://openrouter.ai/api/v1", api_key="sk-or-x", headers=ATTRIBUTION)
    return OpenRouterProvider(ps, HttpClient())


def test_is_the_openai_adapter() -> None:
    assert issubclass(OpenRouterProvider, OpenAIProvider) and OpenRouterProvider.family == "openai"


def test_request_asks_for_usage_accounting_and_uses_max_tokens() -> None:
    payload = provider()._map_request(request(max_tokens=5), "meta-llama/llama-3.1-8b-instruct:free", False)
    assert payload["usage"] == {"include": True}
    assert payload["max_tokens"] == 5 and "max_completion_tokens" not in payload
    assert payload["model"] == "meta-llama/llama-3.1-8b-instruct:free"


def test_headers_carry_attribution_and_key() -> None:
    headers = provider()._headers()
    assert headers["HTTP-Referer"] == "https://app.example" and headers["X-Title"] == "Example App"
    assert headers["Authorization"] == "Bearer sk-or-x"
    assert provider()._url(True) == "https://openrouter.ai/api/v1/chat/completions"


def test_text_part_extras_are_forwarded() -> None:
    msg = Message("system", [TextPart("long context", extra={"cache_control": {"type": "ephemeral"}})])
    payload = provider()._map_request(ChatRequest(model="m", messages=[msg]), "m", False)
    assert payload["messages"][0]["content"] == [
        {"type": "text", "text": "long context", "cache_control": {"type": "ephemeral"}}
    ]


def test_openrouter_extra_passes_through() -> None:
    req = request(extra={"openrouter": {"provider": {"order": ["groq"]}}})
    assert provider()._map_request(req, "m", False)["provider"] == {"order": ["groq"]}


def test_cost_and_cache_writes_are_mapped() -> None:
    body = {
        "id": "gen-1",
        "model": "m",
        "choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": 194,
            "completion_tokens": 2,
            "cost": 0.95,
            "prompt_tokens_details": {"cached_tokens": 10, "cache_write_tokens": 100},
            "completion_tokens_details": {"reasoning_tokens": 1},
        },
    }
    usage = scripted_complete(provider(), body).usage
    assert usage == Usage(194, 2, 10, 100, 1, Decimal("0.95"))


def test_missing_or_odd_cost_is_none() -> None:
    for cost in (None, "0.1", True, float("nan")):
        body = {
            "id": "g",
            "choices": [{"message": {"content": "x"}}],
            "usage": {"prompt_tokens": 1, "cost": cost},
        }
        usage = scripted_complete(provider(), body).usage
        assert usage is not None and usage.cost_usd is None


def test_sse_comments_are_skipped_and_error_chunk_raises() -> None:
    chunk = {
        "id": "gen-2",
        "model": "m",
        "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}],
    }
    failure = {
        "id": "gen-2",
        "object": "chat.completion.chunk",
        "error": {"code": 502, "message": f"provider died {MARKER}"},
        "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}],
    }
    body = b": OPENROUTER PROCESSING\n\n" + sse(chunk) + b": OPENROUTER PROCESSING\n\n" + sse(failure)
    events, error = scripted_stream(provider(), body)
    assert events == [StreamStart("gen-2", "m"), events[1]] and text_of(events) == "hi"
    assert error is not None and (error.kind, error.status, error.retryable) == ("status", 502, True)
    assert MARKER not in error.message


# --- against the mock upstream ------------------------------------------------------------------------


@pytest.fixture
def orr(upstream):  # type: ignore[no-untyped-def]
    ps = settings("openrouter", upstream.url + "/api/v1", api_key=KEYS["openrouter"], headers=ATTRIBUTION)
    return live(OpenRouterProvider, ps)


def test_live_complete_reports_cost(orr, upstream) -> None:  # type: ignore[no-untyped-def]
    resp = orr.complete(request("hello world"))
    assert resp.text() == "mock reply: hello world"
    assert resp.usage is not None and resp.usage.cost_usd == Decimal(str(resp.usage.total_tokens * 0.000001))
    call = upstream.calls_log()[-1]
    assert call["referer"] == "https://app.example" and call["title"] == "Example App"
    assert call["body"]["usage"] == {"include": True}


def test_live_stream_skips_comments_and_reports_cost(orr) -> None:  # type: ignore[no-untyped-def]
    events, error = orr.stream(request("a b c d"))
    assert error is None and text_of(events) == "mock reply: a b c d"
    end = events[-1]
    assert isinstance(end, StreamEnd) and end.usage is not None and end.usage.cost_usd is not None


def test_live_mid_stream_error(orr) -> None:  # type: ignore[no-untyped-def]
    events, error = orr.stream(request("[[mock error_after=2]] a b c d"))
    assert isinstance(events[0], StreamStart)
    assert error is not None and (error.kind, error.status) == ("status", 502) and MARKER not in error.message


def test_live_rate_limit(orr) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ProviderError) as err:
        orr.complete(request("[[mock status=429 retry_after=3]] hi"))
    assert (err.value.status, err.value.retry_after, err.value.retryable) == (429, 3.0, True)
    assert MARKER not in err.value.message


def test_openai_family_extra_applies_too() -> None:
    req = request(extra={"openai": {"logprobs": True}, "openrouter": {"transforms": []}})
    payload = provider()._map_request(req, "m", False)
    assert payload["logprobs"] is True and payload["transforms"] == []
