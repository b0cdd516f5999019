"""Egress: canonical requests to upstream wire formats and back, plus the HTTP call.

One adapter per wire family, chosen by the configured provider `type`:

    openai       OpenAI Chat Completions and any compatible server     providers/openai.py
    openrouter   OpenAI format plus usage accounting (cost)            providers/openrouter.py
    ollama       Ollama's native /api/chat (NDJSON streams)            providers/ollama.py
    anthropic    Anthropic Messages API                                providers/anthropic.py
    fake         scripted, no network, for tests                       providers/fake.py
"""

from __future__ import annotations

from ai_gateway.providers._http import HttpClient
from ai_gateway.providers.anthropic import AnthropicProvider
from ai_gateway.providers.base import Provider
from ai_gateway.providers.fake import FakeProvider
from ai_gateway.providers.ollama import OllamaProvider
from ai_gateway.providers.openai import OpenAIProvider
from ai_gateway.providers.openrouter import OpenRouterProvider
from ai_gateway.settings import Settings

__all__ = ["Provider", "build_providers"]

_BY_TYPE: dict[str, type[Provider]] = {
    "openai": OpenAIProvider,
    "openrouter": OpenRouterProvider,
    "ollama": OllamaProvider,
    "anthropic": AnthropicProvider,
    "fake": FakeProvider,
}


def build_providers(settings: Settings, http: HttpClient) -> dict[str, Provider]:
    """One adapter per configured provider, keyed by its name (unconfigured ones included: they know
    why they are unconfigured and say so when called)."""
    providers: dict[str, Provider] = {}
    for name, provider_settings in settings.providers.items():
        try:
            cls = _BY_TYPE[provider_settings.type]
        except KeyError:
            known = ", ".join(sorted(_BY_TYPE))
            raise ValueError(
                f"providers.{name}.type: unknown provider type {provider_settings.type!r}; use one of {known}"
            ) from None
        providers[name] = cls(provider_settings, http)
    return providers
