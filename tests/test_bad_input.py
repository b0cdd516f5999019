"""The bad-input battery: every case gets a clear 4xx in the contract's error shape, never a 5xx, and
never reaches an upstream."""

from __future__ import annotations

import http.client as httpclient
import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support import Proc, Upstreams, http

M = [{"role": "user", "content": "hi"}]


def ok_body(**over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "ollama/llama3.2", "messages": M}
    body.update(over)
    return {k: v for k, v in body.items() if v is not ...}


# (id, path, raw bytes or JSON body, extra headers, expected status, expected param or None)
CASES: list[tuple[str, str, Any, dict[str, str], int, str | None]] = [
    ("truncated-json", "/v1/chat/completions", b'{"model": "x", ', {}, 400, None),
    ("trailing-comma", "/v1/chat/completions", b'{"model": "x",}', {}, 400, None),
    ("single-quotes", "/v1/chat/completions", b"{'model': 'x'}", {}, 400, None),
    ("nan", "/v1/chat/completions", b'{"model": "x", "temperature": NaN, "messages": []}', {}, 400, None),
    ("deep-nesting", "/v1/chat/completions", b"[" * 100_000 + b"]" * 100_000, {}, 400, None),
    ("bom", "/v1/chat/completions", b"\xef\xbb\xbf" + json.dumps(ok_body()).encode(), {}, 400, None),
    ("not-utf8", "/v1/chat/completions", b'{"model": "\xff\xfe"}', {}, 400, None),
    ("empty-body", "/v1/chat/completions", b"", {}, 400, None),
    ("array-body", "/v1/chat/completions", [1, 2], {}, 400, None),
    ("missing-model", "/v1/chat/completions", ok_body(model=...), {}, 400, "model"),
    ("model-int", "/v1/chat/completions", ok_body(model=5), {}, 400, "model"),
    ("model-empty", "/v1/chat/completions", ok_body(model=""), {}, 400, "model"),
    ("model-huge", "/v1/chat/completions", ok_body(model="x" * 10_000), {}, 400, "model"),
    ("model-traversal", "/v1/chat/completions", ok_body(model="../../etc/passwd"), {}, 404, "model"),
    ("messages-missing", "/v1/chat/completions", ok_body(messages=...), {}, 400, "messages"),
    ("messages-string", "/v1/chat/completions", ok_body(messages="hi"), {}, 400, "messages"),
    ("messages-null", "/v1/chat/completions", ok_body(messages=None), {}, 400, "messages"),
    ("messages-empty", "/v1/chat/completions", ok_body(messages=[]), {}, 400, "messages"),
    ("messages-object", "/v1/chat/completions", ok_body(messages={"role": "user"}), {}, 400, "messages"),
    ("message-not-object", "/v1/chat/completions", ok_body(messages=["hi"]), {}, 400, "messages[0]"),
    (
        "role-unknown",
        "/v1/chat/completions",
        ok_body(messages=[{"role": "wizard", "content": "x"}]),
        {},
        400,
        "messages[0].role",
    ),
    (
        "role-missing",
        "/v1/chat/completions",
        ok_body(messages=[{"content": "x"}]),
        {},
        400,
        "messages[0].role",
    ),
    (
        "content-number",
        "/v1/chat/completions",
        ok_body(messages=[{"role": "user", "content": 5}]),
        {},
        400,
        "messages[0].content",
    ),
    (
        "content-missing",
        "/v1/chat/completions",
        ok_body(messages=[{"role": "user"}]),
        {},
        400,
        "messages[0].content",
    ),
    (
        "part-bad-type",
        "/v1/chat/completions",
        ok_body(messages=[{"role": "user", "content": [{"type": "video"}]}]),
        {},
        400,
        "messages[0].content[0].type",
    ),
    (
        "image-bad-url",
        "/v1/chat/completions",
        ok_body(
            messages=[
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}],
                }
            ]
        ),
        {},
        400,
        "messages[0].content[0].image_url.url",
    ),
    (
        "tool-no-call-id",
        "/v1/chat/completions",
        ok_body(messages=[{"role": "tool", "content": "x"}]),
        {},
        400,
        "messages[0].tool_call_id",
    ),
    ("too-many-messages", "/v1/chat/completions", ok_body(messages=M * 3000), {}, 400, "messages"),
    ("max-tokens-negative", "/v1/chat/completions", ok_body(max_tokens=-1), {}, 400, "max_tokens"),
    ("max-tokens-zero", "/v1/chat/completions", ok_body(max_tokens=0), {}, 400, "max_tokens"),
    ("max-tokens-absurd", "/v1/chat/completions", ok_body(max_tokens=2**63), {}, 400, "max_tokens"),
    ("max-tokens-float-huge", "/v1/chat/completions", ok_body(max_tokens=1e308), {}, 400, "max_tokens"),
    ("max-tokens-fraction", "/v1/chat/completions", ok_body(max_tokens=1.5), {}, 400, "max_tokens"),
    ("max-tokens-string", "/v1/chat/completions", ok_body(max_tokens="100"), {}, 400, "max_tokens"),
    ("max-tokens-bool", "/v1/chat/completions", ok_body(max_tokens=True), {}, 400, "max_tokens"),
    (
        "max-completion-and-max",
        "/v1/chat/completions",
        ok_body(max_tokens=5, max_completion_tokens=5),
        {},
        400,
        "max_tokens",
    ),
    ("temperature-string", "/v1/chat/completions", ok_body(temperature="hot"), {}, 400, "temperature"),
    ("temperature-range", "/v1/chat/completions", ok_body(temperature=5), {}, 400, "temperature"),
    ("top-p-range", "/v1/chat/completions", ok_body(top_p=-0.1), {}, 400, "top_p"),
    ("stream-string", "/v1/chat/completions", ok_body(stream="yes"), {}, 400, "stream"),
    ("n-negative", "/v1/chat/completions", ok_body(n=-1), {}, 400, "n"),
    ("n-two", "/v1/chat/completions", ok_body(n=2), {}, 400, "n"),
    ("stop-number", "/v1/chat/completions", ok_body(stop=5), {}, 400, "stop"),
    ("tools-object", "/v1/chat/completions", ok_body(tools={"a": 1}), {}, 400, "tools"),
    ("tool-choice-bad", "/v1/chat/completions", ok_body(tool_choice="sometimes"), {}, 400, "tool_choice"),
    (
        "response-format-bad",
        "/v1/chat/completions",
        ok_body(response_format={"type": "yaml"}),
        {},
        400,
        "response_format.type",
    ),
    ("stream-options-bad", "/v1/chat/completions", ok_body(stream_options=[1]), {}, 400, "stream_options"),
    (
        "forbidden-api-base",
        "/v1/chat/completions",
        ok_body(api_base="http://169.254.169.254"),
        {},
        400,
        "api_base",
    ),
    (
        "forbidden-nested",
        "/v1/chat/completions",
        ok_body(metadata={"base_url": "http://evil"}),
        {},
        400,
        "metadata.base_url",
    ),
    ("content-type-xml", "/v1/chat/completions", ok_body(), {"content-type": "application/xml"}, 415, None),
    (
        "content-type-multipart",
        "/v1/chat/completions",
        ok_body(),
        {"content-type": "multipart/form-data; boundary=x"},
        415,
        None,
    ),
    (
        "charset-latin1",
        "/v1/chat/completions",
        ok_body(),
        {"content-type": "application/json; charset=latin-1"},
        415,
        None,
    ),
    ("simple-empty", "/v1/chat", {}, {}, 400, "prompt"),
    ("simple-prompt-int", "/v1/chat", {"prompt": 5}, {}, 400, "prompt"),
    ("simple-prompt-blank", "/v1/chat", {"prompt": "  "}, {}, 400, "prompt"),
    ("simple-both", "/v1/chat", {"prompt": "x", "messages": M}, {}, 400, "prompt"),
    ("simple-max-tokens", "/v1/chat", {"prompt": "x", "max_tokens": -5}, {}, 400, "max_tokens"),
    ("simple-provider-int", "/v1/chat", {"prompt": "x", "provider": 3}, {}, 400, "provider"),
    ("simple-unknown-provider", "/v1/chat", {"prompt": "x", "provider": "nope"}, {}, 404, "model"),
    (
        "simple-role",
        "/v1/chat",
        {"messages": [{"role": "robot", "content": "x"}]},
        {},
        400,
        "messages[0].role",
    ),
]


