"""Tenants and API keys in SQL: SQLite when embedded, PostgreSQL when replicas share state (CONTRACT §1, §5).

SQLAlchemy Core over a sync engine; code on the event loop calls in through `asyncio.to_thread`. Only the
admin API and an auth-cache miss ever reach this module, never a request whose key is cached.

Every public method maps SQLAlchemy's errors to the gateway's tree in one place (`_mapped`): an
unreachable database is a 503, a unique violation a 409. Money is stored as integer micro-dollars so
both backends keep it exact. Keys are stored only as their keyed hash plus a 4-character tail for display.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Engine,
    ForeignKey,
    Integer,
    MetaData,
    Row,
    Select,
    String,
    Table,
    Text,
    create_engine,
    event,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.pool import StaticPool

from ai_gateway.errors import ConflictError, ServiceUnavailableError, scrub
from ai_gateway.stores import migrate

__all__ = [
    "ApiKey",
    "BudgetPeriod",
    "KeySpec",
    "Limits",
    "Page",
    "SqlStore",
    "Tenant",
    "engine_url",
    "sqlite_file",
]

log = logging.getLogger("ai_gateway.stores")

BudgetPeriod = Literal["day", "month", "total"]
T = TypeVar("T")
_MICRO = Decimal(1_000_000)
_KEY_FIELDS = frozenset(
    {"name", "scopes", "models", "rpm", "tpm", "budget_usd", "budget_period", "expires_at", "cache"}
)

_metadata = MetaData()
_meta = Table(
    "gateway_meta",
    _metadata,
    Column("name", String(64), primary_key=True),
    Column("value", String(255), nullable=False),
)
_tenants = Table(
    "tenants",
    _metadata,
    Column("id", String(40), primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("rpm", Integer),
    Column("tpm", Integer),
    Column("budget_micro_usd", BigInteger),
    Column("budget_period", String(8)),
    Column("created_at", DateTime(timezone=True), nullable=False),
)
_keys = Table(
    "api_keys",
    _metadata,
    Column("id", String(40), primary_key=True),
    Column("tenant_id", String(40), ForeignKey("tenants.id"), nullable=False, index=True),
    Column("name", String(64), nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("key_prefix", String(16), nullable=False),
    Column("key_last4", String(4), nullable=False),
    Column("scopes", String(128), nullable=False),
    Column("models", Text),
    Column("rpm", Integer),
    Column("tpm", Integer),
    Column("budget_micro_usd", BigInteger),
    Column("budget_period", String(8)),
    Column("expires_at", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True)),
    Column("cache", Boolean, nullable=False, server_default=true()),  # migration 0003
)


@dataclass(frozen=True, slots=True)
class Limits:
    """Rate limits and budget of a tenant or a key; None means "not limited at this level"."""

    rpm: int | None = None
    tpm: int | None = None
    budget_usd: Decimal | None = None
    budget_period: BudgetPeriod | None = None


@dataclass(frozen=True, slots=True)
class Tenant:
    id: str
    name: str
    limits: Limits
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    tenant_id: str
    tenant_name: str
    name: str
    key_hash: str = field(repr=False)
    key_prefix: str
    key_last4: str
    scopes: tuple[str, ...]
    models: tuple[str, ...] | None  # None: every model and route
    limits: Limits
    expires_at: datetime | None
    created_at: datetime
    revoked_at: datetime | None
    cache: bool = True  # whether the response cache serves and stores this key's calls

    @property
    def display(self) -> str:
        return f"{self.key_prefix}...{self.key_last4}"


@dataclass(frozen=True, slots=True)
class KeySpec:
    """A key to create: its hash and display parts are computed by the caller, which alone sees the key."""

    tenant_id: str
    name: str
    key_hash: str = field(repr=False)
    key_prefix: str
    key_last4: str
    scopes: tuple[str, ...]
    models: tuple[str, ...] | None
    limits: Limits
    expires_at: datetime | None
    cache: bool = True


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    has_more: bool


def engine_url(url: str) -> str:
    """`postgresql://` and `postgres://` mean psycopg 3, the driver this package depends on."""
    scheme, sep, rest = url.partition("://")
    if sep and scheme.lower() in ("postgresql", "postgres"):
        return f"postgresql+psycopg://{rest}"
    return url


def sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite URL, or None for in-memory SQLite and other backends."""
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme.lower().startswith("sqlite"):
        return None
    path = rest[1:].partition("?")[0] if rest.startswith("/") else rest.partition("?")[0]
    return None if path in ("", ":memory:") else Path(path)


def _new_id(prefix: str) -> str:
    # Milliseconds first: ids sort by creation time, which is what the `after` cursor pages over.
    return f"{prefix}_{time.time_ns() // 1_000_000:012x}{secrets.token_hex(6)}"


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; everything written here is UTC.
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def _micro(usd: Decimal | None) -> int | None:
    return None if usd is None else int(usd * _MICRO)


