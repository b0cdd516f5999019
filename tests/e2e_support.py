"""Helpers for the end-to-end tests of rate limits and the response cache: gateways started with a master
key, tenants and keys made through their admin API, and concurrent calls (aiohttp) on loopback.

Every loop here is bounded by a count or a deadline.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests.support import Proc, Reply, Upstreams, http, start_gateway

MASTER = "mk-e2e-" + secrets.token_hex(16)
HASH_SECRET = "hs-e2e-" + secrets.token_hex(16)
OPENAI_MODEL = "openai/gpt-4o-mini"
ANTHROPIC_MODEL = "anthropic/claude-haiku-4-5"
ANTHROPIC_HEADERS = {"anthropic-version": "2023-06-01"}


def gateway(
    tmp: Path,
    upstreams: Upstreams,
    name: str,
    config: str = "",
    env: Mapping[str, str] | None = None,
    args: Sequence[str] = (),
    cache: bool = False,
) -> Proc:
    """A gateway with the master key, its database in `tmp` (gateways given one `tmp` share it)."""
    extra = list(args)
    if config:
        path = tmp / f"{name}.yaml"
        path.write_text(config)
        extra += ["--config", str(path)]
    full_env = {
        **upstreams.env(),
        "AIGW_MASTER_KEY": MASTER,
        "AIGW_KEY_HASH_SECRET": HASH_SECRET,
        **(env or {}),
    }
    return start_gateway(tmp, full_env, extra, name=name, cache=cache)


def admin(gw: Proc, method: str, path: str, body: Any = None) -> Any:
    reply = http(method, gw.url + path, body, headers={"authorization": f"Bearer {MASTER}"})
    assert 200 <= reply.status < 300, (reply.status, reply.body)
    return reply.json()


def new_tenant(gw: Proc, **limits: Any) -> str:
    tenant_id: str = admin(gw, "POST", "/admin/tenants", {"name": f"t-{secrets.token_hex(5)}", **limits})[
        "id"
    ]
    return tenant_id


def new_key(gw: Proc, tenant: str | None = None, **fields: Any) -> tuple[str, dict[str, Any]]:
    """(the key, its admin record); a fresh tenant unless one is given."""
    body = {"tenant": tenant or new_tenant(gw), "name": "e2e", **fields}
    row: dict[str, Any] = admin(gw, "POST", "/admin/keys", body)
    return row.pop("key"), row


def openai_body(text: str, stream: bool = False, **extra: Any) -> dict[str, Any]:
    body = {"model": OPENAI_MODEL, "messages": [{"role": "user", "content": text}], **extra}
    if stream:
        body["stream"] = True
    return body


def anthropic_body(text: str, stream: bool = False, **extra: Any) -> dict[str, Any]:
    body = {
        "model": ANTHROPIC_MODEL,
        "max_tokens": 64,
        "messages": [{"role": "user", "content": text}],
        **extra,
    }
    if stream:
        body["stream"] = True
    return body


def chat(gw: Proc, key: str, body: Any, path: str = "/v1/chat/completions", **headers: str) -> Reply:
    extra = ANTHROPIC_HEADERS if path == "/v1/messages" else {}
    return http("POST", gw.url + path, body, headers={"authorization": f"Bearer {key}", **extra, **headers})


def ratelimit_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.startswith("x-ratelimit-")}


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def _call(session: aiohttp.ClientSession, url: str, body: Any, headers: Mapping[str, str]) -> Answer:
    async with session.post(url, json=body, headers=dict(headers)) as resp:
        return Answer(resp.status, {k.lower(): v for k, v in resp.headers.items()}, await resp.read())


def _session() -> aiohttp.ClientSession:
    # No connection cap: a burst must reach the gateway all at once.
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=60)
    )


def burst(urls: Sequence[str], n: int, body: Any, headers: Mapping[str, str]) -> tuple[list[Answer], float]:
    """`n` simultaneous calls spread round-robin over `urls`: (the answers, seconds it took)."""

    async def go() -> list[Answer]:
        async with _session() as session:
            # Open the connections first, so the calls themselves leave together.
            return await asyncio.gather(
                *(_call(session, urls[i % len(urls)], body, headers) for i in range(n))
            )

    started = time.monotonic()
    answers = asyncio.run(go())
    return answers, time.monotonic() - started


@dataclass
class Run:
    statuses: Counter[int] = field(default_factory=Counter)
    codes: Counter[str] = field(default_factory=Counter)
    missing_headers: int = 0  # 429s without Retry-After or x-ratelimit-* headers

    @property
    def admitted(self) -> int:
        return self.statuses[200]


def hammer(
    urls: Sequence[str], duration_s: float, clients: int, body: Any, headers: Mapping[str, str]
) -> Run:
    """`clients` concurrent closed-loop clients, round-robin over `urls`, for `duration_s` seconds."""
    run = Run()
    max_calls = 200_000  # a bound on the loop, far above what a few seconds on loopback allow

    async def client(session: aiohttp.ClientSession, index: int) -> None:
        deadline = time.monotonic() + duration_s
        i = index
        while time.monotonic() < deadline and sum(run.statuses.values()) < max_calls:
            answer = await _call(session, urls[i % len(urls)], body, headers)
            i += 1
            run.statuses[answer.status] += 1
            if answer.status != 200:
                run.codes[json.loads(answer.body)["error"]["code"]] += 1
            if answer.status == 429 and (
                "retry-after" not in answer.headers or "x-ratelimit-limit-requests" not in answer.headers
            ):
                run.missing_headers += 1

    async def go() -> None:
        async with _session() as session:
            await asyncio.gather(*(client(session, i) for i in range(clients)))

    asyncio.run(go())
    return run
