"""policy/auth.py: key format, keyed hashing, patterns, the scope table, the authenticator's cache and
header handling (unit), and open mode through real gateway processes (CONTRACT §2)."""

from __future__ import annotations

import ast
import asyncio
import hashlib
import hmac
import inspect
import stat
import subprocess
import sys
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from ai_gateway.errors import AuthenticationError, PermissionDeniedError, ServiceUnavailableError
from ai_gateway.policy import auth as auth_module
from ai_gateway.policy.auth import (
    ENDPOINT_SCOPES,
    KEY_PREFIX,
    SCOPES,
    Authenticator,
    Principal,
    generate_key,
    hash_key,
    load_hash_secret,
    matches,
    require,
    required_scopes,
)
from ai_gateway.settings import ConfigError
from ai_gateway.stores.sql import ApiKey, Limits, Tenant
from tests.support import free_port, gateway_env, http, start_gateway

SECRET = b"s" * 32
NOW = datetime.now(UTC)


# --- keys, hashing, patterns, scopes --------------------------------------------------------------------


def test_key_format_is_prefix_and_32_random_bytes() -> None:
    keys = {generate_key() for _ in range(200)}
    assert len(keys) == 200
    for key in keys:
        assert key.startswith(KEY_PREFIX) and len(key) == len(KEY_PREFIX) + 43
        assert set(key[len(KEY_PREFIX) :]) <= set(
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        )


def test_hash_is_hmac_sha256_keyed_by_the_secret() -> None:
    key = generate_key()
    assert hash_key(SECRET, key) == hmac.new(SECRET, key.encode(), hashlib.sha256).hexdigest()
    assert hash_key(SECRET, key) != hash_key(b"t" * 32, key)
    assert hash_key(SECRET, key) != hashlib.sha256(key.encode()).hexdigest()
    assert key not in hash_key(SECRET, key)


@pytest.mark.parametrize(
    ("patterns", "name", "allowed"),
    [
        (None, "anything/at-all", True),
        (("ollama/*",), "ollama/llama3.2", True),
        (("ollama/*",), "openai/gpt-4o-mini", False),
        (("ollama/*",), "ollama", False),
        (("ollama/*",), "OLLAMA/llama3.2", False),  # case-sensitive, like model names
        (("openrouter/meta-llama/*",), "openrouter/meta-llama/llama-3.1-8b-instruct:free", True),
        (("openai/gpt-4o-mini", "default"), "default", True),
        (("openai/gpt-4o-?ini",), "openai/gpt-4o-mini", True),
        (("*",), "openai/gpt-4o", True),
        (("open*",), "openrouter/x", True),
    ],
)
def test_model_patterns_are_fnmatch_style(patterns: tuple[str, ...] | None, name: str, allowed: bool) -> None:
    assert matches(patterns, name) is allowed
    assert Principal("key", frozenset({"chat"}), models=patterns).may_use(name) is allowed


def test_endpoint_scope_table() -> None:
    assert required_scopes("/v1/chat/completions") == ("chat",)
    assert required_scopes("/v1/messages") == ("chat",)
    assert required_scopes("/v1/models") == ("models", "chat")
    assert required_scopes("/v1/usage") == ("usage:read",)
    assert required_scopes("/healthz") == required_scopes("/readyz") == ()
    for path in (
        "/admin/keys",
        "/admin/anything/else",
        "/docs",
        "/openapi.json",
        "/ADMIN/keys",
        "//admin//keys",
    ):
        assert required_scopes(path) == ("admin",), path
    # Unlisted paths are closed, not open: a route added without an entry needs admin.
    assert required_scopes("/v1/new-thing") == required_scopes("/metrics") == ("admin",)
    assert set(SCOPES) == {"chat", "models", "usage:read", "admin"}
    assert all(set(scopes) <= set(SCOPES) for scopes in ENDPOINT_SCOPES.values())


