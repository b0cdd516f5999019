"""The response cache through real gateway processes (research/reliability.md L-09, S-09; CONTRACT §6).

Two replicas share Redis (cache and limits) and one SQLite database (keys). Every test uses prompts of
its own, so the order of the tests does not matter. "Reaches no upstream" is read off the mock's call
counter; every answer is checked for `x-aigw-cache: hit|miss|bypass`.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e_support import MASTER, admin, anthropic_body, chat, gateway, new_key, new_tenant, openai_body
from tests.redis_server import shared_redis
from tests.support import Proc, Reply, Upstreams, http, sse_events

# A streamed answer is stored once its stream has ended, just after the last byte went out; give the
# store that moment before asking again.
STORE_SETTLE_S = 0.3


@dataclass
class World:
    a: Proc  # replica a
    b: Proc  # replica b: same database, same Redis
    key_a: str  # tenant A
    key_a2: str  # tenant A, a second key: the cache is per tenant, not per key
    key_b: str  # tenant B
    tmp: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, upstreams: Upstreams) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("cache-e2e")
    env = {"AIGW_REDIS_URL": shared_redis().url}
    a = gateway(tmp, upstreams, "replica-a", env=env, cache=True)
    b = gateway(tmp, upstreams, "replica-b", env=env, cache=True)
    try:
        tenant_a = new_tenant(a)
        key_a, _ = new_key(a, tenant_a)
        key_a2, _ = new_key(a, tenant_a)
        key_b, _ = new_key(a)
        yield World(a, b, key_a, key_a2, key_b, tmp)
    finally:
        a.stop()
        b.stop()


def prompt(tag: str) -> str:
    return f"{tag} {secrets.token_hex(4)}"


def upstream_calls(mocks: Upstreams) -> int:
    return mocks.total_calls()


def cache_state(reply: Reply) -> str:
    assert reply.status == 200, reply.body
    return reply.headers["x-aigw-cache"]


# --- stream shapes -------------------------------------------------------------------------------------


def _collapse(shapes: list[Any]) -> list[Any]:
    """Runs of the same shape as one: how many deltas carry the text is not part of a stream's shape."""
    return [s for i, s in enumerate(shapes) if i == 0 or s != shapes[i - 1]]


@dataclass
class Stream:
    shape: list[Any]  # what each event looks like, runs of text deltas counted once
    text: str
    usage: Any  # the token counts the stream reports, wherever it reports them


def openai_stream(raw: bytes) -> Stream:
    payloads = sse_events(raw)
    assert payloads[-1] == "[DONE]"
    shapes, text, usage = [], "", None
    for chunk in map(json.loads, payloads[:-1]):
        choice = chunk["choices"][0] if chunk["choices"] else None
        delta = choice["delta"] if choice else {}
        text += delta.get("content") or ""
        if chunk.get("usage"):
            usage = {k: v for k, v in chunk["usage"].items() if k != "cost_usd"}  # a hit costs 0
        shapes.append(
            (
                chunk["object"],
                tuple(sorted(chunk)),
                tuple(sorted(delta)),
                choice and choice["finish_reason"],
                "usage" in chunk and chunk["usage"] is not None,
            )
        )
    return Stream(_collapse(shapes), text, usage)


def anthropic_stream(raw: bytes) -> Stream:
    shapes, text, usage = [], "", []
    for frame in raw.decode().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in frame.splitlines() if ": " in line)
        if not lines:
            continue
        data = json.loads(lines["data"])
        delta = data.get("delta") or {}
        text += delta.get("text", "")
        block = data.get("content_block") or {}
        shapes.append(
            (lines["event"], data["type"], delta.get("type"), block.get("type"), tuple(sorted(data)))
        )
        if data["type"] == "message_start":
            usage.append(data["message"]["usage"]["input_tokens"])  # the prompt's side comes first
        elif data["type"] == "message_delta":
            usage.append(data["usage"])
    return Stream(_collapse(shapes), text, usage)


Dialect = tuple[str, Callable[..., dict[str, Any]], Callable[[bytes], Stream]]
DIALECTS: dict[str, Dialect] = {
    "openai": ("/v1/chat/completions", openai_body, openai_stream),
    "anthropic": ("/v1/messages", anthropic_body, anthropic_stream),
}


def answer_text(path: str, reply: Reply) -> str:
    body = reply.json()
    if path == "/v1/messages":
        return "".join(block["text"] for block in body["content"] if block["type"] == "text")
    return str(body["choices"][0]["message"]["content"])


