"""`ai-gateway tenants|keys ...` talk HTTP to a running gateway's admin API; `ai-gateway db upgrade`
migrates the database named by AIGW_DATABASE_URL directly.

The admin commands send AIGW_MASTER_KEY (the master key, or any key with the `admin` scope) to `--url`,
and print aligned tables, or the API's JSON with `--json`. Failures are one line on stderr, never a
traceback: exit status 1 when the gateway refused, 2 when it could not be reached or the input is wrong.
Only the standard library is used, so these commands start fast and need nothing the server does not.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["COMMANDS", "add_commands", "run"]

COMMANDS = frozenset({"tenants", "keys", "db"})
_DEFAULT_URL = "http://127.0.0.1:8000"
_TIMEOUT_S = 15.0
_PAGE = 100  # rows per request when listing; the commands follow the cursor to the end


class _Failed(Exception):
    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=_DEFAULT_URL, help=f"the gateway (default {_DEFAULT_URL})")
    parser.add_argument("--json", action="store_true", help="print the API's JSON instead of a table")


def _limits(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rpm", type=int, help="requests per minute")
    parser.add_argument("--tpm", type=int, help="tokens per minute")
    parser.add_argument("--budget-usd", help="spending cap in USD, e.g. 25 or 12.50")
    parser.add_argument("--budget-period", choices=("day", "month", "total"), help="when the budget resets")


def add_commands(sub: Any) -> None:
    """Add the `tenants`, `keys` and `db` sub-commands to the main parser's subparsers."""
    tenants = sub.add_parser("tenants", help="manage tenants (client businesses) of a running gateway")
    tsub = tenants.add_subparsers(dest="action", required=True)
    create = tsub.add_parser("create", help="create a tenant")
    create.add_argument("name")
    _limits(create)
    _common(create)
    _common(tsub.add_parser("list", help="list tenants"))

    keys = sub.add_parser("keys", help="manage API keys of a running gateway")
    ksub = keys.add_subparsers(dest="action", required=True)
    create = ksub.add_parser("create", help="create a key; it is printed once")
    create.add_argument("--tenant", required=True, help="tenant id or name")
    create.add_argument("--name", required=True, help="a label for the key")
    create.add_argument(
        "--scopes", default="chat,models", help="comma-separated: chat,models,usage:read,admin"
    )
    create.add_argument("--models", help="comma-separated allowed model/route patterns, e.g. 'ollama/*'")
    create.add_argument("--expires-at", help="ISO 8601 time, e.g. 2026-12-31T23:59:59Z")
    _limits(create)
    _common(create)
    listing = ksub.add_parser("list", help="list keys (prefix and last 4 characters only)")
    listing.add_argument("--tenant", help="only this tenant's keys (id or name)")
    _common(listing)
    revoke = ksub.add_parser("revoke", help="revoke a key at once, on every replica")
    revoke.add_argument("id")
    _common(revoke)

    db = sub.add_parser("db", help="database tools")
    dsub = db.add_subparsers(dest="action", required=True)
    dsub.add_parser("upgrade", help="apply migrations to AIGW_DATABASE_URL (also done on every start)")


class _Api:
    def __init__(self, url: str) -> None:
        self._url = url.rstrip("/")
        self._key = os.environ.get("AIGW_MASTER_KEY", "").strip()
        if urllib.parse.urlsplit(self._url).scheme not in ("http", "https"):
            raise _Failed(f"invalid --url {url!r}; expected e.g. {_DEFAULT_URL}", 2)

    def call(self, method: str, path: str, body: Any = None, query: dict[str, str] | None = None) -> Any:
        url = self._url + path + ("?" + urllib.parse.urlencode(query) if query else "")
        headers = {"accept": "application/json"}
        if self._key:
            headers["authorization"] = f"Bearer {self._key}"
        data = None if body is None else json.dumps(body).encode()
        if data is not None:
            headers["content-type"] = "application/json"
        try:
            # The scheme was checked in __init__: only http(s) reaches urlopen.
            req = urllib.request.Request(url, data=data, method=method, headers=headers)  # noqa: S310
            with urllib.request.urlopen(req, timeout=_TIMEOUT_S) as resp:  # noqa: S310
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as err:
            raise self._refused(err.code, err.read()) from None
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            if isinstance(reason, ConnectionRefusedError):
                raise _Failed(
                    f"cannot reach the gateway at {self._url}: connection refused "
                    "(is `ai-gateway serve` running there? point --url at it)",
                    2,
                ) from None
            raise _Failed(f"cannot reach the gateway at {self._url}: {reason}", 2) from None
        except ValueError:  # e.g. a URL with no host
            raise _Failed(f"invalid --url {self._url!r}; expected e.g. {_DEFAULT_URL}", 2) from None

    def _refused(self, status: int, raw: bytes) -> _Failed:
        try:
            message = json.loads(raw)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = f"unexpected response from {self._url}"
        if status == 401:
            hint = "AIGW_MASTER_KEY is not set" if not self._key else "the key in AIGW_MASTER_KEY was refused"
            return _Failed(
                f"401 unauthorized: {hint}; set it to the master key or a key with the admin scope"
            )
        if status == 403:
            return _Failed("403 forbidden: the key in AIGW_MASTER_KEY lacks the admin scope")
        return _Failed(f"{status}: {message}")

    def every(self, path: str, query: dict[str, str]) -> list[dict[str, Any]]:
        """Follow the `after` cursor to the last page."""
        rows: list[dict[str, Any]] = []
        params = {**query, "limit": str(_PAGE)}
        while True:
            page = self.call("GET", path, query=params)
            rows += page["data"]
            if not page["has_more"]:
                return rows
            params["after"] = page["last_id"]


