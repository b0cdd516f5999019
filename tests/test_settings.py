"""Configuration: precedence, strictness, secrets by reference, and every problem reported at once."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from ai_gateway import settings as settings_module
from ai_gateway.settings import (
    ConfigError,
    ConfigProblem,
    Settings,
    Timeouts,
    check_config,
    describe,
    load_settings,
)

SECRET = "sk-live-5ecret-DO-NOT-LEAK-0123456789"


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stray ./gateway.yaml in the checkout must not leak into these tests."""
    monkeypatch.chdir(tmp_path)


def write(tmp_path: Path, text: str, name: str = "gw.yaml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return str(path)


def problems_of(env: dict[str, str] | None = None, config_path: str | None = None) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as caught:
        load_settings(env=env or {}, config_path=config_path)
    return caught.value.problems


def keys(problems: list[ConfigProblem]) -> set[str]:
    return {problem.key for problem in problems}


def test_public_surface_is_sorted_and_importable() -> None:
    assert settings_module.__all__ == sorted(settings_module.__all__)
    for name in settings_module.__all__:
        assert hasattr(settings_module, name)


def test_zero_config_uses_defaults_and_marks_keyless_providers_not_configured() -> None:
    s = load_settings(env={})
    assert (s.server.host, s.server.port, s.server.allow_open) == ("127.0.0.1", 8000, False)
    assert list(s.providers) == ["ollama", "openai", "anthropic", "openrouter"]
    ollama, openai = s.providers["ollama"], s.providers["openai"]
    assert ollama.configured
    assert ollama.base_url == "http://localhost:11434"
    assert ollama.default_model == "llama3.2"
    assert not openai.configured
    assert openai.not_configured == "OPENAI_API_KEY is not set"
    assert s.providers["anthropic"].not_configured == "ANTHROPIC_API_KEY is not set"
    assert s.providers["openrouter"].base_url == "https://openrouter.ai/api/v1"
    assert s.providers["openrouter"].default_model == "meta-llama/llama-3.1-8b-instruct:free"
    assert s.routes == {"default": ("ollama", "openrouter", "openai")}
    assert s.database_url == "sqlite:///./ai-gateway.db"
    assert (s.master_key, s.redis_url, s.config_path) == (None, None, None)
    assert openai.timeouts == Timeouts()


def test_environment_configures_providers_and_server() -> None:
    env = {
        "AIGW_HOST": "0.0.0.0",
        "AIGW_PORT": "9000",
        "AIGW_LOG_LEVEL": "DEBUG",
        "OPENAI_API_KEY": SECRET,
        "OPENAI_BASE_URL": "http://127.0.0.1:8001/v1/",
        "AIGW_OPENAI_MODEL": "gpt-4.1-nano",
        "AIGW_MASTER_KEY": "m" * 32,
        "AIGW_DATABASE_URL": "postgresql://gw:pw@db/gw",
        "AIGW_KEY_HASH_SECRET": "h" * 32,  # PostgreSQL requires it (replicas must share it)
        "AIGW_REDIS_URL": "redis://redis:6379/0",
    }
    s = load_settings(env=env)
    assert (s.server.host, s.server.port, s.server.log_level) == ("0.0.0.0", 9000, "debug")
    openai = s.providers["openai"]
    assert openai.configured
    assert openai.api_key == SECRET
    assert openai.api_key_source == "env:OPENAI_API_KEY"
    assert openai.base_url == "http://127.0.0.1:8001/v1"
    assert openai.default_model == "gpt-4.1-nano"
    assert "gpt-4.1-nano" in openai.models
    assert s.master_key == "m" * 32
    assert s.database_url.startswith("postgresql://")
    assert s.redis_url == "redis://redis:6379/0"


def test_precedence_flags_over_env_over_file_over_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        server: {host: 10.0.0.1, port: 7000, max_messages: 10}
        providers:
          openai: {base_url: "https://file.example/v1", default_model: from-file}
        """,
    )
    env = {"AIGW_PORT": "7100", "OPENAI_BASE_URL": "https://env.example/v1"}
    s = load_settings(env=env, config_path=path)
    assert s.server.host == "10.0.0.1"  # file beats default
    assert s.server.port == 7100  # env beats file
    assert s.server.max_messages == 10
    assert s.providers["openai"].base_url == "https://env.example/v1"  # env beats file for URLs
    assert s.providers["openai"].default_model == "from-file"
    s = load_settings(env=env, config_path=path, overrides={"port": "7200", "host": None})
    assert (s.server.host, s.server.port) == ("10.0.0.1", 7200)  # flag beats env; None = flag not given


def test_overrides_allow_open_and_unknown_override() -> None:
    assert load_settings(env={}, overrides={"server.allow_open": True}).server.allow_open is True
    # A store_true flag passes False when absent; it must not switch off what the environment enabled.
    s = load_settings(env={"AIGW_ALLOW_OPEN": "yes"}, overrides={"allow_open": False})
    assert s.server.allow_open is True
    with pytest.raises(ValueError, match="unknown override"):
        load_settings(env={}, overrides={"prot": 1})
    assert keys(check_config(env={}, overrides={"port": "http"})[1]) == {"--port"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0.0.0.0:11434", "http://localhost:11434"),
        ("localhost:11434", "http://localhost:11434"),
        ("0.0.0.0", "http://localhost:11434"),
        ("[::]:11434", "http://localhost:11434"),
        (":11500", "http://localhost:11500"),
        ("10.1.2.3:9999", "http://10.1.2.3:9999"),
        ("http://gpu-box:11434/", "http://gpu-box:11434"),
        ("https://ollama.example.com", "https://ollama.example.com"),
    ],
)
def test_ollama_host_forms(value: str, expected: str) -> None:
    assert load_settings(env={"OLLAMA_HOST": value}).providers["ollama"].base_url == expected


def test_ollama_base_url_wins_over_ollama_host_and_bad_host_is_reported() -> None:
    env = {"OLLAMA_BASE_URL": "http://a:1", "OLLAMA_HOST": "b:2"}
    assert load_settings(env=env).providers["ollama"].base_url == "http://a:1"
    assert keys(problems_of({"OLLAMA_HOST": "host:notaport"})) == {"OLLAMA_HOST"}


@pytest.mark.parametrize(
    ("yaml_text", "key", "hint"),
    [
        ("sever: {port: 1}", "sever", "did you mean 'server'"),
        ("server: {prot: 8001}", "server.prot", "did you mean 'port'"),
        ("providers: {openai: {timeouts: {conect: 1}}}", "providers.openai.timeouts.conect", "connect"),
        ("providers: {openai: {app_title: x}}", "providers.openai.app_title", "default_model"),
        (
            "providers: {my-vllm: {type: openai, base_url: 'http://h:1', apikey: x}}",
            "providers.my-vllm.apikey",
            "",
        ),
        ("retries: {max_retry: 1}", "retries.max_retry", "max_retries"),
    ],
)
def test_unknown_keys_name_the_dotted_key_and_allowed_keys(
    tmp_path: Path, yaml_text: str, key: str, hint: str
) -> None:
    [problem] = problems_of(config_path=write(tmp_path, yaml_text))
    assert problem.key == key
    assert problem.message == "unknown key"
    assert "allowed keys here:" in problem.fix
    assert hint in problem.fix


@pytest.mark.parametrize(
    ("yaml_text", "key", "expected"),
    [
        ('server: {port: "8000"}', "server.port", "expected an integer, got a string"),
        ("server: {port: 70000}", "server.port", "between 1 and 65535"),
        ("server: {allow_open: maybe}", "server.allow_open", "expected true or false"),
        ("server: {log_level: loud}", "server.log_level", "must be one of"),
        ("timeouts: {connect: 0}", "timeouts.connect", "greater than 0"),
        ("retries: {max_retries: -1}", "retries.max_retries", "between 0 and 20"),
        ("providers: {openai: {models: gpt-4o}}", "providers.openai.models", "expected a list"),
        ("providers: {openai: {models: [ok, 3]}}", "providers.openai.models[1]", "got an integer"),
        ("providers: [openai]", "providers", "expected a mapping, got a list"),
        ("routes: {fast: openai}", "routes.fast", "non-empty list"),
        ("server: {yes: 1}", "server.True", "keys must be strings"),
        ("[1, 2]", "gw.yaml", "expected a mapping"),
    ],
)
def test_wrong_types_say_what_was_expected(tmp_path: Path, yaml_text: str, key: str, expected: str) -> None:
    [problem] = problems_of(config_path=write(tmp_path, yaml_text))
    assert problem.key.endswith(key)
    assert expected in problem.message


def test_inline_secret_is_rejected_without_echoing_it(tmp_path: Path) -> None:
    path = write(tmp_path, f"providers: {{openai: {{api_key: {SECRET}}}}}")
    with pytest.raises(ConfigError) as caught:
        load_settings(env={}, config_path=path)
    [problem] = caught.value.problems
    assert problem.key == "providers.openai.api_key"
    assert "env:NAME" in problem.message
    assert "api_key: env:OPENAI_API_KEY" in problem.fix
    assert SECRET not in str(caught.value)
    assert SECRET not in repr(caught.value.problems)


def test_env_reference_resolves_and_missing_reference_means_not_configured(tmp_path: Path) -> None:
    path = write(tmp_path, "providers: {anthropic: {api_key: 'env:TEAM_ANTHROPIC'}}")
    s = load_settings(env={"TEAM_ANTHROPIC": SECRET, "ANTHROPIC_API_KEY": "ignored"}, config_path=path)
    anthropic = s.providers["anthropic"]
    assert anthropic.api_key == SECRET
    assert anthropic.api_key_source == "env:TEAM_ANTHROPIC"
    settings, problems, warnings = check_config(env={"ANTHROPIC_API_KEY": "x" * 20}, config_path=path)
    assert settings is not None
    assert problems == []
    assert settings.providers["anthropic"].not_configured == "env var TEAM_ANTHROPIC is not set"
    assert settings.providers["anthropic"].api_key is None
    assert any("TEAM_ANTHROPIC" in w and "ANTHROPIC_API_KEY is set but ignored" in w for w in warnings)


def test_malformed_env_reference_and_whitespace_in_key_are_problems(tmp_path: Path) -> None:
    path = write(tmp_path, "providers: {openai: {api_key: 'env:not a name'}}")
    assert keys(problems_of(config_path=path)) == {"providers.openai.api_key"}
    problems = problems_of({"OPENAI_API_KEY": "sk-abc\ndef"})
    assert keys(problems) == {"OPENAI_API_KEY"}
    assert "sk-abc" not in str(problems)


def test_extra_openai_compatible_provider(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        providers:
          my-vllm:
            type: openai
            base_url: http://127.0.0.1:8001/v1/
            models: [qwen2.5-7b, llama-3-8b]
            timeouts: {first_byte: 120}
          keyed:
            type: openai
            base_url: https://llm.internal/v1
            api_key: env:KEYED_KEY
        timeouts: {connect: 2}
        """,
    )
    s = load_settings(env={}, config_path=path)
    assert list(s.providers)[4:] == ["my-vllm", "keyed"]
    vllm = s.providers["my-vllm"]
    assert vllm.type == "openai"
    assert vllm.configured
    assert vllm.api_key is None
    assert vllm.base_url == "http://127.0.0.1:8001/v1"
    assert vllm.default_model == "qwen2.5-7b"
    assert vllm.models == ("qwen2.5-7b", "llama-3-8b")
    assert vllm.timeouts == Timeouts(connect=2, first_byte=120)
    assert s.providers["ollama"].timeouts.connect == 2  # the top-level section is every provider's default
    assert s.providers["keyed"].not_configured == "env var KEYED_KEY is not set"


