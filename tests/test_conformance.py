"""One suite over every provider x stream/non-stream x both ingress APIs (OpenAI SDK and the simple API).

The mock upstream answers "mock reply: <last user text>" and counts tokens as words, so content,
finish reasons and usage are all predictable.
"""

from __future__ import annotations

import json

import openai
import pytest

from tests.support import PROVIDERS, Proc, Upstreams, http, sse_events

PROMPT = "hello conformance world"
ANSWER = f"mock reply: {PROMPT}"
IN_TOKENS = 3  # words in PROMPT
OUT_TOKENS = len(ANSWER.split())

MODELS = {
    "ollama": "ollama/llama3.2",
    "openai": "openai/gpt-4o-mini",
    "anthropic": "anthropic/claude-haiku-4-5",
    "openrouter": "openrouter/meta-llama/llama-3.1-8b-instruct:free",
}


def _client(gateway: Proc) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="sk-anything", max_retries=0, timeout=20)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_openai_sdk_non_stream(gateway: Proc, mocks: Upstreams, provider: str) -> None:
    raw = _client(gateway).chat.completions.with_raw_response.create(
        model=MODELS[provider], messages=[{"role": "user", "content": PROMPT}]
    )
    resp = raw.parse()
    assert resp.choices[0].message.content == ANSWER
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage is not None
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (IN_TOKENS, OUT_TOKENS)
    assert resp.usage.total_tokens == IN_TOKENS + OUT_TOKENS
    assert raw.headers["x-aigw-provider"] == provider
    assert raw.headers["x-aigw-attempts"] == "1"
    assert raw.headers["x-request-id"]
    assert mocks.mocks[provider].calls() == 1


@pytest.mark.parametrize("provider", PROVIDERS)
def test_openai_sdk_stream(gateway: Proc, mocks: Upstreams, provider: str) -> None:
    stream = _client(gateway).chat.completions.create(
        model=MODELS[provider],
        messages=[{"role": "user", "content": PROMPT}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == ANSWER
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1 and usage_chunks[0].choices == []
    assert usage_chunks[0] is chunks[-1]
    assert (usage_chunks[0].usage.prompt_tokens, usage_chunks[0].usage.completion_tokens) == (
        IN_TOKENS,
        OUT_TOKENS,
    )
    assert len({c.id for c in chunks}) == 1
    assert mocks.mocks[provider].calls() == 1


@pytest.mark.parametrize("provider", PROVIDERS)
def test_openai_stream_without_usage_request_has_no_usage_chunk(
    gateway: Proc, mocks: Upstreams, provider: str
) -> None:
    chunks = list(
        _client(gateway).chat.completions.create(
            model=MODELS[provider], messages=[{"role": "user", "content": PROMPT}], stream=True
        )
    )
    assert all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_simple_api_non_stream(gateway: Proc, mocks: Upstreams, provider: str) -> None:
    reply = http("POST", gateway.url + "/v1/chat", {"prompt": PROMPT, "provider": provider})
    assert reply.status == 200, reply.body
    body = reply.json()
    assert body["content"] == ANSWER
    assert body["provider"] == provider
    assert body["finish_reason"] == "stop"
    assert body["usage"] == {
        "input_tokens": IN_TOKENS,
        "output_tokens": OUT_TOKENS,
        "total_tokens": IN_TOKENS + OUT_TOKENS,
    }
    assert body["cached"] is False
    assert [a["status"] for a in body["attempts"]] == ["ok"]
    assert body["attempts"][0]["provider"] == provider
    assert set(body) >= {
        "id",
        "provider",
        "model",
        "content",
        "finish_reason",
        "usage",
        "cost_usd",
        "cached",
        "attempts",
    }


@pytest.mark.parametrize("provider", PROVIDERS)
def test_simple_api_stream(gateway: Proc, mocks: Upstreams, provider: str) -> None:
    reply = http("POST", gateway.url + "/v1/chat", {"prompt": PROMPT, "provider": provider, "stream": True})
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("text/event-stream")
    events = sse_events(reply.body)
    assert events[-1] == "[DONE]"
    parsed = [json.loads(e) for e in events[:-1]]
    deltas = [e for e in parsed if e["type"] == "delta"]
    assert "".join(d["text"] for d in deltas) == ANSWER
    done = parsed[-1]
    assert done["type"] == "done"
    assert done["usage"]["input_tokens"] == IN_TOKENS and done["usage"]["output_tokens"] == OUT_TOKENS
    assert done["provider"] == provider and done["cached"] is False


def test_quick_start_curl_form(gateway: Proc, mocks: Upstreams) -> None:
    """`curl -d` sends application/x-www-form-urlencoded; the quick start must still answer."""
    reply = http(
        "POST",
        gateway.url + "/v1/chat",
        raw=b'{"prompt": "hello", "provider": "ollama"}',
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert reply.status == 200, reply.body
    assert reply.json()["content"] == "mock reply: hello"


def test_system_prompt_and_multi_turn_reach_upstream(gateway: Proc, mocks: Upstreams) -> None:
    _client(gateway).chat.completions.create(
        model="anthropic/claude-haiku-4-5",
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "second"},
        ],
        max_tokens=50,
        temperature=0.5,
        stop=["zzz"],
    )
    sent = mocks.mocks["anthropic"].calls_log()[-1]["body"]
    assert sent["system"] in ("be brief", [{"type": "text", "text": "be brief"}])
    assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "user"]
    assert sent["max_tokens"] == 50 and sent["temperature"] == 0.5 and sent["stop_sequences"] == ["zzz"]


