"""Minimal ASGI plumbing for the hot path: body reading with a size cap, JSON parsing, responses,
and watching for a client that goes away.

The model-call endpoints sit on raw ASGI rather than a framework: they are the product's tax on every
call (STYLE.md measured FastAPI+pydantic at ~60% of a bare Starlette handler), and raw ASGI lets a
disconnect cancel the upstream call, stream or not.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from typing import Any, TypeVar

import orjson

from ai_gateway.errors import InvalidRequestError, RequestTooLargeError, UnsupportedMediaTypeError

__all__ = [
    "REQUEST_ID",
    "ClientGone",
    "Receive",
    "Request",
    "Scope",
    "Send",
    "json_bytes",
    "new_request_id",
    "until_disconnect",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
T = TypeVar("T")

REQUEST_ID = "ai_gateway.request_id"  # where the ASGI scope carries the request id for the admin app
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_JSON_TYPES = frozenset({"", "application/json", "application/x-www-form-urlencoded", "text/plain"})


# 32 hex characters: 16 random per process, then a counter. Unique across replicas (64 random bits per
# process) without a system call per request (uuid4 reads os.urandom each time: ~5% of a request's CPU).
_ID_PREFIX = os.urandom(8).hex()
_ID_COUNTER = itertools.count(int.from_bytes(os.urandom(4), "big"))


def new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_ID_COUNTER) & 0xFFFFFFFFFFFFFFFF:016x}"


class ClientGone(Exception):
    """The client disconnected before the response was complete."""


class Request:
    """The parts of an HTTP request the handlers need, decoded once."""

    __slots__ = ("_receive", "headers", "method", "path", "query", "request_id", "scope")

    def __init__(self, scope: Scope, receive: Receive) -> None:
        self.scope = scope
        self._receive = receive
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        self.query: bytes = scope.get("query_string", b"")
        self.headers: dict[str, str] = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        rid = self.headers.get("x-request-id", "")
        self.request_id = rid if _REQUEST_ID.match(rid) else new_request_id()

    @property
    def receive(self) -> Receive:
        return self._receive

    async def body(self, limit: int) -> bytes:
        declared = self.headers.get("content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                raise InvalidRequestError("Invalid Content-Length header.") from None
            if size > limit:
                raise _too_large(limit)
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > limit:
                raise _too_large(limit)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def json(self, limit: int) -> Any:
        ctype = self.headers.get("content-type", "")
        media, _, params = ctype.partition(";")
        media = media.strip().lower()
        if media not in _JSON_TYPES and not media.endswith("+json"):
            raise UnsupportedMediaTypeError(
                f"Unsupported Content-Type {media!r}; send the request body as application/json."
            )
        charset = params.strip().lower()
        if charset.startswith("charset=") and charset[8:].strip("\"' ") not in ("utf-8", "utf8"):
            raise UnsupportedMediaTypeError("Only UTF-8 encoded JSON bodies are accepted.")
        raw = await self.body(limit)
        if not raw.strip():
            raise InvalidRequestError("The request body is empty; send a JSON object.", code="invalid_json")
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise InvalidRequestError(
                f"The request body is not valid JSON: {exc.msg} (at position {exc.pos}).", code="invalid_json"
            ) from None


def _too_large(limit: int) -> RequestTooLargeError:
    return RequestTooLargeError(f"The request body is larger than the {limit} byte limit.")


def json_bytes(data: Any) -> bytes:
    return orjson.dumps(data)


async def _wait_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def until_disconnect(coro: Coroutine[Any, Any, T], receive: Receive) -> T:
    """Run `coro` in this task, cancelling it if the client disconnects first (then raise ClientGone).

    One watcher task reads `receive()` (after the body, the next message is the disconnect) and cancels
    this task; the call itself runs inline, so the common case costs one small task, not two plus an
    `asyncio.wait`.
    """
    current = asyncio.current_task()
    assert current is not None
    gone = False

    async def watch() -> None:
        nonlocal gone
        await _wait_disconnect(receive)
        gone = True
        current.cancel()

    watcher = asyncio.get_running_loop().create_task(watch())
    try:
        return await coro
    except asyncio.CancelledError:
        if gone:
            current.uncancel()
            raise ClientGone from None
        raise
    finally:
        watcher.cancel()