def _limits(rpm: int | None, tpm: int | None, micro: int | None, period: Any) -> Limits:
    return Limits(rpm, tpm, None if micro is None else Decimal(micro) / _MICRO, period or None)


def _limit_columns(limits: Limits) -> dict[str, object]:
    return {
        "rpm": limits.rpm,
        "tpm": limits.tpm,
        "budget_micro_usd": _micro(limits.budget_usd),
        "budget_period": limits.budget_period,
    }


def _tenant(row: Row[Any]) -> Tenant:
    created = _utc(row.created_at)
    assert created is not None
    return Tenant(
        row.id, row.name, _limits(row.rpm, row.tpm, row.budget_micro_usd, row.budget_period), created
    )


def _key(row: Row[Any]) -> ApiKey:
    created = _utc(row.created_at)
    assert created is not None
    return ApiKey(
        id=row.id,
        tenant_id=row.tenant_id,
        tenant_name=row.tenant_name,
        name=row.name,
        key_hash=row.key_hash,
        key_prefix=row.key_prefix,
        key_last4=row.key_last4,
        scopes=tuple(row.scopes.split()),
        models=None if row.models is None else tuple(json.loads(row.models)),
        limits=_limits(row.rpm, row.tpm, row.budget_micro_usd, row.budget_period),
        expires_at=_utc(row.expires_at),
        created_at=created,
        revoked_at=_utc(row.revoked_at),
        cache=bool(row.cache),
    )


@contextmanager
def _mapped(action: str, conflict: str = "") -> Iterator[None]:
    """SQLAlchemy errors to the gateway's tree, once; the DSN and statement parameters never escape."""
    try:
        yield
    except IntegrityError as exc:
        raise ConflictError(conflict or f"{action} conflicts with existing data.") from exc
    except (DBAPIError, PoolTimeoutError) as exc:
        cause = scrub(str(getattr(exc, "orig", None) or exc).splitlines()[0], 200)
        log.warning("database unavailable during %s: %s: %s", action, type(exc).__name__, cause)
        raise ServiceUnavailableError(
            "The database is unreachable; try again shortly.", code="database_unavailable", retry_after=1
        ) from exc


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    # WAL lets the gateway read keys while the admin API (or another process) writes.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()


