"""Helpers for the provider tests: build settings and requests, and drive an adapter's real
`complete()` / `stream()` either against scripted upstream bytes (no socket at all) or against the mock
upstream server (loopback only)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import orjson

from ai_gateway.errors import ProviderError
from ai_gateway.providers import Provider
from ai_gateway.providers._http import HttpClient, UpstreamResponse
from ai_gateway.settings import ProviderSettings, Timeouts
from ai_gateway.types import ChatRequest, ChatResponse, Message, StreamEvent, TextDelta, TextPart

MARKER = "MOCK-UPSTREAM-ERROR-BODY"
FAST = Timeouts(connect=2.0, first_byte=5.0, idle=5.0, total=10.0)


def settings(type_: str, base_url: str = "http://upstream.invalid", **kw: Any) -> ProviderSettings:
    kw.setdefault("name", type_)
    kw.setdefault("timeouts", FAST)
    return ProviderSettings(type=type_, base_url=base_url, **kw)  # type: ignore[arg-type]


def user(text: str) -> Message:
    return Message("user", [TextPart(text)])


def request(text: str = "hello there", **kw: Any) -> ChatRequest:
    return ChatRequest(model="m", messages=[user(text)], **kw)


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


class Scripted(UpstreamResponse):
    """An upstream response made of fixed bytes; the real SSE/NDJSON parsing runs over it."""

    def __init__(self, body: bytes, status: int = 200) -> None:
        self._body = body
        self.status = status
        self.headers = {}  # type: ignore[assignment]

    async def read(self) -> bytes:
        return self._body

    async def lines(self) -> AsyncIterator[bytes]:
        for line in self._body.split(b"\n"):
            yield line.rstrip(b"\r")

    def release(self) -> None:
        pass

    def close(self) -> None:
        pass


def _script(provider: Provider, body: bytes | dict[str, Any], seen: list[dict[str, Any]]) -> None:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)

    async def post(req: ChatRequest, model: str, deadline: float, stream: bool) -> UpstreamResponse:
        seen.append(provider._map_request(req, model, stream))
        return Scripted(raw)

    provider._post = post  # type: ignore[method-assign]


def scripted_complete(
    provider: Provider, body: bytes | dict[str, Any], req: ChatRequest | None = None
) -> ChatResponse:
    _script(provider, body, [])
    result: ChatResponse = run(provider.complete(req or request(), "m", deadline=1e12))
    return result


def scripted_stream(
    provider: Provider, body: bytes, req: ChatRequest | None = None
) -> tuple[list[StreamEvent], ProviderError | None]:
    _script(provider, body, [])
    return run(_collect(provider.stream(req or request(stream=True), "m", deadline=1e12)))


async def _collect(events: AsyncIterator[StreamEvent]) -> tuple[list[StreamEvent], ProviderError | None]:
    out: list[StreamEvent] = []
    try:
        async for event in events:
            out.append(event)
    except ProviderError as exc:
        return out, exc
    return out, None


def sse(*chunks: dict[str, Any] | str, event: str | None = None) -> bytes:
    """SSE bytes: dicts become `data: <json>`, strings are written as given (e.g. `data: [DONE]`)."""
    out = b""
    for chunk in chunks:
        head = f"event: {event}\n".encode() if event else b""
        line = chunk.encode() if isinstance(chunk, str) else b"data: " + orjson.dumps(chunk)
        out += head + line + b"\n\n"
    return out


def live(cls: type[Provider], ps: ProviderSettings) -> _Live:
    return _Live(cls, ps)


class _Live:
    """Drives one adapter against the mock upstream, with a fresh HTTP client per call."""

    def __init__(self, cls: type[Provider], ps: ProviderSettings) -> None:
        self.cls = cls
        self.ps = ps

    async def _with(self, body: Any) -> Any:
        http = HttpClient()
        try:
            deadline = asyncio.get_running_loop().time() + 15
            return await body(self.cls(self.ps, http), deadline)
        finally:
            await http.close()

    def complete(self, req: ChatRequest, model: str = "mock-model") -> ChatResponse:
        result: ChatResponse = run(self._with(lambda p, d: p.complete(req, model, d)))
        return result

    def stream(
        self, req: ChatRequest, model: str = "mock-model"
    ) -> tuple[list[StreamEvent], ProviderError | None]:
        req.stream = True
        return run(self._with(lambda p, d: _collect(p.stream(req, model, d))))

    def models(self) -> list[str]:
        result: list[str] = run(self._with(lambda p, d: p.list_models(d)))
        return result


def text_of(events: list[StreamEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))