def test_admin_implies_every_scope_and_require_says_what_is_missing() -> None:
    admin = Principal("key", frozenset({"admin"}))
    chat = Principal("key", frozenset({"chat"}))
    for path in ENDPOINT_SCOPES:
        require(admin, required_scopes(path))
    require(chat, required_scopes("/v1/models"))
    with pytest.raises(PermissionDeniedError) as err:
        require(chat, required_scopes("/admin/keys"))
    assert err.value.status == 403 and "admin" in err.value.message


def test_secrets_are_compared_only_in_constant_time() -> None:
    """S-02: no `==`/`!=` in the auth module touches a digest, a hash, a key or the master."""
    tree = ast.parse(inspect.getsource(auth_module))
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and any(isinstance(op, (ast.Eq, ast.NotEq)) for op in node.ops):
            for operand in (node.left, *node.comparators):
                if isinstance(operand, ast.Call) and getattr(operand.func, "id", "") == "len":
                    continue  # a length is public: every key has the same one
                text = ast.unparse(operand).lower()
                assert not any(w in text for w in ("digest", "hash", "master", "token", "secret")), text


# --- the authenticator ------------------------------------------------------------------------------------


def _key(key_hash: str, **changes: object) -> tuple[ApiKey, Tenant]:
    tenant = Tenant("ten_1", "acme", Limits(rpm=60), NOW)
    key = ApiKey(
        id="key_1",
        tenant_id=tenant.id,
        tenant_name=tenant.name,
        name="bot",
        key_hash=key_hash,
        key_prefix=KEY_PREFIX,
        key_last4="abcd",
        scopes=("chat",),
        models=("ollama/*",),
        limits=Limits(rpm=5, budget_usd=None),
        expires_at=None,
        created_at=NOW,
        revoked_at=None,
    )
    return replace(key, **changes), tenant  # type: ignore[arg-type]


class FakeStore:
    def __init__(self) -> None:
        self.rows: dict[str, tuple[ApiKey, Tenant]] = {}
        self.lookups = 0
        self.down = False
        self.gate: threading.Event | None = None

    def add(self, secret: bytes = SECRET, **changes: object) -> str:
        key = generate_key()
        digest = hash_key(secret, key)
        self.rows[digest] = _key(digest, **changes)
        return key

    def key_by_hash(self, key_hash: str) -> tuple[ApiKey, Tenant] | None:
        self.lookups += 1
        if self.gate is not None:
            self.gate.wait(5)
        if self.down:
            raise ServiceUnavailableError("db down", code="database_unavailable")
        return self.rows.get(key_hash)

    def has_keys(self) -> bool:
        return bool(self.rows)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _auth(store: FakeStore, master: str | None = None, **kw: object) -> Authenticator:
    auth = Authenticator(store, SECRET, master, **kw)  # type: ignore[arg-type]
    auth.load()
    return auth


