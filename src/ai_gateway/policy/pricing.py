"""What a request cost, exactly, in integer nano-dollars (1e-9 USD).

Sources, first match wins:
1. the provider's own reported cost (OpenRouter `usage.cost`);
2. a `prices:` override in the config (USD per million input / output / cached tokens);
3. Ollama, and OpenAI-compatible servers on loopback/private addresses: free (they run on your hardware);
4. the `genai-prices` package's bundled data (never downloaded at run time);
5. otherwise unknown: recorded as unknown (None) with a warning, never silently 0.

Money is integer nano-dollars end to end (ledger, budgets, Redis counters), so sums are exact. A per-token
price is held as nano-dollars per million tokens, so each component rounds once, to the nearest nano-dollar.
`genai-prices`' own calculator costs ~50 µs a call; looking a model's flat prices up once and doing
integer arithmetic keeps pricing off the hot path's profile.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Literal
from urllib.parse import urlsplit

from genai_prices import Usage as PriceUsage
from genai_prices import calc_price

from ai_gateway.settings import PriceOverride, ProviderSettings
from ai_gateway.types import Usage

__all__ = ["NANOS_PER_USD", "Price", "PriceSource", "Pricing", "format_usd", "nanos_from_usd"]

log = logging.getLogger("ai_gateway.pricing")

NANOS_PER_USD = 1_000_000_000
_MTOK = 1_000_000
PriceSource = Literal["provider", "override", "free", "genai-prices", "unknown"]
_GENAI_PROVIDER_IDS = {"openai": "openai", "anthropic": "anthropic", "openrouter": "openrouter"}


def nanos_from_usd(value: Decimal | float | str) -> int:
    return int((Decimal(str(value)) * NANOS_PER_USD).to_integral_value(ROUND_HALF_UP))


def format_usd(nanos: int | None) -> str | None:
    """Nano-dollars as a plain decimal string of USD, e.g. 1500 -> '0.0000015'."""
    if nanos is None:
        return None
    text = format(Decimal(nanos).scaleb(-9), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


@dataclass(frozen=True, slots=True)
class Price:
    """Nano-dollars per million tokens, per kind of token."""

    input: int
    output: int
    cached_input: int
    cache_write: int
    source: PriceSource

    def cost(self, usage: Usage) -> int:
        cached = min(usage.cached_input_tokens, usage.input_tokens)
        written = min(usage.cache_creation_tokens, usage.input_tokens - cached)
        plain = usage.input_tokens - cached - written
        total = (
            plain * self.input
            + cached * self.cached_input
            + written * self.cache_write
            + usage.output_tokens * self.output
        )
        return (total + _MTOK // 2) // _MTOK

    def worst_case(self, input_tokens: int, max_output_tokens: int) -> int:
        """The most a request can cost: every input token uncached, every allowed output token used."""
        return (input_tokens * self.input + max_output_tokens * self.output + _MTOK - 1) // _MTOK


_FREE = Price(0, 0, 0, 0, "free")


def _per_mtok(value: object) -> int | None:
    if isinstance(value, Decimal | int | float):
        return nanos_from_usd(value)
    return None  # tiered prices: not flat, handled by the slow path


def _is_local(base_url: str) -> bool:
    host = (urlsplit(base_url).hostname or "").lower()
    if host in ("localhost", "host.docker.internal") or host.endswith((".local", ".internal", ".lan")):
        return True
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return "." not in host  # a bare service name, e.g. "ollama" in docker compose
    return addr.is_loopback or addr.is_private or addr.is_link_local


class Pricing:
    def __init__(self, overrides: Mapping[str, PriceOverride]) -> None:
        self._overrides = {
            key: Price(
                nanos_from_usd(o.input_per_mtok),
                nanos_from_usd(o.output_per_mtok),
                nanos_from_usd(
                    o.cached_input_per_mtok if o.cached_input_per_mtok is not None else o.input_per_mtok
                ),
                nanos_from_usd(o.input_per_mtok),
                "override",
            )
            for key, o in overrides.items()
        }
        self._cache: dict[tuple[str, str], Price | None] = {}
        self._warned: set[tuple[str, str]] = set()

    def price(self, provider: ProviderSettings, model: str) -> Price | None:
        key = (provider.name, model)
        if key in self._cache:
            return self._cache[key]
        price = self._lookup(provider, model)
        if price is None and key not in self._warned:
            self._warned.add(key)
            log.warning(
                "no price known for %s/%s: its cost is recorded as unknown; add prices.%s/%s to the config",
                provider.name,
                model,
                provider.name,
                model,
            )
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[key] = price
        return price

    def cost(self, provider: ProviderSettings, model: str, usage: Usage) -> tuple[int | None, PriceSource]:
        """(nano-dollars or None when unknown, where the number came from)."""
        if usage.cost_usd is not None:
            return nanos_from_usd(usage.cost_usd), "provider"
        price = self.price(provider, model)
        if price is None:
            return None, "unknown"
        return price.cost(usage), price.source

    def _lookup(self, provider: ProviderSettings, model: str) -> Price | None:
        override = self._overrides.get(f"{provider.name}/{model}")
        if override is not None:
            return override
        if provider.type in ("ollama", "fake"):
            return _FREE
        if provider.type == "openrouter" and model.endswith(":free"):
            return _FREE
        genai_id = _GENAI_PROVIDER_IDS.get(provider.name) or _GENAI_PROVIDER_IDS.get(provider.type)
        if provider.name not in _GENAI_PROVIDER_IDS and _is_local(provider.base_url):
            return _FREE
        try:
            found = calc_price(PriceUsage(input_tokens=0, output_tokens=0), model, provider_id=genai_id)
        except LookupError:
            return None
        mp = found.model_price
        inp, out = _per_mtok(mp.input_mtok), _per_mtok(mp.output_mtok)
        if inp is None or out is None:
            return None  # tiered pricing: not modelled as flat; better unknown than wrong
        cached = _per_mtok(mp.cache_read_mtok)
        written = _per_mtok(mp.cache_write_mtok)
        return Price(
            inp, out, inp if cached is None else cached, inp if written is None else written, "genai-prices"
        )
