"""Gateway configuration: strict, two-phase, secrets by reference, every problem reported at once.

Precedence, highest first: explicit overrides (CLI flags) > environment > YAML file > defaults.

Phase one (`_settings_schema`) reads the YAML file and checks its shape: unknown keys, wrong types, inline
secrets and malformed URLs become `ConfigProblem`s. Phase two (here) layers the sources, resolves
`env:NAME` references, checks cross-references (route targets, price keys) and freezes the result. Both
phases collect problems instead of stopping at the first, so one `ai-gateway config check` shows them all.

Secrets (provider API keys, the master key, DSNs) are never put in a problem, an exception or a repr:
problems name the variable that holds a secret, not its value.

`overrides` accepts `host`, `port`, `allow_open`, `log_level` and `config` (also as `server.host`, ...).
A value of None means "flag not given", and `allow_open=False` is ignored, because a `--allow-open`
switch can only turn it on and CLI code naturally passes its default through.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, NamedTuple, cast
from urllib.parse import urlsplit

from ai_gateway import _settings_schema as schema
from ai_gateway._settings_schema import ConfigProblem, ValueProblem

__all__ = [
    "AuthSettings",
    "BreakerSettings",
    "CacheSettings",
    "ConfigError",
    "ConfigProblem",
    "LedgerSettings",
    "LimitsSettings",
    "PriceOverride",
    "ProviderSettings",
    "ProviderType",
    "RetrySettings",
    "ServerSettings",
    "Settings",
    "Timeouts",
    "check_config",
    "describe",
    "is_loopback_host",
    "load_settings",
]

ProviderType = Literal["openai", "openrouter", "ollama", "anthropic", "fake"]
_DEFAULT_DATABASE_URL = "sqlite:///./ai-gateway.db"
_DEFAULT_ANTHROPIC_VERSION = "2023-06-01"
_MIN_HASH_SECRET_CHARS = 32
_DEFAULT_AUTH_CACHE_TTL_S = 10.0
_MAX_AUTH_CACHE_TTL_S = 300.0
_SECRET_HINT = "generate one with: python3 -c 'import secrets; print(secrets.token_hex(32))'"  # noqa: S105


class ConfigError(Exception):
    """The configuration cannot be used; `problems` lists every reason, each with its fix."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        super().__init__(problems)
        self.problems = list(problems)

    def __str__(self) -> str:
        count = len(self.problems)
        lines = [f"invalid configuration ({count} problem{'s' if count != 1 else ''}):"]
        lines += [f"  - {problem}" for problem in self.problems]
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Per-upstream limits in seconds: connect, wait for the first byte, gap between bytes, whole call."""

    connect: float = 5.0
    first_byte: float = 60.0
    idle: float = 60.0
    total: float = 300.0


@dataclass(frozen=True, slots=True)
class ProviderSettings:
    """Where one upstream lives and with which key; `not_configured` says why it cannot be used yet."""

    name: str
    type: ProviderType
    base_url: str
    api_key: str | None = field(default=None, repr=False)
    api_key_source: str | None = None
    default_model: str = ""
    models: tuple[str, ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    timeouts: Timeouts = Timeouts()
    anthropic_version: str = _DEFAULT_ANTHROPIC_VERSION
    not_configured: str | None = None

    @property
    def configured(self) -> bool:
        return self.not_configured is None


@dataclass(frozen=True, slots=True)
class RetrySettings:
    """Retries on the same target before falling back; `Retry-After` beyond the cap moves on instead."""

    max_retries: int = 2
    backoff_base_s: float = 0.1
    backoff_max_s: float = 2.0
    max_retry_after_s: float = 10.0


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    """Per-target circuit breaker: open after this many consecutive failures, probe again after cooldown."""

    failure_threshold: int = 5
    cooldown_s: float = 30.0


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """Bind address and the request bounds that keep bad input away from upstreams."""

    host: str = "127.0.0.1"
    port: int = 8000
    allow_open: bool = False
    max_body_bytes: int = 2 * 1024 * 1024
    max_messages: int = 2048
    max_output_tokens: int = 262_144
    deadline_s: float = 300.0
    log_level: str = "info"


@dataclass(frozen=True, slots=True)
class LimitsSettings:
    """Default rate limits for keys that carry none, and what to do when the shared limiter is down.

    `on_backend_error: local` decides on per-process buckets holding 1/`expected_replicas` of each
    limit while Redis cannot answer within `backend_timeout_s`.
    """

    on_backend_error: Literal["local", "allow", "deny"] = "local"
    rpm: int | None = None
    tpm: int | None = None
    expected_replicas: int = 1
    backend_timeout_s: float = 0.25  # why not 50 ms: stores/_redis.py


@dataclass(frozen=True, slots=True)
class CacheSettings:
    """Response cache; per tenant unless `shared_across_tenants`."""

    enabled: bool = True
    ttl_s: float = 3600.0
    max_entries: int = 10_000
    max_bytes: int = 64 * 1024 * 1024  # the in-process cache's memory bound
    shared_across_tenants: bool = False


@dataclass(frozen=True, slots=True)
class LedgerSettings:
    """Spend accounting: where rows wait while the database is down, and how budgets reserve.

    `spool_path` defaults to `<sqlite db>.ledger-spool.jsonl` (or `./ai-gateway.ledger-spool.jsonl`);
    `default_max_output_tokens` is the output a budget reservation assumes when a request sets no
    `max_tokens`; `drain_timeout_s` bounds how long shutdown waits to flush rows.
    """

    spool_path: str | None = None
    default_max_output_tokens: int = 4096
    drain_timeout_s: float = 10.0


@dataclass(frozen=True, slots=True)
class AuthSettings:
    """API-key hashing and the per-replica cache of successful key lookups.

    `key_hash_secret` (AIGW_KEY_HASH_SECRET) keys the HMAC that keys are stored under; with SQLite and no
    value, one is generated on first start into a 0600 file next to the database. `cache_ttl_s`
    (AIGW_AUTH_CACHE_TTL_S) bounds how long a replica trusts a cached key without asking the database;
    revocations clear the cache at once (Redis when shared), so it only bounds other edits. 0 disables it.
    """

    key_hash_secret: str | None = field(default=None, repr=False)
    cache_ttl_s: float = _DEFAULT_AUTH_CACHE_TTL_S


@dataclass(frozen=True, slots=True)
class PriceOverride:
    """Operator price for one `provider/model`, in USD per million tokens; wins over the price data."""

    input_per_mtok: float
    output_per_mtok: float
    cached_input_per_mtok: float | None = None


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the gateway needs to start, frozen; built only by `load_settings`/`check_config`."""

    server: ServerSettings
    providers: Mapping[str, ProviderSettings]
    routes: Mapping[str, tuple[str, ...]]
    retries: RetrySettings
    breaker: BreakerSettings
    master_key: str | None = field(default=None, repr=False)
    # A postgres DSN carries a password, so it stays out of repr like the keys.
    database_url: str = field(default=_DEFAULT_DATABASE_URL, repr=False)
    redis_url: str | None = field(default=None, repr=False)
    config_path: str | None = None
    limits: LimitsSettings = LimitsSettings()
    ledger: LedgerSettings = LedgerSettings()
    cache: CacheSettings = CacheSettings()
    auth: AuthSettings = AuthSettings()
    prices: Mapping[str, PriceOverride] = field(default_factory=lambda: MappingProxyType({}))