def _bearer(key: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", f"Bearer {key}".encode())]


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_valid_key_gives_a_principal_with_tenant_and_limits() -> None:
    store = FakeStore()
    key = store.add()
    principal = run(_auth(store).authenticate(_bearer(key), ("10.0.0.1", 1)))
    assert isinstance(principal, Principal)
    assert (principal.kind, principal.key_id, principal.tenant_id, principal.tenant_name) == (
        "key",
        "key_1",
        "ten_1",
        "acme",
    )
    assert principal.scopes == {"chat"} and principal.models == ("ollama/*",)
    assert principal.key_limits.rpm == 5 and principal.tenant_limits.rpm == 60


def test_cache_hit_skips_the_store_until_the_ttl_passes() -> None:
    store, clock = FakeStore(), Clock()
    key = store.add()
    auth = _auth(store, ttl_s=10.0, clock=clock)

    async def go() -> None:
        for _ in range(50):
            await auth.authenticate([(b"x-api-key", key.encode())], None)
        assert store.lookups == 1
        clock.now += 10.5
        await auth.authenticate(_bearer(key), None)
        assert store.lookups == 2

    run(go())


def test_cache_is_bounded_lru() -> None:
    store = FakeStore()
    keys = [store.add() for _ in range(5)]
    auth = _auth(store, max_entries=3)

    async def go() -> None:
        for key in keys:
            await auth.authenticate(_bearer(key), None)
        assert len(auth._hits) == 3
        await auth.authenticate(_bearer(keys[0]), None)  # evicted: looked up again
        assert store.lookups == 6

    run(go())


def test_change_evicts_now_and_a_lookup_racing_a_change_is_not_cached() -> None:
    store = FakeStore()
    key = store.add()
    digest = hash_key(SECRET, key)
    auth = _auth(store)

    async def go() -> None:
        await auth.authenticate(_bearer(key), None)
        store.rows[digest] = _key(digest, revoked_at=NOW)
        await auth.key_changed("key_1")
        with pytest.raises(AuthenticationError):
            await auth.authenticate(_bearer(key), None)
        # A lookup that started before a change must not repopulate the cache with what it read.
        store.rows[digest] = _key(digest)
        auth._on_change("*")
        store.gate = threading.Event()
        pending = asyncio.create_task(auth.authenticate(_bearer(key), None))
        await asyncio.sleep(0.05)
        auth._on_change("*")
        store.gate.set()
        await pending
        assert digest not in auth._hits

    run(go())


def test_concurrent_misses_share_one_lookup() -> None:
    store = FakeStore()
    key = store.add()
    auth = _auth(store)
    store.gate = threading.Event()

    async def go() -> None:
        tasks = [asyncio.create_task(auth.authenticate(_bearer(key), None)) for _ in range(20)]
        await asyncio.sleep(0.05)
        store.gate.set()  # type: ignore[union-attr]
        results = await asyncio.gather(*tasks)
        assert all(r.key_id == "key_1" for r in results)

    run(go())
    assert store.lookups == 1


@pytest.mark.parametrize(
    "changes",
    [{"revoked_at": NOW}, {"expires_at": NOW - timedelta(seconds=1)}],
    ids=["revoked", "expired"],
)
def test_revoked_and_expired_keys_are_401_with_one_message(changes: dict[str, object]) -> None:
    store = FakeStore()
    key = store.add(**changes)
    with pytest.raises(AuthenticationError) as err:
        run(_auth(store).authenticate(_bearer(key), None))
    assert err.value.status == 401 and err.value.code == "invalid_api_key"
    assert key not in err.value.message


def test_a_cached_key_that_expires_is_refused_without_asking_the_store() -> None:
    store = FakeStore()
    key = store.add(expires_at=datetime.now(UTC) + timedelta(seconds=0.3))
    auth = _auth(store)

    async def go() -> None:
        await auth.authenticate(_bearer(key), None)
        await asyncio.sleep(0.35)
        with pytest.raises(AuthenticationError):
            await auth.authenticate(_bearer(key), None)

    run(go())
    assert store.lookups == 1


def test_unknown_keys_are_remembered_briefly_and_malformed_ones_never_reach_the_store() -> None:
    store = FakeStore()
    store.add()
    auth = _auth(store)
    unknown = generate_key()
    for _ in range(3):
        with pytest.raises(AuthenticationError):
            run(auth.authenticate(_bearer(unknown), None))
    assert store.lookups == 1
    for token in (
        "' OR '1'='1",
        "sk-x'; DROP TABLE api_keys;--",
        "sk-aigw-short",
        "x" * 10_000,
        "sk-aigw-" + "é" * 43,
    ):
        with pytest.raises(AuthenticationError):
            run(auth.authenticate(_bearer(token), None))
    assert store.lookups == 1


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ([], "missing_api_key"),
        ([(b"authorization", b"Basic dXNlcjpwYXNz")], "invalid_authorization"),
        ([(b"authorization", b"Bearer")], "missing_api_key"),
        ([(b"authorization", b"Bearer a"), (b"authorization", b"Bearer b")], "conflicting_api_keys"),
        ([(b"authorization", b"Bearer a"), (b"x-api-key", b"b")], "conflicting_api_keys"),
    ],
)
def test_header_forms_that_are_refused(headers: list[tuple[bytes, bytes]], code: str) -> None:
    store = FakeStore()
    store.add()
    with pytest.raises(AuthenticationError) as err:
        run(_auth(store).authenticate(headers, None))
    assert err.value.code == code