def _engine(url: str) -> Engine:
    url = engine_url(url)
    if url.lower().startswith("sqlite"):
        memory = sqlite_file(url) is None
        engine = create_engine(
            url,
            hide_parameters=True,
            connect_args={"check_same_thread": False, "timeout": 5},
            # In-memory SQLite is per connection: every thread must share the one connection.
            **({"poolclass": StaticPool} if memory else {}),
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(
        url,
        hide_parameters=True,
        pool_pre_ping=True,
        pool_size=5,
        max_overflow=5,
        pool_timeout=5,
        connect_args={"connect_timeout": 5},
    )


class SqlStore:
    def __init__(self, url: str) -> None:
        self._sqlite_file = sqlite_file(url)
        with _mapped("connecting"):
            self._engine = _engine(url)

    @property
    def sqlite_file(self) -> Path | None:
        return self._sqlite_file

    def upgrade(self) -> tuple[str | None, str]:
        """(revision before, revision now); see `migrate.upgrade`."""
        with _mapped("migrating the schema"):
            return migrate.upgrade(self._engine, self._sqlite_file)

    def close(self) -> None:
        self._engine.dispose()

    def ping(self) -> None:
        with _mapped("checking the database"), self._engine.connect() as conn:
            conn.execute(select(1)).scalar_one()

    def installation_id(self) -> str:
        with _mapped("reading the installation id"), self._engine.connect() as conn:
            value = conn.execute(select(_meta.c.value).where(_meta.c.name == "installation_id")).scalar()
        return str(value or "default")

    def has_keys(self) -> bool:
        """Revoked keys count: revoking every key must never reopen the gateway (CONTRACT §2)."""
        with _mapped("checking for keys"), self._engine.connect() as conn:
            return conn.execute(select(_keys.c.id).limit(1)).first() is not None

    # --- tenants -----------------------------------------------------------------------------------

    def create_tenant(self, name: str, limits: Limits) -> Tenant:
        values = {"id": _new_id("ten"), "name": name, "created_at": _now(), **_limit_columns(limits)}
        conflict = f"A tenant named '{name}' already exists."
        with _mapped("creating a tenant", conflict), self._engine.begin() as conn:
            conn.execute(_tenants.insert().values(values))
            row = conn.execute(select(_tenants).where(_tenants.c.id == values["id"])).one()
        return _tenant(row)

    def find_tenant(self, ref: str) -> Tenant | None:
        """By id, else by name (a name can never look like an id: the admin API forbids the prefix)."""
        query = select(_tenants).where(or_(_tenants.c.id == ref, _tenants.c.name == ref))
        with _mapped("reading a tenant"), self._engine.connect() as conn:
            rows = sorted(conn.execute(query).all(), key=lambda r: r.id != ref)
        return _tenant(rows[0]) if rows else None

    def list_tenants(self, limit: int, after: str | None = None) -> Page[Tenant]:
        query = select(_tenants).order_by(_tenants.c.id).limit(limit + 1)
        if after:
            query = query.where(_tenants.c.id > after)
        with _mapped("listing tenants"), self._engine.connect() as conn:
            rows = conn.execute(query).all()
        return Page([_tenant(r) for r in rows[:limit]], len(rows) > limit)

    # --- keys --------------------------------------------------------------------------------------

    def _key_query(self) -> Select[Any]:
        return select(_keys, _tenants.c.name.label("tenant_name")).join(
            _tenants, _tenants.c.id == _keys.c.tenant_id
        )

    def create_key(self, spec: KeySpec) -> ApiKey:
        key_id = _new_id("key")
        values = {
            "id": key_id,
            "tenant_id": spec.tenant_id,
            "name": spec.name,
            "key_hash": spec.key_hash,
            "key_prefix": spec.key_prefix,
            "key_last4": spec.key_last4,
            "scopes": " ".join(spec.scopes),
            "models": None if spec.models is None else json.dumps(list(spec.models)),
            "expires_at": spec.expires_at,
            "cache": spec.cache,
            "created_at": _now(),
            **_limit_columns(spec.limits),
        }
        with _mapped("creating a key"), self._engine.begin() as conn:
            conn.execute(_keys.insert().values(values))
            row = conn.execute(self._key_query().where(_keys.c.id == key_id)).one()
        return _key(row)

    def get_key(self, key_id: str) -> ApiKey | None:
        with _mapped("reading a key"), self._engine.connect() as conn:
            row = conn.execute(self._key_query().where(_keys.c.id == key_id)).first()
        return None if row is None else _key(row)

    def key_by_hash(self, key_hash: str) -> tuple[ApiKey, Tenant] | None:
        """The auth-cache-miss lookup: one indexed query by the keyed hash, never by the key itself."""
        query = self._key_query().add_columns(
            _tenants.c.rpm.label("t_rpm"),
            _tenants.c.tpm.label("t_tpm"),
            _tenants.c.budget_micro_usd.label("t_budget"),
            _tenants.c.budget_period.label("t_period"),
            _tenants.c.created_at.label("t_created"),
        )
        with _mapped("looking up a key"), self._engine.connect() as conn:
            row = conn.execute(query.where(_keys.c.key_hash == key_hash)).first()
        if row is None:
            return None
        created = _utc(row.t_created)
        assert created is not None
        limits = _limits(row.t_rpm, row.t_tpm, row.t_budget, row.t_period)
        return _key(row), Tenant(row.tenant_id, row.tenant_name, limits, created)

    def list_keys(self, limit: int, after: str | None = None, tenant_id: str | None = None) -> Page[ApiKey]:
        query = self._key_query().order_by(_keys.c.id).limit(limit + 1)
        if after:
            query = query.where(_keys.c.id > after)
        if tenant_id:
            query = query.where(_keys.c.tenant_id == tenant_id)
        with _mapped("listing keys"), self._engine.connect() as conn:
            rows = conn.execute(query).all()
        return Page([_key(r) for r in rows[:limit]], len(rows) > limit)

    def update_key(self, key_id: str, changes: Mapping[str, Any]) -> ApiKey | None:
        """Apply `changes` (fields of `_KEY_FIELDS`); a revoked key is final and cannot be edited."""
        unknown = set(changes) - _KEY_FIELDS
        if unknown:
            raise ValueError(f"not editable: {sorted(unknown)}")  # a caller bug, not user input
        values = {k: v for k, v in changes.items() if k not in ("budget_usd", "models", "scopes")}
        if "budget_usd" in changes:
            values["budget_micro_usd"] = _micro(changes["budget_usd"])
        if "scopes" in changes:
            values["scopes"] = " ".join(changes["scopes"])
        if "models" in changes:
            models: Sequence[str] | None = changes["models"]
            values["models"] = None if models is None else json.dumps(list(models))
        with _mapped("updating a key"), self._engine.begin() as conn:
            row = conn.execute(self._key_query().where(_keys.c.id == key_id)).first()
            if row is None:
                return None
            if row.revoked_at is not None:
                raise ConflictError("The key is revoked; revoked keys cannot be edited.", code="key_revoked")
            if values:
                conn.execute(update(_keys).where(_keys.c.id == key_id).values(values))
            row = conn.execute(self._key_query().where(_keys.c.id == key_id)).one()
        return _key(row)

    def revoke_key(self, key_id: str) -> ApiKey | None:
        """Idempotent: revoking a revoked key keeps its first `revoked_at`."""
        with _mapped("revoking a key"), self._engine.begin() as conn:
            conn.execute(
                update(_keys)
                .where(_keys.c.id == key_id, _keys.c.revoked_at.is_(None))
                .values(revoked_at=_now())
            )
            row = conn.execute(self._key_query().where(_keys.c.id == key_id)).first()
        return None if row is None else _key(row)
