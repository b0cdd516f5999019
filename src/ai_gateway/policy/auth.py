"""API keys, scopes and the authenticator (CONTRACT §2 open mode, §5).

- A key is `sk-aigw-` + 32 random bytes in urlsafe base64 (43 characters). The database holds only
  HMAC-SHA256(hashing secret, key) and its last 4 characters; lookups go by that hash through a unique
  index, and the found hash is compared again with `hmac.compare_digest`. The master key is compared
  the same way (hash, then constant-time compare), so neither its content nor its length leaks in time.
- Successful lookups are cached per replica (bounded LRU, `AIGW_AUTH_CACHE_TTL_S`), so a request with a
  cached key never touches the database; every change to a key clears it locally and, with Redis, on
  every replica (`stores/revocations.py`). A lookup that raced a change is not cached (generation check).
- Open mode: no master key and no key in the database. Requests then need no key and any key sent is
  ignored; the admin scope is granted to loopback clients only. Creating the first key ends open mode
  for good (revoked keys still count), on every replica.
- A database that cannot be reached on a cache miss is a 503 `auth_unavailable`, never a 401 or a pass.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import ipaddress
import logging
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Literal, Protocol

from ai_gateway.errors import AuthenticationError, PermissionDeniedError, ServiceUnavailableError
from ai_gateway.settings import ConfigError, ConfigProblem
from ai_gateway.stores.revocations import ALL_KEYS, RedisRevocations
from ai_gateway.stores.sql import ApiKey, Limits, Tenant

__all__ = [
    "ENDPOINT_SCOPES",
    "KEY_PREFIX",
    "PRINCIPAL",
    "SCOPES",
    "Authenticator",
    "KeyStore",
    "Principal",
    "generate_key",
    "hash_key",
    "load_hash_secret",
    "matches",
    "principal_of",
    "require",
    "required_scopes",
]

log = logging.getLogger("ai_gateway.auth")

KEY_PREFIX = "sk-aigw-"
SCOPES = ("admin", "chat", "models", "usage:read")
PRINCIPAL = "ai_gateway.principal"  # where the ASGI scope carries the authenticated caller

# Which scope each endpoint needs (any one of those listed; `admin` implies all). `()` means public: no
# key is looked at. A path under a listed one inherits its scopes; any other path needs `admin`, so a
# route added without an entry here is closed rather than open.
ENDPOINT_SCOPES: Mapping[str, tuple[str, ...]] = {
    "/v1/chat": ("chat",),
    "/v1/chat/completions": ("chat",),
    "/v1/messages": ("chat",),
    # A chat key may list what it can call: SDKs and chat UIs list models before the first call.
    "/v1/models": ("models", "chat"),
    "/v1/usage": ("usage:read",),
    "/admin": ("admin",),
    "/docs": ("admin",),
    "/openapi.json": ("admin",),
    "/healthz": (),
    "/readyz": (),
}

_KEY_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
_KEY_LEN = len(KEY_PREFIX) + 43
_MAX_TOKEN_CHARS = 512
_MISS_TTL_S = 30.0
_SECRET_FILE_SUFFIX = ".key-hash-secret"  # noqa: S105 - a file name, not a secret
_OPEN_POLL_S = 1.0


def generate_key() -> str:
    return KEY_PREFIX + base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")


def hash_key(secret: bytes, key: str) -> str:
    return hmac.new(secret, key.encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()


def _well_formed(token: str) -> bool:
    return len(token) == _KEY_LEN and token.startswith(KEY_PREFIX) and set(token[8:]) <= _KEY_CHARS


def matches(patterns: tuple[str, ...] | None, name: str) -> bool:
    """fnmatch-style, case-sensitive (`ollama/*`); None allows everything."""
    return patterns is None or _matches(patterns, name)


@functools.lru_cache(maxsize=4096)  # on every call: fnmatch translates patterns to regexes each time
def _matches(patterns: tuple[str, ...], name: str) -> bool:
    return any(fnmatchcase(name, p) for p in patterns)


@functools.lru_cache(maxsize=512)  # pure; paths are client-chosen, so the memo is bounded
def required_scopes(path: str) -> tuple[str, ...]:
    """The scopes that open `path` (see ENDPOINT_SCOPES). Case and repeated slashes are folded first,
    so `/ADMIN/keys` or `//admin` can never dodge the admin check (they then 404 as unknown paths)."""
    norm = "/" + "/".join(part for part in path.lower().split("/") if part)
    while True:
        scopes = ENDPOINT_SCOPES.get(norm)
        if scopes is not None:
            return scopes
        if norm in ("/", ""):
            return ("admin",)
        norm = norm.rpartition("/")[0] or "/"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling, and what they may do; limits are exposed for the limits and budget issues."""

    kind: Literal["key", "master", "open"]
    scopes: frozenset[str]
    key_id: str | None = None
    key_name: str | None = None
    tenant_id: str | None = None
    tenant_name: str | None = None
    models: tuple[str, ...] | None = None
    key_limits: Limits = field(default_factory=Limits)
    tenant_limits: Limits = field(default_factory=Limits)
    expires_at: datetime | None = None
    cache: bool = True  # the key's switch for the response cache (the master key and open mode: on)

    def has_scope(self, accepted: Iterable[str]) -> bool:
        return "admin" in self.scopes or any(s in self.scopes for s in accepted)

    def may_use(self, name: str) -> bool:
        return matches(self.models, name)


