from __future__ import annotations

import pytest

from ai_gateway.errors import InvalidRequestError, NotFoundError
from ai_gateway.policy.routing import Router, Target
from ai_gateway.settings import load_settings

ENV = {"OPENAI_API_KEY": "sk-test", "ANTHROPIC_API_KEY": "sk-ant"}


def router(env: dict[str, str] | None = None) -> Router:
    settings = load_settings(env=env if env is not None else ENV, config_path=None)
    return Router(settings.providers, settings.routes)


def test_provider_slash_model() -> None:
    assert router().resolve("openai/gpt-4o").targets == (Target("openai", "gpt-4o"),)


def test_openrouter_model_keeps_its_own_slashes() -> None:
    route = router().resolve("openrouter/meta-llama/llama-3.1-8b-instruct:free")
    assert route.targets == (Target("openrouter", "meta-llama/llama-3.1-8b-instruct:free"),)


def test_provider_alone_means_its_default_model() -> None:
    assert router().resolve("anthropic").targets == (Target("anthropic", "claude-haiku-4-5"),)


def test_default_route_is_ollama_openrouter_openai() -> None:
    targets = router().resolve("default").targets
    assert [t.provider for t in targets] == ["ollama", "openrouter", "openai"]


def test_bare_name_claimed_by_exactly_one_configured_provider() -> None:
    assert router().resolve("gpt-4o-mini").targets == (Target("openai", "gpt-4o-mini"),)


def test_bare_name_of_an_unconfigured_provider_is_not_claimed() -> None:
    with pytest.raises(NotFoundError) as exc:
        router({}).resolve("gpt-4o-mini")
    assert "default" in exc.value.message


def test_discovered_models_become_claimable_and_ambiguity_is_404() -> None:
    r = router()
    r.note_models("ollama", ["qwen2.5:0.5b"])
    assert r.resolve("qwen2.5:0.5b").targets == (Target("ollama", "qwen2.5:0.5b"),)
    r.note_models("openai", ["qwen2.5:0.5b"])
    with pytest.raises(NotFoundError, match="ambiguous"):
        r.resolve("qwen2.5:0.5b")


def test_unknown_name_lists_what_exists() -> None:
    with pytest.raises(NotFoundError) as exc:
        router().resolve("nope")
    assert exc.value.code == "model_not_found" and "ollama" in exc.value.message


def test_silly_names_are_rejected() -> None:
    with pytest.raises(InvalidRequestError):
        router().resolve("x" * 300)
    with pytest.raises(InvalidRequestError):
        router().resolve("a\nb")
    with pytest.raises(InvalidRequestError):
        router().resolve("openai/")


def test_listing_has_models_and_aliases() -> None:
    ids = [i for i, _ in router().listing()]
    assert "openai/gpt-4o-mini" in ids and "default" in ids
    assert not any(i.startswith("openrouter/") for i in ids)  # not configured