# --- tests ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", DIALECTS)
def test_an_identical_second_request_reaches_no_upstream(
    world: World, mocks: Upstreams, dialect: str
) -> None:
    path, make, _ = DIALECTS[dialect]
    body = make(prompt("non-stream"))
    first = chat(world.a, world.key_a, body, path)
    assert cache_state(first) == "miss" and upstream_calls(mocks) == 1
    second = chat(world.a, world.key_a, body, path)
    assert cache_state(second) == "hit" and upstream_calls(mocks) == 1
    assert answer_text(path, second) == answer_text(path, first)
    tokens = {k: v for k, v in first.json()["usage"].items() if k != "cost_usd"}
    assert {k: v for k, v in second.json()["usage"].items() if k != "cost_usd"} == tokens
    assert second.headers["x-aigw-provider"] == first.headers["x-aigw-provider"]
    assert second.headers["x-aigw-attempts"] == "0"  # no upstream attempt
    assert float(second.headers["x-aigw-cost-usd"]) == 0  # a hit costs nothing


@pytest.mark.parametrize("dialect", DIALECTS)
def test_a_streamed_hit_has_the_live_streams_events(world: World, mocks: Upstreams, dialect: str) -> None:
    path, make, parse = DIALECTS[dialect]
    body = make(prompt("the stream of a cached answer"), stream=True)
    if dialect == "openai":
        body["stream_options"] = {"include_usage": True}
    live = chat(world.a, world.key_a, body, path)
    assert cache_state(live) == "miss" and upstream_calls(mocks) == 1
    time.sleep(STORE_SETTLE_S)
    replay = chat(world.a, world.key_a, body, path)
    assert cache_state(replay) == "hit" and upstream_calls(mocks) == 1
    assert replay.headers["content-type"] == live.headers["content-type"]
    live_stream, replayed = parse(live.body), parse(replay.body)
    assert replayed.shape == live_stream.shape
    assert replayed.text == live_stream.text and live_stream.text.startswith("mock reply:")
    assert replayed.usage == live_stream.usage and live_stream.usage
    # Stream or not is not part of the key: the same question unstreamed is the same answer.
    whole = chat(
        world.a, world.key_a, {k: v for k, v in body.items() if k not in ("stream", "stream_options")}, path
    )
    assert cache_state(whole) == "hit" and answer_text(path, whole) == live_stream.text


def test_a_non_streamed_answer_replays_as_a_stream(world: World, mocks: Upstreams) -> None:
    body = openai_body(prompt("stored whole, replayed as a stream"))
    assert cache_state(chat(world.a, world.key_a, body)) == "miss"
    replay = chat(world.a, world.key_a, {**body, "stream": True})
    assert cache_state(replay) == "hit" and upstream_calls(mocks) == 1
    assert openai_stream(replay.body).text.startswith("mock reply: stored whole")


def test_cache_control_no_cache_and_no_store(world: World, mocks: Upstreams) -> None:
    key, gw = world.key_a, world.a
    # no-cache: no lookup, but the fresh answer is stored.
    body = openai_body(prompt("no-cache"))
    assert cache_state(chat(gw, key, body, **{"cache-control": "no-cache"})) == "bypass"
    assert cache_state(chat(gw, key, body, **{"cache-control": "no-cache"})) == "bypass"
    assert upstream_calls(mocks) == 2
    assert cache_state(chat(gw, key, body)) == "hit" and upstream_calls(mocks) == 2
    # no-store: neither lookup nor store.
    body = openai_body(prompt("no-store"))
    assert cache_state(chat(gw, key, body, **{"cache-control": "no-store"})) == "bypass"
    assert cache_state(chat(gw, key, body)) == "miss"
    assert upstream_calls(mocks) == 4
    # An entry that exists is not served to no-store either.
    assert cache_state(chat(gw, key, body, **{"cache-control": "no-store"})) == "bypass"
    assert upstream_calls(mocks) == 5


def test_tenants_never_share_entries_and_keys_of_one_tenant_do(world: World, mocks: Upstreams) -> None:
    body = openai_body(prompt("tenant isolation"))
    assert cache_state(chat(world.a, world.key_a, body)) == "miss"
    assert cache_state(chat(world.a, world.key_b, body)) == "miss"  # tenant B: its own entry
    assert upstream_calls(mocks) == 2
    assert cache_state(chat(world.a, world.key_b, body)) == "hit"
    assert cache_state(chat(world.a, world.key_a2, body)) == "hit"  # another key of tenant A
    assert upstream_calls(mocks) == 2