_MASTER = Principal("master", frozenset(SCOPES))
_OPEN_LOCAL = Principal("open", frozenset(SCOPES))
_OPEN_REMOTE = Principal("open", frozenset(SCOPES) - {"admin"})


def principal_of(scope: Mapping[str, Any]) -> Principal | None:
    found = scope.get(PRINCIPAL)
    return found if isinstance(found, Principal) else None


def _principal(key: ApiKey, tenant: Tenant) -> Principal:
    return Principal(
        kind="key",
        scopes=frozenset(key.scopes),
        key_id=key.id,
        key_name=key.name,
        tenant_id=tenant.id,
        tenant_name=tenant.name,
        models=key.models,
        key_limits=key.limits,
        tenant_limits=tenant.limits,
        expires_at=key.expires_at,
        cache=key.cache,
    )


class KeyStore(Protocol):
    def key_by_hash(self, key_hash: str) -> tuple[ApiKey, Tenant] | None: ...
    def has_keys(self) -> bool: ...


def load_hash_secret(configured: str | None, sqlite_file: Path | None) -> bytes:
    """The configured secret; else (embedded SQLite) the one in a 0600 file next to the database,
    created on first start; else (in-memory SQLite) a per-process one. PostgreSQL without a configured
    secret never gets here: settings refuse it, since replicas must agree on the secret."""
    if configured:
        return configured.encode()
    if sqlite_file is None:
        return secrets.token_bytes(32)
    path = sqlite_file.with_name(sqlite_file.name + _SECRET_FILE_SUFFIX)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if path.stat().st_mode & 0o077:
            log.warning("%s is readable by other users; chmod 600 it", path)
        secret = path.read_text().strip()
        if len(secret) < 32:
            fix = "restore it from a backup (or delete it if no key was ever issued), then restart"
            raise ConfigError([ConfigProblem(str(path), "is empty or truncated", fix)]) from None
        return secret.encode()
    secret = secrets.token_hex(32)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret + "\n")
    log.info("generated the key hashing secret in %s (keep it with the database)", path)
    return secret.encode()


def _is_loopback(client: Sequence[Any] | None) -> bool:
    if not client:
        return False
    try:
        return ipaddress.ip_address(str(client[0])).is_loopback
    except ValueError:
        return False


def _invalid() -> AuthenticationError:
    # One message for unknown, expired and revoked: the key is never echoed (LiteLLM #18902).
    return AuthenticationError("Invalid API key: it is unknown, expired or revoked.")


