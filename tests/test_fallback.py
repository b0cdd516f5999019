"""Fallback, retries, timeouts, stream failures and disconnects, through real processes on loopback."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.support import Proc, Upstreams, free_port, http, sse_events, start_gateway

CONFIG = """
retries: {max_retries: 1, backoff_base_s: 0.01, backoff_max_s: 0.05, max_retry_after_s: 2}
timeouts: {first_byte: 1.0, idle: 1.0}
breaker: {failure_threshold: 1000, cooldown_s: 1}
"""


def _gateway(tmp: Path, upstreams: Upstreams, name: str, config: str, **env: str) -> Proc:
    path = tmp / f"{name}.yaml"
    path.write_text(config)
    return start_gateway(tmp, {**upstreams.env(), **env}, ["--config", str(path)], name=name)


@pytest.fixture(scope="module")
def gw(workdir: Path, upstreams: Upstreams) -> Iterator[Proc]:
    proc = _gateway(workdir, upstreams, "gw-fallback", CONFIG)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def gw_ollama_down(workdir: Path, upstreams: Upstreams) -> Iterator[Proc]:
    proc = _gateway(workdir, upstreams, "gw-down", CONFIG, OLLAMA_BASE_URL=f"http://127.0.0.1:{free_port()}")
    yield proc
    proc.stop()


def _client(gw: Proc) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="sk-x", max_retries=0, timeout=30)


def _chat(gw: Proc, text: str = "hi there", **body: object) -> tuple[int, dict[str, str], dict]:  # type: ignore[type-arg]
    reply = http("POST", gw.url + "/v1/chat", {"prompt": text, **body})
    return reply.status, reply.headers, reply.json()


def test_provider_down_default_route_answers_from_openrouter(gw_ollama_down: Proc, mocks: Upstreams) -> None:
    raw = _client(gw_ollama_down).chat.completions.with_raw_response.create(
        model="default", messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.headers["x-aigw-provider"] == "openrouter"
    assert raw.headers["x-aigw-attempts"] == "2"
    assert raw.parse().choices[0].message.content == "mock reply: hi"
    status, _, body = _chat(gw_ollama_down)
    assert status == 200
    assert [(a["provider"], a["status"]) for a in body["attempts"]] == [
        ("ollama", "error"),
        ("openrouter", "ok"),
    ]
    assert "connect" in body["attempts"][0]["error"]


def test_provider_down_stream_falls_back(gw_ollama_down: Proc, mocks: Upstreams) -> None:
    reply = http("POST", gw_ollama_down.url + "/v1/chat", {"prompt": "hi", "stream": True})
    assert reply.status == 200
    assert reply.headers["x-aigw-provider"] == "openrouter" and reply.headers["x-aigw-attempts"] == "2"
    assert sse_events(reply.body)[-1] == "[DONE]"


def test_upstream_500_retries_then_falls_back(gw: Proc, mocks: Upstreams) -> None:
    mocks.mocks["ollama"].fault("status=500")
    status, headers, body = _chat(gw)
    assert status == 200 and body["provider"] == "openrouter"
    assert headers["x-aigw-attempts"] == "3"  # ollama twice (one retry), then openrouter
    assert mocks.mocks["ollama"].calls() == 2


def test_503_once_is_retried_on_the_same_target(gw: Proc, mocks: Upstreams) -> None:
    mocks.mocks["ollama"].fault("status=503 fail_times=1")
    status, headers, body = _chat(gw)
    assert status == 200 and body["provider"] == "ollama"
    assert headers["x-aigw-attempts"] == "2"
    assert mocks.mocks["openrouter"].calls() == 0


def test_429_retry_after_is_honoured(gw: Proc, mocks: Upstreams) -> None:
    mocks.mocks["ollama"].fault("status=429 retry_after=1 fail_times=1")
    started = time.monotonic()
    status, _, body = _chat(gw)
    assert status == 200 and body["provider"] == "ollama"
    assert time.monotonic() - started >= 0.95


def test_429_with_long_retry_after_falls_back_at_once(gw: Proc, mocks: Upstreams) -> None:
    mocks.mocks["ollama"].fault("status=429 retry_after=30")
    started = time.monotonic()
    status, headers, body = _chat(gw)
    assert status == 200 and body["provider"] == "openrouter"
    assert headers["x-aigw-attempts"] == "2"
    assert time.monotonic() - started < 5


def test_529_overloaded_anthropic_is_retried(gw: Proc, mocks: Upstreams) -> None:
    mocks.mocks["anthropic"].fault("status=529 fail_times=1")
    status, headers, _ = _chat(gw, provider="anthropic")
    assert status == 200 and headers["x-aigw-attempts"] == "2"


def test_first_byte_timeout_falls_back(gw: Proc, mocks: Upstreams) -> None:
    mocks.mocks["ollama"].fault("ttfb_ms=3000")
    started = time.monotonic()
    status, headers, body = _chat(gw)
    assert status == 200 and body["provider"] == "openrouter"
    assert headers["x-aigw-attempts"] == "2"  # a timeout is not retried on the same target
    assert body["attempts"][0]["error"] and "timed out" in body["attempts"][0]["error"]
    assert 0.9 <= time.monotonic() - started < 3


def test_single_target_timeout_is_504(gw: Proc, mocks: Upstreams) -> None:
    mocks.mocks["openai"].fault("ttfb_ms=3000")
    status, _, body = _chat(gw, provider="openai")
    assert status == 504 and body["error"]["code"] == "upstream_timeout"


def test_stream_drop_before_first_byte_falls_back(gw: Proc, mocks: Upstreams) -> None:
    mocks.mocks["ollama"].fault("drop_after=0")
    chunks = list(
        _client(gw).chat.completions.create(
            model="default", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "mock reply: hi"
    assert mocks.mocks["openrouter"].calls() == 1


def test_stream_drop_after_first_byte_ends_with_error_event(gw: Proc, mocks: Upstreams) -> None:
    mocks.mocks["ollama"].fault("drop_after=2")
    got: list[str] = []
    with pytest.raises(openai.APIError):
        for chunk in _client(gw).chat.completions.create(
            model="default", messages=[{"role": "user", "content": "one two three four five"}], stream=True
        ):
            if chunk.choices and chunk.choices[0].delta.content:
                got.append(chunk.choices[0].delta.content)
    assert got  # the first chunks reached the client ...
    assert mocks.mocks["openrouter"].calls() == 0  # ... so there was no fallback
    reply = http("POST", gw.url + "/v1/chat", {"prompt": "one two three four five", "stream": True})
    events = sse_events(reply.body)
    assert events[-1] != "[DONE]"
    last = json.loads(events[-1])
    assert last["type"] == "error" and last["error"]["code"] == "upstream_stream_error"


def test_stream_stall_after_first_byte_hits_idle_clock(gw: Proc, mocks: Upstreams) -> None:
    mocks.mocks["ollama"].fault("stall_after=1")
    started = time.monotonic()
    reply = http("POST", gw.url + "/v1/chat", {"prompt": "a b c d", "stream": True})
    events = sse_events(reply.body)
    assert json.loads(events[-1])["type"] == "error"
    assert time.monotonic() - started < 5


def test_upstream_400_is_not_retried_nor_fallen_back(gw: Proc, mocks: Upstreams) -> None:
    mocks.mocks["ollama"].fault("status=400")
    status, _, body = _chat(gw)
    assert status == 400 and body["error"]["code"] == "upstream_invalid_request"
    # The upstream's own explanation is useful to the client; its raw body is never forwarded.
    assert body["error"]["message"].startswith("ollama rejected the request: ")
    assert "{" not in body["error"]["message"]
    assert mocks.mocks["ollama"].calls() == 1 and mocks.mocks["openrouter"].calls() == 0


def test_all_upstreams_failing_is_502_with_each_reason(gw: Proc, mocks: Upstreams) -> None:
    for name in ("ollama", "openrouter", "openai"):
        mocks.mocks[name].fault("status=500")
    status, _, body = _chat(gw)
    assert status == 502 and body["error"]["code"] == "all_providers_failed"
    message = body["error"]["message"]
    assert "ollama" in message and "openrouter" in message and "openai" in message
    assert "MOCK-UPSTREAM-ERROR-BODY" not in message


def test_upstream_401_falls_back_and_never_leaks_the_key(gw: Proc, mocks: Upstreams) -> None:
    mocks.mocks["openai"].fault("status=401")
    status, _, body = _chat(gw, provider="openai")
    assert status == 502
    text = json.dumps(body)
    assert "CANARY" not in text and "MOCK-UPSTREAM-ERROR-BODY" not in text
    assert "credentials" in body["error"]["message"]


def test_client_disconnect_cancels_the_upstream_stream(gw: Proc, mocks: Upstreams) -> None:
    mocks.mocks["ollama"].fault("gap_ms=300 chunks=30")
    body = json.dumps({"prompt": " ".join(["w"] * 30), "provider": "ollama", "stream": True}).encode()
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        sock.sendall(
            b"POST /v1/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        assert b"200" in sock.recv(4096)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and mocks.mocks["ollama"].stats()["aborted"] < 1:
        time.sleep(0.05)
    assert mocks.mocks["ollama"].stats()["aborted"] == 1


def test_unconfigured_provider_is_skipped_with_its_reason(
    workdir: Path, upstreams: Upstreams, mocks: Upstreams
) -> None:
    env = {**upstreams.env(), "OPENROUTER_API_KEY": "", "OLLAMA_BASE_URL": f"http://127.0.0.1:{free_port()}"}
    (workdir / "gw-skip.yaml").write_text(CONFIG)
    proc = start_gateway(workdir, env, ["--config", str(workdir / "gw-skip.yaml")], name="gw-skip")
    try:
        status, headers, body = _chat(proc)
        assert status == 200 and body["provider"] == "openai"
        assert [a["status"] for a in body["attempts"]] == ["error", "skipped", "ok"]
        assert "OPENROUTER_API_KEY" in body["attempts"][1]["error"]
        assert headers["x-aigw-attempts"] == "2"
        status, _, body = _chat(proc, provider="openrouter")
        assert status == 503 and body["error"]["code"] == "provider_not_configured"
        assert "OPENROUTER_API_KEY" in body["error"]["message"]
    finally:
        proc.stop()


def test_circuit_breaker_opens_and_probes_after_cooldown(
    workdir: Path, upstreams: Upstreams, mocks: Upstreams
) -> None:
    config = CONFIG.replace("failure_threshold: 1000, cooldown_s: 1", "failure_threshold: 2, cooldown_s: 1")
    proc = _gateway(workdir, upstreams, "gw-breaker", config)
    try:
        ollama = mocks.mocks["ollama"]
        ollama.fault("status=503")
        assert _chat(proc)[2]["provider"] == "openrouter"
        assert ollama.calls() == 2  # opened after two consecutive failures
        status, headers, body = _chat(proc)
        assert status == 200 and ollama.calls() == 2  # skipped while open
        assert body["attempts"][0]["status"] == "skipped" and headers["x-aigw-attempts"] == "1"
        ollama.fault(None)
        time.sleep(1.1)
        assert _chat(proc)[2]["provider"] == "ollama"  # the probe succeeds and closes it
    finally:
        proc.stop()
