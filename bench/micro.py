"""Where a request's CPU goes inside the gateway, without sockets: the ASGI app driven in-process with
the scripted fake provider, so only our own code (parse, policy, render, accounting) is measured.

Usage: python bench/micro.py [--requests 20000]
Prints CPU microseconds per request (all threads, so the SQLite ledger writes count) for open mode
with the cache off, and with the cache on, missing and hitting; and for scenario (a)'s policy: a
tenant key with RPM and TPM limits on both key and tenant, the cache on and missing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from ai_gateway.settings import load_settings
from ai_gateway.web.app import create_app

CONFIG = """
providers:
  bench: {type: fake, default_model: echo, models: [echo]}
cache: {enabled: %s}
"""


async def drive(
    app: Any, body: bytes, headers: list[tuple[bytes, bytes]], path: str = "/v1/chat/completions"
) -> tuple[int, bytes]:
    sent: list[dict[str, Any]] = []
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), *headers],
        "client": ("127.0.0.1", 5000),
    }
    await app(scope, receive, send)
    return int(sent[0]["status"]), b"".join(m.get("body", b"") for m in sent[1:])


async def tenant_key(app: Any, master: str) -> list[tuple[bytes, bytes]]:
    """A tenant and a key, both with RPM and TPM limits (as `make bench` scenario (a)): its headers."""
    auth = [(b"authorization", f"Bearer {master}".encode())]
    limits = {"rpm": 100_000_000, "tpm": 1_000_000_000}
    _, out = await drive(app, orjson.dumps({"name": "micro", **limits}), auth, "/admin/tenants")
    spec = {"name": "micro", "tenant": orjson.loads(out)["id"], "scopes": ["chat"], **limits}
    _, out = await drive(app, orjson.dumps(spec), auth, "/admin/keys")
    return [(b"authorization", f"Bearer {orjson.loads(out)['key']}".encode())]


async def lifespan(app: Any, kind: str) -> None:
    messages = [{"type": f"lifespan.{kind}"}]

    async def receive() -> dict[str, Any]:
        return messages.pop() if messages else await asyncio.sleep(3600)  # type: ignore[func-returns-value]

    async def send(message: dict[str, Any]) -> None:
        if message["type"].endswith(".complete"):
            raise StopAsyncIteration

    with contextlib.suppress(StopAsyncIteration):
        await app({"type": "lifespan"}, receive, send)


async def scenario(name: str, cache: bool, unique: bool, n: int, keyed: bool = False) -> tuple[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "gw.yaml"
        cfg.write_text(CONFIG % ("true" if cache else "false"))
        env = {"AIGW_DATABASE_URL": f"sqlite:///{tmp}/micro.db", "AIGW_CONFIG": str(cfg)}
        if keyed:
            env["AIGW_MASTER_KEY"] = "sk-micro-master-0123456789abcdef"
        app = create_app(load_settings(env=env))
        await lifespan(app, "startup")
        headers = await tenant_key(app, env["AIGW_MASTER_KEY"]) if keyed else []
        bodies = [
            orjson.dumps(
                {
                    "model": "bench/echo",
                    "messages": [{"role": "user", "content": f"hello {i if unique else 0}"}],
                    "max_tokens": 16,
                }
            )
            for i in range(n)
        ]
        for b in bodies[:500]:
            await drive(app, b, headers)
        gc.collect()
        started = time.process_time()
        for b in bodies:
            status, _ = await drive(app, b, headers)
            assert status == 200, status
        used = time.process_time() - started
        await lifespan(app, "shutdown")
        return name, used / n * 1e6


async def main(n: int) -> None:
    rows = [
        await scenario("open mode, cache off", False, True, n),
        await scenario("open mode, cache on, miss", True, True, n),
        await scenario("open mode, cache on, hit", True, False, n),
        await scenario("tenant key with RPM+TPM limits, cache on, miss", True, True, n, keyed=True),
    ]
    print(json.dumps(dict(rows), indent=1))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=20000)
    asyncio.run(main(ap.parse_args().requests))
