"""`POST /v1/messages` and `/v1/messages/count_tokens` as Anthropic's API behaves: the exact SSE event
sequence, errors in Anthropic's shape (raised before the handler too), headers, token counting, and
the Anthropic-only fields that pass through to Anthropic and are carried, ignored or refused elsewhere.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest

from tests.support import Proc, Upstreams, http, start_gateway
from tests.translation_support import MODELS, PNG_B64

VERSION = {"anthropic-version": "2023-06-01"}


@pytest.fixture(scope="module")
def client(gateway: Proc) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key="sk-anything", max_retries=0, timeout=20)


def post(gateway: Proc, body: Any, path: str = "/v1/messages", **headers: str) -> Any:
    return http("POST", gateway.url + path, body, headers={**VERSION, **headers})


def body(provider: str, text: str, **kw: Any) -> dict[str, Any]:
    return {
        "model": MODELS[provider],
        "max_tokens": 100,
        "messages": [{"role": "user", "content": text}],
        **kw,
    }


def events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) pairs of an SSE body; every event of the Messages stream is named."""
    out = []
    for frame in raw.decode().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in frame.splitlines() if ": " in line)
        if lines:
            out.append((lines["event"], json.loads(lines["data"])))
    return out


def sent(mocks: Upstreams, provider: str) -> dict[str, Any]:
    """The body the upstream received last."""
    body: dict[str, Any] = mocks.mocks[provider].calls_log()[-1]["body"]
    return body


