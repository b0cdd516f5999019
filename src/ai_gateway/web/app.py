"""The ASGI application: a route table, the lifespan, error rendering.

Everything stateful (HTTP pool, providers, pipeline, key store, authenticator) is built here in the app
factory and handed to the handlers; there is no module-level mutable state.

Every request is authenticated and its scope checked (policy/auth.py, ENDPOINT_SCOPES) before a route is
looked up or a body is read; `/admin/*`, `/docs` and `/openapi.json` are then handed to the FastAPI admin
app (web/admin.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ai_gateway.errors import GatewayError, MethodNotAllowedError, NotFoundError
from ai_gateway.policy.accounting import Services
from ai_gateway.policy.auth import (
    PRINCIPAL,
    Authenticator,
    load_hash_secret,
    principal_of,
    require,
    required_scopes,
)
from ai_gateway.policy.budgets import Budgets, SeedFn
from ai_gateway.policy.cache import build_response_cache
from ai_gateway.policy.ledger import Ledger, LedgerSink, default_spool_path
from ai_gateway.policy.limits import build_limiter
from ai_gateway.policy.pipeline import Pipeline
from ai_gateway.policy.pricing import Pricing
from ai_gateway.providers import build_providers
from ai_gateway.providers._http import HttpClient
from ai_gateway.settings import ConfigError, ConfigProblem, Settings
from ai_gateway.stores._redis import RespClient, connect
from ai_gateway.stores.budgets_memory import MemoryBudgets
from ai_gateway.stores.budgets_redis import RedisBudgets
from ai_gateway.stores.ledger_sql import SqlLedgerSink
from ai_gateway.stores.reports import Reports
from ai_gateway.stores.revocations import RedisRevocations
from ai_gateway.stores.sql import SqlStore
from ai_gateway.web._asgi import (
    REQUEST_ID,
    ClientGone,
    Message,
    Receive,
    Request,
    Scope,
    Send,
    json_bytes,
)
from ai_gateway.web.calls import ACCOUNTED, OPENAI, SIMPLE, handle_call
from ai_gateway.web.messages import ANTHROPIC, handle_count_tokens, is_messages_path
from ai_gateway.web.usage import UsageEndpoint

__all__ = ["GatewayApp", "create_app", "preflight"]

log = logging.getLogger("ai_gateway")

Handler = Callable[[Request, Send], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
_MODELS_TTL_S = 60.0
_READY_DB_TIMEOUT_S = 2.0
_ADMIN_PATHS = ("/docs", "/openapi.json")
_FORM_TYPES = (b"application/x-www-form-urlencoded", b"text/plain")
_SPOOL_SLOTS = 64
_GC_GEN0 = 20_000
_CALL_PATHS = {
    "/v1/chat/completions": "openai_chat",
    "/v1/chat": "simple_chat",
    "/v1/messages": "anthropic_messages",
}


class _TrackedSend:
    """Remembers whether the response has started, so an error after that is not rendered twice."""

    __slots__ = ("_send", "started")

    def __init__(self, send: Send) -> None:
        self._send = send
        self.started = False

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)


class GatewayApp:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.http = HttpClient()
        self.store, self.auth = _build_auth(settings)
        self.services, self._redis, self._sink = _build_services(settings, self.store)
        self.pipeline = Pipeline(settings, build_providers(settings, self.http), self.services)
        self.reports = Reports(settings.database_url)  # connects on first use
        self._admin_app: ASGIApp | None = None  # built on the first admin call (the `admin` property)
        self.draining = False
        self._models_at = -_MODELS_TTL_S
        self._routes: dict[str, dict[str, Handler]] = {
            "/v1/chat/completions": {"POST": self._chat_completions},
            "/v1/chat": {"POST": self._simple_chat},
            "/v1/messages": {"POST": self._messages},
            "/v1/messages/count_tokens": {"POST": self._count_tokens},
            "/v1/models": {"GET": self._models},
            "/v1/usage": {"GET": UsageEndpoint(self.reports)},
            "/healthz": {"GET": self._healthz},
            "/readyz": {"GET": self._readyz},
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.auth.start()
                if self.services.ledger is not None:
                    await self.services.ledger.start()
                # Everything built so far (modules, settings, the ORM and OpenAPI models) lives for the
                # whole process: move it out of the collector's reach, or every full collection walks
                # it again and stalls the loop for tens of milliseconds under load.
                gc.collect()
                gc.freeze()
                # Requests allocate many short-lived objects; young collections every 700 allocations
                # cost more than they free here. A larger first threshold keeps memory bounded anyway.
                gc.set_threshold(_GC_GEN0, 20, 20)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                # uvicorn calls this once in-flight requests are done (or its graceful timeout passed).
                self.draining = True
                await self._close_services()
                await self.http.close()
                await self.auth.close()
                await asyncio.to_thread(self.store.close)
                await asyncio.to_thread(self.reports.close)
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _close_services(self) -> None:
        services = self.services
        for closer in (services.limiter, services.cache, services.budgets):
            if closer is not None:
                try:
                    await closer.aclose()
                except Exception:  # shutting down: log and carry on closing the rest
                    log.exception("closing %s failed", type(closer).__name__)
        if services.ledger is not None:
            await services.ledger.drain(self.settings.ledger.drain_timeout_s)
        await asyncio.to_thread(self._sink.close)
        if self._redis is not None:
            await self._redis.aclose()

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        req = Request(scope, receive)
        tracked = _TrackedSend(send)
        try:
            accepted = required_scopes(req.path)
            if accepted:  # () is a public endpoint: no key is even looked at
                principal = await self.auth.authenticate(scope["headers"], scope.get("client"))
                require(principal, accepted)
                scope[PRINCIPAL] = principal
            if req.path.startswith("/admin/") or req.path == "/admin" or req.path in _ADMIN_PATHS:
                await self._admin(req, tracked)
                return
            methods = self._routes.get(req.path.rstrip("/") or "/")
            if methods is None:
                raise NotFoundError(f"Unknown path {req.path!r}.", code="not_found")
            handler = methods.get(req.method)
            if handler is None:
                allow = ", ".join(methods)
                raise MethodNotAllowedError(
                    f"Method {req.method} is not allowed on {req.path}; use {allow}.",
                    headers={"allow": allow},
                )
            await handler(req, tracked)
        except ClientGone:
            return
        except GatewayError as err:
            if not tracked.started:
                await send_error(send, req.request_id, err, req.path)
            if req.path in _CALL_PATHS and not scope.get(ACCOUNTED):
                await self._account_refusal(req, err)
        except Exception:
            log.exception("unhandled error in request %s", req.request_id)
            if not tracked.started:
                internal = GatewayError(
                    "The gateway hit an internal error; the request id identifies it in the logs."
                )
                await send_error(send, req.request_id, internal, req.path)

    async def _account_refusal(self, req: Request, err: GatewayError) -> None:
        """A model call refused before its handler ran (no or bad key, wrong scope, wrong method) still
        leaves its one ledger row."""
        ctx = self.pipeline.new_context(req.request_id, principal_of(req.scope), _CALL_PATHS[req.path])
        await self.pipeline.finish(ctx, err)

    # --- handlers -----------------------------------------------------------------------------------
    async def _admin(self, req: Request, send: Send) -> None:
        req.scope[REQUEST_ID] = req.request_id
        # `curl -d` labels JSON as a form; like the model endpoints, the admin API reads bodies as JSON.
        # (No CSRF angle: the key travels in a header, which no browser adds cross-site.)
        req.scope["headers"] = [
            (k, b"application/json" if k == b"content-type" and v.startswith(_FORM_TYPES) else v)
            for k, v in req.scope["headers"]
        ]
        extra = [(b"x-request-id", req.request_id.encode()), (b"cache-control", b"no-store")]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.admin(req.scope, req.receive, send_with_headers)

    @property
    def admin(self) -> ASGIApp:
        """The admin API (FastAPI, web/admin.py), imported and built when first called: it is most of
        the start-up time and ~10 MB that the model endpoints never use."""
        if self._admin_app is None:
            from ai_gateway.web.admin import create_admin_app

            self._admin_app = create_admin_app(self.store, self.auth, self.reports)
        return self._admin_app

    async def _chat_completions(self, req: Request, send: Send) -> None:
        await handle_call(OPENAI, req, send, self.pipeline, self.settings.server)

    async def _simple_chat(self, req: Request, send: Send) -> None:
        await handle_call(SIMPLE, req, send, self.pipeline, self.settings.server)

    async def _messages(self, req: Request, send: Send) -> None:
        await handle_call(ANTHROPIC, req, send, self.pipeline, self.settings.server)

    async def _count_tokens(self, req: Request, send: Send) -> None:
        await handle_count_tokens(req, send, self.pipeline, self.settings.server)

    async def _models(self, req: Request, send: Send) -> None:
        loop = asyncio.get_running_loop()
        if loop.time() - self._models_at > _MODELS_TTL_S:
            await self.pipeline.discover_models()
            self._models_at = loop.time()
        data = [
            {"id": model_id, "object": "model", "created": 0, "owned_by": owner}
            for model_id, owner in self.pipeline.listing(principal_of(req.scope))
        ]
        await send_json(send, 200, {"object": "list", "data": data}, req.request_id)

    async def _healthz(self, req: Request, send: Send) -> None:
        await send_json(send, 200, {"status": "ok"}, req.request_id)

    async def _readyz(self, req: Request, send: Send) -> None:
        providers = {
            name: (ps.not_configured and f"not configured: {ps.not_configured}") or "configured"
            for name, ps in ((n, p.settings) for n, p in self.pipeline.providers.items())
        }
        breakers = self.pipeline.breakers.states()
        try:
            await asyncio.wait_for(asyncio.to_thread(self.store.ping), _READY_DB_TIMEOUT_S)
            database = "ok"
        except (GatewayError, TimeoutError):
            database = "unreachable"
        ready = not self.draining and database == "ok"
        status = 200 if ready else 503
        body = {
            "status": "ready" if ready else "draining" if self.draining else "database unreachable",
            "database": database,
            "providers": providers,
            "breakers": breakers,
        }
        await send_json(send, status, body, req.request_id)


async def send_json(
    send: Send, status: int, body: Any, request_id: str, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    payload = json_bytes(body)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        (b"x-request-id", request_id.encode()),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


async def send_error(send: Send, request_id: str, err: GatewayError, path: str = "") -> None:
    """The error in the shape of the API at `path`: Anthropic's under /v1/messages, else OpenAI's."""
    extra = [(k.lower().encode(), v.encode()) for k, v in err.headers.items()]
    if err.retry_after is not None:
        extra.append((b"retry-after", str(max(1, round(err.retry_after))).encode()))
    if err.status == 401:
        extra.append((b"www-authenticate", b'Bearer realm="ai-gateway"'))
    dialect = ANTHROPIC if is_messages_path(path) else OPENAI
    await send_json(send, err.status, dialect.error_body(err, request_id), request_id, extra)


def _build_auth(settings: Settings) -> tuple[SqlStore, Authenticator]:
    """Connect, migrate, and read whether any key exists: blocking, once, before the server starts.
    Raises ServiceUnavailableError (database unreachable) or ConfigError (hashing secret unusable)."""
    store = SqlStore(settings.database_url)
    store.upgrade()
    secret = load_hash_secret(settings.auth.key_hash_secret, store.sqlite_file)
    feed = RedisRevocations(settings.redis_url, store.installation_id()) if settings.redis_url else None
    auth = Authenticator(store, secret, settings.master_key, ttl_s=settings.auth.cache_ttl_s, feed=feed)
    auth.load()
    return store, auth


def _build_services(settings: Settings, store: SqlStore) -> tuple[Services, RespClient | None, SqlLedgerSink]:
    """Pricing, limits, cache, budgets and the ledger: in-process, or shared through Redis."""
    redis = connect(settings.redis_url, settings.limits.backend_timeout_s) if settings.redis_url else None
    sink, seed = _ledger_backend(settings, store)
    reservation_ttl = settings.server.deadline_s + 60
    budgets: Budgets
    if settings.redis_url:
        budgets = Budgets(
            RedisBudgets(connect(settings.redis_url, 0.25), seed=seed, reservation_ttl_s=reservation_ttl),
            fallback=lambda s: MemoryBudgets(seed=s, reservation_ttl_s=reservation_ttl),
            seed=seed,
        )
    else:
        budgets = Budgets(MemoryBudgets(seed=seed, reservation_ttl_s=reservation_ttl))
    services = Services(
        pricing=Pricing(settings.prices),
        limiter=build_limiter(settings, redis),
        cache=build_response_cache(settings, redis),
        budgets=budgets,
        ledger=_open_ledger(sink, settings, store),
    )
    return services, redis, sink


def _open_ledger(sink: LedgerSink, settings: Settings, store: SqlStore) -> Ledger:
    """A configured spool path is used as is. The default is a numbered slot next to the database: each
    process (uvicorn worker, or a replica sharing the directory) locks the first free one, and a
    restarted process takes its old slot back and replays what it left there."""
    if settings.ledger.spool_path:
        return Ledger(sink, settings.ledger.spool_path)
    base = default_spool_path(store.sqlite_file)
    for slot in range(_SPOOL_SLOTS):
        path = base if slot == 0 else base.with_name(f"{base.stem}.{slot}{base.suffix}")
        try:
            return Ledger(sink, path)
        except ConfigError:
            continue  # locked by another live process
    raise ConfigError(
        [
            ConfigProblem(
                "ledger.spool_path",
                f"all {_SPOOL_SLOTS} default spool slots are in use",
                "set ledger.spool_path",
            )
        ]
    )


def _ledger_backend(settings: Settings, store: SqlStore) -> tuple[SqlLedgerSink, SeedFn]:
    """The ledger's SQL sink (its own pool and threads, apart from auth's) and the budget seed: what a
    key or tenant already spent in a window, summed once per window from the ledger."""
    sink = SqlLedgerSink(settings.database_url)
    return sink, sink.seed_spent


def create_app(settings: Settings) -> GatewayApp:
    return GatewayApp(settings)


def preflight(settings: Settings) -> bool:
    """Run once by `serve --workers N` before any worker starts: reach and migrate the database and
    create the key hashing secret, so the workers find both ready instead of racing to make them.
    Returns whether the gateway is in open mode; raises as `create_app` does."""
    # No revocation feed: one read of the key table needs no Redis.
    store, auth = _build_auth(dataclasses.replace(settings, redis_url=None))
    store.close()
    return auth.open_mode
