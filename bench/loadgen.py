"""A small, efficient closed-loop HTTP/1.1 load generator on raw asyncio streams (uvloop).

Each of C connections sends the same request, reads the full response (Content-Length or chunked),
and repeats until the duration ends. Latency is measured per request. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Iterator

import uvloop


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, int]:
    """Read one response; return (status, body chunks seen)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    idx = lower.find(b"content-length:")
    if idx >= 0:
        end = lower.index(b"\r\n", idx)
        await reader.readexactly(int(lower[idx + 15 : end]))
        return status, 1
    chunks = 0
    while True:  # chunked
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.strip(), 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return status, chunks
        data = await reader.readexactly(size + 2)
        chunks += data.count(b"data: ")


def _requests(head: str, body: bytes, unique: bool, worker: int) -> Iterator[bytes]:
    """The same request forever, or (unique) one whose body differs each time: `{n}` in the body is
    replaced by a per-request counter, so a response cache never hits."""
    if not unique:
        fixed = (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body
        while True:
            yield fixed
    n = 0
    while True:
        n += 1
        b = body.replace(b"{n}", f"{worker}-{n}".encode())
        yield (head + f"Content-Length: {len(b)}\r\n\r\n").encode() + b


async def _worker(
    host: str, port: int, requests: Iterator[bytes], until: float, lat: list[float], stats: dict[str, int]
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    clock = time.perf_counter  # uvloop's loop.time() has millisecond resolution
    try:
        while clock() < until:
            t0 = clock()
            writer.write(next(requests))
            status, chunks = await _read_response(reader)
            lat.append(clock() - t0)
            stats["ok" if status == 200 else "errors"] += 1
            stats["events"] += chunks
    finally:
        writer.close()


async def run(
    host: str,
    port: int,
    path: str,
    body: bytes,
    headers: dict[str, str],
    conns: int,
    seconds: float,
    unique: bool = False,
) -> dict[str, float]:
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n{extra}"
    lat: list[float] = []
    stats = {"ok": 0, "errors": 0, "events": 0}
    warm = time.perf_counter() + min(1.0, seconds / 5)
    scratch = {"ok": 0, "errors": 0, "events": 0}
    await asyncio.gather(
        *(_worker(host, port, _requests(head, body, unique, -i - 1), warm, [], scratch) for i in range(conns))
    )
    start = time.perf_counter()
    until = time.perf_counter() + seconds
    await asyncio.gather(
        *(_worker(host, port, _requests(head, body, unique, i), until, lat, stats) for i in range(conns))
    )
    elapsed = time.perf_counter() - start
    lat.sort()

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else float("nan")

    return {
        "rps": stats["ok"] / elapsed,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "errors": stats["errors"],
        "events_per_s": stats["events"] / elapsed,
        "requests": stats["ok"],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--path", default="/v1/chat/completions")
    ap.add_argument("--body", required=True)
    ap.add_argument("--header", action="append", default=[])
    ap.add_argument("--conns", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--unique", action="store_true", help="replace {n} in the body per request")
    args = ap.parse_args()
    headers = dict(h.split(":", 1) for h in args.header)
    result = uvloop.run(
        run(
            "127.0.0.1",
            args.port,
            args.path,
            args.body.encode(),
            headers,
            args.conns,
            args.seconds,
            args.unique,
        )
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
