from __future__ import annotations

from decimal import Decimal

from ai_gateway.policy.pricing import Price, Pricing, format_usd, nanos_from_usd
from ai_gateway.settings import PriceOverride, ProviderSettings
from ai_gateway.types import Usage


def provider(
    name: str, type_: str = "openai", base_url: str = "https://api.example.com/v1"
) -> ProviderSettings:
    return ProviderSettings(name=name, type=type_, base_url=base_url)  # type: ignore[arg-type]


def test_known_model_from_genai_prices() -> None:
    pricing = Pricing({})
    cost, source = pricing.cost(provider("openai"), "gpt-4o-mini", Usage(1_000_000, 1_000_000))
    assert source == "genai-prices"
    assert cost == nanos_from_usd("0.75")  # $0.15 in + $0.60 out per million


def test_cached_tokens_are_priced_at_the_cache_rate() -> None:
    pricing = Pricing({})
    usage = Usage(input_tokens=1_000_000, output_tokens=0, cached_input_tokens=500_000)
    cost, _ = pricing.cost(provider("anthropic", "anthropic"), "claude-haiku-4-5", usage)
    assert cost == nanos_from_usd("0.55")  # 500k at $1/M + 500k at $0.10/M


def test_provider_reported_cost_wins() -> None:
    cost, source = Pricing({}).cost(
        provider("openrouter", "openrouter"), "x/y", Usage(10, 10, cost_usd=Decimal("0.000123"))
    )
    assert (cost, source) == (123_000, "provider")


def test_ollama_and_local_servers_are_free() -> None:
    pricing = Pricing({})
    assert pricing.cost(provider("ollama", "ollama"), "llama3.2", Usage(100, 100)) == (0, "free")
    assert pricing.cost(provider("vllm", "openai", "http://127.0.0.1:8001/v1"), "anything", Usage(5, 5)) == (
        0,
        "free",
    )


def test_unknown_remote_model_is_unknown_not_zero() -> None:
    assert Pricing({}).cost(provider("openai"), "no-such-model-xyz", Usage(5, 5)) == (None, "unknown")


def test_override_wins_over_price_data() -> None:
    pricing = Pricing({"openai/gpt-4o-mini": PriceOverride(1.0, 2.0, 0.5)})
    cost, source = pricing.cost(
        provider("openai"), "gpt-4o-mini", Usage(2_000_000, 1_000_000, cached_input_tokens=1_000_000)
    )
    assert source == "override" and cost == nanos_from_usd("3.5")  # 1M x $1 + 1M cached x $0.5 + 1M out x $2


def test_small_costs_are_exact_in_nanos_and_format() -> None:
    price = Price(
        input=150_000_000,
        output=600_000_000,
        cached_input=75_000_000,
        cache_write=150_000_000,
        source="override",
    )
    assert price.cost(Usage(10, 1)) == 2100  # 10 x 150 + 1 x 600 nano-dollars
    assert format_usd(2100) == "0.0000021"
    assert format_usd(0) == "0" and format_usd(None) is None
    assert price.worst_case(10, 100) == 61_500
