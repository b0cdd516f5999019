"""Helpers for the end-to-end accounting tests (ledger, costs, budgets, outages, shutdown): an independent
price oracle, the mock upstreams' own view of what they served, raw-socket clients that leave
mid-answer, concurrent calls with the client's own request ids, and direct reads of the ledger table.

The oracle never uses the gateway's pricing code: prices come from `genai-prices`' calculator (and the
mock's documented OpenRouter rate), tokens from the mock's own counting of the body it received.
Every loop here is bounded by a count or a deadline.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import aiohttp
import orjson
from genai_prices import Usage as PriceUsage
from genai_prices import calc_price
from sqlalchemy import create_engine, select

from ai_gateway.stores._ledger_db import LEDGER
from ai_gateway.stores.sql import engine_url
from ai_gateway.testing._mock_reply import input_tokens
from ai_gateway.testing._mock_wire import COST_PER_TOKEN, Dialect, parse_prompt

NANOS = Decimal(1_000_000_000)
# Upstream providers whose prices come from genai-prices; the mock's OpenRouter reports its own cost.
_GENAI_IDS = {"openai": "openai", "anthropic": "anthropic"}
_DIALECTS: dict[str, Dialect] = {
    "/v1/chat/completions": "openai",
    "/api/v1/chat/completions": "openrouter",
    "/v1/messages": "anthropic",
    "/api/chat": "ollama",
}


# --- money -----------------------------------------------------------------------------------------


def nanos_of(usd: Decimal | str) -> int:
    """USD as the client saw it (a header or a JSON number read as Decimal) -> exact nano-dollars."""
    scaled = Decimal(usd) * NANOS
    assert scaled == scaled.to_integral_value(), f"{usd} USD is not a whole number of nano-dollars"
    return int(scaled)


def expected_cost(
    provider: str, model: str, input_tokens: int, output_tokens: int, cached: int = 0, cache_write: int = 0
) -> int:
    """What the tokens cost, computed without the gateway: genai-prices' calculator for OpenAI and
    Anthropic (`input_tokens` includes the `cached` prompt-cache reads and `cache_write` writes, as in
    genai-prices and the ledger), the mock's documented rate for OpenRouter (COST_PER_TOKEN per prompt +
    completion token), nothing for Ollama and the loopback test providers."""
    if provider == "openrouter":
        return nanos_of(Decimal(str(COST_PER_TOKEN)) * (input_tokens + output_tokens))
    genai = _GENAI_IDS.get(provider)
    if genai is None:
        return 0
    usage = PriceUsage(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cache_read_tokens=cached or None,
        cache_write_tokens=cache_write or None,
    )
    return nanos_of(calc_price(usage, model, provider_id=genai).total_price)


def worst_case(provider: str, model: str, input_tokens: int, max_tokens: int) -> int:
    return expected_cost(provider, model, input_tokens, max_tokens)


# --- the mock upstreams' view ------------------------------------------------------------------------


@dataclass(frozen=True)
class Served:
    """One upstream call as the mock logged it."""

    path: str
    input_tokens: int  # the mock's own count of the body it received
    output_tokens_sent: int
    completed: bool
    aborted: bool  # the gateway closed the connection before the end
    dropped: bool  # the mock cut the connection itself (its `drop_after` directive)
    status: int | None
    text: str  # the body, to find a request's marker in


def served(log: Sequence[Mapping[str, Any]]) -> list[Served]:
    out = []
    for call in log:
        dialect = _DIALECTS.get(call["path"])
        if dialect is None:  # model listings and the like
            continue
        body = call["body"] if isinstance(call["body"], dict) else {}
        out.append(
            Served(
                call["path"],
                input_tokens(parse_prompt(dialect, body)) if body else 0,
                int(call["output_tokens_sent"]),
                bool(call["completed"]),
                bool(call["aborted"]),
                bool(call["dropped"]),
                call["status"],
                orjson.dumps(body).decode(),
            )
        )
    return out


def calls_with(calls: Sequence[Served], marker: str) -> list[Served]:
    return [c for c in calls if marker in c.text]


# --- calls -------------------------------------------------------------------------------------------


@dataclass
class Sent:
    """A request the test sent, with what came back."""

    rid: str
    path: str
    body: Any
    headers: dict[str, str]
    status: int = 0
    reply_headers: dict[str, str] = field(default_factory=dict)
    raw: bytes = b""
    client_cost_nanos: int | None = None  # the cost the gateway told the client, if it did
    received_tokens: int = 0  # streams a client left: words of content it had received

    @property
    def stream(self) -> bool:
        return isinstance(self.body, dict) and bool(self.body.get("stream"))

    def json(self) -> Any:
        return json.loads(self.raw, parse_float=Decimal)


def sse_payloads(raw: bytes) -> list[Any]:
    out = []
    for line in raw.decode(errors="replace").split("\n"):
        if line.startswith("data: {"):
            out.append(json.loads(line[6:], parse_float=Decimal))
    return out


def client_cost(sent: Sent) -> int | None:
    """The cost as the client was told it: `x-aigw-cost-usd`, the simple API's `cost_usd`, or the
    `cost_usd` of the OpenAI usage chunk or the simple API's `done` event."""
    if sent.status != 200:
        return None
    if not sent.stream:
        header = sent.reply_headers.get("x-aigw-cost-usd")
        body = sent.json()
        if sent.path == "/v1/chat" and body.get("cost_usd") is not None:
            assert header is not None and nanos_of(header) == nanos_of(body["cost_usd"]), (header, body)
        return None if header is None else nanos_of(header)
    for event in sse_payloads(sent.raw):
        usage = event.get("usage")
        if sent.path == "/v1/chat/completions" and isinstance(usage, dict) and "cost_usd" in usage:
            return nanos_of(usage["cost_usd"])
        if sent.path == "/v1/chat" and event.get("type") == "done" and event.get("cost_usd") is not None:
            return nanos_of(event["cost_usd"])
    return None