# --- the wire -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", ["openai", "ollama", "anthropic"])
def test_stream_event_sequence_with_text_then_parallel_tools(
    gateway: Proc, mocks: Upstreams, provider: str
) -> None:
    """Text, then two tool calls, from an upstream of each family: blocks 0 (text), 1 and 2 (tool_use),
    strictly one after the other; ping after the first block opens; usage in message_delta."""
    tools = [{"name": n, "input_schema": {"type": "object"}} for n in ("get_weather", "get_time")]
    reply = post(gateway, body(provider, "go [[mock tools=2 preamble='on it']]", tools=tools, stream=True))
    assert reply.status == 200 and reply.headers["content-type"].startswith("text/event-stream")
    seq = events(reply.body)
    names = [name for name, _ in seq]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-2:] == ["message_delta", "message_stop"]
    assert all(data["type"] == name for name, data in seq)
    open_index, order = None, []
    for name, data in seq:
        if name == "content_block_start":
            assert open_index is None and data["index"] == len(order)
            open_index = data["index"]
            order.append(data["content_block"]["type"])
        elif name == "content_block_delta":
            assert data["index"] == open_index
        elif name == "content_block_stop":
            assert data["index"] == open_index
            open_index = None
    assert order == ["text", "tool_use", "tool_use"]
    args = [
        "".join(d["delta"]["partial_json"] for n, d in seq if n == "content_block_delta" and d["index"] == i)
        for i in (1, 2)
    ]
    assert [json.loads(a) for a in args] == [{"arg": "value"}, {"arg": "value"}]
    start = seq[0][1]["message"]
    assert start["id"] == f"msg_{reply.headers['x-request-id']}" and start["content"] == []
    assert start["stop_reason"] is None and start["role"] == "assistant" and start["type"] == "message"
    delta = seq[-2][1]
    assert delta["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert delta["usage"]["output_tokens"] == 4 and delta["usage"]["input_tokens"] == 1


def test_non_stream_message_object(gateway: Proc, mocks: Upstreams) -> None:
    reply = post(gateway, body("openai", "hello there"), **{"x-request-id": "req-77"})
    assert reply.status == 200
    assert reply.headers["x-request-id"] == "req-77"
    assert reply.headers["x-aigw-provider"] == "openai" and reply.headers["x-aigw-attempts"] == "1"
    assert reply.json() == {
        "id": "msg_req-77",
        "type": "message",
        "role": "assistant",
        "model": "openai/gpt-4o-mini",
        "content": [{"type": "text", "text": "mock reply: hello there"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 2,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": 4,
        },
    }


def test_anthropic_version_is_optional_and_beta_flags_reach_anthropic(
    gateway: Proc, mocks: Upstreams
) -> None:
    reply = http(
        "POST", gateway.url + "/v1/messages", body("anthropic", "hi"), headers={"anthropic-beta": "b-1"}
    )
    assert reply.status == 200
    assert mocks.mocks["anthropic"].calls_log()[-1]["headers"]["anthropic-beta"] == "b-1"
    post(gateway, body("openai", "hi"), **{"anthropic-beta": "b-1"})
    assert "anthropic-beta" not in mocks.mocks["openai"].calls_log()[-1]["headers"]


def test_consecutive_user_turns_are_merged_for_anthropic(gateway: Proc, mocks: Upstreams) -> None:
    msgs = [{"role": "user", "content": "a"}, {"role": "user", "content": [{"type": "text", "text": "b"}]}]
    reply = post(gateway, {"model": MODELS["anthropic"], "max_tokens": 10, "messages": msgs})
    assert reply.status == 200
    assert [m["role"] for m in sent(mocks, "anthropic")["messages"]] == ["user"]


# --- errors in Anthropic's shape ------------------------------------------------------------------------


def _error(reply: Any, status: int, kind: str) -> str:
    assert reply.status == status, reply.body
    data = reply.json()
    assert set(data) == {"type", "error", "request_id"} and data["type"] == "error"
    assert data["error"]["type"] == kind and data["request_id"] == reply.headers["x-request-id"]
    assert set(data["error"]) == {"type", "message"}
    message: str = data["error"]["message"]
    return message


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        ({"model": "ollama/llama3.2", "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
        ({"model": "ollama/llama3.2", "max_tokens": 5, "messages": []}, "at least one message"),
        (
            {"model": "ollama/llama3.2", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]},
            "role",
        ),
        (
            {"model": "ollama/llama3.2", "max_tokens": 5, "messages": [{"role": "user", "content": ""}]},
            "non-empty",
        ),
        (
            {
                "model": "m",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": "x"}],
                "temperature": 1.5,
            },
            "temperature",
        ),
        (
            {
                "model": "m",
                "max_tokens": 5,
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "image",
                                "source": {"type": "base64", "media_type": "image/bmp", "data": "QQ=="},
                            }
                        ],
                    }
                ],
            },
            "media_type",
        ),
        (
            {
                "model": "m",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": "x"}],
                "tool_choice": {"type": "sometimes"},
            },
            "tool_choice",
        ),
    ],
)
def test_invalid_requests_are_400_invalid_request_error(
    gateway: Proc, mocks: Upstreams, payload: dict[str, Any], words: str
) -> None:
    assert words in _error(post(gateway, payload), 400, "invalid_request_error")
    assert mocks.total_calls() == 0


