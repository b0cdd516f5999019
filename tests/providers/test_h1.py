"""The upstream HTTP/1.1 client (providers/_h1.py, through _http.HttpClient) against raw loopback servers
that send scripted bytes: framing (sized, chunked, close-delimited), content encodings, keep-alive reuse
and when a connection must not be reused, malformed responses, and headers that could inject lines."""

from __future__ import annotations

import asyncio
import gzip
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from ai_gateway.errors import ProviderError
from ai_gateway.providers._h1 import Headers, split_url
from ai_gateway.providers._http import HttpClient
from ai_gateway.settings import Timeouts

TIMEOUTS = Timeouts(connect=2.0, first_byte=2.0, idle=2.0)
Reply = Callable[[bytes], bytes | list[bytes]]


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


class Server:
    """Answers each request on a connection with `reply(request_head)`: bytes, or a list of pieces sent
    with a pause between them. An empty piece closes the connection."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.connections = 0
        self.requests: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = await reader.readexactly(length)
                self.requests.append(head + body)
                out = self.reply(head)
                for piece in out if isinstance(out, list) else [out]:
                    if not piece:
                        writer.close()
                        return
                    writer.write(piece)
                    await writer.drain()
                    await asyncio.sleep(0.01)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@asynccontextmanager
async def serving(reply: Reply) -> AsyncIterator[tuple[Server, str]]:
    server = Server(reply)
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        yield server, f"http://127.0.0.1:{port}/v1/chat?x=1"
    finally:
        listener.close()


def sized(body: bytes, extra: str = "") -> bytes:
    return f"HTTP/1.1 200 OK\r\ncontent-length: {len(body)}\r\n{extra}\r\n".encode() + body


async def post(http: HttpClient, url: str, headers: dict[str, str] | None = None) -> Any:
    loop = asyncio.get_running_loop()
    return await http.post(url, {"q": 1}, headers or {}, TIMEOUTS, loop.time() + 10, "up")


def test_request_shape_and_keep_alive_reuse() -> None:
    async def go() -> None:
        async with serving(lambda _: sized(b'{"ok": true}', "X-Thing: a\r\nx-thing: b\r\n")) as (server, url):
            http = HttpClient()
            for _ in range(3):
                resp = await post(http, url, {"authorization": "Bearer k"})
                assert resp.status == 200 and await resp.json() == {"ok": True}
                assert resp.headers.get("X-THING") == "a, b" and "x-thing" in resp.headers
                resp.release()
            assert server.connections == 1  # read to the end and released: reused
            first = server.requests[0]
            assert first.startswith(b"POST /v1/chat?x=1 HTTP/1.1\r\n")
            assert b"host: 127.0.0.1:" in first and b"authorization: Bearer k" in first
            assert b"content-type: application/json" in first and first.endswith(b'{"q":1}')
            await http.close()

    run(go())


def test_an_informational_response_is_skipped() -> None:
    early = b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\n"

    async def go() -> None:
        async with serving(lambda _: [early, sized(b'{"n": 1}')]) as (_, url):
            http = HttpClient()
            resp = await post(http, url)
            assert resp.status == 200 and "link" not in resp.headers
            assert await resp.json() == {"n": 1}
            resp.release()
            await http.close()

    run(go())


def test_a_response_not_read_to_the_end_is_not_reused() -> None:
    async def go() -> None:
        head = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n"
        async with serving(lambda _: [head + b"x" * 50, b"x" * 50]) as (server, url):
            http = HttpClient()
            resp = await post(http, url)
            resp.release()  # released before the body was all there
            resp = await post(http, url)
            assert await resp.read() == b"x" * 100
            resp.release()
            assert server.connections == 2
            await http.close()

    run(go())


def test_chunked_and_close_delimited_bodies() -> None:
    chunked = [
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-type: text/event-stream\r\n\r\n",
        b"6\r\ndata: \r\n",
        b"3\r\nab\n\r\n5\r\n\ndata\r\n",
        b"5\r\n: c\n\n\r\n0\r\n\r\n",
    ]

    async def go() -> None:
        async with serving(lambda _: chunked) as (_, url):
            http = HttpClient()
            resp = await post(http, url)
            assert [line async for line in resp.lines()] == [b"data: ab", b"", b"data: c", b""]
            resp.release()
            await http.close()
        close_delimited = [b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n", b"hello ", b"world", b""]
        async with serving(lambda _: close_delimited) as (server, url):
            http = HttpClient()
            resp = await post(http, url)
            assert await resp.read() == b"hello world"
            resp.release()
            resp = await post(http, url)  # that connection ended: a new one
            resp.close()
            assert server.connections == 2
            await http.close()

    run(go())


@pytest.mark.parametrize(
    ("encoding", "encode"),
    [("gzip", gzip.compress), ("deflate", zlib.compress)],
)
def test_encoded_bodies_are_decoded(encoding: str, encode: Callable[[bytes], bytes]) -> None:
    body = b'{"text": "' + b"abc" * 1000 + b'"}'

    async def go() -> None:
        async with serving(lambda _: sized(encode(body), f"content-encoding: {encoding}\r\n")) as (_, url):
            http = HttpClient()
            resp = await post(http, url)
            assert await resp.read() == body
            resp.release()
            await http.close()

    run(go())


@pytest.mark.parametrize(
    ("reply", "kind"),
    [
        (lambda _: b"NOT HTTP AT ALL\r\n\r\n", "bad_response"),
        (lambda _: sized(b"x", "content-encoding: br\r\n"), "bad_response"),
        (lambda _: sized(b"not gzip", "content-encoding: gzip\r\n"), "bad_response"),
        (lambda _: b"HTTP/1.1 200 OK\r\nx-big: " + b"a" * 300_000 + b"\r\n\r\n", "bad_response"),
        (lambda _: [b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc", b""], "reset"),
        (lambda _: [b""], "reset"),
    ],
)
def test_broken_responses_are_provider_errors(reply: Reply, kind: str) -> None:
    async def go() -> None:
        async with serving(reply) as (_, url):
            http = HttpClient()
            with pytest.raises(ProviderError) as err:
                resp = await post(http, url)
                await resp.read()
            assert err.value.kind == kind, err.value
            await http.close()

    run(go())


def test_connect_failures_and_silence_are_typed() -> None:
    async def go() -> None:
        http = HttpClient()
        listener = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        listener.close()
        await listener.wait_closed()
        with pytest.raises(ProviderError) as err:
            await post(http, f"http://127.0.0.1:{port}/v1")
        assert err.value.kind == "connect"

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await asyncio.sleep(5)

        quiet = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = quiet.sockets[0].getsockname()[1]
        loop = asyncio.get_running_loop()
        short = Timeouts(connect=1.0, first_byte=0.2, idle=1.0)
        with pytest.raises(ProviderError) as err:
            await http.post(f"http://127.0.0.1:{port}/v1", {}, {}, short, loop.time() + 5, "up")
        assert err.value.kind == "timeout"
        quiet.close()
        await http.close()

    run(go())


def test_headers_that_would_inject_lines_are_refused() -> None:
    async def go() -> None:
        async with serving(lambda _: sized(b"{}")) as (server, url):
            http = HttpClient()
            for bad in ({"x-a": "v\r\nx-evil: 1"}, {"x-a\nx-b": "v"}):
                with pytest.raises(ProviderError):
                    await post(http, url, bad)
            assert server.requests == []
            await http.close()

    run(go())


def test_urls_and_header_lookup() -> None:
    origin, target = split_url("https://api.example.com/v1/chat/completions")
    assert (origin.scheme, origin.host, origin.port, origin.host_header, target) == (
        "https",
        "api.example.com",
        443,
        "api.example.com",
        "/v1/chat/completions",
    )
    v6, _ = split_url("http://[::1]:8080/")
    assert v6.host_header == "[::1]:8080"
    with pytest.raises(ValueError):
        split_url("ftp://x/")
    h = Headers({"retry-after": "3"})
    assert h.get("Retry-After") == "3" and h["RETRY-AFTER"] == "3" and h.get("x") is None
