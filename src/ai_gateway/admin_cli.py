"""`ai-gateway tenants|keys|usage ...` talk HTTP to a running gateway's admin API; `ai-gateway db upgrade`
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
from decimal import Decimal
from typing import Any

__all__ = ["COMMANDS", "add_commands", "run"]

COMMANDS = frozenset({"tenants", "keys", "db", "usage"})
_DEFAULT_URL = "http://127.0.0.1:8000"
_TIMEOUT_S = 15.0
_PAGE = 100  # rows per request when listing; the commands follow the cursor to the end
# stores.reports.GROUPS, repeated so these commands need not import SQLAlchemy (a test keeps them equal).
USAGE_GROUPS = ("tenant", "key", "model", "provider", "day")


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
    """Add the `tenants`, `keys`, `usage` and `db` sub-commands to the main parser's subparsers."""
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
    create.add_argument(
        "--no-cache",
        action="store_true",
        help="the response cache neither serves nor stores this key's calls",
    )
    _limits(create)
    _common(create)
    listing = ksub.add_parser("list", help="list keys (prefix and last 4 characters only)")
    listing.add_argument("--tenant", help="only this tenant's keys (id or name)")
    _common(listing)
    revoke = ksub.add_parser("revoke", help="revoke a key at once, on every replica")
    revoke.add_argument("id")
    _common(revoke)

    usage = sub.add_parser("usage", help="requests, tokens and spend from a running gateway's ledger")
    usage.add_argument("--group-by", choices=USAGE_GROUPS, default="model", help="default: model")
    usage.add_argument("--since", help="ISO 8601 date or time, UTC unless an offset is given (inclusive)")
    usage.add_argument("--until", help="exclusive; a bare date includes that whole day")
    usage.add_argument("--tenant", help="only this tenant (id or name)")
    usage.add_argument("--key", help="only this key (id)")
    usage.add_argument("--url", default=_DEFAULT_URL, help=f"the gateway (default {_DEFAULT_URL})")
    output = usage.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print the API's JSON (exact decimals)")
    output.add_argument("--csv", action="store_true", help="print CSV with a header row")

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
        return json.loads(self.fetch(method, path, body, query) or b"null")

    def fetch(self, method: str, path: str, body: Any = None, query: dict[str, str] | None = None) -> bytes:
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
                return bytes(resp.read())
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
        if args.no_cache:
            body["cache"] = False
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


def _usd(nanos: int) -> str:
    # From the integer nano-dollars, not the JSON number: a float could print 0.30000000000000004.
    text = format(Decimal(nanos).scaleb(-9), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


_USAGE_COLUMNS: tuple[tuple[str, Callable[[dict[str, Any]], Any]], ...] = (
    ("REQUESTS", lambda r: r["requests"]),
    ("INPUT", lambda r: r["input_tokens"]),
    ("OUTPUT", lambda r: r["output_tokens"]),
    ("CACHED", lambda r: r["cached_tokens"]),
    ("COST_USD", lambda r: _usd(r["cost_nanos"]) + ("+?" if r["cost_unknown_requests"] else "")),
    ("CACHE_HITS", lambda r: r["cache_hits"]),
    ("ERRORS", lambda r: r["errors"]),
)
_GROUP_COLUMNS: dict[str, tuple[tuple[str, Callable[[dict[str, Any]], Any]], ...]] = {
    "tenant": (("TENANT", lambda r: r.get("tenant") or r.get("tenant_id")),),
    "key": (("KEY", lambda r: r.get("key") or r.get("key_id")), ("KEY_ID", lambda r: r.get("key_id"))),
    "model": (("PROVIDER", lambda r: r.get("provider")), ("MODEL", lambda r: r.get("model"))),
    "provider": (("PROVIDER", lambda r: r.get("provider")),),
    "day": (("DAY", lambda r: r.get("day")),),
}


def _usage(args: argparse.Namespace, out: Callable[[str], None]) -> None:
    query = {
        name: value
        for name in ("since", "until", "tenant", "key")
        if (value := getattr(args, name)) is not None
    }
    query["group_by"] = args.group_by
    api = _Api(args.url)
    if args.csv:
        out(api.fetch("GET", "/admin/usage.csv", query=query).decode().rstrip("\r\n"))
        return
    raw = api.fetch("GET", "/admin/usage", query=query)
    if args.json:
        out(raw.decode())
        return
    report = json.loads(raw)
    groups = [
        # The last row is the total: "TOTAL" under the first group column, blank under the others.
        (header, lambda r, get=get, first=(i == 0): ("TOTAL" if first else "") if "_total" in r else get(r))
        for i, (header, get) in enumerate(_GROUP_COLUMNS[args.group_by])
    ]
    out(_table([*report["rows"], {**report["total"], "_total": True}], [*groups, *_USAGE_COLUMNS]))
    if report["total"]["cost_unknown_requests"]:
        out(f"+? {report['total']['cost_unknown_requests']} requests had no known price: not in COST_USD")
    if report["truncated"]:
        out("(more than 10,000 groups: only the first are listed; TOTAL covers all)")


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
        elif args.command == "usage":
            _usage(args, print)
        else:
            _db_upgrade(print)
    except _Failed as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return exc.status
    return 0