def _csv(text: str | None) -> list[str] | None:
    return None if text is None else [part.strip() for part in text.split(",") if part.strip()]


def _limit_fields(args: argparse.Namespace) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for name in ("rpm", "tpm", "budget_usd", "budget_period"):
        value = getattr(args, name)
        if value is not None:
            fields[name] = value
    return fields


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def _table(rows: list[dict[str, Any]], columns: Sequence[tuple[str, Callable[[dict[str, Any]], Any]]]) -> str:
    cells = [[header for header, _ in columns]] + [[_cell(get(row)) for _, get in columns] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells)


def _budget(row: dict[str, Any]) -> str | None:
    return None if row["budget_usd"] is None else f"${row['budget_usd']:g}/{row['budget_period']}"


_TENANT_COLUMNS = (
    ("ID", lambda r: r["id"]),
    ("NAME", lambda r: r["name"]),
    ("RPM", lambda r: r["rpm"]),
    ("TPM", lambda r: r["tpm"]),
    ("BUDGET", _budget),
    ("CREATED", lambda r: r["created_at"][:19]),
)
_KEY_COLUMNS = (
    ("ID", lambda r: r["id"]),
    ("TENANT", lambda r: r["tenant"]),
    ("NAME", lambda r: r["name"]),
    ("KEY", lambda r: r["display"]),
    ("SCOPES", lambda r: r["scopes"]),
    ("MODELS", lambda r: r["models"] or "*"),
    ("EXPIRES", lambda r: r["expires_at"] and r["expires_at"][:19]),
    ("STATUS", lambda r: "revoked" if r["revoked_at"] else "active"),
)


def _tenants(args: argparse.Namespace, out: Callable[[str], None]) -> None:
    api = _Api(args.url)
    if args.action == "create":
        row = api.call("POST", "/admin/tenants", {"name": args.name, **_limit_fields(args)})
        out(json.dumps(row, indent=2) if args.json else _table([row], _TENANT_COLUMNS))
    else:
        rows = api.every("/admin/tenants", {})
        out(
            json.dumps({"object": "list", "data": rows}, indent=2)
            if args.json
            else _table(rows, _TENANT_COLUMNS)
        )


def _keys(args: argparse.Namespace, out: Callable[[str], None]) -> None:
    api = _Api(args.url)
    if args.action == "create":
        body: dict[str, Any] = {"tenant": args.tenant, "name": args.name, "scopes": _csv(args.scopes)}
        if args.models is not None:
            body["models"] = _csv(args.models)
        if args.expires_at is not None:
            body["expires_at"] = args.expires_at
        row = api.call("POST", "/admin/keys", {**body, **_limit_fields(args)})
        if args.json:
            out(json.dumps(row, indent=2))
        else:
            out(_table([row], _KEY_COLUMNS))
            out(f"\n{row['key']}\n\nThis key is shown once; store it now (the gateway keeps only a hash).")
    elif args.action == "list":
        rows = api.every("/admin/keys", {"tenant": args.tenant} if args.tenant else {})
        out(
            json.dumps({"object": "list", "data": rows}, indent=2)
            if args.json
            else _table(rows, _KEY_COLUMNS)
        )
    else:
        row = api.call("DELETE", f"/admin/keys/{urllib.parse.quote(args.id, safe='')}")
        out(
            json.dumps(row, indent=2)
            if args.json
            else f"revoked {row['id']} ({row['display']}) at {row['revoked_at']}"
        )


def _db_upgrade(out: Callable[[str], None]) -> None:
    # Imported here: the HTTP commands above must not pay for SQLAlchemy's import.
    from ai_gateway._settings_schema import redact_url
    from ai_gateway.errors import GatewayError
    from ai_gateway.stores.sql import SqlStore

    url = os.environ.get("AIGW_DATABASE_URL", "").strip() or "sqlite:///./ai-gateway.db"
    try:
        store = SqlStore(url)
        try:
            before, head = store.upgrade()
        finally:
            store.close()
    except GatewayError as exc:
        raise _Failed(f"{redact_url(url)}: {exc.message}", 2) from None
    state = "already at" if before == head else f"upgraded from {before or 'empty'} to"
    out(f"database {redact_url(url)}: {state} revision {head}")


def run(args: argparse.Namespace) -> int:
    try:
        if args.command == "tenants":
            _tenants(args, print)
        elif args.command == "keys":
            _keys(args, print)
        else:
            _db_upgrade(print)
    except _Failed as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return exc.status
    return 0
