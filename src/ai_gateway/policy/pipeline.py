"""The order in which policy applies to a model call, written once.

    authenticate + scope (web/app.py, before the body is read)
    -> resolve route -> model/route check against the key's patterns
    -> rate limits (RPM, TPM reserve)                    429 rate_limited
    -> cache lookup (a hit is served here, cost 0)
    -> budget reserve (worst-case cost)                  429 budget_exceeded
    -> fallback walk over the targets (retries, breakers, deadline)
    -> finish, on every exit path: settle limits and budget to the real usage and cost, store the
       answer in the cache, record the one ledger row (policy/accounting.py)

Each handler calls only this module, so the order cannot drift between the ingress dialects.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass

from ai_gateway.errors import InvalidRequestError, PermissionDeniedError, ProviderError
from ai_gateway.policy.accounting import CallContext, Services, budget_scopes, finish
from ai_gateway.policy.auth import Principal
from ai_gateway.policy.breaker import BreakerBoard
from ai_gateway.policy.cache import cache_directive, cache_namespace, replay_events
from ai_gateway.policy.cache_codec import StreamRecorder
from ai_gateway.policy.fallback import Fallback, OpenStream
from ai_gateway.policy.limits import LimitScope, scopes_for
from ai_gateway.policy.pricing import Pricing
from ai_gateway.policy.routing import Route, Router, Target
from ai_gateway.policy.tokens import estimate_input_tokens
from ai_gateway.policy.usage_count import DeliveredCounter
from ai_gateway.providers import Provider
from ai_gateway.settings import ProviderSettings, Settings
from ai_gateway.types import ChatRequest, ChatResponse, StreamEvent, Usage

__all__ = ["CallContext", "CallResult", "Pipeline"]

# Budget holds and their settle markers are keyed by an id only this process makes. The request id may
# be the client's own `x-request-id`: one reused (by a retry, a careless client, or on purpose) must not
# make concurrent calls share one hold, nor turn a later call's settle into a no-op "already settled".
_HOLD_PREFIX = os.urandom(6).hex()
_HOLD_COUNTER = itertools.count()
_MAX_REMEMBERED_PRINCIPALS = 10_000


def _hold_id(request_id: str) -> str:
    return f"{request_id}~{_HOLD_PREFIX}{next(_HOLD_COUNTER):x}"


@dataclass(slots=True)
class CallResult:
    response: ChatResponse
    target: Target
    cached: bool = False


class Pipeline:
    def __init__(
        self, settings: Settings, providers: dict[str, Provider], services: Services | None = None
    ) -> None:
        self.settings = settings
        self.providers = providers
        self.services = services or Services(Pricing(settings.prices))
        self.router = Router({n: p.settings for n, p in providers.items()}, settings.routes)
        self.breakers = BreakerBoard(settings.breaker.failure_threshold, settings.breaker.cooldown_s)
        self.fallback = Fallback(providers, self.breakers, settings.retries)
        # The limit scopes of each principal, by identity: the authenticator hands out one Principal
        # object per key until its cache entry expires, so this is a lookup, not a rebuild, per request.
        self._scopes: dict[int, tuple[Principal, list[LimitScope]]] = {}

    def new_context(
        self, request_id: str, principal: Principal | None = None, endpoint: str = "openai_chat"
    ) -> CallContext:
        now = asyncio.get_running_loop().time()
        return CallContext(
            request_id,
            now + self.settings.server.deadline_s,
            now,
            endpoint=endpoint,
            principal=principal,
            pricer=self._quote,
        )

    def _quote(self, target: Target, usage: Usage) -> int | None:
        return self.services.pricing.cost(self.providers[target.provider].settings, target.model, usage)[0]

    def _route(self, request: ChatRequest, ctx: CallContext) -> Route:
        ctx.route = route = self.router.resolve(request.model)
        if ctx.principal is not None:
            _check_allowed(ctx.principal, route)
        return route

    def provider_settings(self, name: str) -> ProviderSettings:
        return self.providers[name].settings

    async def _admit(self, request: ChatRequest, ctx: CallContext, headers: Mapping[str, str]) -> Route:
        """Everything before the upstream call; on a cache hit `ctx.hit` is set and nothing else runs."""
        route = self._route(request, ctx)
        ctx.stream = request.stream
        services = self.services
        ctx.input_estimate = estimate_input_tokens(request)
        max_output = request.max_tokens or self.settings.ledger.default_max_output_tokens
        if services.limiter is not None and ctx.principal is not None:
            limit_scopes = self._limit_scopes(ctx.principal)
            if limit_scopes:
                ctx.admission = await services.limiter.admit(limit_scopes, ctx.input_estimate + max_output)
        cache = services.cache
        # A key switched off for the cache neither reads nor writes it: `x-aigw-cache: bypass`.
        if cache is not None and (ctx.principal is None or ctx.principal.cache):
            directive = cache_directive(headers.get("cache-control"))
            tenant = ctx.principal.tenant_id if ctx.principal else None
            ctx.cache_key = cache.key(cache_namespace(tenant, self.settings.cache), route.name, request)
            ctx.cache_store = directive.store
            if directive.lookup:
                ctx.hit = await cache.get(ctx.cache_key)
                ctx.cache_state = "hit" if ctx.hit is not None else "miss"
                if ctx.hit is not None:
                    return route
        if services.budgets is not None:
            money_scopes = budget_scopes(ctx.principal)
            if money_scopes:
                worst = self._worst_case(route, ctx.input_estimate, max_output)
                ctx.reservation = await services.budgets.reserve(
                    money_scopes, worst, _hold_id(ctx.request_id)
                )
        return route

    def _limit_scopes(self, principal: Principal) -> list[LimitScope]:
        known = self._scopes.get(id(principal))
        if known is not None and known[0] is principal:
            return known[1]
        if len(self._scopes) >= _MAX_REMEMBERED_PRINCIPALS:
            self._scopes.clear()
        scopes = scopes_for(principal, self.settings.limits)
        self._scopes[id(principal)] = (principal, scopes)  # holding it keeps its id from being reused
        return scopes

    def _worst_case(self, route: Route, input_tokens: int, max_output: int) -> int:
        """The most this request can cost on any target its chain may reach (a fallback may land on
        the priciest). Targets with no known price add nothing: see README "Budgets"."""
        worst = 0
        for target in route.targets:
            provider = self.providers[target.provider]
            if provider.settings.not_configured:
                continue
            price = self.services.pricing.price(provider.settings, target.model)
            if price is not None:
                worst = max(worst, price.worst_case(input_tokens, max_output))
        return worst

    async def complete(
        self, request: ChatRequest, ctx: CallContext, headers: Mapping[str, str] | None = None
    ) -> CallResult:
        route = await self._admit(request, ctx, headers or {})
        if ctx.hit is not None:
            return CallResult(ctx.hit.response, Target(ctx.hit.provider, ctx.hit.model), cached=True)
        response, target = await self.fallback.complete(route, request, ctx.deadline, ctx.attempts)
        ctx.target, ctx.usage = target, response.usage
        cache = self.services.cache
        if cache is not None and ctx.cache_key is not None and ctx.cache_store:
            await cache.put(ctx.cache_key, response, target.provider, target.model)
        return CallResult(response, target)

    async def open_stream(
        self, request: ChatRequest, ctx: CallContext, headers: Mapping[str, str] | None = None
    ) -> OpenStream:
        route = await self._admit(request, ctx, headers or {})
        if ctx.hit is not None:
            events = replay_events(ctx.hit.response)
            target = Target(ctx.hit.provider, ctx.hit.model)
            return OpenStream(target, events[0], _replay(events[1:]), ctx.attempts)
        opened = await self.fallback.open_stream(route, request, ctx.deadline, ctx.attempts)
        ctx.target = opened.target
        ctx.counter = DeliveredCounter()
        if self.services.cache is not None and ctx.cache_key is not None and ctx.cache_store:
            ctx.recorder = StreamRecorder()
        return opened

    async def finish(self, ctx: CallContext, exc: BaseException | None) -> None:
        """Settle, store and record; call exactly once per call, on every exit path."""
        await finish(ctx, self.services, self.provider_settings, exc)

    def listing(self, principal: Principal | None) -> list[tuple[str, str]]:
        """`/v1/models` for this caller: only what its key's model patterns allow it to call."""
        entries = self.router.listing()
        if principal is None or principal.models is None:
            return entries
        routes = self.router.routes
        # An alias is listed only if the key may use the alias and everything its chain reaches.
        return [
            (name, owner)
            for name, owner in entries
            if (_allowed(principal, routes[name]) if name in routes else principal.may_use(name))
        ]

    async def count_tokens(self, request: ChatRequest, ctx: CallContext) -> tuple[int, str]:
        """The request's input tokens and how they were found: "upstream" when the first configured
        target can count them itself (Anthropic), else "estimate" (policy/tokens.py)."""
        route = self._route(request, ctx)
        target = next(
            (t for t in route.targets if not self.providers[t.provider].settings.not_configured), None
        )
        if target is not None:
            try:
                count = await self.providers[target.provider].count_tokens(
                    request, target.model, ctx.deadline
                )
            except ProviderError as exc:
                if exc.client_fault:
                    raise InvalidRequestError(
                        f"{target.provider} rejected the request: {exc.upstream_message or exc.message}",
                        code="upstream_invalid_request",
                    ) from None
                count = None  # an upstream that cannot count now still leaves the estimate
            if count is not None:
                return count, "upstream"
        return estimate_input_tokens(request), "estimate"

    async def discover_models(self, timeout_s: float = 2.0) -> None:
        """Ask each configured provider what it serves; failures leave the static list in place."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        live = {n: p for n, p in self.providers.items() if not p.settings.not_configured}

        async def one(name: str, provider: Provider) -> None:
            try:
                models = await provider.list_models(deadline)
            except ProviderError:  # best effort: the static list stays
                return
            self.router.note_models(name, models)

        await asyncio.gather(*(one(n, p) for n, p in live.items()))


def _allowed(principal: Principal, route: Route) -> bool:
    return principal.may_use(route.name) and all(principal.may_use(t.label) for t in route.targets)


def _check_allowed(principal: Principal, route: Route) -> None:
    """The name asked for and every target its chain could reach must match the key's patterns, so a
    fallback can never carry a request somewhere the key may not go. Checked before any upstream call."""
    if _allowed(principal, route):
        return
    denied = next((t.label for t in route.targets if not principal.may_use(t.label)), route.name)
    reach = "" if denied == route.name else f" (its chain reaches {denied})"
    raise PermissionDeniedError(
        f"This API key may not use the model '{route.name}'{reach}.", code="model_not_allowed", param="model"
    )


async def _replay(events: list[StreamEvent]) -> AsyncGenerator[StreamEvent, None]:
    for event in events:
        yield event
