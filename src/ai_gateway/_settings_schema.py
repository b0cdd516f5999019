"""Phase one of configuration: read the YAML file and check its shape, nothing more.

Why a separate phase: every structural mistake (unknown key, wrong type, inline secret, malformed URL) is
found here, all at once, before anything is resolved against the environment. The result holds only what
the file actually said (`RawConfig`, partial dicts and `RawProvider` records), so phase two in
`settings.py` can layer defaults < file < environment < flags without guessing which values were explicit.

Nothing here reads the environment or raises on a user mistake: problems are appended to a list. Messages
never echo string values, because a misplaced secret must not be copied into logs by the error that
reports it.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TypeVar
from urllib.parse import urlsplit, urlunsplit

import yaml

__all__ = [
    "BUILTIN_TYPES",
    "PROVIDER_TYPES",
    "SERVER",
    "Check",
    "ConfigProblem",
    "RawConfig",
    "RawProvider",
    "ValueProblem",
    "load_config",
    "model_name",
    "normalise_base_url",
    "ollama_host_to_url",
    "redact_url",
]

BUILTIN_TYPES: Mapping[str, str] = {
    "ollama": "ollama",
    "openai": "openai",
    "anthropic": "anthropic",
    "openrouter": "openrouter",
}
PROVIDER_TYPES = ("openai", "openrouter", "ollama", "anthropic", "fake")


class ConfigProblem(NamedTuple):
    """One thing wrong with the configuration: where (`key`), what (`message`) and how to fix it (`fix`).

    `key` is a dotted YAML path (`providers.openai.base_url`), an environment variable (`OPENAI_BASE_URL`)
    or a flag (`--port`), so the operator can find the spot without guessing which source was meant.
    """

    key: str
    message: str
    fix: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}\n    fix: {self.fix}"


class ValueProblem(Exception):
    """Raised by a value check; the caller knows the key and turns it into a `ConfigProblem`.

    `at` is appended to the caller's key for problems inside a value (`.X-Title`, `[2]`).
    """

    def __init__(self, message: str, fix: str, at: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix
        self.at = at


Check = Callable[[object], object]
_T = TypeVar("_T")
_D = TypeVar("_D")


def _kind(value: object) -> str:
    """Name a value's YAML type without showing the value (it might be a secret typed in the wrong place)."""
    if value is None:
        return "null"
    kinds: tuple[tuple[type, str], ...] = (
        (bool, "a boolean"),
        (int, "an integer"),
        (float, "a number"),
        (str, "a string"),
        (list, "a list"),
        (dict, "a mapping"),
    )
    return next((name for typ, name in kinds if isinstance(value, typ)), f"a {type(value).__name__}")


def _bounds(lo: float, hi: float | None, strict: bool) -> str:
    if hi is not None:
        return f"between {lo:g} and {hi:g}"
    return f"greater than {lo:g}" if strict else f"at least {lo:g}"