class _Builtin(NamedTuple):
    name: str
    base_env: str
    base_url: str
    key_env: str | None
    model: str


_BUILTINS = (
    _Builtin("ollama", "OLLAMA_BASE_URL", "http://localhost:11434", None, "llama3.2"),
    _Builtin("openai", "OPENAI_BASE_URL", "https://api.openai.com/v1", "OPENAI_API_KEY", "gpt-4o-mini"),
    _Builtin(
        "anthropic",
        "ANTHROPIC_BASE_URL",
        "https://api.anthropic.com",
        "ANTHROPIC_API_KEY",
        "claude-haiku-4-5",
    ),
    _Builtin(
        "openrouter",
        "OPENROUTER_BASE_URL",
        "https://openrouter.ai/api/v1",
        "OPENROUTER_API_KEY",
        "meta-llama/llama-3.1-8b-instruct:free",
    ),
)
_DEFAULT_ROUTE = ("ollama", "openrouter", "openai")
_KEYED_TYPES = frozenset({"anthropic", "openrouter"})  # a declared openai/ollama server may need no key
_OVERRIDES = {"host", "port", "allow_open", "log_level", "config"}
_LOOPBACK_NAMES = frozenset({"localhost", "ip6-localhost"})
_TRUTH = dict.fromkeys(("1", "true", "yes", "on"), True) | dict.fromkeys(("0", "false", "no", "off"), False)


