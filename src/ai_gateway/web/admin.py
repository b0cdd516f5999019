"""The admin API (CONTRACT §5): tenants and keys, with the OpenAPI document at `/docs`, `/openapi.json`;
the usage reports are in web/admin_usage.py.

FastAPI, unlike the hot path: admin traffic is rare and its request models double as the published
schema. The caller has already been authenticated with the `admin` scope by `web/app.py` before any of
this runs. Validation errors are 400 in the contract's OpenAI error shape (not FastAPI's 422); request
models forbid unknown fields, so nothing can be mass-assigned.

Pagination: `limit` (1-100, default 20) and an `after` cursor (the last id of the previous page); ids
sort by creation time, so pages are stable while rows are added.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, model_validator
from starlette.exceptions import HTTPException

from ai_gateway import __version__
from ai_gateway.errors import GatewayError, InvalidRequestError, MethodNotAllowedError, NotFoundError
from ai_gateway.policy.auth import KEY_PREFIX, Authenticator, generate_key
from ai_gateway.stores.reports import Reports
from ai_gateway.stores.sql import ApiKey, KeySpec, Limits, SqlStore, Tenant
from ai_gateway.web._asgi import REQUEST_ID
from ai_gateway.web.admin_usage import add_usage_routes

__all__ = ["create_admin_app"]

log = logging.getLogger("ai_gateway.admin")


Scope = Literal["chat", "models", "usage:read", "admin"]
Period = Literal["day", "month", "total"]
Count = Annotated[StrictInt, Field(gt=0, le=1_000_000_000)]
# Up to 10 million USD with 6 decimals: at most 14 digits, so the JSON float round-trips exactly.
Money = Annotated[Decimal, Field(ge=0, le=10_000_000, decimal_places=6)]
KeyName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f\x7f]+$")]
Pattern = Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[^\s\x00-\x1f\x7f]+$")]
TenantName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]


def _default_scopes() -> list[Scope]:
    return ["chat", "models"]


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid")

    budget_usd: Money | None = None
    budget_period: Period | None = None
    rpm: Count | None = None
    tpm: Count | None = None

    def limits(self) -> Limits:
        return Limits(self.rpm, self.tpm, self.budget_usd, self.budget_period)


def _check_budget(model: _Input) -> None:
    # No default period: guessing how often money resets is not the gateway's call.
    if model.budget_usd is not None and model.budget_period is None:
        raise ValueError("budget_period (day, month or total) is required with budget_usd")


class TenantIn(_Input):
    name: TenantName

    @model_validator(mode="after")
    def _valid(self) -> Any:
        if self.name.startswith("ten_"):
            raise ValueError("name must not start with 'ten_' (that prefix is reserved for ids)")
        _check_budget(self)
        return self


class KeyPatch(_Input):
    """Fields left out are unchanged; `null` clears a limit, the model patterns, or the expiry."""

    name: KeyName | None = None
    scopes: Annotated[list[Scope], Field(min_length=1)] | None = None
    models: Annotated[list[Pattern], Field(min_length=1, max_length=100)] | None = None
    expires_at: datetime | None = None
    cache: StrictBool | None = Field(None, description="false: the response cache neither serves nor stores")

    @model_validator(mode="after")
    def _future_expiry(self) -> Any:
        if self.expires_at is not None:
            self.expires_at = _utc(self.expires_at)
            if self.expires_at <= datetime.now(UTC):
                raise ValueError("expires_at must be in the future (revoke a key with DELETE instead)")
        return self


class KeyIn(KeyPatch):
    tenant: Annotated[str, Field(min_length=1, max_length=64, description="tenant id or name")]
    name: KeyName
    scopes: Annotated[list[Scope], Field(min_length=1)] = Field(default_factory=_default_scopes)
    cache: StrictBool = True

    @model_validator(mode="after")
    def _valid(self) -> Any:
        _check_budget(self)
        return self


class TenantOut(BaseModel):
    id: str
    object: Literal["tenant"] = "tenant"
    name: str
    rpm: int | None
    tpm: int | None
    budget_usd: float | None
    budget_period: Period | None
    created_at: datetime


class KeyOut(BaseModel):
    id: str
    object: Literal["api_key"] = "api_key"
    name: str
    tenant_id: str
    tenant: str
    display: str = Field(
        description="the key's prefix and last 4 characters; the key itself is never shown again"
    )
    scopes: list[str]
    models: list[str] | None = Field(description="allowed model/route patterns; null allows every model")
    rpm: int | None
    tpm: int | None
    budget_usd: float | None
    budget_period: Period | None
    expires_at: datetime | None
    created_at: datetime
    revoked_at: datetime | None
    cache: bool = Field(description="whether the response cache serves and stores this key's calls")


class KeyCreated(KeyOut):
    key: str = Field(description="the API key, shown this once only")


class TenantList(BaseModel):
    object: Literal["list"] = "list"
    data: list[TenantOut]
    has_more: bool
    last_id: str | None


class KeyList(BaseModel):
    object: Literal["list"] = "list"
    data: list[KeyOut]
    has_more: bool
    last_id: str | None


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(BaseModel):
    error: ErrorDetail
    request_id: str


_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in (
        (400, "invalid request"),
        (401, "missing, unknown, expired or revoked key"),
        (403, "the key lacks the admin scope"),
        (404, "unknown id"),
        (409, "conflict"),
        (503, "database unreachable"),
    )
}
Limit = Annotated[int, Query(ge=1, le=100, description="page size")]
After = Annotated[str | None, Query(max_length=64, description="the last id of the previous page")]
KeyId = Annotated[str, Path(max_length=64)]


def _utc(value: datetime) -> datetime:
    """A timestamp without an offset is read as UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _money(value: Decimal | None) -> float | None:
    return None if value is None else float(value)