def integer(lo: int, hi: int | None = None) -> Check:
    def check(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueProblem(
                f"expected an integer, got {_kind(value)}", "write a whole number without quotes"
            )
        if value < lo or (hi is not None and value > hi):
            raise ValueProblem(f"must be {_bounds(lo, hi, False)}, got {value}", "change the value")
        return value

    return check


def number(*, positive: bool) -> Check:
    """Seconds and prices: ints are fine, booleans and NaN/inf are not."""

    def check(value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueProblem(
                f"expected a number, got {_kind(value)}", "write a number without quotes, e.g. 30"
            )
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            raise ValueProblem(f"must be {_bounds(0, None, positive)}, got {value}", "change the value")
        return float(value)

    return check


def boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueProblem(
            f"expected true or false, got {_kind(value)}", "write true or false without quotes"
        )
    return value


def choice(*options: str) -> Check:
    def check(value: object) -> str:
        text = value.lower() if isinstance(value, str) else None
        if text not in options:
            raise ValueProblem(f"must be one of {', '.join(options)}", f"write one of: {', '.join(options)}")
        return text

    return check


def _printable(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise ValueProblem(f"expected {what} as a string, got {_kind(value)}", "quote the value")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        # CR/LF in anything that ends up in an HTTP header would let it inject headers.
        raise ValueProblem(f"{what} contains a line break or control character", "remove it")
    return value


def path_text(value: object) -> str:
    text = _printable(value, "a file path").strip()
    if not text:
        raise ValueProblem("must not be empty", "give a file path")
    return text


def header_value(value: object) -> str:
    return _printable(value, "a header value")


def host(value: object) -> str:
    text = _printable(value, "a host name").strip()
    if not text or " " in text:
        raise ValueProblem("must be a host name or IP address", "write e.g. 127.0.0.1 or 0.0.0.0")
    return text


def model_name(value: object) -> str:
    text = _printable(value, "a model name").strip()
    if not text or " " in text:
        raise ValueProblem("must be a non-empty model name without spaces", "write e.g. gpt-4o-mini")
    return text


def model_list(value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ValueProblem(f"expected a list of model names, got {_kind(value)}", "write models: [a, b]")
    names: list[str] = []
    for index, item in enumerate(value):
        try:
            name = model_name(item)
        except ValueProblem as exc:
            raise ValueProblem(exc.message, exc.fix, at=f"[{index}]") from None
        if name not in names:
            names.append(name)
    return tuple(names)


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
_CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "x-api-key", "api-key"})


def header_map(value: object) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        raise ValueProblem(
            f"expected a mapping of header name to value, got {_kind(value)}", "write Name: value"
        )
    pairs: list[tuple[str, str]] = []
    for name, item in value.items():
        at = f".{name}"
        if not isinstance(name, str) or not _TOKEN.match(name):
            raise ValueProblem("is not a valid HTTP header name", "use letters, digits and '-'", at)
        if name.lower() in _CREDENTIAL_HEADERS:
            raise ValueProblem(
                "credentials do not belong in static headers (they would sit in the file in plain text)",
                "remove the header and set api_key: env:NAME; the provider sends it in the right header",
                at,
            )
        try:
            pairs.append((name, header_value(item)))
        except ValueProblem as exc:
            raise ValueProblem(exc.message, exc.fix, at) from None
    return tuple(pairs)


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def api_key_ref(suggested_var: str) -> Check:
    """Accept only `env:NAME` and return NAME: an inline key would end up in version control."""
    example = f"api_key: env:{suggested_var}"

    def check(value: object) -> str:
        if not isinstance(value, str):
            raise ValueProblem(f"expected env:NAME, got {_kind(value)}", f"write {example}")
        if not value.startswith("env:"):
            raise ValueProblem(
                "secrets must be referenced as env:NAME; inline keys end up in version control",
                f"write {example}, export {suggested_var}=<your key>, delete the key from the file and "
                "rotate it if the file was ever shared",
            )
        name = value[4:].strip()
        if not _ENV_NAME.match(name):
            raise ValueProblem(
                "env:NAME must name an environment variable (letters, digits, _)", f"write {example}"
            )
        return name

    return check


def normalise_base_url(value: object) -> str:
    """Check an upstream base URL and return it without a trailing slash.

    Userinfo is refused because `https://user:key@host` hides a secret in a value we print; query and
    fragment are refused because providers append paths to the base and would silently drop them.
    """
    text = _printable(value, "a URL").strip()
    try:
        parts = urlsplit(text)
        _ = parts.port  # raises ValueError on a non-numeric or out-of-range port
    except ValueError:
        raise ValueProblem(
            "is not a valid URL (check the port)", "write e.g. http://127.0.0.1:8001/v1"
        ) from None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueProblem(
            "must start with http:// or https:// and name a host", "write e.g. http://127.0.0.1:8001/v1"
        )
    if parts.username is not None or parts.password is not None:
        raise ValueProblem(
            "must not contain credentials (user:password@)", "remove them and use api_key: env:NAME instead"
        )
    if not parts.hostname:
        raise ValueProblem("has no host", "write e.g. http://127.0.0.1:8001/v1")
    if parts.query or parts.fragment or text.endswith(("?", "#")):
        raise ValueProblem(
            "must not have a query (?...) or fragment (#...)", "remove everything after ? or #"
        )
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


_UNSPECIFIED_HOSTS = frozenset({"0.0.0.0", "::", ""})


def ollama_host_to_url(value: str) -> str:
    """Turn `OLLAMA_HOST` into a base URL the way the Ollama client does.

    The variable is usually set for the Ollama *server* (`0.0.0.0:11434`, no scheme), so a missing scheme
    means http, a missing port means 11434, and the bind-all address means this machine.
    """
    text = value.strip()
    if "://" not in text:
        text = "http://" + ("localhost" + text if text.startswith(":") else text)
    parts = urlsplit(normalise_base_url(text))
    hostname = parts.hostname or ""
    hostname = "localhost" if hostname in _UNSPECIFIED_HOSTS else hostname
    port = parts.port or (11434 if parts.scheme == "http" else None)
    netloc = f"[{hostname}]" if ":" in hostname else hostname
    netloc += f":{port}" if port else ""
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def redact_url(url: str) -> str:
    """Show a DSN or URL with any password replaced, for `config check` output."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = f"{parts.username or ''}:***@{parts.netloc.rpartition('@')[2]}"
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    except ValueError:
        return "<unparseable URL>"


# ---------------------------------------------------------------------------------------------- schema

SERVER: Mapping[str, Check] = {
    "host": host,
    "port": integer(1, 65535),
    "allow_open": boolean,
    "max_body_bytes": integer(1),
    "max_messages": integer(1),
    "max_output_tokens": integer(1),
    "deadline_s": number(positive=True),
    "log_level": choice("critical", "error", "warning", "info", "debug", "trace"),
}
TIMEOUTS: Mapping[str, Check] = {
    name: number(positive=True) for name in ("connect", "first_byte", "idle", "total")
}
RETRIES: Mapping[str, Check] = {
    "max_retries": integer(0, 20),
    "backoff_base_s": number(positive=False),
    "backoff_max_s": number(positive=False),
    "max_retry_after_s": number(positive=False),
}
BREAKER: Mapping[str, Check] = {"failure_threshold": integer(1), "cooldown_s": number(positive=True)}
LIMITS: Mapping[str, Check] = {
    "on_backend_error": choice("local", "allow", "deny"),
    "rpm": integer(1, 10_000_000_000),  # stores/buckets.py MAX_LIMIT
    "tpm": integer(1, 10_000_000_000),
    "expected_replicas": integer(1),
    "backend_timeout_s": number(positive=True),
}
CACHE: Mapping[str, Check] = {
    "enabled": boolean,
    "ttl_s": number(positive=True),
    "max_entries": integer(1),
    "max_bytes": integer(1024),
    "shared_across_tenants": boolean,
}
LEDGER: Mapping[str, Check] = {
    "spool_path": path_text,
    "default_max_output_tokens": integer(1, 10_000_000),
    "drain_timeout_s": number(positive=True),
}
PRICE: Mapping[str, Check] = {
    name: number(positive=False) for name in ("input_per_mtok", "output_per_mtok", "cached_input_per_mtok")
}
_SECTIONS = {"server": SERVER, "timeouts": TIMEOUTS, "retries": RETRIES, "breaker": BREAKER}
_SECTIONS |= {"limits": LIMITS, "cache": CACHE, "ledger": LEDGER}
_TOP_LEVEL = (*_SECTIONS, "providers", "routes", "prices")

_PROVIDER_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*\Z")
_ALIAS = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]*\Z")
_PROVIDER_KEYS = ("type", "base_url", "api_key", "default_model", "models", "timeouts", "headers")
_TYPE_KEYS = {"anthropic": ("anthropic_version",), "openrouter": ("app_url", "app_title")}
_TYPE_KEYS_ALL = ("anthropic_version", "app_url", "app_title")
# OpenRouter reads these two headers to attribute traffic to an app: https://openrouter.ai/docs/app-attribution
_OPENROUTER_HEADERS = {"app_url": "HTTP-Referer", "app_title": "X-Title"}


@dataclass(slots=True)
class RawProvider:
    """What the file said about one provider; None means "not given, use the layer below"."""

    name: str
    type: str
    base_url: str | None = None
    api_key_env: str | None = None
    default_model: str | None = None
    models: tuple[str, ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    timeouts: dict[str, object] = field(default_factory=dict)
    anthropic_version: str | None = None


@dataclass(slots=True)
class RawConfig:
    """What the file said, checked for shape only; references to providers are resolved in phase two."""

    sections: dict[str, dict[str, object]] = field(default_factory=lambda: {name: {} for name in _SECTIONS})
    providers: dict[str, RawProvider] = field(default_factory=dict)
    routes: dict[str, tuple[str, ...]] = field(default_factory=dict)
    prices: dict[str, dict[str, object]] = field(default_factory=dict)


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _unknown(where: str, key: str, allowed: tuple[str, ...]) -> ConfigProblem:
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return ConfigProblem(_join(where, key), "unknown key", f"{hint}allowed keys here: {', '.join(allowed)}")


def _mapping(value: object, where: str, problems: list[ConfigProblem]) -> dict[str, object]:
    """A YAML mapping with string keys; an empty section (`server:`) counts as an empty mapping."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.append(
            ConfigProblem(where, f"expected a mapping, got {_kind(value)}", "write key: value lines")
        )
        return {}
    out: dict[str, object] = {}
    for key, item in value.items():
        if isinstance(key, str):
            out[key] = item
        else:
            problems.append(
                ConfigProblem(
                    _join(where, str(key)),
                    f"keys must be strings, got {_kind(key)}",
                    "quote the key (YAML reads yes/no/on/off as booleans and digits as numbers)",
                )
            )
    return out


def _section(
    value: object,
    where: str,
    schema: Mapping[str, Check],
    problems: list[ConfigProblem],
    hint: tuple[str, ...] = (),
) -> dict[str, object]:
    """Check each key of a flat section; `hint` lists the allowed keys when some are parsed elsewhere."""
    out: dict[str, object] = {}
    for key, item in _mapping(value, where, problems).items():
        check = schema.get(key)
        if check is None:
            problems.append(_unknown(where, key, hint or tuple(schema)))
            continue
        try:
            out[key] = check(item)
        except ValueProblem as exc:
            problems.append(ConfigProblem(_join(where, key) + exc.at, exc.message, exc.fix))
    return out


def _get(values: Mapping[str, object], key: str, typ: type[_T], default: _D) -> _T | _D:
    """Typed read of a value that a check has already validated."""
    value = values.get(key)
    return value if isinstance(value, typ) else default


def _provider(name: str, value: object, problems: list[ConfigProblem]) -> RawProvider:
    where = f"providers.{name}"
    body = _mapping(value, where, problems)
    builtin = BUILTIN_TYPES.get(name)
    declared = body.pop("type", None)
    typ = builtin or ""
    if builtin is not None and declared not in (None, builtin):
        problems.append(
            ConfigProblem(
                f"{where}.type",
                f"the built-in provider {name} always has type {builtin}",
                f"remove the type, or declare the server under another name (e.g. my-{name})",
            )
        )
    elif builtin is None and declared is None:
        problems.append(
            ConfigProblem(
                f"{where}.type",
                "is required for a provider that is not built in",
                "add type: openai (any OpenAI-compatible server) or one of: " + ", ".join(PROVIDER_TYPES),
            )
        )
    elif builtin is None and declared not in PROVIDER_TYPES:
        problems.append(
            ConfigProblem(
                f"{where}.type", "unknown provider type", "use one of: " + ", ".join(PROVIDER_TYPES)
            )
        )
    elif builtin is None:
        typ = str(declared)
    if not _PROVIDER_NAME.match(name):
        problems.append(
            ConfigProblem(where, "provider names must match [a-z0-9][a-z0-9_-]*", "rename it, e.g. my-vllm")
        )
    suggested_var = re.sub(r"[^A-Z0-9_]", "_", name.upper()) + "_API_KEY"
    checks: dict[str, Check] = {
        "base_url": normalise_base_url,
        "api_key": api_key_ref(suggested_var),
        "default_model": model_name,
        "models": model_list,
        "headers": header_map,
        "anthropic_version": header_value,
        "app_url": header_value,
        "app_title": header_value,
    }
    allowed = (*_PROVIDER_KEYS, *_TYPE_KEYS.get(typ, ())) if typ else (*_PROVIDER_KEYS, *_TYPE_KEYS_ALL)
    # `timeouts` is a nested section, parsed on its own so its problems get dotted keys.
    timeouts = _section(body.pop("timeouts", None), f"{where}.timeouts", TIMEOUTS, problems)
    schema = {key: checks[key] for key in allowed if key in checks}
    values = _section(body, where, schema, problems, hint=allowed)
    headers = dict(_get(values, "headers", tuple, ()))
    for option, header in _OPENROUTER_HEADERS.items():
        if option in values:
            headers = {k: v for k, v in headers.items() if k.lower() != header.lower()}
            headers[header] = _get(values, option, str, "")
    return RawProvider(
        name=name,
        type=typ,
        base_url=_get(values, "base_url", str, None),
        api_key_env=_get(values, "api_key", str, None),
        default_model=_get(values, "default_model", str, None),
        models=_get(values, "models", tuple, ()),
        headers=tuple(headers.items()),
        timeouts=timeouts,
        anthropic_version=_get(values, "anthropic_version", str, None),
    )


def _routes(value: object, problems: list[ConfigProblem]) -> dict[str, tuple[str, ...]]:
    routes: dict[str, tuple[str, ...]] = {}
    for alias, targets in _mapping(value, "routes", problems).items():
        where = f"routes.{alias}"
        if "/" in alias or not _ALIAS.match(alias):
            problems.append(
                ConfigProblem(
                    where,
                    "route names use letters, digits and . _ : - but no '/' (that addresses a provider)",
                    "rename the route, e.g. fast",
                )
            )
        if not isinstance(targets, list) or not targets:
            problems.append(
                ConfigProblem(
                    where, f"expected a non-empty list of targets, got {_kind(targets)}", "write [a, b]"
                )
            )
            continue
        clean: list[str] = []
        for index, target in enumerate(targets):
            text = target.strip() if isinstance(target, str) else ""
            provider, slash, model = text.partition("/")
            if not provider or (slash and not model.strip()) or any(ch.isspace() for ch in text):
                problems.append(
                    ConfigProblem(
                        f"{where}[{index}]",
                        "a target is a provider name or provider/model",
                        "write e.g. openai or openai/gpt-4o-mini",
                    )
                )
            else:
                clean.append(text)
        routes[alias] = tuple(clean)
    return routes


def _prices(value: object, problems: list[ConfigProblem]) -> dict[str, dict[str, object]]:
    prices: dict[str, dict[str, object]] = {}
    for model, body in _mapping(value, "prices", problems).items():
        where = f"prices.{model}"
        price = _section(body, where, PRICE, problems)
        provider, _, name = model.partition("/")
        if not provider or not name:
            problems.append(
                ConfigProblem(where, "prices are keyed by provider/model", "write e.g. my-vllm/llama3")
            )
        missing = [key for key in ("input_per_mtok", "output_per_mtok") if key not in price]
        if missing and isinstance(body, dict):
            problems.append(
                ConfigProblem(
                    where, f"missing {' and '.join(missing)}", "give USD per million tokens, e.g. 0.15"
                )
            )
        prices[model] = price
    return prices


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys: PyYAML silently keeps the last one, hiding typos."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[Hashable] = set()
        for key_node, _value in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *base` may legitimately repeat keys that the mapping then overrides
            key = self.construct_object(key_node)
            if isinstance(key, Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            if isinstance(key, Hashable):
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path, label: str, problems: list[ConfigProblem]) -> object:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        fix = "check the path" + (", or unset AIGW_CONFIG" if label == "AIGW_CONFIG" else "")
        problems.append(ConfigProblem(label, f"config file not found: {path}", fix))
        return None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not UTF-8 text"
        problems.append(ConfigProblem(label, f"cannot read config file {path}: {reason}", "fix the file"))
        return None
    loader = _StrictLoader(text)
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        # Only the parser's description and position: str(exc) would quote the offending source lines.
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = "; ".join(part for part in (exc.context, exc.problem) if part)
        problems.append(
            ConfigProblem(str(path), f"invalid YAML{where}: {what}", f"fix the YAML syntax{where}")
        )
    except yaml.YAMLError:
        problems.append(ConfigProblem(str(path), "invalid YAML", "fix the YAML syntax"))
    finally:
        loader.dispose()
    return None


def load_config(path: Path, label: str, problems: list[ConfigProblem]) -> RawConfig:
    """Read and shape-check the YAML file at `path`; `label` names where the path came from."""
    raw = RawConfig()
    data = _read_yaml(path, label, problems)
    for key, value in _mapping(data, str(path), problems).items():
        if key in _SECTIONS:
            raw.sections[key] = _section(value, key, _SECTIONS[key], problems)
        elif key == "providers":
            for name, body in _mapping(value, "providers", problems).items():
                raw.providers[name] = _provider(name, body, problems)
        elif key == "routes":
            raw.routes = _routes(value, problems)
        elif key == "prices":
            raw.prices = _prices(value, problems)
        else:
            problems.append(_unknown("", key, _TOP_LEVEL))
    return raw
