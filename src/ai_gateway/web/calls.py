"""Thin handlers for the model-call endpoints: parse (dialect) -> pipeline -> render (dialect).

Both ingress dialects share one flow; a `Dialect` bundles the pure functions that differ. The caller was
authenticated with the `chat` scope before its body was read (web/app.py); the pipeline checks its model
patterns once the route is known.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ai_gateway.dialects import openai_chat, simple_chat
from ai_gateway.errors import GatewayError, ProviderError, UpstreamError
from ai_gateway.policy.auth import principal_of
from ai_gateway.policy.fallback import OpenStream
from ai_gateway.policy.pipeline import CallContext, Pipeline
from ai_gateway.policy.pricing import format_usd
from ai_gateway.settings import ServerSettings
from ai_gateway.types import ChatRequest, ChatResponse, StreamEnd, StreamEvent, TextDelta, Usage, UsageEvent
from ai_gateway.web._asgi import ClientGone, Request, Send, json_bytes, until_disconnect

__all__ = ["ACCOUNTED", "OPENAI", "SIMPLE", "Dialect", "handle_call"]

log = logging.getLogger("ai_gateway.calls")

# Set in the ASGI scope once a call's accounting is in hand, so web/app.py records a ledger row itself
# only for calls refused before they got here (authentication, unknown paths under a model endpoint).
ACCOUNTED = "aigw.accounted"
_ENDPOINTS = {"openai": "openai_chat", "simple": "simple_chat", "anthropic": "anthropic_messages"}


class _Renderer(Protocol):
    def render(self, event: StreamEvent) -> bytes: ...
    def error(self, err: GatewayError) -> bytes: ...


@dataclass(frozen=True, slots=True)
class Dialect:
    name: str
    parse: Callable[[Any, int, int], ChatRequest]
    render: Callable[[ChatResponse, Request, CallContext, str, str], dict[str, Any]]
    stream_renderer: Callable[[ChatRequest, Request, CallContext, str, str], _Renderer]
    error_body: Callable[[GatewayError, str], dict[str, Any]]
    # Request headers that change the call (Anthropic `anthropic-beta`), read into the canonical request.
    from_headers: Callable[[ChatRequest, Request], None] | None = None


def _cost_usd(nanos: int | None) -> float | None:
    text = format_usd(nanos)
    return float(text) if text is not None else None


# --- OpenAI Chat Completions -------------------------------------------------------------------------


def _openai_render(
    resp: ChatResponse, req: Request, ctx: CallContext, provider: str, model: str
) -> dict[str, Any]:
    return openai_chat.render_response(
        resp, f"chatcmpl-{req.request_id}", f"{provider}/{model}", _cost_usd(ctx.cost_nanos)
    )


class _OpenAIStream:
    __slots__ = ("_inner", "_request_id")

    def __init__(self, chat: ChatRequest, req: Request, ctx: CallContext, provider: str, model: str) -> None:
        self._inner = openai_chat.StreamRenderer(
            f"chatcmpl-{req.request_id}",
            f"{provider}/{model}",
            chat.include_usage,
            lambda usage: _cost_usd(ctx.quote(usage)),
        )
        self._request_id = req.request_id

    def render(self, event: StreamEvent) -> bytes:
        return self._inner.render(event)

    def error(self, err: GatewayError) -> bytes:
        return self._inner.render_error(err, self._request_id)


OPENAI = Dialect("openai", openai_chat.parse_request, _openai_render, _OpenAIStream, openai_chat.render_error)


# --- the simple API ----------------------------------------------------------------------------------


def _simple_render(
    resp: ChatResponse, req: Request, ctx: CallContext, provider: str, model: str
) -> dict[str, Any]:
    return simple_chat.render_response(
        resp, req.request_id, provider, model, _cost_usd(ctx.cost_nanos), ctx.hit is not None, ctx.attempts
    )


class _SimpleStream:
    __slots__ = ("_ctx", "_model", "_provider", "_request_id", "_usage")

    def __init__(self, chat: ChatRequest, req: Request, ctx: CallContext, provider: str, model: str) -> None:
        self._provider = provider
        self._model = model
        self._request_id = req.request_id
        self._ctx = ctx
        self._usage: Usage | None = None

    def render(self, event: StreamEvent) -> bytes:
        if isinstance(event, TextDelta):
            return simple_chat.render_delta(event.text) if event.text else b""
        if isinstance(event, UsageEvent):
            self._usage = event.usage
        elif isinstance(event, StreamEnd):
            usage = event.usage or self._usage or Usage()
            cost = _cost_usd(self._ctx.quote(usage))
            cached = self._ctx.hit is not None
            return simple_chat.render_done(
                usage, cost, self._provider, self._model, cached, event.finish_reason
            )
        return b""

    def error(self, err: GatewayError) -> bytes:
        return (
            b"data: " + json_bytes(simple_chat.render_error(err, self._request_id, in_stream=True)) + b"\n\n"
        )


SIMPLE = Dialect(
    "simple",
    simple_chat.parse_request,
    _simple_render,
    _SimpleStream,
    lambda err, rid: simple_chat.render_error(err, rid),
)


# --- the shared flow ---------------------------------------------------------------------------------


def _call_headers(req: Request, ctx: CallContext, provider: str, model: str) -> list[tuple[bytes, bytes]]:
    headers = [
        (b"x-request-id", req.request_id.encode()),
        (b"x-aigw-provider", provider.encode()),
        (b"x-aigw-model", model.encode()),
        (b"x-aigw-attempts", str(ctx.upstream_calls).encode()),
        (b"x-aigw-cache", ctx.cache_state.encode()),
    ]
    if ctx.admission is not None:
        headers += ctx.admission.headers()
    return headers


async def handle_call(
    dialect: Dialect, req: Request, send: Send, pipeline: Pipeline, server: ServerSettings
) -> None:
    """One model call, accounted for exactly once (ledger row, settled limits and budget) whatever
    happens: bad input, refusal, upstream failure, client disconnect or success."""
    ctx = pipeline.new_context(req.request_id, principal_of(req.scope), _ENDPOINTS[dialect.name])
    req.scope[ACCOUNTED] = True
    try:
        body = await req.json(server.max_body_bytes)
        chat = dialect.parse(body, server.max_messages, server.max_output_tokens)
        if dialect.from_headers is not None:
            dialect.from_headers(chat, req)
        ctx.stream = chat.stream
        if chat.stream:
            opened = await until_disconnect(pipeline.open_stream(chat, ctx, req.headers), req.receive)
            await _stream(dialect, chat, req, send, pipeline, ctx, opened)
        else:
            result = await until_disconnect(pipeline.complete(chat, ctx, req.headers), req.receive)
            await _answer(
                dialect, req, send, ctx, result.response, result.target.provider, result.target.model
            )
    except ClientGone:
        await pipeline.finish(ctx, asyncio.CancelledError())
        raise
    except BaseException as exc:
        await pipeline.finish(ctx, exc)
        raise
    else:
        await pipeline.finish(ctx, ctx.stream_error)


async def _answer(
    dialect: Dialect,
    req: Request,
    send: Send,
    ctx: CallContext,
    response: ChatResponse,
    provider: str,
    model: str,
) -> None:
    ctx.cost_nanos = ctx.quote(response.usage or Usage())
    payload = json_bytes(dialect.render(response, req, ctx, provider, model))
    headers = _call_headers(req, ctx, provider, model)
    if ctx.cost_nanos is not None:
        headers.append((b"x-aigw-cost-usd", (format_usd(ctx.cost_nanos) or "0").encode()))
    headers.append((b"content-type", b"application/json"))
    headers.append((b"content-length", str(len(payload)).encode()))
    ctx.response_started = True
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


async def _stream(
    dialect: Dialect,
    chat: ChatRequest,
    req: Request,
    send: Send,
    pipeline: Pipeline,
    ctx: CallContext,
    opened: OpenStream,
) -> None:
    target = opened.target
    renderer = dialect.stream_renderer(chat, req, ctx, target.provider, target.model)
    headers = _call_headers(req, ctx, target.provider, target.model)
    headers += [
        (b"content-type", b"text/event-stream; charset=utf-8"),
        (b"cache-control", b"no-cache"),
        (b"x-accel-buffering", b"no"),
    ]

    async def pump() -> None:
        ctx.response_started = True
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        ctx.observe(opened.first)
        first = renderer.render(opened.first)
        if first:
            await send({"type": "http.response.body", "body": first, "more_body": True})
        try:
            async for event in opened.events:
                ctx.observe(event)
                chunk = renderer.render(event)
                if chunk:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except ProviderError as exc:
            # After the first byte there is no fallback: end the stream with a protocol-correct error.
            ctx.stream_error = exc
            pipeline.fallback.stream_failed(target, exc)
            log.warning("stream %s from %s broke: %s", req.request_id, target.label, exc.message)
            # Overload is told apart (Anthropic's `overloaded_error`): the client may try again later.
            overloaded = exc.status in (503, 529)
            err = UpstreamError(
                f"The upstream stream failed after it started: {exc.message}",
                code="upstream_overloaded" if overloaded else "upstream_stream_error",
            )
            await send({"type": "http.response.body", "body": renderer.error(err), "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    try:
        await until_disconnect(pump(), req.receive)
    except (ClientGone, OSError):
        log.info("client left stream %s; upstream call to %s cancelled", req.request_id, target.label)
        raise ClientGone from None
    finally:
        await _close(opened)


async def _close(opened: OpenStream) -> None:
    with contextlib.suppress(ProviderError, RuntimeError, asyncio.CancelledError):
        await asyncio.shield(opened.events.aclose())