def test_same_key_in_both_headers_and_any_bearer_case_are_accepted() -> None:
    store = FakeStore()
    key = store.add()
    auth = _auth(store)
    both = [(b"authorization", f"bearer {key}".encode()), (b"x-api-key", key.encode())]
    assert run(auth.authenticate(both, None)).key_id == "key_1"  # type: ignore[attr-defined]


def test_master_key_has_every_scope_and_no_tenant() -> None:
    store = FakeStore()
    principal = run(_auth(store, master="m" * 40).authenticate(_bearer("m" * 40), None))
    assert isinstance(principal, Principal)
    assert principal.kind == "master" and principal.scopes == set(SCOPES) and principal.tenant_id is None
    assert store.lookups == 0
    with pytest.raises(AuthenticationError):
        run(_auth(store, master="m" * 40).authenticate(_bearer("m" * 39), None))


def test_store_down_on_a_miss_is_503_never_401_or_a_pass_but_cached_keys_still_work() -> None:
    store = FakeStore()
    cached, uncached = store.add(), store.add()
    auth = _auth(store)

    async def go() -> None:
        await auth.authenticate(_bearer(cached), None)
        store.down = True
        assert (await auth.authenticate(_bearer(cached), None)).key_id == "key_1"
        with pytest.raises(ServiceUnavailableError) as err:
            await auth.authenticate(_bearer(uncached), None)
        assert err.value.code == "auth_unavailable" and err.value.status == 503

    run(go())


def test_open_mode_ignores_keys_and_grants_admin_to_loopback_only() -> None:
    store = FakeStore()
    auth = _auth(store)
    assert auth.open_mode
    local = run(auth.authenticate(_bearer("junk"), ("127.0.0.1", 5000)))
    remote = run(auth.authenticate([], ("192.0.2.7", 5000)))
    assert isinstance(local, Principal) and isinstance(remote, Principal)
    assert "admin" in local.scopes and "admin" not in remote.scopes and "chat" in remote.scopes
    assert not _auth(store, master="m" * 40).open_mode  # a master key ends open mode
    store.add(revoked_at=NOW)
    assert not _auth(store).open_mode  # so does any key, even a revoked one


def test_hashing_secret_file_is_created_once_with_mode_0600(tmp_path: Path) -> None:
    db = tmp_path / "gw.db"
    first = load_hash_secret(None, db)
    path = tmp_path / "gw.db.key-hash-secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_hash_secret(None, db) == first and len(first) == 64
    assert load_hash_secret("configured-secret-" + "x" * 20, db) == b"configured-secret-" + b"x" * 20
    assert load_hash_secret(None, None) != load_hash_secret(None, None)  # in-memory: per process
    path.write_text("")
    with pytest.raises(ConfigError) as err:
        load_hash_secret(None, db)
    assert str(path) in str(err.value)


# --- open mode, through real processes -------------------------------------------------------------------