def _credential(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    found: set[str] = set()
    for name, raw in headers:
        if name == b"authorization":
            scheme, _, token = raw.decode("latin-1").strip().partition(" ")
            if scheme.lower() != "bearer":
                raise AuthenticationError(
                    "Send the key as 'Authorization: Bearer KEY' or 'x-api-key: KEY'.",
                    code="invalid_authorization",
                )
            found.add(token.strip())
        elif name == b"x-api-key" and raw.strip():
            found.add(raw.decode("latin-1").strip())
    if len(found) > 1:
        raise AuthenticationError(
            "The request carries more than one different API key; send exactly one.",
            code="conflicting_api_keys",
        )
    return found.pop() if found else None


class Authenticator:
    def __init__(
        self,
        store: KeyStore,
        secret: bytes,
        master_key: str | None,
        *,
        ttl_s: float = 10.0,
        max_entries: int = 10_000,
        feed: RedisRevocations | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._secret = secret
        self._master = hash_key(secret, master_key) if master_key else None
        self._ttl = ttl_s
        self._max = max_entries
        self._feed = feed
        self._clock = clock
        self._hits: OrderedDict[str, tuple[Principal, float]] = OrderedDict()
        self._misses: OrderedDict[str, float] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[tuple[ApiKey, Tenant] | None]] = {}
        self._generation = 0
        self._tasks: list[asyncio.Task[None]] = []
        self.open_mode = False

    def load(self) -> None:
        """Read whether any key exists (blocking; once, at start)."""
        self.open_mode = self._master is None and not self._store.has_keys()

    def digest(self, key: str) -> str:
        return hash_key(self._secret, key)

    async def start(self) -> None:
        if self._feed is not None:
            self._tasks.append(asyncio.create_task(self._feed.watch(self._on_change)))
        if self.open_mode:
            # Another process on the same database may create the first key; notice it without Redis.
            self._tasks.append(asyncio.create_task(self._watch_open_mode()))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._feed is not None:
            await self._feed.close()

    # --- changes -----------------------------------------------------------------------------------

    async def key_changed(self, key_id: str) -> bool:
        """A key was created, edited or revoked here: forget it now, then tell the other replicas."""
        self.open_mode = False
        self._on_change(key_id)
        return await self._feed.publish(key_id) if self._feed is not None else True

    def _on_change(self, key_id: str) -> None:
        self._generation += 1
        self._misses.clear()
        self._inflight.clear()
        if key_id == ALL_KEYS:
            self._hits.clear()
        else:
            for digest in [d for d, (p, _) in self._hits.items() if p.key_id == key_id]:
                del self._hits[digest]
        if self.open_mode:
            self._tasks = [t for t in self._tasks if not t.done()]
            self._tasks.append(asyncio.create_task(self._recheck_open_mode()))

    async def _recheck_open_mode(self) -> None:
        try:
            if await asyncio.to_thread(self._store.has_keys):
                self.open_mode = False
                log.warning("a key now exists: open mode is over, requests need a key")
        except ServiceUnavailableError:
            pass  # the next change or poll tries again

    async def _watch_open_mode(self) -> None:
        while self.open_mode:
            await asyncio.sleep(_OPEN_POLL_S)
            await self._recheck_open_mode()

    # --- the check on every request ----------------------------------------------------------------

    async def authenticate(
        self, headers: Iterable[tuple[bytes, bytes]], client: Sequence[Any] | None
    ) -> Principal:
        if self.open_mode:
            return _OPEN_LOCAL if _is_loopback(client) else _OPEN_REMOTE
        token = _credential(headers)
        if not token:
            raise AuthenticationError(
                "Missing API key: send 'Authorization: Bearer KEY' or 'x-api-key: KEY'.",
                code="missing_api_key",
            )
        if len(token) > _MAX_TOKEN_CHARS:
            raise _invalid()
        digest = self.digest(token)
        if self._master is not None and hmac.compare_digest(digest, self._master):
            return _MASTER
        if not _well_formed(token):
            raise _invalid()
        now = self._clock()
        principal = self._cached(digest, now)
        if principal is None:
            principal = await self._lookup(digest, now)
        expires = principal.expires_at
        if expires is not None and expires <= datetime.now(UTC):
            raise _invalid()
        return principal

    def _cached(self, digest: str, now: float) -> Principal | None:
        hit = self._hits.get(digest)
        if hit is not None:
            if now - hit[1] < self._ttl:
                self._hits.move_to_end(digest)
                return hit[0]
            del self._hits[digest]
        missed = self._misses.get(digest)
        if missed is not None and now - missed < _MISS_TTL_S:
            raise _invalid()
        return None

    async def _lookup(self, digest: str, now: float) -> Principal:
        generation = self._generation
        pending = self._inflight.get(digest)
        if pending is None:
            # Concurrent misses on one key share one query (a cold cache under load is a herd).
            pending = asyncio.ensure_future(asyncio.to_thread(self._store.key_by_hash, digest))
            self._inflight[digest] = pending
            pending.add_done_callback(lambda _f: self._inflight.pop(digest, None))
        try:
            found = await asyncio.shield(pending)
        except ServiceUnavailableError as exc:
            raise ServiceUnavailableError(
                "Cannot check the API key: the key database is unreachable. Try again shortly.",
                code="auth_unavailable",
                retry_after=1,
            ) from exc
        fresh = generation == self._generation  # no change raced this lookup
        if found is None or not hmac.compare_digest(found[0].key_hash, digest) or found[0].revoked_at:
            if fresh:
                self._remember(self._misses, digest, now)
            raise _invalid()
        principal = _principal(*found)
        if fresh and self._ttl > 0:
            self._remember(self._hits, digest, (principal, now))
        return principal

    def _remember(self, table: OrderedDict[str, Any], digest: str, value: Any) -> None:
        table[digest] = value
        table.move_to_end(digest)
        while len(table) > self._max:
            table.popitem(last=False)


def require(principal: Principal, accepted: tuple[str, ...]) -> None:
    """403 unless the principal holds one of the `accepted` scopes (from `required_scopes`)."""
    if accepted and not principal.has_scope(accepted):
        if principal.kind == "open":
            raise PermissionDeniedError(
                "In open mode (no AIGW_MASTER_KEY and no key yet) the admin API answers loopback clients "
                "only; set AIGW_MASTER_KEY to administer the gateway remotely.",
                code="insufficient_scope",
            )
        raise PermissionDeniedError(
            f"This API key lacks the scope this endpoint needs: {' or '.join(accepted)}.",
            code="insufficient_scope",
        )
