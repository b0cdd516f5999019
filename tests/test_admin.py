"""The admin API (CONTRACT §5) through a real gateway on SQLite: CRUD, pagination, validation, errors,
the OpenAPI document, and revocation taking effect at once on the same process."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.support import Proc, Reply, Upstreams, http, start_gateway

MASTER = "mk-admin-tests-" + secrets.token_hex(16)
AUTH = {"authorization": f"Bearer {MASTER}"}
CHAT = {"prompt": "hi", "model": "ollama/llama3.2"}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, upstreams: Upstreams) -> Iterator[Proc]:
    proc = start_gateway(
        tmp_path_factory.mktemp("admin"), {**upstreams.env(), "AIGW_MASTER_KEY": MASTER}, name="gw-admin"
    )
    yield proc
    proc.stop()


def call(gw: Proc, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Reply:
    return http(method, gw.url + path, body, headers={**AUTH, **(headers or {})})


def tenant(gw: Proc, **fields: Any) -> dict[str, Any]:
    reply = call(gw, "POST", "/admin/tenants", {"name": f"t-{secrets.token_hex(4)}", **fields})
    assert reply.status == 201, reply.body
    return dict(reply.json())


def key(gw: Proc, tenant_ref: str, **fields: Any) -> dict[str, Any]:
    reply = call(gw, "POST", "/admin/keys", {"tenant": tenant_ref, "name": "k", **fields})
    assert reply.status == 201, reply.body
    return dict(reply.json())


def assert_error(reply: Reply, status: int, param: str | None = None, code: str | None = None) -> None:
    assert reply.status == status, reply.body
    body = reply.json()
    assert set(body) == {"error", "request_id"} and body["request_id"] == reply.headers["x-request-id"]
    assert set(body["error"]) == {"message", "type", "param", "code"}
    if param is not None:
        assert body["error"]["param"] == param, body
    if code is not None:
        assert body["error"]["code"] == code, body


def test_create_and_get_tenant_stores_limits_exactly(gw: Proc) -> None:
    t = tenant(gw, rpm=60, tpm=100_000, budget_usd="12.345678", budget_period="month")
    assert t["id"].startswith("ten_") and t["object"] == "tenant"
    assert (t["rpm"], t["tpm"], t["budget_usd"], t["budget_period"]) == (60, 100_000, 12.345678, "month")
    assert call(gw, "GET", f"/admin/tenants/{t['id']}").json() == t
    assert call(gw, "GET", f"/admin/tenants/{t['name']}").json() == t  # by name too
    assert tenant(gw, budget_usd=0.1, budget_period="day")["budget_usd"] == 0.1


def test_key_is_returned_once_and_listed_only_by_prefix_and_last4(gw: Proc) -> None:
    t = tenant(gw)
    expires = (datetime.now(UTC) + timedelta(days=30)).replace(microsecond=0)
    k = key(
        gw,
        t["name"],
        scopes=["chat", "models"],
        models=["ollama/*"],
        rpm=5,
        budget_usd=1,
        budget_period="total",
        expires_at=expires.isoformat(),
    )
    assert k["key"].startswith("sk-aigw-") and k["display"] == f"sk-aigw-...{k['key'][-4:]}"
    assert (k["tenant_id"], k["tenant"], k["scopes"], k["models"]) == (
        t["id"],
        t["name"],
        ["chat", "models"],
        ["ollama/*"],
    )
    assert datetime.fromisoformat(k["expires_at"]) == expires and k["revoked_at"] is None
    shown = call(gw, "GET", f"/admin/keys/{k['id']}")
    assert "key" not in shown.json() and k["key"] not in shown.body.decode()
    assert shown.headers["cache-control"] == "no-store"
    listed = call(gw, "GET", f"/admin/keys?tenant={t['id']}").json()
    assert [row["id"] for row in listed["data"]] == [k["id"]]
    assert k["key"] not in str(listed) and k["key"][8:16] not in str(listed)
    assert call(gw, "POST", "/v1/chat", CHAT, headers={"authorization": f"Bearer {k['key']}"}).status == 200


def test_key_defaults_to_chat_and_models_and_every_model(gw: Proc) -> None:
    k = key(gw, tenant(gw)["id"])
    assert (k["scopes"], k["models"], k["expires_at"], k["budget_usd"]) == (
        ["chat", "models"],
        None,
        None,
        None,
    )


def test_patch_changes_only_what_is_sent_and_applies_at_once(gw: Proc) -> None:
    k = key(gw, tenant(gw)["id"], models=["ollama/*"], rpm=5)
    headers = {"x-api-key": k["key"]}
    assert http("POST", gw.url + "/v1/chat", CHAT, headers=headers).status == 200
    patched = call(gw, "PATCH", f"/admin/keys/{k['id']}", {"models": ["openai/*"], "name": "renamed"}).json()
    assert (patched["models"], patched["name"], patched["rpm"], patched["scopes"]) == (
        ["openai/*"],
        "renamed",
        5,
        ["chat", "models"],
    )
    assert_error(http("POST", gw.url + "/v1/chat", CHAT, headers=headers), 403, "model", "model_not_allowed")
    cleared = call(gw, "PATCH", f"/admin/keys/{k['id']}", {"models": None, "rpm": None}).json()
    assert (cleared["models"], cleared["rpm"]) == (None, None)
    assert http("POST", gw.url + "/v1/chat", CHAT, headers=headers).status == 200
    assert_error(call(gw, "PATCH", f"/admin/keys/{k['id']}", {"budget_usd": 5}), 400, "budget_period")
    assert (
        call(gw, "PATCH", f"/admin/keys/{k['id']}", {"budget_usd": 5, "budget_period": "day"}).status == 200
    )
    assert call(gw, "PATCH", f"/admin/keys/{k['id']}", {"budget_usd": 7}).json()["budget_usd"] == 7
    assert_error(
        call(gw, "PATCH", f"/admin/keys/{k['id']}", {"tenant": "other"}), 400, "tenant", "unknown_field"
    )


def test_delete_revokes_at_once_and_the_key_stays_listed(gw: Proc) -> None:
    k = key(gw, tenant(gw)["id"])
    headers = {"authorization": f"Bearer {k['key']}"}
    assert http("POST", gw.url + "/v1/chat", CHAT, headers=headers).status == 200  # now cached
    revoked = call(gw, "DELETE", f"/admin/keys/{k['id']}")
    assert revoked.status == 200 and revoked.json()["revoked_at"] is not None
    refused = http("POST", gw.url + "/v1/chat", CHAT, headers=headers)
    assert_error(refused, 401, code="invalid_api_key")
    assert refused.headers["www-authenticate"] == 'Bearer realm="ai-gateway"'
    again = call(gw, "DELETE", f"/admin/keys/{k['id']}").json()
    assert again["revoked_at"] == revoked.json()["revoked_at"]  # idempotent
    assert call(gw, "GET", f"/admin/keys/{k['id']}").json()["revoked_at"] == again["revoked_at"]
    assert_error(call(gw, "PATCH", f"/admin/keys/{k['id']}", {"name": "x"}), 409, code="key_revoked")


def test_pagination_walks_every_row_once_in_creation_order(gw: Proc) -> None:
    t = tenant(gw)
    made = [key(gw, t["id"])["id"] for _ in range(5)]
    seen: list[str] = []
    after = ""
    pages = 0
    while True:
        page = call(
            gw, "GET", f"/admin/keys?tenant={t['id']}&limit=2" + (f"&after={after}" if after else "")
        ).json()
        pages += 1
        seen += [row["id"] for row in page["data"]]
        assert len(page["data"]) <= 2 and page["object"] == "list"
        if not page["has_more"]:
            break
        after = page["last_id"]
    assert seen == made and pages == 3
    everyone = call(gw, "GET", "/admin/tenants?limit=100").json()
    assert t["id"] in [row["id"] for row in everyone["data"]]
    assert call(gw, "GET", f"/admin/tenants?limit=1&after={everyone['data'][-1]['id']}").json()["data"] == []


@pytest.mark.parametrize(
    ("path", "body", "param", "code"),
    [
        ("/admin/tenants", {}, "name", None),
        ("/admin/tenants", {"name": ""}, "name", None),
        ("/admin/tenants", {"name": "has space"}, "name", None),
        ("/admin/tenants", {"name": "ten_lookslikeanid"}, None, None),
        ("/admin/tenants", {"name": "x", "rpm": 0}, "rpm", None),
        ("/admin/tenants", {"name": "x", "rpm": "60"}, "rpm", None),
        ("/admin/tenants", {"name": "x", "tpm": True}, "tpm", None),
        ("/admin/tenants", {"name": "x", "budget_usd": -1, "budget_period": "day"}, "budget_usd", None),
        (
            "/admin/tenants",
            {"name": "x", "budget_usd": "0.0000001", "budget_period": "day"},
            "budget_usd",
            None,
        ),
        ("/admin/tenants", {"name": "x", "budget_usd": 5}, None, None),
        ("/admin/tenants", {"name": "x", "budget_usd": 5, "budget_period": "week"}, "budget_period", None),
        ("/admin/tenants", {"name": "x", "role": "admin"}, "role", "unknown_field"),
        ("/admin/keys", {"tenant": "TENANT", "name": "k", "scopes": []}, "scopes", None),
        ("/admin/keys", {"tenant": "TENANT", "name": "k", "scopes": ["root"]}, "scopes.0", None),
        ("/admin/keys", {"tenant": "TENANT", "name": "k", "models": []}, "models", None),
        ("/admin/keys", {"tenant": "TENANT", "name": "k", "models": ["has space"]}, "models.0", None),
        ("/admin/keys", {"tenant": "TENANT", "name": "k", "expires_at": "2001-01-01T00:00:00Z"}, None, None),
        ("/admin/keys", {"tenant": "TENANT", "name": "k", "expires_at": "next week"}, "expires_at", None),
        ("/admin/keys", {"tenant": "TENANT", "name": "k", "key_hash": "x"}, "key_hash", "unknown_field"),
        ("/admin/keys", {"tenant": "no-such-tenant", "name": "k"}, "tenant", "tenant_not_found"),
        ("/admin/keys", {"tenant": "TENANT"}, "name", None),
        ("/admin/keys", ["not", "an", "object"], None, None),
    ],
)
def test_validation_errors_are_400_in_the_openai_shape(
    gw: Proc, path: str, body: Any, param: str | None, code: str | None
) -> None:
    if isinstance(body, dict) and body.get("tenant") == "TENANT":
        body = {**body, "tenant": tenant(gw)["id"]}
    assert_error(call(gw, "POST", path, body), 400, param, code)


def test_malformed_json_and_bad_query_are_400(gw: Proc) -> None:
    bad = http("POST", gw.url + "/admin/tenants", raw=b'{"name": ', headers=AUTH)
    assert_error(bad, 400, code="invalid_json")
    for query in ("limit=0", "limit=101", "limit=ten", "after=" + "x" * 65):
        assert_error(call(gw, "GET", "/admin/keys?" + query), 400, query.partition("=")[0])


def test_curl_d_form_content_type_is_read_as_json(gw: Proc) -> None:
    raw = b'{"name": "curl-' + secrets.token_hex(3).encode() + b'"}'
    headers = {**AUTH, "content-type": "application/x-www-form-urlencoded"}
    assert http("POST", gw.url + "/admin/tenants", raw=raw, headers=headers).status == 201


def test_unknown_ids_are_404_and_duplicates_409(gw: Proc) -> None:
    assert_error(call(gw, "GET", "/admin/keys/key_nope"), 404, code="key_not_found")
    assert_error(call(gw, "PATCH", "/admin/keys/key_nope", {"name": "x"}), 404, code="key_not_found")
    assert_error(call(gw, "DELETE", "/admin/keys/key_nope"), 404, code="key_not_found")
    assert_error(call(gw, "GET", "/admin/tenants/ten_nope"), 404, code="tenant_not_found")
    assert_error(call(gw, "GET", "/admin/keys?tenant=nope"), 404, code="tenant_not_found")
    assert_error(call(gw, "GET", "/admin/nothing/here"), 404, code="not_found")
    assert_error(call(gw, "PUT", "/admin/tenants", {}), 405)
    t = tenant(gw)
    assert_error(call(gw, "POST", "/admin/tenants", {"name": t["name"]}), 409, code="conflict")


def test_sql_injection_in_parameters_is_inert(gw: Proc) -> None:
    """S-10: filters and ids are bound parameters; the tables survive and nothing leaks."""
    before = len(call(gw, "GET", "/admin/tenants?limit=100").json()["data"])
    for probe in ("' OR 1=1--", '";--', "x') UNION SELECT key_hash FROM api_keys--"):
        assert call(gw, "GET", f"/admin/keys?tenant={probe.replace(' ', '%20')}").status == 404
        assert call(gw, "GET", f"/admin/keys?after={probe.replace(' ', '%20')}").status == 200
        assert (
            call(gw, "GET", f"/admin/tenants/{probe.replace(' ', '%20').replace('/', '%2F')}").status == 404
        )
    assert len(call(gw, "GET", "/admin/tenants?limit=100").json()["data"]) == before


def test_openapi_document_lists_the_admin_routes(gw: Proc) -> None:
    doc = call(gw, "GET", "/openapi.json").json()
    assert set(doc["paths"]) == {
        "/admin/tenants",
        "/admin/tenants/{tenant_id}",
        "/admin/keys",
        "/admin/keys/{key_id}",
        "/admin/usage",
        "/admin/usage.csv",
        "/admin/requests",
    }
    assert set(doc["paths"]["/admin/keys/{key_id}"]) == {"get", "patch", "delete"}
    assert "400" in doc["paths"]["/admin/keys"]["post"]["responses"]
    docs = call(gw, "GET", "/docs")
    assert docs.status == 200 and b"swagger" in docs.body.lower()
    assert http("GET", gw.url + "/openapi.json").status == 401


def test_first_start_created_the_hashing_secret_file(gw: Proc) -> None:
    assert gw.log_path is not None
    secret_file = Path(gw.log_path).parent / "gateway.db.key-hash-secret"
    assert secret_file.is_file() and oct(secret_file.stat().st_mode & 0o777) == "0o600"