def load_settings(
    env: Mapping[str, str] | None = None,
    config_path: str | None = None,
    overrides: Mapping[str, object] | None = None,
) -> Settings:
    """Build the settings, or raise `ConfigError` listing every problem found."""
    settings, problems, _warnings = check_config(env, config_path, overrides)
    if settings is None:
        raise ConfigError(problems)
    return settings


def check_config(
    env: Mapping[str, str] | None = None,
    config_path: str | None = None,
    overrides: Mapping[str, object] | None = None,
) -> tuple[Settings | None, list[ConfigProblem], list[str]]:
    """Validate offline for `config check`: (settings or None, problems, warnings); never raises on input."""
    env = os.environ if env is None else env
    problems: list[ConfigProblem] = []
    flags = _parse_overrides(overrides or {}, problems)
    path, label = _locate_config(config_path or flags.pop("config", None), env)
    raw = schema.load_config(path, label, problems) if path else schema.RawConfig()

    server = _server(raw.sections["server"], env, flags, problems)
    base_timeouts = _replace(Timeouts(), raw.sections["timeouts"])
    providers = _providers(raw, env, base_timeouts, problems)
    known = [*providers, *(name for name in raw.providers if name not in providers)]
    routes = _routes(raw.routes, providers, known, problems)
    retries = _replace(RetrySettings(), raw.sections["retries"])
    if retries.backoff_max_s < retries.backoff_base_s:
        problems.append(
            ConfigProblem(
                "retries.backoff_max_s",
                "is smaller than retries.backoff_base_s",
                "raise backoff_max_s or lower backoff_base_s",
            )
        )
    prices = _prices(raw.prices, known, problems)
    database_url = _dsn(env, "AIGW_DATABASE_URL", ("sqlite", "postgresql", "postgres"), problems)
    redis_url = _dsn(env, "AIGW_REDIS_URL", ("redis", "rediss", "unix"), problems)
    auth = _auth(env, database_url or _DEFAULT_DATABASE_URL, problems)
    if problems:
        return None, problems, []
    settings = Settings(
        server=server,
        providers=MappingProxyType(providers),
        routes=MappingProxyType(routes),
        retries=retries,
        breaker=_replace(BreakerSettings(), raw.sections["breaker"]),
        master_key=_env(env, "AIGW_MASTER_KEY"),
        database_url=database_url or _DEFAULT_DATABASE_URL,
        redis_url=redis_url,
        config_path=str(path) if path else None,
        limits=_replace(LimitsSettings(), raw.sections["limits"]),
        ledger=_replace(LedgerSettings(), raw.sections["ledger"]),
        cache=_replace(CacheSettings(), raw.sections["cache"]),
        auth=auth,
        prices=MappingProxyType(prices),
    )
    return settings, [], _warnings(settings, raw, env)


def describe(settings: Settings) -> list[str]:
    """Human-readable summary for `config check`; shows where secrets come from, never their values."""
    server = settings.server
    lines = [
        f"config file: {settings.config_path or 'none (defaults and environment only)'}",
        f"server: {server.host}:{server.port}, log level {server.log_level}"
        + (", open mode allowed on any address" if server.allow_open else ""),
        "auth: master key set (AIGW_MASTER_KEY)"
        if settings.master_key
        else "auth: no master key; open mode unless keys exist in the database",
        f"database: {schema.redact_url(settings.database_url)}",
        "key hashing secret: AIGW_KEY_HASH_SECRET"
        if settings.auth.key_hash_secret
        else "key hashing secret: generated into a 0600 file next to the SQLite database",
        f"auth cache: {settings.auth.cache_ttl_s:g} s per replica (AIGW_AUTH_CACHE_TTL_S)",
        f"shared state: {schema.redact_url(settings.redis_url)}"
        if settings.redis_url
        else "shared state: in-process (AIGW_REDIS_URL not set)",
    ]
    for name, provider in settings.providers.items():
        if provider.configured:
            model = provider.default_model or "none"
            lines.append(f"provider {name}: configured, base {provider.base_url}, default model {model}")
        else:
            lines.append(
                f"provider {name}: NOT configured — {provider.not_configured} "
                f"(set it in the environment or providers.{name}.api_key: env:NAME)"
            )
    lines += [f"route {alias}: {' -> '.join(targets)}" for alias, targets in settings.routes.items()]
    return lines