def test_declared_provider_needs_a_type_a_url_and_a_valid_name(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        providers:
          untyped: {base_url: "http://h:1"}
          badtype: {type: gemini, base_url: "http://h:1"}
          nourl: {type: openai}
          Bad_Name: {type: openai, base_url: "http://h:1"}
          openai: {type: anthropic}
        """,
    )
    assert keys(problems_of(config_path=path)) == {
        "providers.untyped.type",
        "providers.badtype.type",
        "providers.nourl.base_url",
        "providers.Bad_Name",
        "providers.openai.type",
    }


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("ftp://h/v1", "http:// or https://"),
        ("localhost:8001/v1", "http:// or https://"),
        ("https://user:pw@h/v1", "credentials"),
        ("https://h/v1?key=abc", "query"),
        ("https://h:99999/v1", "not a valid URL"),
        ("https://h/v1\r\nX-Evil: 1", "control character"),
    ],
)
def test_base_url_validation(tmp_path: Path, url: str, expected: str) -> None:
    path = write(tmp_path, f"providers: {{openai: {{base_url: {url!r}}}}}".replace("'", '"'))
    [problem] = problems_of(config_path=path)
    assert problem.key == "providers.openai.base_url"
    assert expected in problem.message
    assert "pw@" not in problem.message
    assert "abc" not in problem.message


def test_openrouter_attribution_headers_and_header_injection(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        providers:
          openrouter: {app_url: "https://example.com", app_title: "My App", headers: {X-Extra: "1"}}
        """,
    )
    headers = dict(load_settings(env={}, config_path=path).providers["openrouter"].headers)
    assert headers == {"X-Extra": "1", "HTTP-Referer": "https://example.com", "X-Title": "My App"}
    bad = write(
        tmp_path,
        """
        providers:
          openrouter: {app_title: "a\\r\\nSet-Cookie: x"}
          openai: {headers: {Authorization: "Bearer x"}}
        """,
        "bad.yaml",
    )
    assert keys(problems_of(config_path=bad)) == {
        "providers.openrouter.app_title",
        "providers.openai.headers.Authorization",
    }


