"""A lean HTTP/1.1 client for the upstream calls: pooled keep-alive connections, httptools parsing.

The gateway makes one kind of call: a POST (or a GET for model lists) of a small JSON body to a few
fixed origins, then reads a sized JSON answer or a stream. aiohttp's client did that at ~23% of the
gateway's CPU per request (request and response objects, multidicts, URL objects, tracing hooks,
timers); here a call is one pooled connection, one `write` of the request, and httptools (C, the parser
uvicorn uses) for the response. Timeouts stay with the caller (`_http.py`, four clocks), as do the
error kinds: this module raises only OSError subclasses (ConnectionError when a connection is lost,
ConnectionRefusedError, TimeoutError for a connect that takes too long) and `BadResponse` (a ValueError)
for bytes that are not HTTP.

A connection goes back to the pool only when its response was read to the end and both sides keep it
alive; a response abandoned part-way closes its connection. Idle connections are dropped after
`keepalive_s` (servers close theirs after 5-75 s; a request on one the server just closed fails as
`reset`, which the retry policy treats like any lost connection). Bodies may arrive gzip- or
deflate-encoded (`accept-encoding: gzip, deflate` is sent, as aiohttp did) and are decoded here.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import cast
from urllib.parse import urlsplit

import httptools

__all__ = ["BadResponse", "Connection", "H1Pool", "Headers", "Origin", "split_url"]

_HIGH_WATER = 256 * 1024  # buffered body bytes before the socket stops being read
_LOW_WATER = 64 * 1024
MAX_HEADER_BYTES = 256 * 1024


class BadResponse(ValueError):
    """The upstream sent something that is not a well-formed HTTP/1.1 response."""


class Headers(dict[str, str]):
    """Response headers, names lower-cased; `get` and `[]` take any case. Repeated names are joined
    with ", " (RFC 9110 5.3)."""

    def get(self, name: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return super().get(name.lower(), default)

    def __getitem__(self, name: str) -> str:
        return super().__getitem__(name.lower())

    def __contains__(self, name: object) -> bool:
        return super().__contains__(name.lower() if isinstance(name, str) else name)


@dataclass(frozen=True, slots=True)
class Origin:
    scheme: str
    host: str
    port: int

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


@lru_cache(maxsize=256)
def split_url(url: str) -> tuple[Origin, str]:
    """(origin, request target) of an http(s) URL; ValueError for anything else."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Origin(parts.scheme, parts.hostname, port), target


def _check_header(name: str, value: str) -> None:
    if any(c in name for c in "\r\n:") or "\r" in value or "\n" in value:
        raise ValueError(f"header {name!r} holds a line break or colon; refusing to send it")


