"""Model names to ordered target chains (CONTRACT §3).

- `provider/model` addresses one provider (the model part may itself contain `/`, as OpenRouter's do);
- a route alias names an ordered chain; `default` is built in;
- a provider name alone means its default model;
- a bare model name resolves if exactly one route or configured provider claims it, else 404 listing
  what exists.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ai_gateway.errors import InvalidRequestError, NotFoundError
from ai_gateway.settings import ProviderSettings

__all__ = ["Route", "Router", "Target"]

_MAX_MODEL_CHARS = 256
_CACHE_MAX = 4096


@dataclass(frozen=True, slots=True)
class Target:
    provider: str
    model: str

    @property
    def label(self) -> str:
        return f"{self.provider}/{self.model}"


@dataclass(frozen=True, slots=True)
class Route:
    name: str  # the alias, or the target label for a direct address
    targets: tuple[Target, ...]


class Router:
    def __init__(
        self, providers: Mapping[str, ProviderSettings], routes: Mapping[str, Sequence[str]]
    ) -> None:
        self._providers = providers
        self._routes = {
            name: Route(name, tuple(self._parse_target(t) for t in spec)) for name, spec in routes.items()
        }
        self._discovered: dict[str, frozenset[str]] = {}
        self._cache: dict[str, Route] = {}

    def _parse_target(self, spec: str) -> Target:
        provider, _, model = spec.partition("/")
        return Target(provider, model or self._providers[provider].default_model)

    @property
    def routes(self) -> Mapping[str, Route]:
        return self._routes

    def note_models(self, provider: str, models: Sequence[str]) -> None:
        """Models a provider reported (e.g. Ollama's /api/tags): they become claimable bare names."""
        self._discovered[provider] = frozenset(models)
        self._cache.clear()

    def resolve(self, model: str) -> Route:
        route = self._cache.get(model)
        if route is not None:
            return route
        route = self._resolve(model)
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[model] = route
        return route

    def _resolve(self, model: str) -> Route:
        if len(model) > _MAX_MODEL_CHARS or not model.isprintable():
            raise InvalidRequestError(
                f"'model' must be printable and at most {_MAX_MODEL_CHARS} characters.", param="model"
            )
        if model in self._routes:
            return self._routes[model]
        provider, sep, rest = model.partition("/")
        if sep and provider in self._providers:
            if not rest:
                raise InvalidRequestError(f"'{model}' names no model after the provider.", param="model")
            return Route(model, (Target(provider, rest),))
        if not sep and model in self._providers:
            target = Target(model, self._providers[model].default_model)
            return Route(target.label, (target,))
        claims = [t for t in self._claims(model)]
        if len(claims) == 1:
            return Route(claims[0].label, (claims[0],))
        if claims:
            options = ", ".join(t.label for t in claims)
            raise NotFoundError(
                f"The model '{model}' is ambiguous: it is served by {options}. Use one of those names.",
                param="model",
            )
        raise NotFoundError(
            f"The model '{model}' does not exist. Known routes: {', '.join(sorted(self._routes))}; "
            f"providers: {', '.join(self._providers)} (address a model as 'provider/model').",
            param="model",
        )

    def _claims(self, model: str) -> list[Target]:
        found: list[Target] = []
        for name, ps in self._providers.items():
            if ps.not_configured:
                continue
            if model == ps.default_model or model in ps.models or model in self._discovered.get(name, ()):
                found.append(Target(name, model))
        return found

    def listing(self) -> list[tuple[str, str]]:
        """(id, owner) pairs for /v1/models: every addressable provider/model known, then route aliases."""
        seen: dict[str, str] = {}
        for name, ps in self._providers.items():
            if ps.not_configured:
                continue
            names = [ps.default_model, *ps.models, *sorted(self._discovered.get(name, ()))]
            for m in names:
                if m:
                    seen.setdefault(f"{name}/{m}", name)
        for alias in self._routes:
            seen.setdefault(alias, "ai-gateway")
        return list(seen.items())