def _tenant_out(t: Tenant) -> TenantOut:
    lim = t.limits
    return TenantOut(
        id=t.id,
        name=t.name,
        rpm=lim.rpm,
        tpm=lim.tpm,
        budget_usd=_money(lim.budget_usd),
        budget_period=lim.budget_period,
        created_at=t.created_at,
    )


def _key_fields(k: ApiKey) -> dict[str, Any]:
    lim = k.limits
    return {
        "id": k.id,
        "name": k.name,
        "tenant_id": k.tenant_id,
        "tenant": k.tenant_name,
        "display": k.display,
        "scopes": list(k.scopes),
        "models": None if k.models is None else list(k.models),
        "rpm": lim.rpm,
        "tpm": lim.tpm,
        "budget_usd": _money(lim.budget_usd),
        "budget_period": lim.budget_period,
        "expires_at": k.expires_at,
        "created_at": k.created_at,
        "revoked_at": k.revoked_at,
        "cache": k.cache,
    }


def _error(err: GatewayError, request: Request) -> JSONResponse:
    body = {
        "error": {"message": err.message, "type": err.type, "param": err.param, "code": err.code},
        "request_id": request.scope.get(REQUEST_ID, ""),
    }
    headers = dict(err.headers)
    if err.retry_after is not None:
        headers["retry-after"] = str(max(1, round(err.retry_after)))
    return JSONResponse(body, status_code=err.status, headers=headers)


def _validation_error(exc: RequestValidationError) -> InvalidRequestError:
    first = exc.errors()[0] if exc.errors() else {}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
    param = ".".join(loc) or None
    kind = first.get("type", "")
    if kind == "json_invalid":
        return InvalidRequestError("The request body is not valid JSON.", code="invalid_json")
    if kind == "extra_forbidden":
        return InvalidRequestError(f"Unknown field '{param}'.", param=param, code="unknown_field")
    if kind == "missing" and param is None:
        return InvalidRequestError("Send a JSON object as the request body.", code="invalid_request")
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    return InvalidRequestError(f"{param}: {message}" if param else message, param=param)


