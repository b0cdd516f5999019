"""The scripted fake provider, and the package surface (`build_providers`, `__all__`)."""

from __future__ import annotations

import asyncio
import time
from types import MappingProxyType

import pytest

import ai_gateway.providers as providers
from ai_gateway.errors import ProviderError
from ai_gateway.providers import Provider, build_providers
from ai_gateway.providers._http import HttpClient
from ai_gateway.providers.anthropic import AnthropicProvider
from ai_gateway.providers.fake import BEHAVIOURS, FakeProvider
from ai_gateway.providers.ollama import OllamaProvider
from ai_gateway.providers.openai import OpenAIProvider
from ai_gateway.providers.openrouter import OpenRouterProvider
from ai_gateway.settings import Settings
from ai_gateway.types import (
    ChatRequest,
    Message,
    StreamEnd,
    StreamStart,
    TextPart,
    Tool,
    ToolCallDelta,
    Usage,
)
from tests.providers import request, run, settings, text_of


def fake(**kw: object) -> FakeProvider:
    return FakeProvider(settings("fake", "fake://", **kw), HttpClient())


def complete(p: FakeProvider, model: str, req: ChatRequest | None = None, deadline: float | None = None):  # type: ignore[no-untyped-def]
    async def go():  # type: ignore[no-untyped-def]
        loop = asyncio.get_running_loop()
        return await p.complete(req or request("hi there"), model, deadline or loop.time() + 10)

    return run(go())


def stream(p: FakeProvider, model: str, req: ChatRequest | None = None):  # type: ignore[no-untyped-def]
    async def go():  # type: ignore[no-untyped-def]
        out = []
        try:
            async for event in p.stream(
                req or request("hi there"), model, asyncio.get_running_loop().time() + 10
            ):
                out.append(event)
        except ProviderError as exc:
            return out, exc
        return out, None

    return run(go())


def test_echo_and_word_count_usage() -> None:
    p = fake()
    req = ChatRequest(
        model="m",
        messages=[Message("system", [TextPart("be nice")]), Message("user", [TextPart("hi there")])],
    )
    resp = complete(p, "echo", req)
    assert resp.text() == "echo: hi there" and resp.finish_reason == "stop"
    assert resp.usage == Usage(4, 3) and p.calls == 1
    assert complete(p, "anything-else").text() == "echo: hi there" and p.calls == 2


def test_echo_stream() -> None:
    events, error = stream(fake(), "echo")
    assert error is None and isinstance(events[0], StreamStart)
    assert text_of(events) == "echo: hi there" and events[-1] == StreamEnd("stop", Usage(2, 3))


@pytest.mark.parametrize(
    ("model", "status", "retry_after", "retryable"),
    [("error_503", 503, None, True), ("error_429", 429, 1, True), ("error_400", 400, None, False)],
)
def test_scripted_status_errors(model: str, status: int, retry_after: float | None, retryable: bool) -> None:
    with pytest.raises(ProviderError) as exc:
        complete(fake(), model)
    assert (exc.value.kind, exc.value.status, exc.value.retry_after) == ("status", status, retry_after)
    assert exc.value.retryable is retryable and exc.value.client_fault is (status == 400)
    events, err = stream(fake(), model)
    assert events == [] and err is not None and err.status == status


def test_flaky_fails_n_times_per_instance() -> None:
    p = fake()
    for _ in range(2):
        with pytest.raises(ProviderError) as err:
            complete(p, "flaky_2")
        assert err.value.status == 503
    assert complete(p, "flaky_2").text() == "echo: hi there"
    assert p.calls == 3
    with pytest.raises(ProviderError):
        complete(fake(), "flaky_2")  # a new instance starts over


def test_timeout_and_slow() -> None:
    with pytest.raises(ProviderError) as err:
        complete(fake(), "timeout")
    assert err.value.kind == "timeout"
    start = time.monotonic()
    assert complete(fake(), "slow").text() == "echo: hi there"
    assert time.monotonic() - start >= 0.19


def test_slow_past_the_deadline_is_a_timeout() -> None:
    async def go() -> ProviderError | None:
        try:
            await fake().complete(request(), "slow", asyncio.get_running_loop().time() + 0.05)
        except ProviderError as exc:
            return exc
        return None

    err = run(go())
    assert err is not None and err.kind == "timeout"


def test_stream_drop() -> None:
    events, error = stream(fake(), "stream_drop")
    assert isinstance(events[0], StreamStart) and len(events) == 3 and text_of(events) == "echo: hi there"
    assert error is not None and error.kind == "reset"
    with pytest.raises(ProviderError) as err:
        complete(fake(), "stream_drop")
    assert err.value.kind == "reset"


def test_tool() -> None:
    req = request("call it", tools=[Tool("lookup"), Tool("other")])
    resp = complete(fake(), "tool", req)
    assert resp.finish_reason == "tool_calls" and resp.tool_calls[0].name == "lookup"
    assert resp.tool_calls[0].arguments == '{"arg":"value"}'
    events, error = stream(fake(), "tool", req)
    calls = [e for e in events if isinstance(e, ToolCallDelta)]
    assert (
        error is None
        and calls[0].name == "lookup"
        and "".join(c.arguments for c in calls) == '{"arg":"value"}'
    )
    assert isinstance(events[-1], StreamEnd) and events[-1].finish_reason == "tool_calls"
    assert complete(fake(), "tool").text() == "echo: hi there"  # no tools offered


def test_not_configured() -> None:
    with pytest.raises(ProviderError) as err:
        complete(fake(not_configured="no key"), "echo")
    assert err.value.kind == "not_configured"


def test_list_models() -> None:
    assert run(fake().list_models(0)) == list(BEHAVIOURS)
    assert run(fake(models=("echo",)).list_models(0)) == ["echo"]


# --- package surface ----------------------------------------------------------------------------------


def test_all_is_explicit_and_sorted() -> None:
    assert providers.__all__ == sorted(providers.__all__) == ["Provider", "build_providers"]


def test_build_providers_picks_the_class_by_type() -> None:
    types = {
        "openai": OpenAIProvider,
        "openrouter": OpenRouterProvider,
        "ollama": OllamaProvider,
        "anthropic": AnthropicProvider,
        "fake": FakeProvider,
    }
    conf = {f"p-{t}": settings(t, "http://x", name=f"p-{t}") for t in types}
    built = build_providers(_settings(conf), HttpClient())
    assert set(built) == set(conf)
    for t, cls in types.items():
        p = built[f"p-{t}"]
        assert type(p) is cls and isinstance(p, Provider) and p.name == f"p-{t}"


def _settings(conf: dict[str, object]) -> Settings:
    class _S:  # only `providers` is read
        providers = MappingProxyType(conf)

    return _S()  # type: ignore[return-value]
