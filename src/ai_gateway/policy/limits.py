"""Rate limits: which token buckets a request passes through, and what the client is told.

Public API, in the order the pipeline calls it::

    scopes = scopes_for(principal, settings.limits)   # key (with config defaults) + tenant
    admission = await limiter.admit(scopes, estimate_reservation(request))
        # raises RateLimitError (429 rate_limited | tokens_rate_limited, Retry-After, x-ratelimit-*)
        #     or ServiceUnavailableError (503 rate_limiter_unavailable, only with on_backend_error=deny)
    ...the upstream call...
    await limiter.settle(admission, usage.total_tokens)   # refund or charge the difference; never raises
    admission.headers()   # [(b"x-ratelimit-limit-requests", b"60"), ...]; [] when no limit decided

Every scope with an `rpm` gets a request bucket and every scope with a `tpm` a token bucket: capacity =
the per-minute limit, refilled continuously at limit/60 per second, so a client may burst the whole
minute's allowance and then proceeds at the steady rate. One `admit` decides all buckets together,
all-or-nothing. A request bucket costs 1; a token bucket is charged the estimate up front (at most its
capacity, so a large request waits for a full bucket instead of never passing) and settled to the real
usage afterwards: a refund if the answer was shorter, an extra charge (possibly into debt) if longer.

`build_limiter` picks the backend: in-process buckets, or Redis with `limits.on_backend_error` applied
by `FailoverBuckets` (policy/limit_store.py). `startup_warning` says when workers multiply limits.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, cast

from ai_gateway.errors import BackendUnavailableError, RateLimitError
from ai_gateway.policy.auth import Principal
from ai_gateway.policy.limit_store import FailoverBuckets, LimiterStats, ScaledBuckets
from ai_gateway.settings import LimitsSettings, Settings
from ai_gateway.stores._redis import RespClient, connect
from ai_gateway.stores.buckets import MAX_LIMIT, Bucket, BucketState, BucketStore
from ai_gateway.stores.buckets_memory import MemoryBuckets
from ai_gateway.stores.buckets_redis import RedisBuckets

__all__ = [
    "Admission",
    "LimitScope",
    "Limiter",
    "LimiterStats",
    "build_limiter",
    "format_reset",
    "scopes_for",
    "startup_warning",
]

log = logging.getLogger("ai_gateway.limits")

Kind = Literal["rpm", "tpm"]
_MAX_PLANS = 10_000  # distinct scope sets remembered (keys x tenants in use); cleared when reached
_WHAT = {"key": "this API key", "tenant": "this tenant", "model": "this model on this API key"}


@dataclass(frozen=True, slots=True)
class LimitScope:
    """A set of limits a request must fit in; `name` is unique per scope ("key:<id>", "tenant:<id>")."""

    name: str
    rpm: int | None = None
    tpm: int | None = None
    what: str = "this scope"  # for the error message

    def __post_init__(self) -> None:
        for name, value in (("rpm", self.rpm), ("tpm", self.tpm)):
            if value is not None and not 1 <= value <= MAX_LIMIT:
                raise ValueError(f"{self.name}: {name} must be from 1 to {MAX_LIMIT}, got {value}")

    @classmethod
    def for_key(
        cls, key_id: str, rpm: int | None, tpm: int | None, defaults: LimitsSettings | None = None
    ) -> LimitScope:
        """A key's own limits; each one it does not set falls back to the config default."""
        if defaults is not None:
            rpm = defaults.rpm if rpm is None else rpm
            tpm = defaults.tpm if tpm is None else tpm
        return cls(f"key:{key_id}", rpm, tpm, _WHAT["key"])

    @classmethod
    def for_tenant(cls, tenant_id: str, rpm: int | None, tpm: int | None) -> LimitScope:
        return cls(f"tenant:{tenant_id}", rpm, tpm, _WHAT["tenant"])

    @classmethod
    def for_model(cls, key_id: str, model: str, rpm: int | None, tpm: int | None) -> LimitScope:
        """Limits of one key on one route/model, on top of the key's overall limits."""
        return cls(f"key:{key_id}:model:{model}", rpm, tpm, _WHAT["model"])