def encode_request(
    method: str, origin: Origin, target: str, headers: Mapping[str, str], body: bytes | None
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"host: {origin.host_header}", "accept-encoding: gzip, deflate"]
    for name, value in headers.items():
        _check_header(name, value)
        lines.append(f"{name}: {value}")
    if body is not None:
        lines.append(f"content-length: {len(body)}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head + body if body else head


class Connection(asyncio.Protocol):
    """One keep-alive connection, carrying one request and its response at a time."""

    def __init__(self, origin: Origin, loop: asyncio.AbstractEventLoop) -> None:
        self.origin = origin
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = 0.0
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers = Headers()
        self._header_bytes = 0
        self._headers_ready: asyncio.Future[None] = self._loop.create_future()
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self._done = False
        self._error: BaseException | None = None
        self._until_close = False
        self._informational = False
        self._decoder: zlib._Decompress | None = None
        self.keep_alive = False

    # --- asyncio.Protocol ------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(BadResponse("the upstream switched protocols"))
        except httptools.HttpParserError as exc:
            cause = exc.__context__ if isinstance(exc, httptools.HttpParserCallbackError) else None
            self._fail(cause if isinstance(cause, BadResponse) else BadResponse("malformed HTTP response"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._done:
            return
        if self._until_close and self._headers_ready.done():
            self._complete()  # a body delimited by the connection's end has ended
            return
        self._fail(ConnectionResetError("the upstream closed the connection"), abort=False)

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost follows

    # --- httptools callbacks ---------------------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > MAX_HEADER_BYTES:
            raise BadResponse(f"response headers over {MAX_HEADER_BYTES} bytes")
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        known = dict.get(self.headers, key)
        dict.__setitem__(self.headers, key, text if known is None else f"{known}, {text}")

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        if self.status < 200:  # 1xx (103 Early Hints from a CDN): the real response follows
            self._informational = True
            return
        self.keep_alive = self._parser.should_keep_alive()
        headers = self.headers
        self._until_close = (
            "content-length" not in headers
            and "chunked" not in (dict.get(headers, "transfer-encoding") or "").lower()
            and self.status >= 200
            and self.status not in (204, 304)
        )
        encoding = (dict.get(headers, "content-encoding") or "identity").strip().lower()
        if encoding in ("gzip", "x-gzip", "deflate"):
            self._decoder = zlib.decompressobj(47 if encoding != "deflate" else zlib.MAX_WBITS)
        elif encoding != "identity":
            raise BadResponse(f"unsupported content-encoding {encoding!r}")
        if not self._headers_ready.done():
            self._headers_ready.set_result(None)

    def on_body(self, body: bytes) -> None:
        if self._decoder is not None:
            try:
                body = self._decoder.decompress(body)
            except zlib.error:
                raise BadResponse("the body does not decode as its content-encoding says") from None
            if not body:
                return
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            self.headers = Headers()
            self._header_bytes = 0
            return
        self._complete()

    # --- the caller's side -----------------------------------------------------------------------------
    def send(self, request: bytes) -> None:
        self._reset()
        assert self._transport is not None
        self._transport.write(request)

    async def response_headers(self) -> None:
        await self._headers_ready

    async def read_chunk(self) -> bytes:
        """The body received since the last call (waiting for some), b"" at its end; raises what ended
        the connection early."""
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._done:
                return b""
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        # Everything buffered at once: a stream's chunks arrive many to a segment, and one read (one
        # idle-clock timer in the caller) per segment instead of per chunk is most of a stream's cost.
        chunks = self._chunks
        chunk = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._buffered = 0
        if self._paused and self._buffered < _LOW_WATER and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()
        return chunk

    @property
    def reusable(self) -> bool:
        return self._done and self.keep_alive and not self.closed and self._error is None

    def abort(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.abort()

    # --- internals -------------------------------------------------------------------------------------
    def _complete(self) -> None:
        if self._decoder is not None:
            tail = self._decoder.flush()
            if tail:
                self._chunks.append(tail)
            self._decoder = None
        self._done = True
        self._wake()

    def _fail(self, exc: BaseException, *, abort: bool = True) -> None:
        if self._error is None:
            self._error = exc
        if not self._headers_ready.done():
            self._headers_ready.set_exception(exc)
            self._headers_ready.exception()  # retrieved: a failure nobody awaited is not "never retrieved"
        self._wake()
        if abort:
            self.abort()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class H1Pool:
    """Keep-alive connections per origin, most recently used first."""

    def __init__(self, keepalive_s: float = 30.0) -> None:
        self._keepalive_s = keepalive_s
        self._idle: dict[Origin, list[Connection]] = {}
        self._tls: ssl.SSLContext | None = None

    async def acquire(self, origin: Origin, connect_timeout_s: float) -> Connection:
        loop = asyncio.get_running_loop()
        idle = self._idle.get(origin)
        now = loop.time()
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < self._keepalive_s:
                return conn
            conn.abort()
        try:
            async with asyncio.timeout(connect_timeout_s):
                _, conn = await loop.create_connection(
                    lambda: Connection(origin, loop),
                    origin.host,
                    origin.port,
                    ssl=self._tls_context() if origin.scheme == "https" else None,
                )
        except TimeoutError:
            raise TimeoutError(f"connecting to {origin.host}:{origin.port} timed out") from None
        return conn

    def release(self, conn: Connection) -> None:
        if not conn.reusable:
            conn.abort()
            return
        conn.idle_since = asyncio.get_running_loop().time()
        self._idle.setdefault(conn.origin, []).append(conn)

    def close(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                conn.abort()
        self._idle.clear()

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return self._tls
