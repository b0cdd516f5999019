"""The order in which policy applies to a model call, written once.

    resolve route -> (auth scope and model check) -> (limits, budget reserve) -> (cache lookup)
    -> fallback walk over the targets -> (settle, cache store, ledger)

Steps in parentheses arrive with their issues; each handler calls only this module, so the order
cannot drift between the ingress dialects.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from ai_gateway.errors import ProviderError
from ai_gateway.policy.breaker import BreakerBoard
from ai_gateway.policy.fallback import Attempt, Fallback, OpenStream
from ai_gateway.policy.routing import Route, Router, Target
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

    def new_context(self, request_id: str) -> CallContext:
        loop = asyncio.get_running_loop()
        return CallContext(request_id, loop.time() + self.settings.server.deadline_s)

    async def complete(self, request: ChatRequest, ctx: CallContext) -> CallResult:
        ctx.route = route = self.router.resolve(request.model)
        response, target = await self.fallback.complete(route, request, ctx.deadline, ctx.attempts)
        return CallResult(response, target)

    async def open_stream(self, request: ChatRequest, ctx: CallContext) -> OpenStream:
        ctx.route = route = self.router.resolve(request.model)
        return await self.fallback.open_stream(route, request, ctx.deadline, ctx.attempts)

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
