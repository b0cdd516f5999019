"""Response cache policy: the key, tenant isolation, what is stored, failures, and replayed streams."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ai_gateway.dialects import anthropic_messages, openai_chat
from ai_gateway.errors import BackendUnavailableError
from ai_gateway.policy.cache import (
    CacheDirective,
    ResponseCache,
    StreamRecorder,
    build_response_cache,
    cache_directive,
    cache_namespace,
    cacheable,
    replay_events,
)
from ai_gateway.policy.cache_codec import canonical_json, canonical_request, decode_entry, encode_entry
from ai_gateway.providers._http import HttpClient
from ai_gateway.providers.fake import FakeProvider
from ai_gateway.settings import CacheSettings, ProviderSettings, load_settings
from ai_gateway.stores._redis import connect
from ai_gateway.stores.cache_memory import MemoryCache
from ai_gateway.stores.cache_redis import RedisCache
from ai_gateway.types import (
    ChatRequest,
    ChatResponse,
    ImagePart,
    Message,
    NativeEvent,
    NativePart,
    ResponseFormat,
    StreamEnd,
    StreamEvent,
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
from tests.redis_server import shared_redis, unique_prefix


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


def request(**kwargs: Any) -> ChatRequest:
    base: dict[str, Any] = {"model": "default", "messages": [Message("user", [TextPart("hello")])]}
    return ChatRequest(**(base | kwargs))


def answer(text: str = "Hi there, friend.", **kwargs: Any) -> ChatResponse:
    fields: dict[str, Any] = {"id": "r1", "model": "gpt-x", "content": [TextPart(text)]}
    fields["usage"] = Usage(input_tokens=5, output_tokens=4)
    return ChatResponse(**(fields | kwargs))


def memory_cache() -> ResponseCache:
    return ResponseCache(MemoryCache(), ttl_s=60)


# --- the key -------------------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)


def reorder(value: Any) -> Any:
    """The same JSON with every object's keys in reverse insertion order."""
    if isinstance(value, dict):
        return {k: reorder(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [reorder(v) for v in value]
    return value


@given(st.dictionaries(st.text(max_size=6), JSON, max_size=5), st.dictionaries(st.text(max_size=6), JSON))
def test_key_is_canonical_over_dict_key_order(params: dict[str, Any], extra: dict[str, Any]) -> None:
    cache = memory_cache()
    one = request(tools=[Tool("t", parameters=params)], extra={"openai": extra})
    two = request(tools=[Tool("t", parameters=reorder(params))], extra={"openai": reorder(extra)})
    assert cache.key("tenant:a", "default", one) == cache.key("tenant:a", "default", two)


@given(st.text(max_size=10), st.text(max_size=10), st.text(max_size=10))
def test_key_is_injective_across_tenants_and_routes(a: str, b: str, route: str) -> None:
    cache = memory_cache()
    req = request()
    if a != b:
        assert cache.key(a, route, req) != cache.key(b, route, req)
    # No separator games: ("x", "y:z") and ("x:y", "z") are different inputs.
    assert cache.key(a, b + ":" + route, req) != cache.key(a + ":" + b, route, req)


@given(st.dictionaries(st.text(max_size=6), JSON, max_size=5), st.dictionaries(st.text(max_size=6), JSON))
def test_fast_key_encoding_equals_the_plain_form(params: dict[str, Any], extra: dict[str, Any]) -> None:
    # The key is hashed from `canonical_json`, which lets orjson walk the dataclasses; it must be the
    # very bytes of the plain form `canonical_request` builds, or entries would split or merge.
    req = request(
        messages=[
            Message("system", [TextPart("be brief")]),
            Message("user", [TextPart("hi"), ImagePart(url="https://x/y.png")]),
        ],
        tools=[Tool("t", parameters=params)],
        tool_choice=ToolChoice("required"),
        response_format=ResponseFormat("json_object"),
        stop=["END"],
        temperature=0.5,
        extra={"openai": extra},
    )
    head = [1, "tenant:a", "default"]
    try:
        plain = orjson.dumps([*head, canonical_request(req)], option=orjson.OPT_SORT_KEYS)
    except TypeError:  # an integer beyond 64 bits: both refuse, and the cache takes its slow encoder
        with pytest.raises(TypeError):
            canonical_json(head, req)
        return
    assert canonical_json(head, req) == plain


def test_a_key_beyond_what_orjson_encodes_takes_the_slow_encoder() -> None:
    cache = memory_cache()
    huge = request(tools=[Tool("t", parameters={"maximum": 2**70})])
    other = request(tools=[Tool("t", parameters={"maximum": 2**70 + 1})])
    assert cache.key("t", "default", huge) != cache.key("t", "default", other)
    assert cache.key("t", "default", huge) == cache.key("t", "default", huge)


def test_fields_that_do_not_change_the_answer_are_not_in_the_key() -> None:
    cache = memory_cache()
    plain = cache.key("t", "default", request())
    assert cache.key("t", "default", request(stream=True, include_usage=True, user="end-user-7")) == plain


@pytest.mark.parametrize(
    "change",
    [
        {"messages": [Message("user", [TextPart("hello!")])]},
        {"messages": [Message("system", [TextPart("hello")])]},
        {"messages": [Message("user", [TextPart("hello"), ImagePart(url="https://x/y.png")])]},
        {"max_tokens": 10},
        {"temperature": 0.5},
        {"top_p": 0.9},
        {"stop": ["END"]},
        {"seed": 7},
        {"tools": [Tool("lookup")]},
        {"tool_choice": ToolChoice("required")},
        {"response_format": ResponseFormat("json_object")},
        {"extra": {"openai": {"presence_penalty": 0.5}}},
        {"model": "other-route"},
    ],
)
def test_every_output_affecting_field_is_in_the_key(change: dict[str, Any]) -> None:
    cache = memory_cache()
    assert cache.key("t", "default", request(**change)) != cache.key("t", "default", request())


def test_namespaces_and_directives() -> None:
    assert cache_namespace("t1", CacheSettings()) == "tenant:t1"
    assert cache_namespace("t1", CacheSettings(shared_across_tenants=True)) == "shared"
    assert cache_namespace(None, CacheSettings()) == "operator"  # master key, open mode
    assert cache_directive(None) == CacheDirective(lookup=True, store=True)
    assert cache_directive("no-cache") == CacheDirective(lookup=False, store=True)
    assert cache_directive("max-age=0, No-Store") == CacheDirective(lookup=False, store=False)
    assert cache_directive("no-cache").bypass and not cache_directive("").bypass


# --- get and put ---------------------------------------------------------------------------------


def test_miss_then_hit_within_a_tenant_and_never_across() -> None:
    async def go() -> None:
        cache = memory_cache()
        req = request()
        mine, theirs = cache.key("tenant:a", "default", req), cache.key("tenant:b", "default", req)
        assert await cache.get(mine) is None
        assert await cache.put(mine, answer(), "openai", "gpt-x")
        hit = await cache.get(mine)
        assert hit is not None and hit.response == answer()
        assert (hit.provider, hit.model) == ("openai", "gpt-x") and hit.age_s < 5
        assert await cache.get(theirs) is None
        assert (cache.stats.hits, cache.stats.misses, cache.stats.stores) == (1, 2, 1)

    run(go())


@pytest.mark.parametrize(
    "response",
    [
        answer(finish_reason="error"),
        answer(finish_reason="content_filter"),
        ChatResponse("r", "m", content=[], finish_reason="stop"),
    ],
)
def test_only_complete_successful_answers_are_stored(response: ChatResponse) -> None:
    async def go() -> ResponseCache:
        cache = memory_cache()
        assert not await cache.put("k", response, "p", "m")
        assert await cache.get("k") is None
        return cache

    assert not cacheable(response)
    assert run(go()).stats.not_cacheable == 1


def test_tool_call_and_length_answers_are_stored() -> None:
    assert cacheable(answer(finish_reason="length"))
    assert cacheable(ChatResponse("r", "m", [], [ToolCall("c", "f", "{}")], "tool_calls"))


def test_an_entry_too_large_is_not_stored() -> None:
    async def go() -> bool:
        cache = ResponseCache(MemoryCache(), ttl_s=60, max_entry_bytes=200)
        return await cache.put("k", answer("x" * 500), "p", "m")

    assert run(go()) is False


def test_entries_round_trip_every_field() -> None:
    response = ChatResponse(
        id="r9",
        model="claude-x",
        content=[
            NativePart("anthropic", {"type": "thinking", "thinking": "hmm", "signature": "sig"}, True),
            TextPart("answer", extra={"citations": [1]}),
            ImagePart(data="AAAA", media_type="image/png"),
        ],
        tool_calls=[ToolCall("c1", "lookup", '{"q":"x"}')],
        finish_reason="tool_calls",
        usage=Usage(10, 5, 2, 1, 3, Decimal("0.000123")),
        stop_sequence=None,
    )
    hit = decode_entry(encode_entry(response, "anthropic", "claude-x"))
    assert hit.response == response
    assert (hit.provider, hit.model) == ("anthropic", "claude-x")


@pytest.mark.parametrize(
    "raw", [b"not json", b"{}", b'{"v": 99}', orjson.dumps({"v": 1, "response": {"content": 5}})]
)
def test_unreadable_entries_are_misses(raw: bytes) -> None:
    async def go() -> ResponseCache:
        store = MemoryCache()
        cache = ResponseCache(store, ttl_s=60)
        await store.put("k", raw, 60)
        assert await cache.get("k") is None
        return cache

    cache = run(go())
    assert (cache.stats.corrupt, cache.stats.misses) == (1, 1)


class DeadCacheStore:
    def __init__(self) -> None:
        self.calls = 0

    async def get(self, key: str) -> bytes | None:
        self.calls += 1
        raise BackendUnavailableError("redis cache get: ConnectionError")

    async def put(self, key: str, value: bytes, ttl_s: float) -> None:
        self.calls += 1
        raise BackendUnavailableError("redis cache put: ConnectionError")

    async def aclose(self) -> None:
        pass


def test_a_dead_store_means_misses_then_silence() -> None:
    async def go() -> tuple[ResponseCache, DeadCacheStore]:
        store = DeadCacheStore()
        cache = ResponseCache(store, ttl_s=60)
        for _ in range(5):
            assert await cache.get("k") is None
            assert not await cache.put("k", answer(), "p", "m")
        return cache, store

    cache, store = run(go())
    assert store.calls == 3  # then the breaker stopped calling it
    assert (cache.stats.backend_errors, cache.stats.breaker_skips, cache.stats.misses) == (3, 7, 5)


def test_build_from_settings() -> None:
    settings = load_settings(env={}, config_path="/dev/null")
    cache = build_response_cache(settings)
    assert cache is not None and isinstance(cache.store, MemoryCache)
    assert cache.store.max_bytes == settings.cache.max_bytes and cache.ttl_s == 3600.0
    off = dataclasses.replace(settings, cache=CacheSettings(enabled=False))
    assert build_response_cache(off) is None


def test_second_replica_hits_within_the_tenant_only() -> None:
    """Two replicas (two clients, two pools) sharing one Redis."""
    server = shared_redis()
    prefix = unique_prefix("rcache")

    async def go() -> None:
        replicas = [
            ResponseCache(RedisCache(connect(server.url, 2.0), prefix=prefix, timeout_s=2.0), ttl_s=30)
            for _ in range(2)
        ]
        req = request()
        try:
            key_a = replicas[0].key("tenant:a", "default", req)
            assert await replicas[0].put(key_a, answer(), "openai", "gpt-x")
            hit = await replicas[1].get(replicas[1].key("tenant:a", "default", req))
            assert hit is not None and hit.response == answer()
            assert await replicas[1].get(replicas[1].key("tenant:b", "default", req)) is None
            pttl = int(server.command("PTTL", prefix + key_a).split(b"\r\n")[0][1:])
            assert 29_000 < pttl <= 30_000
        finally:
            for replica in replicas:
                await replica.aclose()

    run(go())


# --- replay and record ---------------------------------------------------------------------------


def test_replay_has_the_shape_of_a_provider_stream() -> None:
    response = answer(
        "Two words",
        tool_calls=[ToolCall("c1", "lookup", '{"query": "a fairly long argument string"}')],
        finish_reason="tool_calls",
        stop_sequence=None,
    )
    events = replay_events(response)
    assert events[0] == StreamStart("r1", "gpt-x")
    assert events[1] == UsageEvent(Usage(input_tokens=5))  # the prompt's side, early, as Anthropic does
    assert events[2:4] == [TextDelta("Two"), TextDelta(" words")]
    assert events[4] == ToolCallDelta(0, id="c1", name="lookup")
    fragments = [e for e in events if isinstance(e, ToolCallDelta) and e.id is None]
    assert len(fragments) > 1 and "".join(f.arguments for f in fragments) == response.tool_calls[0].arguments
    assert events[-2:] == [UsageEvent(response.usage), StreamEnd("tool_calls", response.usage)]  # type: ignore[arg-type]


def test_replay_of_a_thinking_block_streams_like_anthropic() -> None:
    block = {"type": "thinking", "thinking": "let me see", "signature": "c2ln"}
    events = replay_events(answer("ok", content=[NativePart("anthropic", block), TextPart("ok")]))
    natives = [e.data for e in events if isinstance(e, NativeEvent)]
    assert natives == [
        {"type": "content_block_start", "content_block": {**block, "thinking": "", "signature": ""}},
        {"type": "content_block_delta", "delta": {"type": "thinking_delta", "thinking": "let me see"}},
        {"type": "content_block_delta", "delta": {"type": "signature_delta", "signature": "c2ln"}},
        {"type": "content_block_stop"},
    ]


TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=200)


@given(TEXT, st.lists(st.tuples(st.text(min_size=1, max_size=8), TEXT), max_size=3))
def test_record_of_a_replay_is_the_answer(text: str, calls: list[tuple[str, str]]) -> None:
    tool_calls = [ToolCall(f"c{i}", name, args) for i, (name, args) in enumerate(calls)]
    content: list[Any] = [TextPart(text)] if text else []
    response = ChatResponse("r", "m", content, tool_calls, "tool_calls" if calls else "stop", Usage(1, 2))
    recorder = StreamRecorder()
    for event in replay_events(response):
        recorder.feed(event)
    assert recorder.response() == response


def test_an_unfinished_stream_records_nothing() -> None:
    recorder = StreamRecorder()
    for event in replay_events(answer())[:-1]:
        recorder.feed(event)
    assert recorder.response() is None


def fake_provider() -> FakeProvider:
    return FakeProvider(ProviderSettings("fake", "fake", "http://fake.invalid"), HttpClient())


async def live(model: str, req: ChatRequest) -> list[StreamEvent]:
    stream: AsyncIterator[StreamEvent] = fake_provider().stream(req, model, deadline=1e12)
    return [event async for event in stream]


def frames(raw: bytes) -> list[dict[str, Any]]:
    """SSE frames as {"event": name, "data": parsed JSON or the raw text}."""
    out = []
    for block in raw.split(b"\n\n"):
        if not block.strip():
            continue
        frame: dict[str, Any] = {}
        for line in block.split(b"\n"):
            name, _, value = line.partition(b": ")
            frame[name.decode()] = value.decode()
        if frame.get("data", "").startswith(("{", "[")) and frame["data"] != "[DONE]":
            frame["data"] = orjson.loads(frame["data"])
        out.append(frame)
    return out


def openai_shape(raw: bytes) -> tuple[list[Any], str]:
    shape: list[Any] = []
    text = ""
    for frame in frames(raw):
        data = frame["data"]
        if data == "[DONE]":
            shape.append("DONE")
            continue
        if not data["choices"]:
            shape.append(("usage", sorted(data["usage"])))
            continue
        choice = data["choices"][0]
        text += choice["delta"].get("content") or ""
        kind = (tuple(sorted(choice["delta"])), choice["finish_reason"])
        if not shape or shape[-1] != kind or "content" not in choice["delta"]:
            shape.append(kind)  # runs of text chunks count once: the split points may differ
    return shape, text


def anthropic_shape(raw: bytes) -> tuple[list[Any], str]:
    shape: list[Any] = []
    text = ""
    for frame in frames(raw):
        data = frame["data"]
        delta = data.get("delta") or {}
        text += delta.get("text") or ""
        kind = (frame["event"], delta.get("type"))
        if not shape or shape[-1] != kind:
            shape.append(kind)
    return shape, text


Renderer = Callable[[list[StreamEvent]], bytes]


def render_openai(events: list[StreamEvent]) -> bytes:
    renderer = openai_chat.StreamRenderer("chatcmpl-x", "fake/echo", include_usage=True)
    return b"".join(renderer.render(e) for e in events)


def render_anthropic(events: list[StreamEvent]) -> bytes:
    renderer = anthropic_messages.StreamRenderer("msg_x", "fake/echo", "req-1")
    return b"".join(renderer.render(e) for e in events)


@pytest.mark.parametrize("model", ["echo", "tool"])
@pytest.mark.parametrize(
    ("render", "shape"), [(render_openai, openai_shape), (render_anthropic, anthropic_shape)]
)
def test_a_replayed_stream_matches_the_live_one_in_each_dialect(
    model: str, render: Renderer, shape: Callable[[bytes], tuple[list[Any], str]]
) -> None:
    """Record a live stream, store it, read it back, replay it: what the client sees has the same shape."""
    req = request(
        messages=[Message("user", [TextPart("tell me about the weather in three words")])],
        tools=[Tool("lookup", parameters={"type": "object", "properties": {}})],
    )

    async def go() -> tuple[list[StreamEvent], list[StreamEvent]]:
        events = await live(model, req)
        recorder = StreamRecorder()
        for event in events:
            recorder.feed(event)
        response = recorder.response()
        assert response is not None
        cache = memory_cache()
        key = cache.key("tenant:a", "default", req)
        assert await cache.put(key, response, "fake", model)
        hit = await cache.get(key)
        assert hit is not None
        return events, replay_events(hit.response)

    live_events, replayed = run(go())
    assert shape(render(replayed)) == shape(render(live_events))
    assert len([e for e in replayed if isinstance(e, TextDelta)]) == len(
        [e for e in live_events if isinstance(e, TextDelta)]
    )