@dataclass(slots=True)
class Admission:
    """One admitted request: what it reserved, where, and the bucket states for the headers."""

    buckets: tuple[Bucket, ...] = ()
    kinds: tuple[Kind, ...] = ()
    states: tuple[BucketState, ...] = ()
    store: BucketStore | None = None  # None: nothing reserved (no limits, or failure mode `allow`)
    settled: bool = False

    @property
    def reserved_tokens(self) -> int:
        return max((b.cost for b, k in zip(self.buckets, self.kinds, strict=True) if k == "tpm"), default=0)

    def headers(self) -> list[tuple[bytes, bytes]]:
        """OpenAI's `x-ratelimit-*` headers for the tightest request and token buckets."""
        if self.store is None:
            return []  # no limiter decided: report nothing rather than made-up numbers
        return _headers(self.kinds, self.states)


class Limiter:
    def __init__(self, store: BucketStore, stats: LimiterStats | None = None) -> None:
        self.store = store
        self.stats = stats if stats is not None else LimiterStats()
        self._plans: dict[tuple[LimitScope, ...], _Plan] = {}  # the buckets of each set of scopes

    async def admit(self, scopes: Sequence[LimitScope], estimated_tokens: int) -> Admission:
        key = tuple(scopes)
        plan = self._plans.get(key)
        if plan is None:
            if len(self._plans) >= _MAX_PLANS:
                self._plans.clear()
            plan = self._plans[key] = _Plan.of(scopes)
        if not plan.kinds:
            return Admission()
        buckets, kinds, whats = plan.buckets(max(0, estimated_tokens)), plan.kinds, plan.whats
        decision = await self.store.admit(buckets)  # ServiceUnavailableError passes through
        if not decision.admitted:
            self.stats.rejected += 1
            raise _rejection(kinds, whats, decision.states)
        return Admission(buckets, kinds, decision.states, decision.store)

    async def settle(self, admission: Admission, actual_tokens: int) -> None:
        """Bring each token bucket from the reserved estimate to `actual_tokens`; idempotent."""
        if admission.settled or admission.store is None:
            return
        admission.settled = True
        actual = max(0, actual_tokens)
        changes = [
            Bucket(b.key, b.capacity, b.per_minute, actual - b.cost)
            for b, kind in zip(admission.buckets, admission.kinds, strict=True)
            if kind == "tpm" and actual != b.cost
        ]
        if not changes:
            return
        try:
            await admission.store.adjust(changes)
        except BackendUnavailableError as exc:
            # The answer is already on its way; a lost settle only misstates one request's tokens.
            self.stats.settle_errors += 1
            log.warning("could not settle token usage with the rate limiter: %s", exc)

    async def aclose(self) -> None:
        await self.store.aclose()


def scopes_for(principal: Principal, defaults: LimitsSettings) -> list[LimitScope]:
    """The scopes of a caller: its key's limits (config defaults where the key sets none) and its
    tenant's. The master key and open mode are the operator: not limited."""
    if principal.kind != "key" or principal.key_id is None:
        return []
    key, tenant = principal.key_limits, principal.tenant_limits
    scopes = [LimitScope.for_key(principal.key_id, key.rpm, key.tpm, defaults)]
    if principal.tenant_id is not None:
        scopes.append(LimitScope.for_tenant(principal.tenant_id, tenant.rpm, tenant.tpm))
    return scopes


def build_limiter(settings: Settings, client: RespClient | None = None) -> Limiter:
    """In-process buckets, or Redis ones (sharing `client` if given) with the configured failure mode."""
    limits = settings.limits
    if settings.redis_url is None and client is None:
        return Limiter(MemoryBuckets())
    stats = LimiterStats()
    shared = RedisBuckets(
        client or connect(settings.redis_url or "", limits.backend_timeout_s),
        timeout_s=limits.backend_timeout_s,
        close_client=client is None,
    )
    local = ScaledBuckets(MemoryBuckets(), limits.expected_replicas)
    return Limiter(FailoverBuckets(shared, local, limits.on_backend_error, stats), stats)


def startup_warning(workers: int, redis_url: str | None) -> str | None:
    """The warning to log at startup when several workers would each keep their own limits and cache."""
    if workers <= 1 or redis_url:
        return None
    return (
        f"{workers} workers share no state without AIGW_REDIS_URL: each keeps its own rate limits "
        f"(so up to {workers}x the configured limits are admitted) and its own response cache; "
        "set AIGW_REDIS_URL to share them"
    )


