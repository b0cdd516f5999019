"""One ledger row per request: what was asked, who answered, what it cost and how it ended.

The row maps 1:1 onto the SQL table; `LEDGER_COLUMNS` is the column order and `row.to_columns()` the
values (the SQL sink inserts them with ON CONFLICT (request_id) DO NOTHING):

    request_id        VARCHAR(128) PRIMARY KEY  gateway-generated, unique: the idempotency key
    ts                TIMESTAMPTZ NOT NULL      when the request arrived, UTC
    tenant_id         VARCHAR(128) NULL
    key_id            VARCHAR(128) NULL
    route             VARCHAR(256) NULL         the model or route the client asked for
    provider          VARCHAR(128) NULL         the provider that answered (or was tried last)
    model             VARCHAR(256) NULL         the upstream model
    endpoint          VARCHAR(64) NOT NULL      the ingress dialect: openai_chat, simple_chat, ...
    stream            BOOLEAN NOT NULL
    status            VARCHAR(32) NOT NULL      LedgerStatus
    http_status       SMALLINT NOT NULL         what the client was sent (499: it left first)
    error_class       VARCHAR(128) NULL         the error code: budget_exceeded, all_providers_failed, ...
    input_tokens      BIGINT NOT NULL
    output_tokens     BIGINT NOT NULL
    cached_tokens     BIGINT NOT NULL           read from a prompt cache; included in input_tokens
    cost_nanos        BIGINT NULL               USD x 1e9, exact; NULL = price unknown, never a silent 0
    cost_saved_nanos  BIGINT NOT NULL           cache hits: what the upstream would have charged
    price_source      VARCHAR(32) NULL          pricing.PriceSource
    latency_ms        INTEGER NOT NULL
    ttft_ms           INTEGER NULL              time to the first byte sent to the client
    cache_hit         BOOLEAN NOT NULL
    usage_estimated   BOOLEAN NOT NULL          tokens counted from delivered chunks: no upstream usage
    attempts          TEXT NOT NULL             JSON list of {provider, model, status, error,
                                                latency_ms, http_status, kind}

Rows travel as JSON (the spool), never pickle. `sanitize` makes any row storable: no NUL bytes or lone
surrogates, bounded strings, integers within BIGINT, so one odd row cannot poison a batch.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from typing import Any, Literal, get_args

import orjson

from ai_gateway.errors import (
    AuthenticationError,
    DeadlineExceededError,
    GatewayError,
    PermissionDeniedError,
    ProviderError,
    RateLimitError,
    ServiceUnavailableError,
    UpstreamError,
)
from ai_gateway.policy.fallback import Attempt

__all__ = [
    "LEDGER_COLUMNS",
    "STATUSES",
    "LedgerAttempt",
    "LedgerRow",
    "LedgerStatus",
    "outcome_of",
    "sanitize",
]

LedgerStatus = Literal[
    "ok",  # answered by an upstream, in full
    "cache_hit",  # answered from the cache: cost 0, cost_saved_nanos set
    "rejected",  # refused by policy before any upstream call (scope, rate limit, budget): not billed
    "invalid_request",  # malformed, unknown model, or refused as invalid by the upstream (400)
    "upstream_error",  # every attempt failed, or a stream broke after it had started
    "upstream_timeout",  # the deadline passed
    "client_disconnected",  # the client left; billed for what was generated
    "shutdown",  # cut short by a graceful shutdown; billed for what was generated
    "interrupted",  # the process died mid-request: written at start-up by the reconciler
    "internal_error",  # a gateway bug (500)
]
STATUSES: frozenset[str] = frozenset(get_args(LedgerStatus))

_BIGINT = 2**63 - 1
_ID_CHARS = 128
_NAME_CHARS = 256
_ERROR_CHARS = 300
_MAX_ATTEMPTS = 32
_INT32 = 2**31 - 1


@dataclass(frozen=True, slots=True)
class LedgerAttempt:
    provider: str
    model: str
    status: str  # ok | error | skipped
    error: str | None = None
    latency_ms: int = 0
    http_status: int | None = None
    kind: str | None = None  # errors.ProviderErrorKind, or why it was skipped

    @classmethod
    def of(cls, a: Attempt) -> LedgerAttempt:
        return cls(a.provider, a.model, a.status, a.error, a.latency_ms, a.http_status, a.kind)


@dataclass(frozen=True, slots=True)
class LedgerRow:
    request_id: str
    ts: datetime
    status: LedgerStatus
    http_status: int
    endpoint: str
    stream: bool = False
    tenant_id: str | None = None
    key_id: str | None = None
    route: str | None = None
    provider: str | None = None
    model: str | None = None
    error_class: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cost_nanos: int | None = 0
    cost_saved_nanos: int = 0
    price_source: str | None = None
    latency_ms: int = 0
    ttft_ms: int | None = None
    cache_hit: bool = False
    usage_estimated: bool = False
    attempts: tuple[LedgerAttempt, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """A plain dict for orjson: ts as ISO 8601 UTC, attempts as a list of dicts."""
        out = {name: getattr(self, name) for name in LEDGER_COLUMNS}
        out["ts"] = self.ts.isoformat()
        out["attempts"] = [_attempt_json(a) for a in self.attempts]
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LedgerRow:
        """The inverse of `to_json`; ValueError for anything that is not a row. Unknown keys are
        ignored, so a spool written by a newer version still replays."""
        try:
            values = {name: data[name] for name in _SCALARS if name in data}
            values["ts"] = datetime.fromisoformat(data["ts"])
            values["attempts"] = tuple(LedgerAttempt(**a) for a in data.get("attempts") or ())
            row = cls(**values)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a ledger row: {exc}") from None
        if not isinstance(row.request_id, str) or not row.request_id:
            raise ValueError("not a ledger row: no request_id")
        return row

    def to_columns(self) -> dict[str, Any]:
        """Values for `LEDGER_COLUMNS`: ts as an aware datetime, attempts as JSON text."""
        out = {name: getattr(self, name) for name in LEDGER_COLUMNS}
        out["attempts"] = orjson.dumps([_attempt_json(a) for a in self.attempts]).decode()
        return out


LEDGER_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(LedgerRow))
_SCALARS = tuple(c for c in LEDGER_COLUMNS if c not in ("ts", "attempts"))


def _attempt_json(a: LedgerAttempt) -> dict[str, Any]:
    return {
        "provider": a.provider,
        "model": a.model,
        "status": a.status,
        "error": a.error,
        "latency_ms": a.latency_ms,
        "http_status": a.http_status,
        "kind": a.kind,
    }


def outcome_of(exc: BaseException) -> tuple[LedgerStatus, int, str]:
    """(status, http_status, error_class) for a request that ended with `exc`.

    A CancelledError is the client leaving (499); the pipeline overrides http_status with 200 when a
    stream had already started."""
    if isinstance(exc, GatewayError):
        return _gateway_status(exc), exc.status, exc.code
    if isinstance(exc, ProviderError):  # a stream that broke after its first event
        return ("upstream_timeout" if exc.kind == "timeout" else "upstream_error"), 502, exc.kind
    if isinstance(exc, asyncio.CancelledError):
        return "client_disconnected", 499, "client_disconnected"
    return "internal_error", 500, type(exc).__name__


def _gateway_status(exc: GatewayError) -> LedgerStatus:
    if isinstance(exc, RateLimitError):
        return "upstream_error" if exc.code == "upstream_rate_limited" else "rejected"
    if isinstance(exc, AuthenticationError | PermissionDeniedError):
        return "rejected"
    if isinstance(exc, DeadlineExceededError):
        return "upstream_timeout"
    if isinstance(exc, UpstreamError):
        return "upstream_error"
    if isinstance(exc, ServiceUnavailableError):
        if exc.code in ("shutting_down", "draining"):
            return "shutdown"
        if exc.code in ("all_providers_unavailable", "provider_not_configured"):
            return "upstream_error"
        return "rejected"  # a store the policy needs is down: refused before any upstream call
    if 400 <= exc.status < 500:
        return "invalid_request"
    return "internal_error"


# --- sanitising ----------------------------------------------------------------------------------


def _clean(value: object, limit: int) -> str:
    text = value if isinstance(value, str) else str(value)
    if text.isascii():
        if "\x00" in text:
            text = text.replace("\x00", "")
    else:  # lone surrogates cannot be encoded as UTF-8 (orjson and Postgres refuse them)
        text = text.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _clean_opt(value: object, limit: int) -> str | None:
    return None if value is None else _clean(value, limit)


def _clean_id(value: object) -> str:
    """Ids stay unique after cleaning: an overlong or odd one becomes a prefix plus a hash of it."""
    text = value if isinstance(value, str) else str(value)
    clean = _clean(text, 10 * _ID_CHARS)
    if clean == text and len(text) <= _ID_CHARS:
        return text
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:24]
    return f"{clean[: _ID_CHARS - 25]}~{digest}"


def _int(value: object, high: int = _BIGINT) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return 0
    try:
        number = int(value)
    except (ValueError, OverflowError):  # "abc", nan, inf
        return 0
    return min(max(number, 0), high)


def _int_opt(value: object, high: int = _BIGINT) -> int | None:
    return None if value is None else _int(value, high)


def _utc(ts: object) -> datetime:
    if not isinstance(ts, datetime):
        return datetime.now(UTC)
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def _clean_attempt(a: LedgerAttempt) -> LedgerAttempt:
    return LedgerAttempt(
        _clean(a.provider, _NAME_CHARS),
        _clean(a.model, _NAME_CHARS),
        _clean(a.status, 16),
        _clean_opt(a.error, _ERROR_CHARS),
        _int(a.latency_ms, _INT32),
        _int_opt(a.http_status, 999),
        _clean_opt(a.kind, 32),
    )


# Per column: (nullable, limit). Strings are bounded in characters, integers in value.
_STRINGS: dict[str, tuple[bool, int]] = {
    "status": (False, 32),
    "endpoint": (False, 64),
    "tenant_id": (True, _ID_CHARS),
    "key_id": (True, _ID_CHARS),
    "route": (True, _NAME_CHARS),
    "provider": (True, _NAME_CHARS),
    "model": (True, _NAME_CHARS),
    "error_class": (True, _ID_CHARS),
    "price_source": (True, 32),
}
_INTS: dict[str, tuple[bool, int]] = {
    "http_status": (False, 999),
    "input_tokens": (False, _BIGINT),
    "output_tokens": (False, _BIGINT),
    "cached_tokens": (False, _BIGINT),
    "cost_nanos": (True, _BIGINT),
    "cost_saved_nanos": (False, _BIGINT),
    "latency_ms": (False, _INT32),
    "ttft_ms": (True, _INT32),
}
_BOOLS = ("stream", "cache_hit", "usage_estimated")


def _plain(value: object, nullable: bool, limit: int) -> bool:
    if value is None:
        return nullable
    return type(value) is str and len(value) <= limit and value.isascii() and "\x00" not in value


def _in_range(value: object, nullable: bool, high: int) -> bool:
    if value is None:
        return nullable
    return type(value) is int and 0 <= value <= high


def _attempt_clean(a: LedgerAttempt) -> bool:
    return (
        _plain(a.provider, False, _NAME_CHARS)
        and _plain(a.model, False, _NAME_CHARS)
        and _plain(a.status, False, 16)
        and _plain(a.error, True, _ERROR_CHARS)
        and _in_range(a.latency_ms, False, _INT32)
        and _in_range(a.http_status, True, 999)
        and _plain(a.kind, True, 32)
    )


def _is_clean(row: LedgerRow) -> bool:
    """The common case, checked without building anything: ~5x cheaper than cleaning."""
    return (
        _plain(row.request_id, False, _ID_CHARS)
        and isinstance(row.ts, datetime)
        and row.ts.tzinfo is UTC
        and all(_plain(getattr(row, n), *spec) for n, spec in _STRINGS.items())
        and all(_in_range(getattr(row, n), *spec) for n, spec in _INTS.items())
        and all(type(getattr(row, n)) is bool for n in _BOOLS)
        and type(row.attempts) is tuple
        and len(row.attempts) <= _MAX_ATTEMPTS
        and all(_attempt_clean(a) for a in row.attempts)
    )


def sanitize(row: LedgerRow) -> LedgerRow:
    """A row any SQL backend accepts, whatever a client or an upstream put in it. Never raises;
    returns `row` itself when it is already clean (the common case)."""
    if _is_clean(row):
        return row
    changes: dict[str, Any] = {
        "request_id": _clean_id(row.request_id),
        "ts": _utc(row.ts),
        "attempts": tuple(_clean_attempt(a) for a in list(row.attempts)[:_MAX_ATTEMPTS]),
    }
    for name, (nullable, limit) in _STRINGS.items():
        value = getattr(row, name)
        changes[name] = None if value is None and nullable else _clean(value or "", limit)
    for name, (nullable, high) in _INTS.items():
        value = getattr(row, name)
        changes[name] = None if value is None and nullable else _int(value, high)
    for name in _BOOLS:
        changes[name] = bool(getattr(row, name))
    return replace(row, **changes)