def test_errors_before_the_handler_take_anthropic_shape(gateway: Proc, mocks: Upstreams) -> None:
    _error(post(gateway, body("ollama", "x"), path="/v1/messages/batches"), 404, "not_found_error")
    _error(http("GET", gateway.url + "/v1/messages"), 405, "invalid_request_error")
    # Declared too large: the gateway answers before reading the body (sending it all would race the
    # early answer and the client could see a reset instead), so send only the headers.
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
        sock.sendall(
            b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 3145728\r\n\r\n{"
        )
        raw = b""
        while b"\r\n\r\n" not in raw or not raw.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            raw += chunk
    head, _, payload = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413")
    too_big = json.loads(payload)
    assert too_big["type"] == "error" and too_big["error"]["type"] == "request_too_large"
    wrong_type = http("POST", gateway.url + "/v1/messages", raw=b"{}", headers={"content-type": "text/xml"})
    _error(wrong_type, 415, "invalid_request_error")
    _error(http("POST", gateway.url + "/v1/messages", raw=b"{not json"), 400, "invalid_request_error")
    assert "does not exist" in _error(
        post(gateway, body("ollama", "x") | {"model": "nope"}), 404, "not_found_error"
    )
    # The OpenAI-shaped surfaces keep their shape.
    assert "error" in http("GET", gateway.url + "/v1/nothing").json()


def test_upstream_failures_map_to_anthropic_types(gateway: Proc, mocks: Upstreams) -> None:
    limited = post(gateway, body("anthropic", "x [[mock status=429 retry_after=0]]"))
    _error(limited, 429, "rate_limit_error")
    assert limited.headers["retry-after"]
    _error(post(gateway, body("openai", "x [[mock status=500 retry_after=0]]")), 502, "api_error")


def test_sdk_raises_its_own_error_classes(client: anthropic.Anthropic, mocks: Upstreams) -> None:
    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(model="nope", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    with pytest.raises(anthropic.BadRequestError) as exc:
        client.messages.create(
            model=MODELS["ollama"], max_tokens=5, messages=[{"role": "user", "content": ""}]
        )
    assert exc.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]


@pytest.mark.parametrize(("provider", "kind"), [("openai", "api_error"), ("anthropic", "overloaded_error")])
def test_mid_stream_failure_is_an_error_event_without_message_stop(
    gateway: Proc, mocks: Upstreams, provider: str, kind: str
) -> None:
    reply = post(gateway, body(provider, "one two three four [[mock error_after=2]]", stream=True))
    assert reply.status == 200
    seq = events(reply.body)
    assert seq[-1][0] == "error" and seq[-1][1]["type"] == "error"
    assert seq[-1][1]["error"]["type"] == kind
    assert "MOCK-UPSTREAM-ERROR-BODY" not in reply.body.decode()
    assert "message_stop" not in [name for name, _ in seq]
    text = "".join(d["delta"]["text"] for n, d in seq if n == "content_block_delta")
    assert text == "mock reply:"


def test_sdk_stream_raises_on_mid_stream_error(client: anthropic.Anthropic, mocks: Upstreams) -> None:
    with (
        pytest.raises(anthropic.APIStatusError),
        client.messages.stream(
            model=MODELS["ollama"],
            max_tokens=50,
            messages=[{"role": "user", "content": "a b c [[mock error_after=1]]"}],
        ) as s,
    ):
        s.get_final_message()


@pytest.fixture(scope="module")
def keyed_gateway(workdir: Path, upstreams: Upstreams) -> Iterator[Proc]:
    env = {**upstreams.env(), "AIGW_MASTER_KEY": "sk-master-0123456789abcdef0123456789"}
    tmp = workdir / "keyed"
    tmp.mkdir(exist_ok=True)
    proc = start_gateway(tmp, env, name="keyed")
    yield proc
    proc.stop()


def test_x_api_key_authenticates_and_401_has_anthropic_shape(keyed_gateway: Proc, mocks: Upstreams) -> None:
    _error(post(keyed_gateway, body("ollama", "x")), 401, "authentication_error")
    _error(post(keyed_gateway, body("ollama", "x"), **{"x-api-key": "sk-wrong"}), 401, "authentication_error")
    ok = post(keyed_gateway, body("ollama", "x"), **{"x-api-key": "sk-master-0123456789abcdef0123456789"})
    assert ok.status == 200 and ok.json()["content"][0]["text"] == "mock reply: x"


# --- count_tokens ---------------------------------------------------------------------------------------


def test_count_tokens_asks_anthropic_and_estimates_elsewhere(
    gateway: Proc, client: anthropic.Anthropic, mocks: Upstreams
) -> None:
    msgs: Any = [{"role": "user", "content": "one two three four five"}]
    counted = client.messages.count_tokens(model=MODELS["anthropic"], messages=msgs, system="be brief")
    assert counted.input_tokens == 7  # the mock counts words, system prompt included
    assert mocks.mocks["anthropic"].calls_log()[-1]["path"] == "/v1/messages/count_tokens"
    reply = post(gateway, {"model": MODELS["anthropic"], "messages": msgs}, path="/v1/messages/count_tokens")
    assert reply.headers["x-aigw-token-count"] == "upstream" and reply.json() == {"input_tokens": 5}
    estimated = post(gateway, {"model": MODELS["ollama"], "messages": msgs}, path="/v1/messages/count_tokens")
    assert estimated.headers["x-aigw-token-count"] == "estimate"
    assert 5 <= estimated.json()["input_tokens"] <= 20 and mocks.mocks["ollama"].calls() == 0
    # An Anthropic upstream that cannot count right now still leaves the estimate.
    broken = [{"role": "user", "content": "one two [[mock status=500]]"}]
    fallback = post(
        gateway, {"model": MODELS["anthropic"], "messages": broken}, path="/v1/messages/count_tokens"
    )
    assert fallback.status == 200 and fallback.headers["x-aigw-token-count"] == "estimate"


def test_count_tokens_validates_like_messages(gateway: Proc, mocks: Upstreams) -> None:
    reply = post(gateway, {"model": MODELS["ollama"], "messages": []}, path="/v1/messages/count_tokens")
    _error(reply, 400, "invalid_request_error")


# --- Anthropic-only fields ---------------------------------------------------------------------------


def test_thinking_blocks_round_trip_through_anthropic(client: anthropic.Anthropic, mocks: Upstreams) -> None:
    thinking: Any = {"type": "enabled", "budget_tokens": 1024}
    msgs: Any = [{"role": "user", "content": "ponder"}]
    kw: dict[str, Any] = {"model": MODELS["anthropic"], "max_tokens": 2000, "thinking": thinking}
    first = client.messages.create(messages=msgs, **kw)
    assert [b.type for b in first.content] == ["thinking", "text"]
    assert first.content[0].signature and first.content[0].thinking == "mock thinking about: ponder"  # type: ignore[union-attr]
    with client.messages.stream(messages=msgs, **kw) as s:
        streamed = s.get_final_message()
    assert [b.type for b in streamed.content] == ["thinking", "text"]
    assert streamed.content[0].signature.startswith("sig-")  # type: ignore[union-attr]
    history: Any = [
        *msgs,
        {"role": "assistant", "content": first.content},
        {"role": "user", "content": "again"},
    ]
    client.messages.create(messages=history, **kw)
    block = sent(mocks, "anthropic")["messages"][1]["content"][0]
    assert block == {
        "type": "thinking",
        "thinking": first.content[0].thinking,
        "signature": first.content[0].signature,
    }  # type: ignore[union-attr]
    # Elsewhere thinking is a reasoning budget the target cannot use: the answer comes without it,
    # and earlier turns' thinking is left out, as Anthropic itself ignores it.
    other = client.messages.create(messages=history, **{**kw, "model": MODELS["ollama"]})
    assert [b.type for b in other.content] == ["text"]
    assert "thinking" not in json.dumps(sent(mocks, "ollama"))


def test_cache_control_reaches_anthropic_and_openrouter(gateway: Proc, mocks: Upstreams) -> None:
    mark = {"type": "ephemeral"}
    payload = {
        "max_tokens": 10,
        "system": [{"type": "text", "text": "sys", "cache_control": mark}],
        "tools": [{"name": "t", "input_schema": {"type": "object"}, "cache_control": mark}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": mark}]}],
    }
    assert post(gateway, {"model": MODELS["anthropic"], **payload}).status == 200
    got = sent(mocks, "anthropic")
    assert got["system"] == payload["system"] and got["tools"][0]["cache_control"] == mark
    assert got["messages"][0]["content"][0] == {"type": "text", "text": "hi", "cache_control": mark}
    assert post(gateway, {"model": MODELS["openrouter"], **payload}).status == 200
    assert sent(mocks, "openrouter")["messages"][1]["content"][0]["cache_control"] == mark
    # OpenAI caches on its own; the hint cannot change the answer, so it is left out.
    assert post(gateway, {"model": MODELS["openai"], **payload}).status == 200
    assert "cache_control" not in json.dumps(sent(mocks, "openai"))


def test_top_k_is_carried_where_it_exists_and_refused_where_not(gateway: Proc, mocks: Upstreams) -> None:
    assert post(gateway, body("anthropic", "x", top_k=5)).status == 200
    assert sent(mocks, "anthropic")["top_k"] == 5
    assert post(gateway, body("ollama", "x", top_k=5)).status == 200
    assert sent(mocks, "ollama")["options"]["top_k"] == 5
    assert post(gateway, body("openrouter", "x", top_k=5)).status == 200
    assert sent(mocks, "openrouter")["top_k"] == 5
    message = _error(post(gateway, body("openai", "x", top_k=5)), 400, "invalid_request_error")
    assert "top_k" in message and "openai" in message
    assert mocks.mocks["openai"].calls() == 0


def test_documents_and_server_tools_only_go_to_anthropic(gateway: Proc, mocks: Upstreams) -> None:
    doc = {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "hi"}}
    msgs = [{"role": "user", "content": [doc, {"type": "text", "text": "summarise"}]}]
    assert post(gateway, {"model": MODELS["anthropic"], "max_tokens": 9, "messages": msgs}).status == 200
    assert sent(mocks, "anthropic")["messages"][0]["content"][0] == doc
    message = _error(
        post(gateway, {"model": MODELS["ollama"], "max_tokens": 9, "messages": msgs}),
        400,
        "invalid_request_error",
    )
    assert "'document'" in message and "ollama" in message
    search = {"type": "web_search_20250305", "name": "web_search", "max_uses": 2}
    assert post(gateway, body("anthropic", "news?", tools=[search])).status == 200
    assert sent(mocks, "anthropic")["tools"] == [search]
    message = _error(post(gateway, body("openai", "news?", tools=[search])), 400, "invalid_request_error")
    assert "web_search_20250305" in message and "openai" in message


def test_metadata_user_and_disable_parallel(gateway: Proc, mocks: Upstreams) -> None:
    assert post(gateway, body("openai", "x", metadata={"user_id": "u-1"})).status == 200
    assert sent(mocks, "openai")["user"] == "u-1"
    tools = [{"name": "t", "input_schema": {"type": "object"}}]
    choice = {"type": "auto", "disable_parallel_tool_use": True}
    assert post(gateway, body("openai", "x", tools=tools, tool_choice=choice)).status == 200
    assert sent(mocks, "openai")["parallel_tool_calls"] is False
    message = _error(
        post(gateway, body("ollama", "x", tools=tools, tool_choice=choice)), 400, "invalid_request_error"
    )
    assert "parallel" in message and "ollama" in message


def test_images_in_tool_results_reach_anthropic(gateway: Proc, mocks: Upstreams) -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64}}
    msgs = [
        {"role": "user", "content": "look"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "tu_1", "name": "snap", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "tu_1", "content": [image]}]},
    ]
    tools = [{"name": "snap", "input_schema": {"type": "object"}}]
    reply = post(gateway, {"model": MODELS["anthropic"], "max_tokens": 9, "messages": msgs, "tools": tools})
    assert reply.status == 200
    assert sent(mocks, "anthropic")["messages"][2]["content"][0]["content"] == [image]
    # Chat Completions tool messages carry text only: a clear 400 instead of a lost image.
    message = _error(
        post(gateway, {"model": MODELS["openai"], "max_tokens": 9, "messages": msgs, "tools": tools}),
        400,
        "invalid_request_error",
    )
    assert "image" in message and "openai" in message


def test_fallback_skips_targets_that_cannot_carry_a_feature(gateway: Proc, mocks: Upstreams) -> None:
    """The default route is ollama -> openrouter -> openai: OpenAI's `logprobs` skips Ollama."""
    reply = http(
        "POST",
        gateway.url + "/v1/chat/completions",
        {"model": "default", "messages": [{"role": "user", "content": "x"}], "logprobs": True},
    )
    assert reply.status == 200 and reply.headers["x-aigw-provider"] == "openrouter"
    assert mocks.mocks["ollama"].calls() == 0
    mocks.reset()
    doc = {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "hi"}}
    msgs = [{"role": "user", "content": [doc, {"type": "text", "text": "x"}]}]
    message = _error(
        post(gateway, {"model": "default", "max_tokens": 5, "messages": msgs}), 400, "invalid_request_error"
    )
    assert "document" in message and mocks.total_calls() == 0