def format_reset(seconds: float) -> str:
    """A duration the way OpenAI's `x-ratelimit-reset-*` headers write it: `20ms`, `1s`, `6m0s`, `1.5s`."""
    ms = max(0, math.ceil(seconds * 1000))
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs = f"{ms / 1000:.3f}".rstrip("0").rstrip(".")
    return (f"{hours}h" if hours else "") + (f"{minutes}m" if hours or minutes else "") + f"{secs}s"


# --- internals ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Plan:
    """The buckets a set of scopes passes through, worked out once: each key and tenant repeats its
    scopes on every request, and only the token buckets' cost changes from one request to the next."""

    fixed: tuple[Bucket, ...]  # every bucket; request buckets with their cost of 1
    kinds: tuple[Kind, ...]
    whats: tuple[str, ...]
    tokens_at: tuple[int, ...]  # positions of the token buckets, charged per request

    @classmethod
    def of(cls, scopes: Sequence[LimitScope]) -> _Plan:
        buckets: list[Bucket] = []
        kinds: list[Kind] = []
        whats: list[str] = []
        seen: set[str] = set()
        for scope in scopes:
            for kind, limit in (("rpm", scope.rpm), ("tpm", scope.tpm)):
                key = f"{scope.name}:{kind}"
                if limit is None or key in seen:  # one bucket once, or a decision would charge it twice
                    continue
                seen.add(key)
                buckets.append(Bucket(key, limit, limit, 1))
                kinds.append(cast(Kind, kind))
                whats.append(scope.what)
        tokens_at = tuple(i for i, kind in enumerate(kinds) if kind == "tpm")
        return cls(tuple(buckets), tuple(kinds), tuple(whats), tokens_at)

    def buckets(self, tokens: int) -> tuple[Bucket, ...]:
        """The buckets with this request's costs: a token bucket is charged the estimate, at most its
        capacity (a larger request then waits for a full bucket instead of never passing)."""
        if not self.tokens_at:
            return self.fixed
        out = list(self.fixed)
        for i in self.tokens_at:
            b = out[i]
            out[i] = Bucket(b.key, b.capacity, b.per_minute, min(tokens, b.capacity))
        return tuple(out)


def _rejection(kinds: Sequence[Kind], whats: Sequence[str], states: Sequence[BucketState]) -> RateLimitError:
    denied = [(k, w, s) for k, w, s in zip(kinds, whats, states, strict=True) if s.retry_s != 0.0]
    waits = [s.retry_s for _, _, s in denied]
    # Whole seconds, rounded up: a client that honours Retry-After must find the bucket refilled.
    retry = None if None in waits else float(math.ceil(max(w for w in waits if w is not None)))
    kind, what, state = max(denied, key=lambda d: math.inf if d[2].retry_s is None else d[2].retry_s)
    unit = "requests" if kind == "rpm" else "tokens"
    when = f" Try again in {retry:.0f}s." if retry is not None else ""
    return RateLimitError(
        f"Rate limit reached for {what}: {state.limit} {unit} per minute.{when}",
        code="rate_limited" if any(k == "rpm" for k, _, _ in denied) else "tokens_rate_limited",
        retry_after=retry,
        headers={k.decode(): v.decode() for k, v in _headers(kinds, states)},
    )


def _headers(kinds: Sequence[Kind], states: Sequence[BucketState]) -> list[tuple[bytes, bytes]]:
    out: list[tuple[bytes, bytes]] = []
    for kind, unit in (("rpm", b"requests"), ("tpm", b"tokens")):
        tightest: BucketState | None = None
        for k, s in zip(kinds, states, strict=True):
            if k == kind and (
                tightest is None or (s.remaining, s.limit) < (tightest.remaining, tightest.limit)
            ):
                tightest = s
        if tightest is None:
            continue
        out.append((b"x-ratelimit-limit-" + unit, str(tightest.limit).encode()))
        out.append((b"x-ratelimit-remaining-" + unit, str(tightest.remaining).encode()))
        if tightest.reset_s is not None:
            out.append((b"x-ratelimit-reset-" + unit, format_reset(tightest.reset_s).encode()))
    return out