def test_the_second_replica_hits_within_the_tenant(world: World, mocks: Upstreams) -> None:
    for dialect, stream in (("openai", False), ("anthropic", True)):
        path, make, _ = DIALECTS[dialect]
        body = make(prompt(f"across replicas {dialect}"), stream=stream)
        assert cache_state(chat(world.a, world.key_a, body, path)) == "miss"
        time.sleep(STORE_SETTLE_S if stream else 0)
        assert cache_state(chat(world.b, world.key_a, body, path)) == "hit"
        assert cache_state(chat(world.b, world.key_b, body, path)) == "miss"  # another tenant
    assert upstream_calls(mocks) == 4


def test_the_model_check_comes_before_the_cache(world: World, mocks: Upstreams) -> None:
    body = openai_body(prompt("scope before cache"))
    assert cache_state(chat(world.a, world.key_a, body)) == "miss"
    tenant = admin(world.a, "GET", "/admin/keys?limit=1")["data"][0]["tenant_id"]
    narrow, _ = new_key(world.a, tenant, models=["anthropic/*"])
    refused = chat(world.a, narrow, body)
    assert refused.status == 403, refused.body
    assert refused.json()["error"]["code"] == "model_not_allowed"
    assert "x-aigw-cache" not in refused.headers
    assert upstream_calls(mocks) == 1


def test_a_hit_still_counts_against_the_request_limit(world: World, mocks: Upstreams) -> None:
    key, _ = new_key(world.a, rpm=2)
    body = openai_body(prompt("hits are requests too"))
    assert cache_state(chat(world.a, key, body)) == "miss"
    assert cache_state(chat(world.a, key, body)) == "hit"
    limited = chat(world.a, key, body)
    assert limited.status == 429 and limited.json()["error"]["code"] == "rate_limited"
    assert upstream_calls(mocks) == 1


def test_a_key_switched_off_neither_reads_nor_writes_the_cache(world: World, mocks: Upstreams) -> None:
    tenant = new_tenant(world.a)
    key_on, _ = new_key(world.a, tenant)
    key_off, row = new_key(world.a, tenant, cache=False)
    assert row["cache"] is False and admin(world.a, "GET", f"/admin/keys/{row['id']}")["cache"] is False
    cached = openai_body(prompt("cached for the tenant"))
    assert cache_state(chat(world.a, key_on, cached)) == "miss"
    assert cache_state(chat(world.a, key_off, cached)) == "bypass"  # no lookup
    assert upstream_calls(mocks) == 2
    fresh = openai_body(prompt("asked by the key without cache"), stream=True)
    assert cache_state(chat(world.a, key_off, fresh)) == "bypass"
    time.sleep(STORE_SETTLE_S)
    assert cache_state(chat(world.a, key_on, fresh)) == "miss"  # nothing was stored
    assert upstream_calls(mocks) == 4
    # Switched back on, on both replicas at once (a key change reaches every replica).
    patched = admin(world.a, "PATCH", f"/admin/keys/{row['id']}", {"cache": True})
    assert patched["cache"] is True
    assert cache_state(chat(world.a, key_off, cached)) == "hit"
    assert cache_state(chat(world.b, key_off, cached)) == "hit"
    assert upstream_calls(mocks) == 4
    bad = http(
        "PATCH",
        world.a.url + f"/admin/keys/{row['id']}",
        {"cache": None},
        headers={"authorization": f"Bearer {MASTER}"},
    )
    assert bad.status == 400 and bad.json()["error"]["param"] == "cache"


def test_cli_keys_create_no_cache(world: World) -> None:
    tenant = new_tenant(world.a)
    env = {**os.environ, "AIGW_MASTER_KEY": MASTER}
    args = ["keys", "create", "--tenant", tenant, "--name", "cli", "--no-cache", "--json"]
    args += ["--url", world.a.url]
    done = subprocess.run(
        [sys.executable, "-m", "ai_gateway", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    row = json.loads(done.stdout)
    assert row["cache"] is False
    assert admin(world.a, "GET", f"/admin/keys/{row['id']}")["cache"] is False
    assert admin(world.a, "GET", f"/admin/keys?tenant={tenant}")["data"][0]["cache"] is False