def _env(env: Mapping[str, str], name: str) -> str | None:
    """Empty counts as unset: compose files write `VAR=${VAR:-}`."""
    value = env.get(name, "").strip()
    return value or None


def _replace(base: Any, values: Mapping[str, object]) -> Any:
    return dataclasses.replace(base, **values)


def _checked(key: str, value: object, check: schema.Check, problems: list[ConfigProblem]) -> object:
    try:
        return check(value)
    except ValueProblem as exc:
        problems.append(ConfigProblem(key + exc.at, exc.message, exc.fix))
        return None


def _text_to(kind: type, text: str) -> object:
    """Read an environment or flag string as the type a schema check expects."""
    if kind is int:
        return int(text) if text.strip().lstrip("+-").isdigit() else text
    if kind is bool:
        return _TRUTH.get(text.strip().lower(), text)
    return text


def _parse_overrides(overrides: Mapping[str, object], problems: list[ConfigProblem]) -> dict[str, object]:
    flags: dict[str, object] = {}
    for raw_key, value in overrides.items():
        key = raw_key.removeprefix("server.")
        if key not in _OVERRIDES:
            # A caller bug, not a user mistake: fail loudly rather than report it as configuration.
            raise ValueError(f"unknown override {raw_key!r}; expected one of {sorted(_OVERRIDES)}")
        if value is None or (key == "allow_open" and value is False):
            continue
        if key == "config":
            flags[key] = os.fspath(cast("str", value))
            continue
        check = schema.SERVER[key]
        flag = "--" + key.replace("_", "-")
        if isinstance(value, str) and key in ("port", "allow_open"):
            value = _text_to(int if key == "port" else bool, value)
        checked = _checked(flag, value, check, problems)
        if checked is not None:
            flags[key] = checked
    return flags


def _locate_config(explicit: object, env: Mapping[str, str]) -> tuple[Path | None, str]:
    if explicit:
        return Path(cast("str", explicit)), "--config"
    if from_env := _env(env, "AIGW_CONFIG"):
        return Path(from_env), "AIGW_CONFIG"
    candidate = Path.cwd() / "gateway.yaml"
    return (candidate if candidate.is_file() else None), "gateway.yaml"


def _server(
    from_file: dict[str, object],
    env: Mapping[str, str],
    flags: Mapping[str, object],
    problems: list[ConfigProblem],
) -> ServerSettings:
    values = dict(from_file)
    for key, var, kind in (
        ("host", "AIGW_HOST", str),
        ("port", "AIGW_PORT", int),
        ("log_level", "AIGW_LOG_LEVEL", str),
        ("allow_open", "AIGW_ALLOW_OPEN", bool),
    ):
        text = _env(env, var)
        if text is not None:
            checked = _checked(var, _text_to(kind, text), schema.SERVER[key], problems)
            if checked is not None:
                values[key] = checked
    values.update(flags)
    return cast(ServerSettings, _replace(ServerSettings(), values))


def _env_url(env: Mapping[str, str], var: str, problems: list[ConfigProblem]) -> str | None:
    text = _env(env, var)
    if text is None:
        return None
    convert = schema.ollama_host_to_url if var == "OLLAMA_HOST" else schema.normalise_base_url
    return cast("str | None", _checked(var, text, cast(schema.Check, convert), problems))


def _providers(
    raw: schema.RawConfig,
    env: Mapping[str, str],
    base_timeouts: Timeouts,
    problems: list[ConfigProblem],
) -> dict[str, ProviderSettings]:
    providers: dict[str, ProviderSettings] = {}
    for builtin in _BUILTINS:
        declared = raw.providers.get(builtin.name) or schema.RawProvider(builtin.name, builtin.name)
        # Base URLs: environment beats the file (precedence env > file); OLLAMA_HOST is the older alias.
        base_url = _env_url(env, builtin.base_env, problems)
        if base_url is None and builtin.name == "ollama":
            base_url = _env_url(env, "OLLAMA_HOST", problems)
        model_var = f"AIGW_{builtin.name.upper()}_MODEL"
        model = (
            _checked(model_var, _env(env, model_var), schema.model_name, problems)
            if model_var in env
            else None
        )
        providers[builtin.name] = _provider(
            declared,
            env,
            base_url or declared.base_url or builtin.base_url,
            cast("str | None", model) or declared.default_model or builtin.model,
            builtin.key_env,
            base_timeouts,
            problems,
        )
    for name, declared in raw.providers.items():
        if name in providers or not declared.type:
            continue  # a bad type was already reported; building it would only add noise
        if declared.base_url is None and declared.type != "fake":
            problems.append(
                ConfigProblem(
                    f"providers.{name}.base_url",
                    "is required for a provider that is not built in",
                    "add base_url: http://host:port/v1",
                )
            )
            continue
        model = declared.default_model or (declared.models[0] if declared.models else "")
        url = declared.base_url or "http://fake.invalid"  # .invalid never resolves: nothing to call
        providers[name] = _provider(declared, env, url, model, None, base_timeouts, problems)
    return providers