def test_routes_valid_and_default_overridable(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        routes:
          default: [openai, ollama]
          fast: [openai/gpt-4o-mini, anthropic/claude-haiku-4-5]
          cheap.v2: [openrouter/meta-llama/llama-3.1-8b-instruct:free]
        """,
    )
    routes = load_settings(env={}, config_path=path).routes
    assert routes["default"] == ("openai", "ollama")
    assert routes["fast"] == ("openai/gpt-4o-mini", "anthropic/claude-haiku-4-5")
    assert routes["cheap.v2"] == ("openrouter/meta-llama/llama-3.1-8b-instruct:free",)


def test_route_problems(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        routes:
          a/b: [openai]
          openai: [anthropic]
          fast: [opneai/gpt-4o, fast]
          empty: []
          blank: ["openai/"]
        """,
    )
    problems = {p.key: p for p in problems_of(config_path=path)}
    assert set(problems) == {
        "routes.a/b",
        "routes.openai",
        "routes.fast[0]",
        "routes.fast[1]",
        "routes.empty",
        "routes.blank[0]",
    }
    assert "shadows the provider" in problems["routes.openai"].message
    assert "ollama, openai, anthropic, openrouter" in problems["routes.fast[0]"].fix
    assert "cannot name another route" in problems["routes.fast[1]"].message


