"""Secret canaries (S-01, S-06): issued keys, the master key, the hashing secret and the database password
never appear in the gateway's log, in any response (but the one that issues a key), in the database
(SQLite file bytes including its WAL, or every PostgreSQL row) or in Redis; nor does any 8-character
piece of a key's random part."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.services import Postgres, Redis
from tests.support import Reply, Upstreams, http, start_gateway

CHAT = {"prompt": "hi", "model": "ollama/llama3.2"}


def _windows(key: str) -> set[str]:
    random_part = key[len("sk-aigw-") :]
    return {random_part[i : i + 8] for i in range(len(random_part) - 7)}


def _pg_rows(url: str) -> bytes:
    with psycopg.connect(url) as conn:
        tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        dump = [repr(conn.execute(f'SELECT * FROM "{t}"').fetchall()) for t in tables]
    assert "api_keys" in tables
    return "\n".join(dump).encode()


def _redis_dump(redis_server: Redis, url: str) -> bytes:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT value FROM gateway_meta WHERE name = 'installation_id'").fetchone()
    assert row is not None
    client = redis_server.client()
    out = []
    for name in client.scan_iter(match=f"aigw:{row[0]}:*"):
        out.append(name + b"=" + bytes(str(client.get(name)), "utf-8"))
    client.close()
    redis_server.cleanup([str(row[0])])
    return b"\n".join(out)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_no_secret_leaks_anywhere(
    backend: str, tmp_path: Path, upstreams: Upstreams, request: pytest.FixtureRequest
) -> None:
    master = "mk-CANARY-master-" + secrets.token_hex(12)
    env: dict[str, str] = {**upstreams.env(), "AIGW_MASTER_KEY": master, "AIGW_LOG_LEVEL": "debug"}
    canaries = {"master": master}
    database = ""
    if backend == "postgres":
        postgres: Postgres = request.getfixturevalue("postgres")
        redis_server: Redis = request.getfixturevalue("redis_server")
        password = "pwCANARY" + secrets.token_hex(6)
        database = postgres.new_database().replace("postgres@", f"postgres:{password}@")
        canaries |= {"hash secret": "hs-CANARY-hash-" + secrets.token_hex(12), "db password": password}
        env |= {
            "AIGW_DATABASE_URL": database,
            "AIGW_KEY_HASH_SECRET": canaries["hash secret"],
            "AIGW_REDIS_URL": redis_server.url,
        }
    gw = start_gateway(tmp_path, env, name=f"secrets-{backend}")
    replies: list[Reply] = []

    def call(method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Reply:
        reply = http(method, gw.url + path, body, headers=headers)
        replies.append(reply)
        return reply

    try:
        if backend == "sqlite":
            canaries["hash secret"] = (tmp_path / "gateway.db.key-hash-secret").read_text().strip()
        admin = {"authorization": f"Bearer {master}"}
        tenant = call("POST", "/admin/tenants", {"name": "canary"}, admin).json()["id"]
        issued: list[dict[str, Any]] = []
        for scopes in (["chat"], ["models"], ["admin"]):
            made = http(
                "POST",
                gw.url + "/admin/keys",
                {"tenant": tenant, "name": "c", "scopes": scopes},
                headers=admin,
            )
            assert made.status == 201
            issued.append(made.json())  # the one response allowed to carry the key
        chat, models, admin_key = (k["key"] for k in issued)
        for i, k in enumerate(issued):
            canaries[f"key {i}"] = k["key"]

        assert call("POST", "/v1/chat", CHAT, {"authorization": f"Bearer {chat}"}).status == 200
        assert call("POST", "/v1/chat", {**CHAT, "stream": True}, {"x-api-key": chat}).status == 200
        assert call("GET", "/v1/models", headers={"x-api-key": models}).status == 200
        assert call("POST", "/v1/chat", CHAT, {"x-api-key": models}).status == 403
        assert call("GET", "/admin/keys", headers={"x-api-key": chat}).status == 403
        assert call("GET", "/admin/keys", headers={"x-api-key": admin_key}).status == 200
        assert call("GET", "/admin/keys/" + issued[0]["id"], headers=admin).status == 200
        assert call("POST", "/v1/chat", CHAT, {"authorization": f"Bearer {chat}x"}).status == 401
        assert call("POST", "/v1/chat", CHAT, {"authorization": f"Bearer {master}x"}).status == 401
        assert (
            call("POST", "/v1/chat", CHAT, {"authorization": f"Bearer {chat}", "x-api-key": models}).status
            == 401
        )
        assert call("POST", "/v1/chat", CHAT, {"authorization": f"Basic {chat}"}).status == 401
        assert call("POST", "/v1/messages", {"model": "x"}, {"x-api-key": admin_key}).status == 400
        assert call("POST", "/v1/chat", {"prompt": "x", "model": "nope/x"}, {"x-api-key": chat}).status in (
            400,
            404,
        )
        assert call("GET", "/healthz", headers={"x-api-key": chat}).status == 200
        assert call("GET", "/readyz", headers=admin).status == 200
        assert call("DELETE", "/admin/keys/" + issued[0]["id"], headers=admin).status == 200
        assert call("POST", "/v1/chat", CHAT, {"x-api-key": chat}).status == 401
    finally:
        gw.stop()

    sources: dict[str, bytes] = {
        "log": (gw.log_path.read_bytes() if gw.log_path else b""),
        "responses": b"\n".join(r.body + repr(sorted(r.headers.items())).encode() for r in replies),
    }
    if backend == "sqlite":
        for path in tmp_path.glob("gateway.db*"):
            if not path.name.endswith(".key-hash-secret"):  # the secret's own file holds the secret
                sources[f"file {path.name}"] = path.read_bytes()
    else:
        clean = database.replace(f":{canaries['db password']}@", "@")
        sources["postgres rows"] = _pg_rows(clean)
        sources["redis"] = _redis_dump(request.getfixturevalue("redis_server"), clean)

    leaks = []
    for where, data in sources.items():
        for what, secret in canaries.items():
            if secret.encode() in data:
                leaks.append(f"{what} in {where}")
        for i, k in enumerate(issued):
            hits = [w for w in _windows(k["key"]) if w.encode() in data]
            if hits:
                leaks.append(f"8-char piece of key {i} in {where}: {hits[:3]}")
    assert not leaks, leaks
    # The stored form is the keyed hash, and the listing shows the last 4 characters only.
    assert all(k["display"] == "sk-aigw-..." + k["key"][-4:] for k in issued)