def _provider(
    declared: schema.RawProvider,
    env: Mapping[str, str],
    base_url: str,
    default_model: str,
    builtin_key_env: str | None,
    base_timeouts: Timeouts,
    problems: list[ConfigProblem],
) -> ProviderSettings:
    """Resolve one provider's key reference and merge its layers; a missing key is a state, not an error."""
    name = declared.name
    key_env = declared.api_key_env or builtin_key_env
    api_key = _env(env, key_env) if key_env else None
    reason: str | None = None
    if api_key is not None and any(ch.isspace() or ord(ch) < 32 for ch in api_key):
        problems.append(
            ConfigProblem(key_env or "", "contains whitespace or control characters", "export only the key")
        )
        api_key = None
    elif api_key is None and declared.api_key_env:
        reason = f"env var {declared.api_key_env} is not set"
    elif api_key is None and builtin_key_env:
        reason = f"{builtin_key_env} is not set"
    elif api_key is None and declared.type in _KEYED_TYPES:
        reason = f"providers.{name}.api_key is not set"
    models = declared.models
    if default_model and default_model not in models:
        models = (default_model, *models)
    return ProviderSettings(
        name=name,
        type=cast(ProviderType, declared.type),
        base_url=base_url,
        api_key=api_key,
        api_key_source=f"env:{key_env}" if key_env else None,
        default_model=default_model,
        models=models,
        headers=declared.headers,
        timeouts=_replace(base_timeouts, declared.timeouts),
        anthropic_version=declared.anthropic_version or _DEFAULT_ANTHROPIC_VERSION,
        not_configured=reason,
    )


def _routes(
    from_file: Mapping[str, tuple[str, ...]],
    providers: Mapping[str, ProviderSettings],
    known: list[str],
    problems: list[ConfigProblem],
) -> dict[str, tuple[str, ...]]:
    routes = {"default": _DEFAULT_ROUTE, **from_file}
    for alias, targets in routes.items():
        if alias in known:
            problems.append(
                ConfigProblem(
                    f"routes.{alias}",
                    f"shadows the provider {alias}, so '{alias}' would be ambiguous",
                    "rename the route",
                )
            )
        for index, target in enumerate(targets):
            provider, _, model = target.partition("/")
            where = f"routes.{alias}[{index}]"
            if provider not in known:
                nested = " (a route cannot name another route)" if provider in routes else ""
                problems.append(
                    ConfigProblem(
                        where,
                        f"unknown provider '{provider}'{nested}",
                        f"use one of: {', '.join(known)}, optionally as provider/model",
                    )
                )
            elif not model and provider in providers and not providers[provider].default_model:
                problems.append(
                    ConfigProblem(
                        where,
                        f"provider {provider} has no default model",
                        f"write {provider}/MODEL or set providers.{provider}.default_model",
                    )
                )
    return routes


def _prices(
    from_file: Mapping[str, dict[str, object]], known: list[str], problems: list[ConfigProblem]
) -> dict[str, PriceOverride]:
    prices: dict[str, PriceOverride] = {}
    for model, values in from_file.items():
        provider = model.partition("/")[0]
        if provider and provider not in known:
            problems.append(
                ConfigProblem(
                    f"prices.{model}", f"unknown provider '{provider}'", f"use one of: {', '.join(known)}"
                )
            )
        elif "input_per_mtok" in values and "output_per_mtok" in values:
            prices[model] = PriceOverride(**cast("dict[str, Any]", values))
    return prices


