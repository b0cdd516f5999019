"""OpenRouter: the OpenAI wire format at `https://openrouter.ai/api/v1`, plus the cost of each call.

Only the differences live here. Attribution headers (`HTTP-Referer`, `X-Title`,
https://openrouter.ai/docs/app-attribution) come from `settings.headers` like any static header. SSE
comment lines (`: OPENROUTER PROCESSING`) are skipped by `_http.UpstreamResponse.sse()`, and mid-stream
`{"error": {...}}` chunks are handled by the OpenAI adapter.
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any, ClassVar

from ai_gateway.providers.openai import OpenAIProvider
from ai_gateway.types import ChatRequest, Usage

__all__ = ["OpenRouterProvider"]


class OpenRouterProvider(OpenAIProvider):
    extra_keys: ClassVar[tuple[str, ...]] = ("openai", "openrouter")
    # OpenRouter forwards `cache_control` on text parts to the providers that honour it (Anthropic,
    # Gemini): https://openrouter.ai/docs/features/prompt-caching
    keep_part_extras: ClassVar[bool] = True
    # https://openrouter.ai/docs/api-reference/parameters#top-k
    maps: ClassVar[frozenset[str]] = frozenset({"anthropic.top_k"})

    def _map_request(self, request: ChatRequest, model: str, stream: bool) -> dict[str, Any]:
        payload = super()._map_request(request, model, stream)
        top_k = request.extra.get("anthropic", {}).get("top_k")
        if top_k is not None:
            payload["top_k"] = top_k
        # Ask for usage accounting so `usage.cost` comes back. Newer OpenRouter always sends it and
        # ignores the flag; older deployments need it. https://openrouter.ai/docs/use-cases/usage-accounting
        payload.setdefault("usage", {"include": True})
        return payload

    def _map_usage(self, usage: Any) -> Usage | None:
        mapped = super()._map_usage(usage)
        if mapped is None:
            return None
        details = usage.get("prompt_tokens_details") or {}
        mapped.cache_creation_tokens = details.get("cache_write_tokens") or 0
        cost = usage.get("cost")
        if isinstance(cost, int | float) and not isinstance(cost, bool) and math.isfinite(cost):
            # Through str() so the float's binary noise does not become fake precision.
            mapped.cost_usd = Decimal(str(cost))
        return mapped