@pytest.fixture(scope="module", autouse=True)
def _no_upstream_calls(upstreams: Upstreams) -> Iterator[None]:
    upstreams.reset()
    yield
    assert upstreams.total_calls() == 0, "a bad request reached an upstream"


def _check_error_shape(status: int, body: dict[str, Any]) -> None:
    assert set(body) == {"error", "request_id"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"] and isinstance(body["error"]["code"], str)
    assert "Traceback" not in body["error"]["message"]


@pytest.mark.parametrize(
    ("case", "path", "body", "headers", "status", "param"), CASES, ids=[c[0] for c in CASES]
)
def test_bad_input(
    gateway: Proc, case: str, path: str, body: Any, headers: dict[str, str], status: int, param: str | None
) -> None:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    reply = http("POST", gateway.url + path, raw=raw, headers=headers)
    assert reply.status == status, (case, reply.body[:300])
    payload = reply.json()
    _check_error_shape(reply.status, payload)
    if param is not None:
        assert payload["error"]["param"] == param, payload
    assert reply.headers["x-request-id"] == payload["request_id"]


def test_chunked_body_over_the_limit_is_413(gateway: Proc) -> None:
    conn = httpclient.HTTPConnection("127.0.0.1", gateway.port, timeout=10)

    def chunks() -> Iterator[bytes]:
        yield b'{"model": "ollama/llama3.2", "messages": [{"role": "user", "content": "'
        for _ in range(40):
            yield b"x" * 100_000
        yield b'"}]}'

    try:
        conn.request(
            "POST",
            "/v1/chat/completions",
            body=chunks(),
            headers={"content-type": "application/json"},
            encode_chunked=True,
        )
        resp = conn.getresponse()
        assert resp.status == 413
        assert json.loads(resp.read())["error"]["code"] == "request_too_large"
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server may close the connection once it has answered 413
    finally:
        conn.close()


def test_declared_length_over_the_limit_is_413_before_the_body_is_read(gateway: Proc) -> None:
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 3145728\r\n\r\n{"
        )
        head = b""
        while b"request_too_large" not in head:
            chunk = sock.recv(65536)
            if not chunk:
                break
            head += chunk
    assert head.startswith(b"HTTP/1.1 413")
    assert b"request_too_large" in head


def test_lone_surrogate_is_rejected_or_safe(gateway: Proc) -> None:
    raw = b'{"model": "ollama/llama3.2", "messages": [{"role": "user", "content": "\\ud800"}]}'
    reply = http("POST", gateway.url + "/v1/chat/completions", raw=raw)
    assert reply.status == 400


def test_wrong_method_is_405_with_allow(gateway: Proc) -> None:
    reply = http("GET", gateway.url + "/v1/chat/completions")
    assert reply.status == 405 and reply.headers["allow"] == "POST"
    _check_error_shape(405, reply.json())


def test_unknown_path_is_404(gateway: Proc) -> None:
    reply = http("POST", gateway.url + "/v1/nothing", {"x": 1})
    assert reply.status == 404
    _check_error_shape(404, reply.json())


def test_invalid_request_id_is_replaced(gateway: Proc) -> None:
    reply = http("POST", gateway.url + "/v1/chat", {}, headers={"x-request-id": "bad id with spaces"})
    assert reply.headers["x-request-id"] != "bad id with spaces"
    assert len(reply.headers["x-request-id"]) == 32