def test_open_mode_end_to_end(tmp_path: Path, upstreams: object) -> None:
    env = upstreams.env()  # type: ignore[attr-defined]
    gw = start_gateway(tmp_path, env, name="open")
    try:
        assert "open mode" in gw.log()
        chat = {"prompt": "hi", "model": "ollama/llama3.2"}
        assert http("POST", gw.url + "/v1/chat", chat).status == 200
        bogus = {"authorization": "Bearer sk-whatever-the-sdk-sends"}
        assert http("POST", gw.url + "/v1/chat", chat, headers=bogus).status == 200  # ignored
        assert http("GET", gw.url + "/admin/keys").status == 200  # loopback client
        tenant = http("POST", gw.url + "/admin/tenants", {"name": "first"}).json()
        created = http(
            "POST", gw.url + "/admin/keys", {"tenant": tenant["id"], "name": "k", "scopes": ["admin"]}
        )
        key = created.json()["key"]
        # The first key ends open mode at once, for good.
        refused = http("POST", gw.url + "/v1/chat", chat)
        assert refused.status == 401 and refused.headers["www-authenticate"] == 'Bearer realm="ai-gateway"'
        assert http("POST", gw.url + "/v1/chat", chat, headers={"x-api-key": key}).status == 200
        assert (
            http("DELETE", gw.url + f"/admin/keys/{created.json()['id']}", headers={"x-api-key": key}).status
            == 200
        )
        assert http("POST", gw.url + "/v1/chat", chat).status == 401  # revoked keys still count
    finally:
        gw.stop()
    # Restarted on the same database: still closed, and now free to bind a public address.
    gw = start_gateway(tmp_path, env, ["--host", "0.0.0.0"], name="closed")
    try:
        assert "open mode" not in gw.log()
        assert http("GET", gw.url + "/v1/models").status == 401
    finally:
        gw.stop()


def test_open_mode_refuses_a_public_address_unless_allowed(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "ai_gateway", "serve", "--host", "0.0.0.0", "--port", str(free_port())]
    done = subprocess.run(cmd, env=gateway_env({}, tmp_path), cwd=tmp_path, capture_output=True, timeout=60)
    assert done.returncode == 2
    assert b"refusing to bind 0.0.0.0 in open mode" in done.stderr and b"--allow-open" in done.stderr
    gw = start_gateway(tmp_path, {}, ["--host", "0.0.0.0", "--allow-open"], name="allowed")
    try:
        assert "open mode" in gw.log() and "loopback clients only" in gw.log()
    finally:
        gw.stop()


def test_database_down_fails_closed(
    tmp_path: Path, upstreams: object, request: pytest.FixtureRequest
) -> None:
    """D2: with the database gone, a cached key still works, an uncached one is 503 auth_unavailable
    (never 401, never a pass), and /readyz says not ready."""
    postgres = request.getfixturevalue("postgres")
    database = postgres.new_database()
    master = "mk-down-" + "x" * 24
    env = {
        **upstreams.env(),  # type: ignore[attr-defined]
        "AIGW_DATABASE_URL": database,
        "AIGW_KEY_HASH_SECRET": "hs-down-" + "y" * 32,
        "AIGW_MASTER_KEY": master,
        "AIGW_AUTH_CACHE_TTL_S": "60",
    }
    gw = start_gateway(tmp_path, env, name="db-down")
    try:
        admin = {"x-api-key": master}
        tenant = http("POST", gw.url + "/admin/tenants", {"name": "t"}, headers=admin).json()["id"]
        cached, uncached = (
            http("POST", gw.url + "/admin/keys", {"tenant": tenant, "name": n}, headers=admin).json()["key"]
            for n in ("a", "b")
        )
        chat = {"prompt": "hi", "model": "ollama/llama3.2"}
        assert http("POST", gw.url + "/v1/chat", chat, headers={"x-api-key": cached}).status == 200
        assert http("GET", gw.url + "/readyz").json()["database"] == "ok"
        with psycopg.connect(postgres.url("postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{database.rsplit("/", 1)[1]}" WITH (FORCE)')
        assert http("POST", gw.url + "/v1/chat", chat, headers={"x-api-key": cached}).status == 200
        down = http("POST", gw.url + "/v1/chat", chat, headers={"x-api-key": uncached})
        assert down.status == 503 and down.json()["error"]["code"] == "auth_unavailable"
        assert "retry-after" in down.headers and "postgresql" not in down.body.decode()
        ready = http("GET", gw.url + "/readyz")
        assert ready.status == 503 and ready.json()["database"] == "unreachable"
    finally:
        gw.stop()
