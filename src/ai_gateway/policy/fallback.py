"""Walk a route's targets: skip what cannot serve, retry the same target with jittered backoff
(honouring `Retry-After`), then fall back to the next; one overall deadline for all of it.

Streams are "opened" here: an attempt succeeds once the upstream's first event has arrived, so a stream
falls back only before anything reached the client (CONTRACT §3).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from ai_gateway.errors import (
    DeadlineExceededError,
    GatewayError,
    InvalidRequestError,
    ProviderError,
    RateLimitError,
    ServiceUnavailableError,
    UnsupportedFeatureError,
    UpstreamError,
)
from ai_gateway.policy.breaker import BreakerBoard
from ai_gateway.policy.routing import Route, Target
from ai_gateway.providers import Provider
from ai_gateway.settings import RetrySettings
from ai_gateway.types import ChatRequest, ChatResponse, StreamEvent

__all__ = ["Attempt", "Fallback", "OpenStream"]

T = TypeVar("T")


@dataclass(slots=True)
class Attempt:
    provider: str
    model: str
    status: Literal["ok", "error", "skipped"]
    error: str | None = None
    latency_ms: int = 0
    http_status: int | None = None
    kind: str | None = None


@dataclass(slots=True)
class OpenStream:
    target: Target
    first: StreamEvent
    events: AsyncGenerator[StreamEvent, None]
    attempts: list[Attempt] = field(default_factory=list)


class Fallback:
    def __init__(
        self,
        providers: Mapping[str, Provider],
        breakers: BreakerBoard,
        retries: RetrySettings,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._providers = providers
        self._breakers = breakers
        self._retries = retries
        self._sleep = sleep

    async def complete(
        self, route: Route, request: ChatRequest, deadline: float, attempts: list[Attempt]
    ) -> tuple[ChatResponse, Target]:
        async def call(p: Provider, t: Target) -> ChatResponse:
            return await p.complete(request, t.model, deadline)

        return await self._walk(route, request, deadline, attempts, call)

    async def open_stream(
        self, route: Route, request: ChatRequest, deadline: float, attempts: list[Attempt]
    ) -> OpenStream:
        async def call(p: Provider, t: Target) -> OpenStream:
            events = p.stream(request, t.model, deadline)
            try:
                first = await anext(events)
            except StopAsyncIteration:
                raise ProviderError("bad_response", f"{t.provider}: empty stream") from None
            except BaseException:
                await events.aclose()
                raise
            return OpenStream(t, first, events, attempts)

        stream, _ = await self._walk(route, request, deadline, attempts, call)
        return stream

    def stream_failed(self, target: Target, err: ProviderError) -> None:
        """A failure after the first byte: no fallback is possible, but the breaker learns of it."""
        if err.counts_for_breaker:
            self._breakers.failure(target.label)

    async def _walk(
        self,
        route: Route,
        request: ChatRequest,
        deadline: float,
        attempts: list[Attempt],
        call: Callable[[Provider, Target], Awaitable[T]],
    ) -> tuple[T, Target]:
        loop = asyncio.get_running_loop()
        unsupported: UnsupportedFeatureError | None = None
        for target in route.targets:
            provider = self._providers[target.provider]
            reason = provider.settings.not_configured
            if reason:
                attempts.append(
                    Attempt(target.provider, target.model, "skipped", reason, kind="not_configured")
                )
                continue
            try:
                provider.check(request)
            except UnsupportedFeatureError as exc:
                unsupported = unsupported or exc
                attempts.append(
                    Attempt(target.provider, target.model, "skipped", exc.message, kind="unsupported")
                )
                continue
            key = target.label
            tries = 0
            while True:
                if loop.time() >= deadline:
                    raise _final_error(attempts, deadline_hit=True)
                if not self._breakers.allow(key):
                    attempts.append(
                        Attempt(target.provider, target.model, "skipped", "circuit open", kind="circuit_open")
                    )
                    break
                started = loop.time()
                try:
                    result = await call(provider, target)
                except ProviderError as exc:
                    attempts.append(
                        Attempt(
                            target.provider,
                            target.model,
                            "error",
                            exc.message,
                            int((loop.time() - started) * 1000),
                            exc.status,
                            exc.kind,
                        )
                    )
                    if exc.counts_for_breaker:
                        self._breakers.failure(key)
                    else:
                        self._breakers.release_probe(key)
                    if exc.client_fault:
                        raise InvalidRequestError(
                            f"{target.provider} rejected the request: {exc.upstream_message or exc.message}",
                            code="upstream_invalid_request",
                        ) from None
                    delay = self._retry_delay(exc, tries)
                    if delay is None or loop.time() + delay >= deadline:
                        break
                    tries += 1
                    await self._sleep(delay)
                    continue
                except BaseException as exc:
                    self._breakers.release_probe(key)
                    # Cut short in flight (the client left, shutdown): the upstream still had the call,
                    # so the ledger keeps it as an attempt (invariant I1) and bills its prompt.
                    kind = "cancelled" if isinstance(exc, asyncio.CancelledError) else "internal_error"
                    ms = int((loop.time() - started) * 1000)
                    attempts.append(Attempt(target.provider, target.model, "error", kind, ms, None, kind))
                    raise
                self._breakers.success(key)
                attempts.append(
                    Attempt(
                        target.provider, target.model, "ok", None, int((loop.time() - started) * 1000), 200
                    )
                )
                return result, target
        if unsupported is not None and not any(a.status == "error" for a in attempts):
            raise unsupported
        raise _final_error(attempts, deadline_hit=loop.time() >= deadline)

    def _retry_delay(self, exc: ProviderError, tries: int) -> float | None:
        """Seconds to wait before retrying the same target, or None to move on to the next one."""
        if not exc.retryable or tries >= self._retries.max_retries:
            return None
        if exc.retry_after is not None:
            return exc.retry_after if exc.retry_after <= self._retries.max_retry_after_s else None
        cap = min(self._retries.backoff_max_s, self._retries.backoff_base_s * (2**tries))
        return random.uniform(0, cap)  # full jitter


def _final_error(attempts: list[Attempt], deadline_hit: bool) -> GatewayError:
    real = [a for a in attempts if a.status == "error"]
    summary = "; ".join(f"{a.provider}/{a.model}: {a.error}" for a in attempts) or "no targets"
    if deadline_hit:
        return DeadlineExceededError(f"The request deadline passed before an upstream answered ({summary}).")
    if not real:
        if all(a.kind == "not_configured" for a in attempts):
            return ServiceUnavailableError(
                f"No configured provider can serve this model ({summary}).", code="provider_not_configured"
            )
        return ServiceUnavailableError(
            f"Every provider for this model is unavailable ({summary}).",
            code="all_providers_unavailable",
            retry_after=5,
        )
    if all(a.http_status == 429 for a in real):
        return RateLimitError(
            f"The upstream provider is rate limiting ({summary}).",
            code="upstream_rate_limited",
            retry_after=1,
        )
    if all(a.kind == "timeout" for a in real):
        return DeadlineExceededError(f"The upstream timed out ({summary}).")
    return UpstreamError(f"All upstream attempts failed ({summary}).")