def test_route_to_provider_without_default_model(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        providers: {bare: {type: openai, base_url: "http://h:1"}}
        routes: {r: [bare, bare/some-model]}
        """,
    )
    [problem] = problems_of(config_path=path)
    assert problem.key == "routes.r[0]"
    assert "no default model" in problem.message


def test_all_problems_are_reported_together(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        server: {port: 0, colour: blue}
        retries: {backoff_base_s: 5, backoff_max_s: 1}
        providers:
          openai: {api_key: sk-inline}
        routes: {fast: [nowhere]}
        """,
    )
    env = {"AIGW_DATABASE_URL": "mysql://u:pw@h/db", "ANTHROPIC_BASE_URL": "nope"}
    with pytest.raises(ConfigError) as caught:
        load_settings(env=env, config_path=path)
    assert keys(caught.value.problems) == {
        "server.port",
        "server.colour",
        "retries.backoff_max_s",
        "providers.openai.api_key",
        "routes.fast[0]",
        "AIGW_DATABASE_URL",
        "ANTHROPIC_BASE_URL",
    }
    text = str(caught.value)
    assert text.startswith("invalid configuration (7 problems):")
    assert all(f"- {p.key}: " in text and p.fix in text for p in caught.value.problems)
    assert "sk-inline" not in text
    assert "pw@" not in text


