"""The order in which policy applies to a model call, written once.

    (authenticate, scope: web/app.py, before the body is read) -> resolve route -> model/route check
    -> (limits, budget reserve) -> (cache lookup)
    -> fallback walk over the targets -> (settle, cache store, ledger)

Steps in parentheses arrive with their issues; each handler calls only this module, so the order
cannot drift between the ingress dialects.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from ai_gateway.errors import InvalidRequestError, PermissionDeniedError, ProviderError
from ai_gateway.policy.auth import Principal
from ai_gateway.policy.breaker import BreakerBoard
from ai_gateway.policy.fallback import Attempt, Fallback, OpenStream
from ai_gateway.policy.routing import Route, Router, Target
from ai_gateway.policy.tokens import estimate_input_tokens
from ai_gateway.providers import Provider
from ai_gateway.settings import Settings
from ai_gateway.types import ChatRequest, ChatResponse

__all__ = ["CallContext", "CallResult", "Pipeline"]


@dataclass(slots=True)
class CallContext:
    request_id: str
    deadline: float
    attempts: list[Attempt] = field(default_factory=list)
    route: Route | None = None
    principal: Principal | None = None  # None only for calls made outside the web app (tests, tools)

    @property
    def upstream_calls(self) -> int:
        return sum(1 for a in self.attempts if a.status != "skipped")


@dataclass(slots=True)
class CallResult:
    response: ChatResponse
    target: Target


class Pipeline:
    def __init__(self, settings: Settings, providers: dict[str, Provider]) -> None:
        self.settings = settings
        self.providers = providers
        self.router = Router({n: p.settings for n, p in providers.items()}, settings.routes)
        self.breakers = BreakerBoard(settings.breaker.failure_threshold, settings.breaker.cooldown_s)
        self.fallback = Fallback(providers, self.breakers, settings.retries)

    def new_context(self, request_id: str, principal: Principal | None = None) -> CallContext:
        loop = asyncio.get_running_loop()
        return CallContext(request_id, loop.time() + self.settings.server.deadline_s, principal=principal)

    def _route(self, request: ChatRequest, ctx: CallContext) -> Route:
        ctx.route = route = self.router.resolve(request.model)
        if ctx.principal is not None:
            _check_allowed(ctx.principal, route)
        return route

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

    async def complete(self, request: ChatRequest, ctx: CallContext) -> CallResult:
        route = self._route(request, ctx)
        response, target = await self.fallback.complete(route, request, ctx.deadline, ctx.attempts)
        return CallResult(response, target)

    async def open_stream(self, request: ChatRequest, ctx: CallContext) -> OpenStream:
        route = self._route(request, ctx)
        return await self.fallback.open_stream(route, request, ctx.deadline, ctx.attempts)

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
