"""The full scope matrix (S-03): every endpoint x every key state, on SQLite and on PostgreSQL, through a
real gateway process; plus model/route patterns (403 before any upstream call, also through a fallback
chain) and the filtered model list.

Endpoints that are reserved in the scope table but not routed yet (`/v1/usage`, and `/v1/messages` until
its dialect lands) are expected to answer 404 to a caller who holds the scope, and 401/403 to the rest.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

import pytest

from ai_gateway.policy.auth import ENDPOINT_SCOPES, required_scopes
from tests.services import Postgres
from tests.support import Proc, Reply, Upstreams, http, start_gateway

MASTER = "mk-matrix-" + secrets.token_hex(16)
HASH_SECRET = "hs-matrix-" + secrets.token_hex(16)
CHAT_BODY = {"prompt": "hi", "model": "ollama/llama3.2"}
OPENAI_BODY = {"model": "ollama/llama3.2", "messages": [{"role": "user", "content": "hi"}]}
MESSAGES_BODY = {
    "model": "ollama/llama3.2",
    "max_tokens": 16,
    "messages": [{"role": "user", "content": "hi"}],
}

# (method, path, body): every route in the gateway, reserved paths, and unknown ones.
ENDPOINTS: list[tuple[str, str, Any]] = [
    ("POST", "/v1/chat", CHAT_BODY),
    ("POST", "/v1/chat/completions", OPENAI_BODY),
    ("POST", "/v1/messages", MESSAGES_BODY),
    (
        "POST",
        "/v1/messages/count_tokens",
        {"model": "ollama/llama3.2", "messages": MESSAGES_BODY["messages"]},
    ),
    ("GET", "/v1/models", None),
    ("GET", "/v1/usage", None),
    ("GET", "/admin/tenants", None),
    ("POST", "/admin/tenants", "NEW_TENANT"),
    ("GET", "/admin/tenants/{tenant}", None),
    ("GET", "/admin/keys", None),
    ("POST", "/admin/keys", "NEW_KEY"),
    ("GET", "/admin/keys/{victim}", None),
    ("PATCH", "/admin/keys/{victim}", {"name": "renamed"}),
    ("DELETE", "/admin/keys/{doomed}", None),
    ("GET", "/admin/no-such-route", None),
    ("GET", "/docs", None),
    ("GET", "/openapi.json", None),
    ("GET", "/healthz", None),
    ("GET", "/readyz", None),
    ("GET", "/v1/no-such-route", None),
]
OK = {"POST /admin/tenants": 201, "POST /admin/keys": 201}
GRANTS = {"chat": {"chat"}, "models": {"models"}, "usage": {"usage:read"}, "admin": {"admin"}}
REFUSED = ("none", "unknown", "malformed", "expired", "revoked")
STATES = (*REFUSED, "master", *GRANTS)


@dataclass
class World:
    backend: str
    gw: Proc
    keys: dict[str, str]  # state -> key
    ids: dict[str, str]  # placeholders in ENDPOINTS -> ids
    routed: dict[str, bool]  # endpoint -> answered by a route (not an unknown-path 404)
    tmp: Path


def _admin(gw: Proc, method: str, path: str, body: Any = None) -> Any:
    reply = http(method, gw.url + path, body, headers={"authorization": f"Bearer {MASTER}"})
    assert reply.status in (200, 201), reply.body
    return reply.json()


def _new_key(gw: Proc, tenant: str, scopes: list[str], **fields: Any) -> dict[str, Any]:
    return dict(
        _admin(gw, "POST", "/admin/keys", {"tenant": tenant, "name": "k", "scopes": scopes, **fields})
    )


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, upstreams: Upstreams
) -> Iterator[World]:
    backend = request.param
    tmp = tmp_path_factory.mktemp(f"matrix-{backend}")
    env = {**upstreams.env(), "AIGW_MASTER_KEY": MASTER}
    if backend == "postgres":
        postgres: Postgres = request.getfixturevalue("postgres")
        env |= {"AIGW_DATABASE_URL": postgres.new_database(), "AIGW_KEY_HASH_SECRET": HASH_SECRET}
    gw = start_gateway(tmp, env, name=f"gw-matrix-{backend}")
    try:
        tenant = _admin(gw, "POST", "/admin/tenants", {"name": f"matrix-{backend}"})["id"]
        keys = {state: _new_key(gw, tenant, sorted(scopes))["key"] for state, scopes in GRANTS.items()}
        expiring = _new_key(
            gw,
            tenant,
            ["chat", "models"],
            expires_at=(datetime.now(UTC) + timedelta(seconds=1.5)).isoformat(),
        )
        revoked = _new_key(gw, tenant, ["admin"])
        # Use both while valid, so the refusals below are of cached keys, not just unknown ones.
        for k in (expiring, revoked):
            assert http("GET", gw.url + "/v1/models", headers={"x-api-key": k["key"]}).status == 200
        _admin(gw, "DELETE", f"/admin/keys/{revoked['id']}")
        keys |= {
            "master": MASTER,
            "unknown": "sk-aigw-" + secrets.token_urlsafe(32)[:43],
            "malformed": "' OR '1'='1",
            "expired": expiring["key"],
            "revoked": revoked["key"],
        }
        ids = {
            "tenant": tenant,
            "victim": _new_key(gw, tenant, ["chat"])["id"],
            "doomed": _new_key(gw, tenant, ["chat"])["id"],
        }
        routed = {}
        for method, path, body in ENDPOINTS:
            reply = _request(gw, method, path.format(**ids), body, tenant, MASTER)
            routed[f"{method} {path}"] = not (reply.status == 404 and b'"code":"not_found"' in reply.body)
        time.sleep(max(0.0, datetime.fromisoformat(expiring["expires_at"]).timestamp() - time.time() + 0.1))
        yield World(backend, gw, keys, ids, routed, tmp)
    finally:
        gw.stop()


def _request(
    gw: Proc, method: str, path: str, body: Any, tenant: str, key: str | None, header: str = "authorization"
) -> Reply:
    if body == "NEW_TENANT":
        body = {"name": f"m-{secrets.token_hex(4)}"}
    elif body == "NEW_KEY":
        body = {"tenant": tenant, "name": "made-by-matrix", "scopes": ["chat"]}
    headers = {}
    if key is not None:
        headers[header] = f"Bearer {key}" if header == "authorization" else key
    return http(method, gw.url + path, body, headers=headers)


def _expected(world: World, state: str, method: str, path: str) -> int:
    name = f"{method} {path}"
    accepted = required_scopes(path)
    if accepted == ():
        return 200
    if state in REFUSED:
        return 401
    scopes = {"admin"} if state == "master" else GRANTS[state]
    if "admin" not in scopes and not scopes & set(accepted):
        return 403
    return OK.get(name, 200) if world.routed[name] else 404


@pytest.mark.parametrize("state", STATES)
def test_scope_matrix(world: World, state: str) -> None:
    got: dict[str, int] = {}
    want: dict[str, int] = {}
    for method, path, body in ENDPOINTS:
        name = f"{method} {path}"
        key = None if state == "none" else world.keys[state]
        reply = _request(world.gw, method, path.format(**world.ids), body, world.ids["tenant"], key)
        got[name], want[name] = reply.status, _expected(world, state, method, path)
        if reply.status == 401:
            assert reply.headers["www-authenticate"] == 'Bearer realm="ai-gateway"', name
        if reply.status in (401, 403):  # both error shapes (OpenAI's, Anthropic's) carry error.type
            error = reply.json()["error"]
            assert error["type"] == ("authentication_error" if reply.status == 401 else "permission_error")
            assert key is None or key not in reply.body.decode()
    assert got == want, f"{world.backend}/{state}"


@pytest.mark.parametrize("state", ["chat", "admin", "unknown"])
def test_x_api_key_header_is_equivalent(world: World, state: str) -> None:
    for method, path, body in ENDPOINTS[:6]:
        reply = _request(
            world.gw, method, path, body, world.ids["tenant"], world.keys[state], header="x-api-key"
        )
        assert reply.status == _expected(world, state, method, path), path


def test_core_routes_all_have_an_explicit_scope(world: World) -> None:
    """Deny by default works, but every live route should still say what it needs (S-03 inventory)."""
    for method, path, _ in ENDPOINTS:
        if world.routed[f"{method} {path}"] and not path.startswith(("/admin", "/docs", "/openapi")):
            assert path in ENDPOINT_SCOPES or path.startswith("/v1/messages/"), path


def test_hostile_authorization_headers_are_401_and_harmless(world: World) -> None:
    """S-11: injection strings, a 10 KB token, another scheme, non-ASCII and two headers."""
    for value in (
        "Bearer ' OR '1'='1",
        "Bearer sk-x'; DROP TABLE api_keys;--",
        "Bearer sk-aigw-" + "A" * 10_000,
        "Basic dXNlcjpwYXNz",
        "Bearer sk-aigw-\u00e9\u00e8",
    ):
        conn = HTTPConnection("127.0.0.1", world.gw.port, timeout=10)
        conn.putrequest("GET", "/v1/models")
        conn.putheader("authorization", value.encode("latin-1"))
        conn.endheaders()
        assert conn.getresponse().status == 401, value[:40]
        conn.close()
    conn = HTTPConnection("127.0.0.1", world.gw.port, timeout=10)
    conn.putrequest("GET", "/v1/models")
    conn.putheader("authorization", f"Bearer {world.keys['chat']}")
    conn.putheader("authorization", f"Bearer {world.keys['admin']}")
    conn.endheaders()
    assert conn.getresponse().status == 401
    conn.close()
    assert len(_admin(world.gw, "GET", "/admin/keys?limit=100")["data"]) >= 6  # tables intact


def test_model_patterns_refuse_before_any_upstream_call(world: World, mocks: Upstreams) -> None:
    tenant = world.ids["tenant"]
    key = _new_key(world.gw, tenant, ["chat"], models=["ollama/*"])["key"]
    headers = {"authorization": f"Bearer {key}"}
    for model in ("openai/gpt-4o-mini", "default", "gpt-4o-mini"):
        for stream in (False, True):
            body = {"prompt": "hi", "model": model, "stream": stream}
            reply = http("POST", world.gw.url + "/v1/chat", body, headers=headers)
            assert reply.status == 403, (model, reply.body)
            assert reply.json()["error"]["code"] == "model_not_allowed"
            assert reply.json()["error"]["param"] == "model"
        reply = http(
            "POST", world.gw.url + "/v1/chat/completions", {**OPENAI_BODY, "model": model}, headers=headers
        )
        assert reply.status == 403
    assert (
        "openrouter"
        in http("POST", world.gw.url + "/v1/chat", {"prompt": "x"}, headers=headers).json()["error"][
            "message"
        ]
    )
    assert mocks.total_calls() == 0
    assert http("POST", world.gw.url + "/v1/chat", CHAT_BODY, headers=headers).status == 200
    assert (
        http("POST", world.gw.url + "/v1/chat", {"prompt": "x", "provider": "ollama"}, headers=headers).status
        == 200
    )
    assert mocks.total_calls() == 2


def test_a_key_may_use_a_route_whose_whole_chain_it_may_use(world: World, mocks: Upstreams) -> None:
    patterns = ["default", "ollama/*", "openrouter/*", "openai/*"]
    key = _new_key(world.gw, world.ids["tenant"], ["chat"], models=patterns)["key"]
    reply = http(
        "POST", world.gw.url + "/v1/chat", {"prompt": "x", "model": "default"}, headers={"x-api-key": key}
    )
    assert reply.status == 200, reply.body


def test_model_list_shows_only_what_the_key_may_call(world: World) -> None:
    def ids(key: str) -> set[str]:
        reply = http("GET", world.gw.url + "/v1/models", headers={"authorization": f"Bearer {key}"})
        assert reply.status == 200
        return {m["id"] for m in reply.json()["data"]}

    everything = ids(world.keys["chat"])
    assert {"default", "ollama/llama3.2", "openai/gpt-4o-mini"} <= everything
    limited = ids(_new_key(world.gw, world.ids["tenant"], ["models"], models=["ollama/*"])["key"])
    assert limited == {m for m in everything if m.startswith("ollama/")} and limited
    with_route = ids(
        _new_key(
            world.gw,
            world.ids["tenant"],
            ["models"],
            models=["default", "ollama/*", "openrouter/*", "openai/*"],
        )["key"]
    )
    assert "default" in with_route and "anthropic/claude-haiku-4-5" not in with_route