def test_secrets_never_appear_in_repr_str_or_describe() -> None:
    env = {
        "OPENAI_API_KEY": SECRET,
        "AIGW_MASTER_KEY": SECRET + "-master",
        "AIGW_DATABASE_URL": f"postgresql://gw:{SECRET}@db/gw",
        "AIGW_REDIS_URL": f"redis://:{SECRET}@redis:6379/0",
        "AIGW_KEY_HASH_SECRET": SECRET + "-hash",
    }
    s = load_settings(env=env)
    for text in (repr(s), str(s), repr(s.providers["openai"]), "\n".join(describe(s))):
        assert SECRET not in text
    _, _, warnings = check_config(env=env)
    assert SECRET not in "\n".join(warnings)


def test_invalid_yaml_reports_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "server:\n  port: 8000\n  host: [unclosed\n")
    [problem] = problems_of(config_path=path)
    assert problem.key == path
    assert "invalid YAML at line" in problem.message
    assert "column" in problem.message


def test_duplicate_yaml_keys_are_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, "server:\n  port: 8000\n  port: 8001\n")
    [problem] = problems_of(config_path=path)
    assert "duplicate key 'port'" in problem.message
    assert "line 3" in problem.message


def test_config_file_discovery(tmp_path: Path) -> None:
    assert load_settings(env={}).config_path is None
    (tmp_path / "gateway.yaml").write_text("server: {port: 8100}\n")
    s = load_settings(env={})
    assert s.server.port == 8100
    assert s.config_path == str(tmp_path / "gateway.yaml")
    other = write(tmp_path, "server: {port: 8200}\n", "other.yaml")
    assert load_settings(env={"AIGW_CONFIG": other}).server.port == 8200
    assert (
        load_settings(env={"AIGW_CONFIG": other}, overrides={"config": str(tmp_path / "gateway.yaml")}) == s
    )
    [problem] = problems_of({"AIGW_CONFIG": str(tmp_path / "missing.yaml")})
    assert problem.key == "AIGW_CONFIG"
    assert "not found" in problem.message


def test_empty_file_and_empty_sections_are_fine(tmp_path: Path) -> None:
    assert load_settings(env={}, config_path=write(tmp_path, "")).server.port == 8000
    assert load_settings(env={}, config_path=write(tmp_path, "server:\nproviders:\n", "b.yaml")).routes


