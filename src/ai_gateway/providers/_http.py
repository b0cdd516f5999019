"""The upstream HTTP client: pooled keep-alive connections (`_h1.py`), four clocks, and the single place
where transport errors become `ProviderError`.

Clocks, per attempt (see research/reliability.md A5):
- connect: TCP/TLS connect;
- first byte: from sending the request until the response headers arrive;
- idle: the longest silence allowed between two reads of the body (streams: between chunks);
- deadline: the request's overall deadline (absolute, `loop.time()` based), shared by every retry and
  fallback attempt, so retries can never multiply the time a client waits.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from ai_gateway.errors import ProviderError, scrub
from ai_gateway.providers._h1 import Connection, H1Pool, Headers, encode_request, split_url
from ai_gateway.settings import Timeouts

__all__ = ["HttpClient", "Sse", "UpstreamResponse", "parse_retry_after"]

MAX_BODY_BYTES = 32 * 1024 * 1024  # a non-stream upstream answer larger than this is refused
MAX_LINE_BYTES = 8 * 1024 * 1024  # one SSE/NDJSON line


@dataclass(slots=True)
class Sse:
    event: str | None
    data: str


def parse_retry_after(value: str | None) -> float | None:
    """`Retry-After` as seconds: either delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class UpstreamResponse:
    """A response whose headers have arrived; the body is read under the idle clock and the deadline."""

    def __init__(
        self, conn: Connection, pool: H1Pool, timeouts: Timeouts, deadline: float, label: str
    ) -> None:
        self._conn = conn
        self._pool = pool
        self._timeouts = timeouts
        self._deadline = deadline
        self._label = label
        self.status = conn.status
        self.headers: Headers = conn.headers

    def _read_deadline(self) -> float:
        return min(asyncio.get_running_loop().time() + self._timeouts.idle, self._deadline)

    async def read(self) -> bytes:
        conn = self._conn
        chunks: list[bytes] = []
        size = 0
        with _mapped(self._label, "reading the response body"):
            while True:
                async with asyncio.timeout_at(self._read_deadline()):
                    chunk = await conn.read_chunk()
                if not chunk:
                    break
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    raise ProviderError(
                        "bad_response", f"{self._label}: response larger than {MAX_BODY_BYTES} bytes"
                    )
                chunks.append(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def json(self) -> Any:
        body = await self.read()
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            raise ProviderError("bad_response", f"{self._label}: response is not valid JSON") from None

    async def lines(self) -> AsyncIterator[bytes]:
        """Body lines without their line ending, each read under the idle clock."""
        conn = self._conn
        loop = asyncio.get_running_loop()
        idle = self._timeouts.idle
        pending = b""
        # One read (and one idle-clock timer) per network chunk, not per line: an upstream packs many
        # SSE lines into one segment, and a timer per line showed up as ~13% of a stream's CPU.
        with _mapped(self._label, "reading the stream"):
            while True:
                async with asyncio.timeout_at(min(loop.time() + idle, self._deadline)):
                    chunk = await conn.read_chunk()
                if not chunk:
                    if pending:
                        # The connection ended in the middle of a line: the upstream was cut off.
                        raise ProviderError("reset", f"{self._label}: stream ended mid-line")
                    return
                *complete, pending = (pending + chunk).split(b"\n")
                if len(pending) > MAX_LINE_BYTES:
                    raise ProviderError(
                        "bad_response", f"{self._label}: stream line over {MAX_LINE_BYTES} bytes"
                    )
                for line in complete:
                    yield line[:-1] if line[-1:] == b"\r" else line

    async def sse(self) -> AsyncIterator[Sse]:
        """Server-sent events; comment lines (`: ...`, as OpenRouter sends) are ignored."""
        event: str | None = None
        data: list[str] = []
        async for raw in self.lines():
            if not raw:
                if data:
                    yield Sse(event, "\n".join(data))
                event, data = None, []
                continue
            line = raw.decode("utf-8", "replace")
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            if value.startswith(" "):
                value = value[1:]
            if name == "data":
                data.append(value)
            elif name == "event":
                event = value
        if data:
            yield Sse(event, "\n".join(data))

    def release(self) -> None:
        """Done with the response: a connection read to the end goes back to the pool, else it closes."""
        self._pool.release(self._conn)

    def close(self) -> None:
        """Abort the connection (used when the client went away mid-stream)."""
        self._conn.abort()


class _mapped:
    """Context manager mapping transport errors to ProviderError, the one place this happens."""

    __slots__ = ("label", "what")

    def __init__(self, label: str, what: str) -> None:
        self.label = label
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> Literal[False]:
        if exc is None or isinstance(exc, ProviderError):
            return False
        if isinstance(exc, TimeoutError):
            raise ProviderError("timeout", f"{self.label}: timed out {self.what}") from exc
        if isinstance(exc, ConnectionRefusedError | _ConnectFailed):
            raise ProviderError("connect", f"{self.label}: could not connect") from exc
        if isinstance(exc, ConnectionError):
            raise ProviderError("reset", f"{self.label}: connection lost {self.what}") from exc
        if isinstance(exc, ValueError):  # BadResponse from _h1, or any value the response could not hold
            raise ProviderError("bad_response", f"{self.label}: malformed response {self.what}") from exc
        if isinstance(exc, OSError):
            raise ProviderError("connect", f"{self.label}: transport error {self.what}") from exc
        return False


class _ConnectFailed(Exception):
    """No connection could be opened (name resolution, refused, unreachable, TLS handshake)."""


class HttpClient:
    """Owns the connection pool. Created once per app; connections open inside the running loop."""

    def __init__(self, keepalive_s: float = 30.0) -> None:
        self._pool = H1Pool(keepalive_s)

    async def close(self) -> None:
        self._pool.close()

    async def post(
        self,
        url: str,
        payload: Mapping[str, Any],
        headers: Mapping[str, str],
        timeouts: Timeouts,
        deadline: float,
        label: str,
    ) -> UpstreamResponse:
        """POST JSON; return once the response headers are in (under the connect and first-byte clocks)."""
        body = orjson.dumps(payload)
        return await self._call(
            "POST", url, {"content-type": "application/json", **headers}, body, timeouts, deadline, label
        )

    async def get_json(
        self, url: str, headers: Mapping[str, str], timeouts: Timeouts, deadline: float, label: str
    ) -> Any:
        with _mapped(label, "listing models"):
            up = await self._call("GET", url, headers, None, timeouts, deadline, label)
        if up.status >= 400:
            up.release()
            raise ProviderError("status", f"{label}: HTTP {up.status} listing models", status=up.status)
        try:
            return await up.json()
        finally:
            up.release()

    async def _call(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes | None,
        timeouts: Timeouts,
        deadline: float,
        label: str,
    ) -> UpstreamResponse:
        loop = asyncio.get_running_loop()
        with _mapped(label, "waiting for the first byte"):
            if loop.time() >= deadline:
                raise ProviderError("timeout", f"{label}: deadline passed before the call")
            try:
                origin, target = split_url(url)
                request = encode_request(method, origin, target, headers, body)
            except ValueError as exc:
                raise ProviderError("connect", f"{label}: {exc}") from None
            async with asyncio.timeout_at(min(loop.time() + timeouts.first_byte, deadline)):
                try:
                    conn = await self._pool.acquire(origin, timeouts.connect)
                except (ConnectionRefusedError, TimeoutError):
                    raise
                except OSError as exc:
                    raise _ConnectFailed(type(exc).__name__) from exc
                try:
                    conn.send(request)
                    await conn.response_headers()
                except BaseException:
                    conn.abort()  # half a request or half a response: the connection is spent
                    raise
        return UpstreamResponse(conn, self._pool, timeouts, deadline, label)


def error_message_from(body: bytes) -> str | None:
    """The upstream's own error message (OpenAI/Anthropic/Ollama shapes), scrubbed; never the raw body."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    msg: object = None
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict):
            msg = err.get("message")
        elif isinstance(err, str):
            msg = err
    return scrub(msg) if isinstance(msg, str) and msg else None