def create_admin_app(store: SqlStore, auth: Authenticator, reports: Reports) -> FastAPI:
    app = FastAPI(
        title="AI Gateway admin API",
        version=__version__,
        description="Tenants, API keys and usage reports. Every route needs a key with the `admin` scope.",
        docs_url="/docs",
        redoc_url=None,
        openapi_url="/openapi.json",
        swagger_ui_oauth2_redirect_url=None,
        # Declared for the OpenAPI document only; web/app.py has already checked the key.
        dependencies=[
            Depends(HTTPBearer(auto_error=False)),
            Depends(APIKeyHeader(name="x-api-key", auto_error=False)),
        ],
    )

    @app.exception_handler(GatewayError)
    async def _gateway_error(request: Request, exc: GatewayError) -> JSONResponse:
        return _error(exc, request)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(_validation_error(exc), request)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        if exc.status_code == 405:
            allow = (exc.headers or {}).get("Allow", "")
            err: GatewayError = MethodNotAllowedError(
                f"Method {request.method} is not allowed here.", headers={"allow": allow}
            )
        else:
            err = NotFoundError(f"Unknown admin path {request.url.path!r}.", code="not_found")
        return _error(err, request)

    async def tenant_ref(ref: str, param: str | None) -> Tenant:
        tenant = await asyncio.to_thread(store.find_tenant, ref)
        if tenant is None:
            message = f"No tenant with id or name '{ref}'."
            if param:  # a reference inside a request body is a bad request, not a missing resource
                raise InvalidRequestError(message, param=param, code="tenant_not_found")
            raise NotFoundError(message, code="tenant_not_found")
        return tenant

    async def key_or_404(key: ApiKey | None) -> ApiKey:
        if key is None:
            raise NotFoundError("No key with that id.", code="key_not_found")
        return key

    @app.post("/admin/tenants", status_code=201, responses=_ERRORS)
    async def create_tenant(body: TenantIn) -> TenantOut:
        return _tenant_out(await asyncio.to_thread(store.create_tenant, body.name, body.limits()))

    @app.get("/admin/tenants", responses=_ERRORS)
    async def list_tenants(limit: Limit = 20, after: After = None) -> TenantList:
        page = await asyncio.to_thread(store.list_tenants, limit, after)
        data = [_tenant_out(t) for t in page.items]
        return TenantList(data=data, has_more=page.has_more, last_id=data[-1].id if data else None)

    @app.get("/admin/tenants/{tenant_id}", responses=_ERRORS)
    async def get_tenant(tenant_id: Annotated[str, Path(max_length=64)]) -> TenantOut:
        return _tenant_out(await tenant_ref(tenant_id, None))

    @app.post("/admin/keys", status_code=201, responses=_ERRORS)
    async def create_key(body: KeyIn) -> KeyCreated:
        tenant = await tenant_ref(body.tenant, "tenant")
        secret = generate_key()
        spec = KeySpec(
            tenant_id=tenant.id,
            name=body.name,
            key_hash=auth.digest(secret),
            key_prefix=KEY_PREFIX,
            key_last4=secret[-4:],
            scopes=tuple(dict.fromkeys(body.scopes)),
            models=None if body.models is None else tuple(dict.fromkeys(body.models)),
            limits=body.limits(),
            expires_at=body.expires_at,
            cache=body.cache,
        )
        key = await asyncio.to_thread(store.create_key, spec)
        await auth.key_changed(key.id)  # ends open mode, here and on the other replicas
        log.info("created key %s (%s) for tenant %s", key.id, key.display, tenant.id)
        return KeyCreated(**_key_fields(key), key=secret)

    @app.get("/admin/keys", responses=_ERRORS)
    async def list_keys(
        limit: Limit = 20, after: After = None, tenant: Annotated[str | None, Query(max_length=64)] = None
    ) -> KeyList:
        tenant_id = (await tenant_ref(tenant, None)).id if tenant else None
        page = await asyncio.to_thread(store.list_keys, limit, after, tenant_id)
        data = [KeyOut(**_key_fields(k)) for k in page.items]
        return KeyList(data=data, has_more=page.has_more, last_id=data[-1].id if data else None)

    @app.get("/admin/keys/{key_id}", responses=_ERRORS)
    async def get_key(key_id: KeyId) -> KeyOut:
        return KeyOut(**_key_fields(await key_or_404(await asyncio.to_thread(store.get_key, key_id))))

    @app.patch("/admin/keys/{key_id}", responses=_ERRORS)
    async def patch_key(key_id: KeyId, body: KeyPatch) -> KeyOut:
        current = await key_or_404(await asyncio.to_thread(store.get_key, key_id))
        changes = body.model_dump(include=body.model_fields_set)
        for field in ("scopes", "models"):
            if changes.get(field) is not None:
                changes[field] = list(dict.fromkeys(changes[field]))
        for field in ("name", "scopes", "cache"):
            if field in changes and changes[field] is None:
                raise InvalidRequestError(f"{field} cannot be null.", param=field)
        budget = changes.get("budget_usd", current.limits.budget_usd)
        if budget is not None and changes.get("budget_period", current.limits.budget_period) is None:
            raise InvalidRequestError("budget_period is required with budget_usd.", param="budget_period")
        key = await key_or_404(await asyncio.to_thread(store.update_key, key_id, changes))
        await auth.key_changed(key.id)
        return KeyOut(**_key_fields(key))

    @app.delete("/admin/keys/{key_id}", responses=_ERRORS)
    async def revoke_key(key_id: KeyId) -> KeyOut:
        key = await key_or_404(await asyncio.to_thread(store.revoke_key, key_id))
        await auth.key_changed(key.id)  # every replica drops it from its cache now
        log.info("revoked key %s (%s)", key.id, key.display)
        return KeyOut(**_key_fields(key))

    add_usage_routes(app, reports, _ERRORS)
    return app