def test_limits_cache_and_prices(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        providers: {my-vllm: {type: openai, base_url: "http://h:1", default_model: m}}
        limits: {on_backend_error: deny, rpm: 60}
        cache: {enabled: false, ttl_s: 60}
        prices:
          my-vllm/m: {input_per_mtok: 0.1, output_per_mtok: 0.4}
        """,
    )
    s = load_settings(env={}, config_path=path)
    assert (s.limits.on_backend_error, s.limits.rpm, s.limits.tpm) == ("deny", 60, None)
    assert (s.cache.enabled, s.cache.ttl_s) == (False, 60.0)
    assert s.prices["my-vllm/m"].output_per_mtok == 0.4
    bad = write(tmp_path, "prices: {nowhere/m: {input_per_mtok: 1, output_per_mtok: 1}, x/y: {}}", "p.yaml")
    assert keys(problems_of(config_path=bad)) == {"prices.nowhere/m", "prices.x/y"}


def test_describe_lines() -> None:
    s = load_settings(env={"OPENAI_API_KEY": SECRET})
    lines = describe(s)
    assert "provider openai: configured, base https://api.openai.com/v1, default model gpt-4o-mini" in lines
    assert (
        "provider anthropic: NOT configured — ANTHROPIC_API_KEY is not set "
        "(set it in the environment or providers.anthropic.api_key: env:NAME)"
    ) in lines
    assert "route default: ollama -> openrouter -> openai" in lines


def test_warnings_for_open_mode_on_public_address_and_plain_http_keys() -> None:
    env = {"AIGW_HOST": "0.0.0.0", "OPENAI_API_KEY": SECRET, "OPENAI_BASE_URL": "http://llm.example.com/v1"}
    settings, problems, warnings = check_config(env=env)
    assert isinstance(settings, Settings)
    assert problems == []
    assert any("refuses to bind" in w for w in warnings)
    assert any("plain http to llm.example.com" in w for w in warnings)
    assert check_config(env={"AIGW_MASTER_KEY": "k" * 32})[2] == []


def test_settings_are_frozen() -> None:
    s = load_settings(env={})
    with pytest.raises(AttributeError):
        s.server.port = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        s.providers["x"] = s.providers["ollama"]  # type: ignore[index]


# --- auth settings (issue 4) ----------------------------------------------------------------------------


def test_auth_defaults_and_environment() -> None:
    s = load_settings(env={})
    assert (s.auth.key_hash_secret, s.auth.cache_ttl_s) == (None, 10.0)
    s = load_settings(env={"AIGW_KEY_HASH_SECRET": "x" * 40, "AIGW_AUTH_CACHE_TTL_S": "2.5"})
    assert (s.auth.key_hash_secret, s.auth.cache_ttl_s) == ("x" * 40, 2.5)
    assert load_settings(env={"AIGW_AUTH_CACHE_TTL_S": "0"}).auth.cache_ttl_s == 0.0


def test_postgres_requires_the_hashing_secret_and_names_it() -> None:
    [problem] = problems_of({"AIGW_DATABASE_URL": "postgresql://gw@db/gw"})
    assert problem.key == "AIGW_KEY_HASH_SECRET"
    assert "PostgreSQL" in problem.message and "secrets.token_hex" in problem.fix
    # SQLite generates its own on first start, so nothing is required there.
    assert load_settings(env={"AIGW_DATABASE_URL": "sqlite:///./x.db"}).auth.key_hash_secret is None


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"AIGW_KEY_HASH_SECRET": "short"}, "AIGW_KEY_HASH_SECRET"),
        ({"AIGW_AUTH_CACHE_TTL_S": "soon"}, "AIGW_AUTH_CACHE_TTL_S"),
        ({"AIGW_AUTH_CACHE_TTL_S": "-1"}, "AIGW_AUTH_CACHE_TTL_S"),
        ({"AIGW_AUTH_CACHE_TTL_S": "nan"}, "AIGW_AUTH_CACHE_TTL_S"),
        ({"AIGW_AUTH_CACHE_TTL_S": "301"}, "AIGW_AUTH_CACHE_TTL_S"),
    ],
)
def test_bad_auth_settings_are_problems(env: dict[str, str], key: str) -> None:
    assert keys(problems_of(env)) == {key}


def test_hashing_secret_never_appears_in_repr_or_describe_or_problems() -> None:
    s = load_settings(env={"AIGW_KEY_HASH_SECRET": SECRET})
    assert s.auth.key_hash_secret == SECRET
    for text in (repr(s), repr(s.auth), "\n".join(describe(s))):
        assert SECRET not in text
    assert "key hashing secret: AIGW_KEY_HASH_SECRET" in describe(s)
    short = "sk-short-5ecret"
    assert short not in str(ConfigError(problems_of({"AIGW_KEY_HASH_SECRET": short})))


def test_limiter_and_cache_tuning(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        limits: {expected_replicas: 3, backend_timeout_s: 0.1, tpm: 100000}
        cache: {max_bytes: 1048576}
        """,
    )
    s = load_settings(env={}, config_path=path)
    assert (s.limits.expected_replicas, s.limits.backend_timeout_s, s.limits.tpm) == (3, 0.1, 100_000)
    assert s.cache.max_bytes == 1_048_576
    defaults = load_settings(env={}, config_path=write(tmp_path, "", "empty.yaml"))
    assert (defaults.limits.expected_replicas, defaults.limits.backend_timeout_s) == (1, 0.25)
    bad = write(
        tmp_path,
        """
        limits: {expected_replicas: 0, backend_timeout_s: 0, rpm: 20000000000}
        cache: {max_bytes: 10}
        """,
        "bad.yaml",
    )
    assert keys(problems_of(config_path=bad)) == {
        "limits.expected_replicas",
        "limits.backend_timeout_s",
        "limits.rpm",
        "cache.max_bytes",
    }