def test_max_tokens_gives_length_finish(gateway: Proc, mocks: Upstreams) -> None:
    for provider in PROVIDERS:
        resp = _client(gateway).chat.completions.create(
            model=MODELS[provider], messages=[{"role": "user", "content": PROMPT}], max_tokens=2
        )
        assert resp.choices[0].finish_reason == "length", provider
        assert resp.usage is not None and resp.usage.completion_tokens == 2


def test_models_list(gateway: Proc, mocks: Upstreams) -> None:
    models = _client(gateway).models.list()
    ids = {m.id for m in models.data}
    assert {"default", "ollama/llama3.2", "openai/gpt-4o-mini", "anthropic/claude-haiku-4-5"} <= ids
    assert "openrouter/meta-llama/llama-3.1-8b-instruct:free" in ids


def test_bare_model_name_resolves(gateway: Proc, mocks: Upstreams) -> None:
    raw = _client(gateway).chat.completions.with_raw_response.create(
        model="claude-haiku-4-5", messages=[{"role": "user", "content": PROMPT}]
    )
    assert raw.headers["x-aigw-provider"] == "anthropic"


def test_unknown_model_is_404_listing_what_exists(gateway: Proc, mocks: Upstreams) -> None:
    with pytest.raises(openai.NotFoundError) as exc:
        _client(gateway).chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "x"}]
        )
    assert exc.value.body["code"] == "model_not_found"  # type: ignore[index]
    assert "default" in exc.value.body["message"]  # type: ignore[index]
    assert mocks.total_calls() == 0


def test_request_id_is_echoed(gateway: Proc, mocks: Upstreams) -> None:
    reply = http(
        "POST",
        gateway.url + "/v1/chat",
        {"prompt": "x", "provider": "ollama"},
        headers={"x-request-id": "abc-123"},
    )
    assert reply.headers["x-request-id"] == "abc-123"
    assert reply.json()["id"] == "abc-123"


def test_healthz_and_readyz(gateway: Proc) -> None:
    assert http("GET", gateway.url + "/healthz").json() == {"status": "ok"}
    ready = http("GET", gateway.url + "/readyz")
    assert ready.status == 200 and ready.json()["status"] == "ready"
