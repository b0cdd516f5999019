"""The upstream HTTP client: one pooled aiohttp session, four clocks, and the single place where
foreign transport errors become `ProviderError`.

Clocks, per attempt (see research/reliability.md A5):
- connect: TCP/TLS connect (aiohttp `sock_connect`);
- first byte: from sending the request until the response headers arrive;
- idle: the longest silence allowed between two reads of the body (streams: between chunks);
- deadline: the request's overall deadline (absolute, `loop.time()` based), shared by every retry and
  fallback attempt, so retries can never multiply the time a client waits.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
import orjson

from ai_gateway.errors import ProviderError, scrub
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

    def __init__(self, resp: aiohttp.ClientResponse, timeouts: Timeouts, deadline: float, label: str):
        self._resp = resp
        self._timeouts = timeouts
        self._deadline = deadline
        self._label = label
        self.status = resp.status
        self.headers = resp.headers

    def _read_deadline(self) -> float:
        return min(asyncio.get_running_loop().time() + self._timeouts.idle, self._deadline)

    async def read(self) -> bytes:
        declared = self._resp.content_length
        if declared is not None and declared <= MAX_BODY_BYTES:
            # The common case: a sized body within the cap, read in one call (aiohttp's fast path).
            with _mapped(self._label, "reading the response body"):
                async with asyncio.timeout_at(self._read_deadline()):
                    return await self._resp.read()
        with _mapped(self._label, "reading the response body"):
            async with asyncio.timeout_at(self._read_deadline()):
                chunks: list[bytes] = []
                size = 0
                async for chunk in self._resp.content.iter_any():
                    size += len(chunk)
                    if size > MAX_BODY_BYTES:
                        raise ProviderError(
                            "bad_response", f"{self._label}: response larger than {MAX_BODY_BYTES} bytes"
                        )
                    chunks.append(chunk)
        return b"".join(chunks)

    async def json(self) -> Any:
        body = await self.read()
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            raise ProviderError("bad_response", f"{self._label}: response is not valid JSON") from None

    async def lines(self) -> AsyncIterator[bytes]:
        """Body lines without their line ending, each read under the idle clock."""
        content = self._resp.content
        loop = asyncio.get_running_loop()
        idle = self._timeouts.idle
        pending = b""
        # One read (and one idle-clock timer) per network chunk, not per line: an upstream packs many
        # SSE lines into one segment, and a timer per line showed up as ~13% of a stream's CPU.
        with _mapped(self._label, "reading the stream"):
            while True:
                async with asyncio.timeout_at(min(loop.time() + idle, self._deadline)):
                    chunk = await content.readany()
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
        self._resp.release()

    def close(self) -> None:
        """Abort the connection (used when the client went away mid-stream)."""
        self._resp.close()


class _mapped:
    """Context manager mapping aiohttp/asyncio errors to ProviderError, the one place this happens."""

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
        if isinstance(exc, aiohttp.ClientConnectorError | ConnectionRefusedError):
            raise ProviderError("connect", f"{self.label}: could not connect") from exc
        if isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ServerDisconnectedError | ConnectionError):
            raise ProviderError("reset", f"{self.label}: connection lost {self.what}") from exc
        if isinstance(exc, aiohttp.ClientResponseError | ValueError):
            raise ProviderError("bad_response", f"{self.label}: malformed response {self.what}") from exc
        if isinstance(exc, aiohttp.ClientError | OSError):
            raise ProviderError("connect", f"{self.label}: transport error {self.what}") from exc
        return False


class HttpClient:
    """Owns the pooled session. Created once per app, inside the running loop."""

    def __init__(self, limit: int = 1000) -> None:
        self._limit = limit
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._limit, ttl_dns_cache=300, keepalive_timeout=30)
            self._session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=True,
                read_bufsize=2**16,
                max_line_size=MAX_LINE_BYTES,
                max_field_size=65536,
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

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
        loop = asyncio.get_running_loop()
        body = orjson.dumps(payload)
        hdrs = {"Content-Type": "application/json", **headers}
        timeout = _client_timeout(timeouts.connect)
        with _mapped(label, "waiting for the first byte"):
            if loop.time() >= deadline:
                raise ProviderError("timeout", f"{label}: deadline passed before the call")
            async with asyncio.timeout_at(min(loop.time() + timeouts.first_byte, deadline)):
                resp = await self.session.post(
                    url, data=body, headers=hdrs, timeout=timeout, allow_redirects=False
                )
        return UpstreamResponse(resp, timeouts, deadline, label)

    async def get_json(
        self, url: str, headers: Mapping[str, str], timeouts: Timeouts, deadline: float, label: str
    ) -> Any:
        loop = asyncio.get_running_loop()
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeouts.connect, sock_read=None)
        with _mapped(label, "listing models"):
            async with asyncio.timeout_at(min(loop.time() + timeouts.first_byte, deadline)):
                resp = await self.session.get(url, headers=headers, timeout=timeout, allow_redirects=False)
        up = UpstreamResponse(resp, timeouts, deadline, label)
        if up.status >= 400:
            up.release()
            raise ProviderError("status", f"{label}: HTTP {up.status} listing models", status=up.status)
        return await up.json()


@functools.lru_cache(maxsize=64)
def _client_timeout(connect_s: float) -> aiohttp.ClientTimeout:
    """aiohttp's own clock covers only the connect; the others are ours (asyncio.timeout_at)."""
    return aiohttp.ClientTimeout(total=None, sock_connect=connect_s, sock_read=None)


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
