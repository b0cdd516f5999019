"""What happens once a model call is over, on every exit path: count the usage, price it, settle the
rate-limit and budget reservations, store a streamed answer in the cache, and record the one ledger row.

`CallContext` collects what the call did as it goes (pipeline.py fills it in; the web layer feeds it the
stream events it delivers), so `finish` can account for successes, failures, cache hits and client
disconnects alike.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from ai_gateway.errors import ProviderError
from ai_gateway.policy.auth import Principal
from ai_gateway.policy.budgets import Budgets, BudgetScope, Reservation
from ai_gateway.policy.cache import CacheHit, ResponseCache, StreamRecorder
from ai_gateway.policy.fallback import Attempt
from ai_gateway.policy.ledger import Ledger
from ai_gateway.policy.ledger_row import LedgerAttempt, LedgerRow, LedgerStatus, outcome_of
from ai_gateway.policy.limits import Admission, Limiter
from ai_gateway.policy.pricing import PriceSource, Pricing, nanos_from_usd
from ai_gateway.policy.routing import Route, Target
from ai_gateway.policy.usage_count import DeliveredCounter
from ai_gateway.settings import ProviderSettings
from ai_gateway.types import StreamEvent, TextDelta, Usage

__all__ = ["CallContext", "Services", "budget_scopes", "finish"]

log = logging.getLogger("ai_gateway.accounting")

CacheState = Literal["hit", "miss", "bypass"]


@dataclass(slots=True)
class Services:
    """The stateful policy pieces, built once in the app factory; all optional so unit tests can run the
    pipeline bare."""

    pricing: Pricing
    limiter: Limiter | None = None
    cache: ResponseCache | None = None
    budgets: Budgets | None = None
    ledger: Ledger | None = None


@dataclass(slots=True)
class CallContext:
    request_id: str
    deadline: float
    started: float  # loop time
    endpoint: str = "openai_chat"
    principal: Principal | None = None
    ts: datetime = field(default_factory=lambda: datetime.now(UTC))
    stream: bool = False
    attempts: list[Attempt] = field(default_factory=list)
    route: Route | None = None
    target: Target | None = None
    input_estimate: int = 0
    admission: Admission | None = None
    reservation: Reservation | None = None
    cache_key: str | None = None
    cache_store: bool = False
    cache_state: CacheState = "bypass"
    hit: CacheHit | None = None
    usage: Usage | None = None  # non-stream: the upstream's report
    counter: DeliveredCounter | None = None  # streams: what reached the client
    recorder: StreamRecorder | None = None  # streams to be cached: the answer being assembled
    first_byte_at: float | None = None
    response_started: bool = False
    cost_nanos: int | None = None
    cost_saved_nanos: int = 0
    price_source: PriceSource | None = None
    stream_error: ProviderError | None = None  # a stream that broke after its first byte
    pricer: Callable[[Target, Usage], int | None] | None = None
    finished: bool = False

    def quote(self, usage: Usage) -> int | None:
        """What `usage` costs on the target that answered: 0 for a cache hit, None when unknown."""
        if self.hit is not None:
            return 0
        if self.target is None or self.pricer is None:
            return None
        return self.pricer(self.target, usage)

    @property
    def upstream_calls(self) -> int:
        return sum(1 for a in self.attempts if a.status != "skipped")

    def observe(self, event: StreamEvent) -> None:
        """A stream event that is being delivered to the client."""
        if self.first_byte_at is None and isinstance(event, TextDelta):
            self.first_byte_at = asyncio.get_running_loop().time()
        if self.counter is not None:
            self.counter.feed(event)
        if self.recorder is not None:
            self.recorder.feed(event)


def budget_scopes(principal: Principal | None) -> list[BudgetScope]:
    """The key's and the tenant's budgets, in nano-dollars. The master key and open mode have none."""
    if principal is None or principal.kind != "key":
        return []
    scopes: list[BudgetScope] = []
    levels = (
        (f"key:{principal.key_id}", principal.key_limits),
        (f"tenant:{principal.tenant_id}", principal.tenant_limits),
    )
    for name, limits in levels:
        if limits.budget_usd is not None and limits.budget_period is not None:
            scopes.append(BudgetScope(name, nanos_from_usd(limits.budget_usd), limits.budget_period))
    return scopes


async def finish(
    ctx: CallContext,
    services: Services,
    provider_settings: Callable[[str], ProviderSettings],
    exc: BaseException | None,
) -> None:
    """Account for the call exactly once, whatever happened. Never raises."""
    if ctx.finished:
        return
    ctx.finished = True
    try:
        usage, estimated = _final_usage(ctx, exc)
        _price(ctx, services.pricing, provider_settings, usage)
        await _settle(ctx, services, usage, estimated)
        if exc is None and ctx.recorder is not None and ctx.cache_key and services.cache is not None:
            answer = ctx.recorder.response()
            if answer is not None and ctx.target is not None:
                await services.cache.put(ctx.cache_key, answer, ctx.target.provider, ctx.target.model)
        if services.ledger is not None:
            services.ledger.record(_row(ctx, exc, usage, estimated))
    except Exception:  # accounting must never turn an answered request into an error
        log.exception("accounting failed for request %s", ctx.request_id)


def _final_usage(ctx: CallContext, exc: BaseException | None) -> tuple[Usage, bool]:
    if ctx.hit is not None:
        return ctx.hit.response.usage or Usage(), False
    if ctx.target is None:
        ctx.target = _cut_short(ctx)
        if ctx.target is None:
            return Usage(), False  # nothing reached an upstream that answered
    if ctx.counter is not None:
        return ctx.counter.usage(ctx.input_estimate)
    if ctx.usage is not None:
        return ctx.usage, False
    if exc is not None and ctx.upstream_calls:
        # A call cancelled in flight (the client left): the prompt was certainly read.
        return Usage(input_tokens=ctx.input_estimate), True
    return Usage(), False


def _cut_short(ctx: CallContext) -> Target | None:
    """The target whose upstream call was in flight when the request was cancelled (fallback.py records
    it as a `cancelled` attempt): it is billed the prompt, and named in the ledger row."""
    last = ctx.attempts[-1] if ctx.attempts else None
    if last is not None and last.kind == "cancelled":
        return Target(last.provider, last.model)
    return None


def _price(
    ctx: CallContext, pricing: Pricing, provider_settings: Callable[[str], ProviderSettings], usage: Usage
) -> None:
    if ctx.hit is not None:
        saved, _ = pricing.cost(provider_settings(ctx.hit.provider), ctx.hit.model, usage)
        ctx.cost_nanos, ctx.cost_saved_nanos, ctx.price_source = 0, saved or 0, None
        return
    if ctx.target is None:
        ctx.cost_nanos = 0
        return
    ctx.cost_nanos, ctx.price_source = pricing.cost(
        provider_settings(ctx.target.provider), ctx.target.model, usage
    )


async def _settle(ctx: CallContext, services: Services, usage: Usage, estimated: bool) -> None:
    if ctx.admission is not None and services.limiter is not None:
        await services.limiter.settle(ctx.admission, usage.total_tokens)
    if ctx.reservation is not None and services.budgets is not None:
        await services.budgets.settle(ctx.reservation, ctx.cost_nanos or 0)


def _status(ctx: CallContext, exc: BaseException | None) -> tuple[LedgerStatus, int, str | None]:
    if exc is None:
        return ("cache_hit" if ctx.hit is not None else "ok"), 200, None
    if isinstance(exc, ProviderError | asyncio.CancelledError) and ctx.response_started:
        status, _, error = outcome_of(exc)
        return status, 200, error  # the client had its 200 and part of the answer
    return outcome_of(exc)


def _row(ctx: CallContext, exc: BaseException | None, usage: Usage, estimated: bool) -> LedgerRow:
    status, http_status, error_class = _status(ctx, exc)
    loop = asyncio.get_running_loop()
    principal = ctx.principal
    target = ctx.target or (Target(ctx.hit.provider, ctx.hit.model) if ctx.hit else None)
    if target is None and ctx.attempts:
        last = ctx.attempts[-1]
        target = Target(last.provider, last.model)
    return LedgerRow(
        request_id=ctx.request_id,
        ts=ctx.ts,
        status=status,
        http_status=http_status,
        endpoint=ctx.endpoint,
        stream=ctx.stream,
        tenant_id=principal.tenant_id if principal else None,
        key_id=principal.key_id if principal else None,
        route=ctx.route.name if ctx.route else None,
        provider=target.provider if target else None,
        model=target.model if target else None,
        error_class=error_class,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cached_tokens=usage.cached_input_tokens,
        cost_nanos=ctx.cost_nanos,
        cost_saved_nanos=ctx.cost_saved_nanos,
        price_source=ctx.price_source,
        latency_ms=int((loop.time() - ctx.started) * 1000),
        ttft_ms=int((ctx.first_byte_at - ctx.started) * 1000) if ctx.first_byte_at is not None else None,
        cache_hit=ctx.hit is not None,
        usage_estimated=estimated,
        attempts=tuple(LedgerAttempt.of(a) for a in ctx.attempts),
    )
