"""The ASGI application: a route table, the lifespan, error rendering.

Everything stateful (HTTP pool, providers, pipeline) is built here in the app factory and handed to the
handlers; there is no module-level mutable state.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ai_gateway.errors import GatewayError, MethodNotAllowedError, NotFoundError
from ai_gateway.policy.pipeline import Pipeline
from ai_gateway.providers import build_providers
from ai_gateway.providers._http import HttpClient
from ai_gateway.settings import Settings
from ai_gateway.web._asgi import ClientGone, Message, Receive, Request, Scope, Send, json_bytes
from ai_gateway.web.calls import OPENAI, SIMPLE, handle_call

__all__ = ["GatewayApp", "create_app"]

log = logging.getLogger("ai_gateway")

Handler = Callable[[Request, Send], Awaitable[None]]
_MODELS_TTL_S = 60.0


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
        self.pipeline = Pipeline(settings, build_providers(settings, self.http))
        self.draining = False
        self._models_at = -_MODELS_TTL_S
        self._routes: dict[str, dict[str, Handler]] = {
            "/v1/chat/completions": {"POST": self._chat_completions},
            "/v1/chat": {"POST": self._simple_chat},
            "/v1/models": {"GET": self._models},
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
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.draining = True
                await self.http.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        req = Request(scope, receive)
        tracked = _TrackedSend(send)
        try:
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
                await send_error(send, req.request_id, err)
        except Exception:
            log.exception("unhandled error in request %s", req.request_id)
            if not tracked.started:
                internal = GatewayError(
                    "The gateway hit an internal error; the request id identifies it in the logs."
                )
                await send_error(send, req.request_id, internal)

    # --- handlers -----------------------------------------------------------------------------------
    async def _chat_completions(self, req: Request, send: Send) -> None:
        await handle_call(OPENAI, req, send, self.pipeline, self.settings.server)

    async def _simple_chat(self, req: Request, send: Send) -> None:
        await handle_call(SIMPLE, req, send, self.pipeline, self.settings.server)

    async def _models(self, req: Request, send: Send) -> None:
        loop = asyncio.get_running_loop()
        if loop.time() - self._models_at > _MODELS_TTL_S:
            await self.pipeline.discover_models()
            self._models_at = loop.time()
        data = [
            {"id": model_id, "object": "model", "created": 0, "owned_by": owner}
            for model_id, owner in self.pipeline.router.listing()
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
        status = 503 if self.draining else 200
        body = {
            "status": "draining" if self.draining else "ready",
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


async def send_error(send: Send, request_id: str, err: GatewayError) -> None:
    extra = [(k.lower().encode(), v.encode()) for k, v in err.headers.items()]
    if err.retry_after is not None:
        extra.append((b"retry-after", str(max(1, round(err.retry_after))).encode()))
    if err.status == 401:
        extra.append((b"www-authenticate", b'Bearer realm="ai-gateway"'))
    body = {
        "error": {"message": err.message, "type": err.type, "param": err.param, "code": err.code},
        "request_id": request_id,
    }
    await send_json(send, err.status, body, request_id, extra)


def create_app(settings: Settings) -> GatewayApp:
    return GatewayApp(settings)