def session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, force_close=True), timeout=aiohttp.ClientTimeout(total=60)
    )


async def send(http: aiohttp.ClientSession, base: str, sent: Sent) -> Sent:
    headers = {"x-request-id": sent.rid, **sent.headers}
    if sent.path.startswith("/v1/messages"):
        headers.setdefault("anthropic-version", "2023-06-01")
    data = sent.body if isinstance(sent.body, bytes) else orjson.dumps(sent.body)
    headers.setdefault("content-type", "application/json")
    async with http.post(base + sent.path, data=data, headers=headers) as resp:
        sent.status = resp.status
        sent.reply_headers = {k.lower(): v for k, v in resp.headers.items()}
        sent.raw = await resp.read()
    assert sent.reply_headers.get("x-request-id") == sent.rid, (sent.rid, sent.reply_headers)
    sent.client_cost_nanos = client_cost(sent)
    return sent


async def send_all(base: str, calls: Sequence[Sent]) -> list[Sent]:
    async with session() as http:
        return list(await asyncio.gather(*(send(http, base, c) for c in calls)))


def _request_bytes(port: int, sent: Sent) -> bytes:
    body = orjson.dumps(sent.body)
    headers = {
        "host": f"127.0.0.1:{port}",
        "content-type": "application/json",
        "content-length": str(len(body)),
        "x-request-id": sent.rid,
        **sent.headers,
    }
    head = f"POST {sent.path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return head.encode() + b"\r\n" + body


def _content_words(event: Any) -> int:
    """Words of generated text in one SSE event of the OpenAI, Anthropic or simple dialect."""
    text = ""
    if isinstance(event, dict):
        if event.get("type") == "delta":
            text = str(event.get("text") or "")
        if event.get("type") == "content_block_delta":
            text = str((event.get("delta") or {}).get("text") or "")
        for choice in event.get("choices") or []:
            text += str((choice.get("delta") or {}).get("content") or "")
    return len(text.split())


def received_words(raw: bytes) -> int:
    """Words of generated text in a whole SSE body (OpenAI, Anthropic or simple dialect)."""
    return sum(_content_words(event) for event in sse_payloads(raw))


async def stream_then_leave(port: int, sent: Sent, after_chunks: int, timeout_s: float = 15) -> Sent:
    """Read a streamed answer until `after_chunks` content events arrived, then close the socket.
    `sent.received_tokens` is the words of content the client had when it left."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(_request_bytes(port, sent))
        await writer.drain()
        deadline = time.monotonic() + timeout_s
        status_line = await asyncio.wait_for(reader.readline(), timeout_s)
        sent.status = int(status_line.split()[1])
        while (line := await asyncio.wait_for(reader.readline(), timeout_s)) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            sent.reply_headers[name.strip().lower()] = value.strip()
        buffer, events = b"", 0
        while events < after_chunks and time.monotonic() < deadline:
            data = await asyncio.wait_for(reader.read(65536), timeout_s)
            if not data:
                break
            buffer += data
            lines = buffer.split(b"\n")
            buffer = lines.pop()  # an incomplete last line waits for more bytes
            for raw in lines:
                if raw.startswith(b"data: {"):
                    words = _content_words(json.loads(raw[6:]))
                    sent.received_tokens += words
                    events += words > 0
        sent.raw = buffer
    finally:
        writer.close()
    return sent


async def send_then_leave(port: int, sent: Sent, after_s: float) -> Sent:
    """Send a request, then close the connection after `after_s` seconds without reading an answer."""
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(_request_bytes(port, sent))
        await writer.drain()
        await asyncio.sleep(after_s)
    finally:
        writer.close()
    sent.status = 499
    return sent


# --- the ledger table ----------------------------------------------------------------------------------


def ledger_rows(database_url: str) -> dict[str, dict[str, Any]]:
    """Every row of the ledger table, by request id, read straight from the database."""
    engine = create_engine(engine_url(database_url))
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(LEDGER)).mappings().all()
    finally:
        engine.dispose()
    out = {}
    for row in rows:
        values = dict(row)
        values["attempts"] = orjson.loads(values["attempts"])
        out[values["request_id"]] = values
    return out


def wait_for_rows(
    database_url: str, request_ids: set[str], timeout_s: float = 20
) -> dict[str, dict[str, Any]]:
    """The ledger once every one of `request_ids` has its row (the writer flushes in the background)."""
    deadline = time.monotonic() + timeout_s
    while True:
        rows = ledger_rows(database_url)
        missing = request_ids - rows.keys()
        if not missing or time.monotonic() > deadline:
            assert not missing, f"{len(missing)} requests have no ledger row: {sorted(missing)[:10]}"
            return rows
        time.sleep(0.1)
