"""The fallback walk with the scripted fake provider: no network, a recorded sleep."""

from __future__ import annotations

import asyncio

import pytest

from ai_gateway.errors import (
    DeadlineExceededError,
    InvalidRequestError,
    RateLimitError,
    ServiceUnavailableError,
    UpstreamError,
)
from ai_gateway.policy.breaker import BreakerBoard
from ai_gateway.policy.fallback import Attempt, Fallback
from ai_gateway.policy.routing import Route, Target
from ai_gateway.providers._http import HttpClient
from ai_gateway.providers.fake import FakeProvider
from ai_gateway.settings import ProviderSettings, RetrySettings
from ai_gateway.types import ChatRequest, Message, TextDelta, TextPart


def fake(name: str, not_configured: str | None = None) -> FakeProvider:
    return FakeProvider(
        ProviderSettings(
            name=name, type="fake", base_url="http://fake.invalid", not_configured=not_configured
        ),
        HttpClient(),
    )


def request() -> ChatRequest:
    return ChatRequest(model="x", messages=[Message("user", [TextPart("hello there")])])


class Setup:
    def __init__(self, *names: str, max_retries: int = 1, threshold: int = 100, **unconfigured: str) -> None:
        self.providers = {n: fake(n, unconfigured.get(n)) for n in names}
        self.sleeps: list[float] = []

        async def sleep(s: float) -> None:
            self.sleeps.append(s)

        self.fallback = Fallback(
            self.providers,
            BreakerBoard(threshold, 30.0),
            RetrySettings(
                max_retries=max_retries, backoff_base_s=0.1, backoff_max_s=1.0, max_retry_after_s=5
            ),
            sleep,
        )

    def run(self, *targets: tuple[str, str], deadline: float = 30.0) -> tuple[object, list[Attempt]]:
        route = Route("r", tuple(Target(p, m) for p, m in targets))
        attempts: list[Attempt] = []

        async def go() -> object:
            loop = asyncio.get_running_loop()
            return await self.fallback.complete(route, request(), loop.time() + deadline, attempts)

        try:
            return asyncio.run(go()), attempts
        except Exception as exc:
            return exc, attempts


def test_first_target_answers() -> None:
    s = Setup("a", "b")
    (resp, target), attempts = s.run(("a", "echo"), ("b", "echo"))  # type: ignore[misc]
    assert target == Target("a", "echo") and resp.text() == "echo: hello there"
    assert [a.status for a in attempts] == ["ok"]


def test_retryable_error_retried_with_backoff_then_fallback() -> None:
    s = Setup("a", "b", max_retries=2)
    (_resp, target), attempts = s.run(("a", "error_503"), ("b", "echo"))  # type: ignore[misc]
    assert target.provider == "b"
    assert [a.status for a in attempts] == ["error", "error", "error", "ok"]
    assert len(s.sleeps) == 2 and all(0 <= d <= 1.0 for d in s.sleeps)


def test_retry_after_is_used_as_the_delay() -> None:
    s = Setup("a", "b")
    _, attempts = s.run(("a", "error_429"), ("b", "echo"))
    assert s.sleeps == [1.0]
    assert attempts[-1].provider == "b"


def test_flaky_recovers_on_the_same_target() -> None:
    s = Setup("a", "b")
    (_resp, target), attempts = s.run(("a", "flaky_1"), ("b", "echo"))  # type: ignore[misc]
    assert target.provider == "a" and len(attempts) == 2


def test_client_fault_stops_the_walk() -> None:
    s = Setup("a", "b")
    err, attempts = s.run(("a", "error_400"), ("b", "echo"))
    assert isinstance(err, InvalidRequestError)
    assert s.providers["b"].calls == 0 and len(attempts) == 1


def test_timeout_moves_on_without_retry() -> None:
    s = Setup("a", "b", max_retries=3)
    (_, target), attempts = s.run(("a", "timeout"), ("b", "echo"))  # type: ignore[misc]
    assert target.provider == "b" and len(attempts) == 2 and s.sleeps == []


def test_unconfigured_targets_are_skipped_with_their_reason() -> None:
    s = Setup("a", "b", a="A_KEY is not set")
    (_, target), attempts = s.run(("a", "echo"), ("b", "echo"))  # type: ignore[misc]
    assert target.provider == "b"
    assert attempts[0].status == "skipped" and attempts[0].error == "A_KEY is not set"
    assert s.providers["a"].calls == 0


def test_all_unconfigured_is_503_naming_the_variables() -> None:
    s = Setup("a", a="A_KEY is not set")
    err, _ = s.run(("a", "echo"))
    assert isinstance(err, ServiceUnavailableError) and err.code == "provider_not_configured"
    assert "A_KEY" in err.message


def test_all_failing_is_502_with_every_reason() -> None:
    s = Setup("a", "b", max_retries=0)
    err, _ = s.run(("a", "error_503"), ("b", "stream_drop"))
    assert isinstance(err, UpstreamError) and "a/error_503" in err.message and "b/stream_drop" in err.message


def test_only_rate_limits_is_429() -> None:
    s = Setup("a", max_retries=0)
    err, _ = s.run(("a", "error_429"))
    assert isinstance(err, RateLimitError) and err.code == "upstream_rate_limited"


def test_deadline_is_504() -> None:
    s = Setup("a")
    err, _ = s.run(("a", "slow"), deadline=0.05)
    assert isinstance(err, DeadlineExceededError)


def test_breaker_skips_an_open_target() -> None:
    s = Setup("a", "b", max_retries=0, threshold=1)
    s.run(("a", "error_503"), ("b", "echo"))
    (_, _target), attempts = s.run(("a", "error_503"), ("b", "echo"))  # type: ignore[misc]
    assert attempts[0].status == "skipped" and attempts[0].kind == "circuit_open"
    assert s.providers["a"].calls == 1


def test_stream_falls_back_before_the_first_event_only() -> None:
    s = Setup("a", "b")
    route = Route("r", (Target("a", "error_503"), Target("b", "stream_drop")))

    async def go() -> list[object]:
        loop = asyncio.get_running_loop()
        opened = await s.fallback.open_stream(route, request(), loop.time() + 10, [])
        assert opened.target.provider == "b"
        seen: list[object] = [opened.first]
        with pytest.raises(Exception, match=r"reset|dropped|stream"):
            async for ev in opened.events:
                seen.append(ev)
        return seen

    seen = asyncio.run(go())
    assert any(isinstance(e, TextDelta) for e in seen)