def _dsn(
    env: Mapping[str, str], var: str, schemes: tuple[str, ...], problems: list[ConfigProblem]
) -> str | None:
    """Check only the scheme: the rest of a DSN is the driver's business, and it holds a password."""
    value = _env(env, var)
    scheme = (value or "").partition(":")[0].partition("+")[0].lower()
    if value is not None and scheme not in schemes:
        examples = {"AIGW_DATABASE_URL": "sqlite:///./ai-gateway.db or postgresql://user:pass@host/db"}
        example = examples.get(var, "redis://host:6379/0")
        problems.append(
            ConfigProblem(var, f"unsupported scheme; expected {', '.join(schemes)}", f"use {example}")
        )
    return value


def _auth(env: Mapping[str, str], database_url: str, problems: list[ConfigProblem]) -> AuthSettings:
    """The hashing secret must be shared by every replica, so a shared (PostgreSQL) database needs it set."""
    secret = _env(env, "AIGW_KEY_HASH_SECRET")
    shared = database_url.partition(":")[0].partition("+")[0].lower() in ("postgresql", "postgres")
    if secret is None and shared:
        problems.append(
            ConfigProblem(
                "AIGW_KEY_HASH_SECRET",
                "is required when AIGW_DATABASE_URL is PostgreSQL: every replica must hash API keys with "
                "the same secret, so it cannot be generated per replica",
                f"set the same value on every replica; {_SECRET_HINT}",
            )
        )
    elif secret is not None and len(secret) < _MIN_HASH_SECRET_CHARS:
        problems.append(
            ConfigProblem(
                "AIGW_KEY_HASH_SECRET",
                f"is shorter than {_MIN_HASH_SECRET_CHARS} characters",
                f"use a long random value; {_SECRET_HINT}",
            )
        )
        secret = None
    ttl = _DEFAULT_AUTH_CACHE_TTL_S
    text = _env(env, "AIGW_AUTH_CACHE_TTL_S")
    if text is not None:
        try:
            ttl = float(text)
        except ValueError:
            ttl = -1.0
        if not 0 <= ttl <= _MAX_AUTH_CACHE_TTL_S:
            problems.append(
                ConfigProblem(
                    "AIGW_AUTH_CACHE_TTL_S",
                    f"expected a number of seconds from 0 to {_MAX_AUTH_CACHE_TTL_S:g}",
                    "set e.g. AIGW_AUTH_CACHE_TTL_S=10 (0 disables the cache)",
                )
            )
            ttl = _DEFAULT_AUTH_CACHE_TTL_S
    return AuthSettings(key_hash_secret=secret, cache_ttl_s=ttl)


def is_loopback_host(host: str) -> bool:
    """A host name or address that only this machine can reach (open mode may bind it)."""
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _warnings(settings: Settings, raw: schema.RawConfig, env: Mapping[str, str]) -> list[str]:
    """Legal but probably unintended: shown by `config check`, never fatal."""
    warnings: list[str] = []
    if settings.master_key is not None and len(settings.master_key) < 16:
        warnings.append("AIGW_MASTER_KEY is shorter than 16 characters; use a long random value")
    host = settings.server.host
    if settings.master_key is None and not settings.server.allow_open and not is_loopback_host(host):
        warnings.append(
            f"server.host {host} is not loopback: in open mode the server refuses to bind it; "
            "set AIGW_MASTER_KEY or pass --allow-open"
        )
    for builtin in _BUILTINS:
        declared = raw.providers.get(builtin.name)
        ref = declared.api_key_env if declared else None
        if (
            ref
            and builtin.key_env
            and ref != builtin.key_env
            and not _env(env, ref)
            and _env(env, builtin.key_env)
        ):
            warnings.append(
                f"providers.{builtin.name}.api_key references {ref}, which is not set; "
                f"{builtin.key_env} is set but ignored"
            )
    for name, provider in settings.providers.items():
        hostname = urlsplit(provider.base_url).hostname or ""
        if provider.api_key and provider.base_url.startswith("http://") and not is_loopback_host(hostname):
            warnings.append(f"provider {name} sends its API key over plain http to {hostname}")
    for alias, targets in settings.routes.items():
        skipped = [t for t in targets if not settings.providers[t.partition("/")[0]].configured]
        if len(skipped) == len(targets):
            warnings.append(f"route {alias}: no target is configured ({', '.join(skipped)})")
    return warnings
