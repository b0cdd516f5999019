"""The mock upstream speaks each wire format well enough for the official SDKs to parse it.

The mock runs as a real subprocess on loopback; every test talks to it with the
official synchronous SDK clients (``max_retries=0``) or plain httpx.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import httpx2
import ollama
import openai
import pytest

MARKER = "MOCK-UPSTREAM-ERROR-BODY"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
CLOCK_TOOL = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}
ANTHROPIC_TOOL = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "ai_gateway.testing.mock_upstream", "--host", "127.0.0.1", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("LISTENING "), line
    yield f"http://127.0.0.1:{int(line.split()[1])}"
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture
def ctl(url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, timeout=5) as client:
        yield client


def oai(url: str, path: str = "/v1", **kw: Any) -> openai.OpenAI:
    kw.setdefault("api_key", "sk-test")
    return openai.OpenAI(base_url=url + path, max_retries=0, **kw)


def ant(url: str, **kw: Any) -> anthropic.Anthropic:
    kw.setdefault("api_key", "sk-ant-test")
    return anthropic.Anthropic(base_url=url, max_retries=0, **kw)


def user(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


def collect_text(stream: Any, sink: list[str]) -> None:
    """Append each streamed OpenAI content delta to ``sink`` (kept if the stream breaks)."""
    for chunk in stream:
        sink.append(chunk.choices[0].delta.content or "")


def uid() -> str:
    return uuid.uuid4().hex[:8]


# --------------------------------------------------------------------------- OpenAI


def test_openai_non_stream(url: str) -> None:
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello world"}]
    resp = oai(url).chat.completions.create(model="gpt-4o-mini", messages=messages)
    assert resp.object == "chat.completion"
    assert resp.id.startswith("chatcmpl-")
    assert resp.model == "gpt-4o-mini"
    assert resp.system_fingerprint
    choice = resp.choices[0]
    assert choice.message.content == "mock reply: hello world"
    assert choice.message.role == "assistant"
    assert choice.message.refusal is None
    assert choice.finish_reason == "stop"
    assert resp.usage is not None
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens, resp.usage.total_tokens) == (4, 4, 8)
    assert resp.usage.prompt_tokens_details
    assert resp.usage.prompt_tokens_details.cached_tokens == 0
    # base_url without /v1 also works
    resp2 = oai(url, path="").chat.completions.create(model="m", messages=user("x"))
    assert resp2.choices[0].message.content == "mock reply: x"


def test_openai_stream_with_usage(url: str) -> None:
    stream = oai(url).chat.completions.create(
        model="gpt-4o", messages=user("one two three"), stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[0].object == "chat.completion.chunk"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].delta.content == ""
    contents = [c.choices[0].delta.content for c in chunks[1:] if c.choices and c.choices[0].delta.content]
    assert contents == ["mock", " reply:", " one", " two", " three"]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (3, 5)


def test_openai_chunks_max_tokens_and_stop(url: str) -> None:
    client = oai(url)
    chunks = list(
        client.chat.completions.create(model="m", messages=user("a b c d [[mock chunks=2]]"), stream=True)
    )
    contents = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert contents == ["mock reply: a", " b c d"]
    assert all(c.usage is None for c in chunks)  # no include_usage -> no usage chunk
    resp = client.chat.completions.create(model="m", messages=user("a b c"), max_tokens=3)
    assert resp.choices[0].message.content == "mock reply: a"
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage is not None
    assert resp.usage.completion_tokens == 3
    resp = client.chat.completions.create(model="m", messages=user("a STOP b"), stop=["STOP"])
    assert resp.choices[0].message.content == "mock reply: a "
    assert resp.choices[0].finish_reason == "stop"
    resp = client.chat.completions.create(model="m", messages=user('[[mock text="custom answer"]] hi'))
    assert resp.choices[0].message.content == "custom answer"


def test_openai_tool_calls_non_stream(url: str) -> None:
    client = oai(url)
    resp = client.chat.completions.create(
        model="m", messages=user("weather?"), tools=[WEATHER_TOOL], tool_choice="required"
    )
    msg = resp.choices[0].message
    assert resp.choices[0].finish_reason == "tool_calls"
    assert msg.content is None
    assert msg.tool_calls is not None
    assert len(msg.tool_calls) == 1
    call = msg.tool_calls[0]
    assert call.type == "function"
    assert call.id.startswith("call_")
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"arg": "value"}
    resp = client.chat.completions.create(
        model="m", messages=user("both [[mock tools=2]]"), tools=[WEATHER_TOOL, CLOCK_TOOL]
    )
    calls = resp.choices[0].message.tool_calls or []
    assert [c.function.name for c in calls] == ["get_weather", "get_time"]
    resp = client.chat.completions.create(
        model="m", messages=user("[[mock tool=1]]"), tools=[WEATHER_TOOL], tool_choice="none"
    )
    assert resp.choices[0].message.tool_calls is None


def test_openai_tool_calls_stream(url: str) -> None:
    stream = oai(url).chat.completions.create(
        model="m",
        messages=user("""go [[mock tool=1 tool_args='{"city": "Paris"}']]"""),
        tools=[WEATHER_TOOL],
        stream=True,
    )
    deltas = [tc for c in stream if c.choices for tc in c.choices[0].delta.tool_calls or []]
    first, rest = deltas[0], deltas[1:]
    assert first.index == 0
    assert first.id
    assert first.type == "function"
    assert first.function is not None
    assert first.function.name == "get_weather"
    fragments = [d.function.arguments for d in rest if d.function and d.function.arguments]
    assert len(fragments) >= 2
    assert json.loads("".join(fragments)) == {"city": "Paris"}


# --------------------------------------------------------------------------- OpenRouter


def test_openrouter_cost_provider_and_headers(url: str, ctl: httpx.Client) -> None:
    tag = uid()
    client = oai(url, path="/api/v1", default_headers={"HTTP-Referer": "https://app.test", "X-Title": tag})
    resp = client.chat.completions.create(model="openai/gpt-4o", messages=user("hi there"))
    assert resp.id.startswith("gen-")
    assert (resp.model_extra or {})["provider"] == "MockProvider"
    assert resp.usage is not None
    assert (resp.usage.model_extra or {})["cost"] == pytest.approx(6 * 0.000001)
    chunks = list(client.chat.completions.create(model="openai/gpt-4o", messages=user("a b c"), stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "mock reply: a b c"
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.model_extra or {})["cost"] > 0
    rec = next(r for r in ctl.get("/_mock/log").json() if r["title"] == tag)
    assert rec["referer"] == "https://app.test"
    assert rec["headers"]["x-title"] == tag
    body = {"model": "x", "messages": user("a b c"), "stream": True}
    raw = ctl.post("/api/v1/chat/completions", json=body, headers={"Authorization": "Bearer k"}).text
    assert raw.startswith(": OPENROUTER PROCESSING\n\ndata: ")
    assert raw.count(": OPENROUTER PROCESSING") == 2


# --------------------------------------------------------------------------- Anthropic


def test_anthropic_non_stream(url: str) -> None:
    client = ant(url)
    msg = client.messages.create(
        model="claude-mock-1", max_tokens=100, system="be nice", messages=user("hello world")
    )
    assert msg.type == "message"
    assert msg.role == "assistant"
    assert msg.id.startswith("msg_")
    assert msg.model == "claude-mock-1"
    assert msg.content[0].type == "text"
    assert msg.content[0].text == "mock reply: hello world"
    assert msg.stop_reason == "end_turn"
    assert msg.stop_sequence is None
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (4, 4)
    assert msg.usage.cache_read_input_tokens == 0
    msg = client.messages.create(model="c", max_tokens=100, messages=user("a END b"), stop_sequences=["END"])
    assert msg.stop_reason == "stop_sequence"
    assert msg.stop_sequence == "END"
    assert msg.content[0].type == "text"
    assert msg.content[0].text == "mock reply: a "
    msg = client.messages.create(model="c", max_tokens=2, messages=user("a b"))
    assert msg.stop_reason == "max_tokens"
    assert msg.usage.output_tokens == 2


def test_anthropic_stream(url: str) -> None:
    client = ant(url)
    system = [{"type": "text", "text": "sys prompt"}]
    with client.messages.stream(model="c", max_tokens=50, system=system, messages=user("x y")) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == "mock reply: x y"
    assert final.content[0].type == "text"
    assert final.content[0].text == text
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (4, 4)
    events = [
        e.type for e in client.messages.create(model="c", max_tokens=5, messages=user("q"), stream=True)
    ]
    assert events == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * 3,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]


def test_anthropic_tool_use_stream(url: str) -> None:
    client = ant(url)
    with client.messages.stream(
        model="c",
        max_tokens=50,
        messages=user("weather"),
        tools=[ANTHROPIC_TOOL],
        tool_choice={"type": "any"},
    ) as s:
        events = list(s)
        final = s.get_final_message()
    partials = [e for e in events if e.type == "content_block_delta" and e.delta.type == "input_json_delta"]
    assert len([e for e in partials if e.delta.partial_json]) >= 2
    block = final.content[0]
    assert block.type == "tool_use"
    assert block.name == "get_weather"
    assert block.input == {"arg": "value"}
    assert block.id.startswith("toolu_")
    assert final.stop_reason == "tool_use"
    msg = client.messages.create(
        model="c", max_tokens=50, messages=user("[[mock tools=2]]"), tools=[ANTHROPIC_TOOL]
    )
    assert [b.type for b in msg.content] == ["tool_use", "tool_use"]


def test_anthropic_request_validation(ctl: httpx.Client) -> None:
    body = {"model": "c", "max_tokens": 5, "messages": user("x")}
    r = ctl.post("/v1/messages", json=body, headers={"anthropic-version": "2023-06-01"})
    assert r.status_code == 401
    assert r.json()["type"] == "error"
    assert r.json()["error"]["type"] == "authentication_error"
    r = ctl.post("/v1/messages", json=body, headers={"x-api-key": "k"})
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"
    r = ctl.post(
        "/v1/messages",
        json={"model": "c", "messages": user("x")},
        headers={"x-api-key": "k", "anthropic-version": "2023-06-01"},
    )
    assert r.status_code == 400
    assert "max_tokens" in r.json()["error"]["message"]


# --------------------------------------------------------------------------- Ollama


def test_ollama_chat_and_list(url: str) -> None:
    client = ollama.Client(host=url)
    resp = client.chat(model="llama3.2", messages=user("hi there"))
    assert resp.message.content == "mock reply: hi there"
    assert resp.done
    assert resp.done_reason == "stop"
    assert (resp.prompt_eval_count, resp.eval_count) == (2, 4)
    assert resp.model == "llama3.2"
    parts = list(client.chat(model="llama3.2", messages=user("a b"), stream=True))
    assert "".join(p.message.content or "" for p in parts) == "mock reply: a b"
    assert [p.done for p in parts] == [False] * 4 + [True]
    assert parts[-1].eval_count == 4
    resp = client.chat(model="llama3.2", messages=user("a b c"), options={"num_predict": 2})
    assert resp.message.content == "mock reply:"
    assert resp.done_reason == "length"
    resp = client.chat(model="llama3.2", messages=user("[[mock tool=1]]"), tools=[WEATHER_TOOL])
    assert resp.message.tool_calls
    assert resp.message.tool_calls[0].function.name == "get_weather"
    assert resp.message.tool_calls[0].function.arguments == {"arg": "value"}
    names = [m.model for m in client.list().models]
    assert names == ["llama3.2:latest", "qwen2.5:0.5b"]
    with pytest.raises(ollama.ResponseError) as exc:
        client.chat(model="missing-model", messages=user("x"))
    assert exc.value.status_code == 404
    assert "not found, try pulling it first" in exc.value.error


def test_ollama_stream_is_default(ctl: httpx.Client) -> None:
    r = ctl.post("/api/chat", json={"model": "m", "messages": user("x")})
    assert r.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert lines[-1]["done"] is True
    assert all(not x["done"] for x in lines[:-1])


# --------------------------------------------------------------------------- faults


def test_status_and_retry_after(url: str) -> None:
    client = oai(url, default_headers={"x-mock-fault": "status=503 retry_after=7"})
    with pytest.raises(openai.APIStatusError) as exc:
        client.chat.completions.create(model="m", messages=user("x"))
    assert exc.value.status_code == 503
    assert exc.value.response.headers["retry-after"] == "7"
    assert MARKER in exc.value.response.text
    with pytest.raises(anthropic.APIStatusError) as aexc:
        ant(url).messages.create(model="c", max_tokens=5, messages=user("[[mock status=529]] hi"))
    assert aexc.value.status_code == 529
    assert aexc.value.response.json()["error"]["type"] == "overloaded_error"
    with pytest.raises(ollama.ResponseError) as oexc:
        ollama.Client(host=url).chat(model="m", messages=user("[[mock status=500]]"))
    assert oexc.value.status_code == 500
    assert MARKER in oexc.value.error


def test_bad_key_is_echoed_in_401(url: str) -> None:
    with pytest.raises(openai.AuthenticationError) as exc:
        oai(url, api_key="invalid-sk-SECRET123").chat.completions.create(model="m", messages=user("x"))
    err = exc.value.response.json()["error"]
    assert "invalid-sk-SECRET123" in err["message"]
    assert err["code"] == "invalid_api_key"
    assert err["type"] == "invalid_request_error"
    assert err["param"] is None


def test_fail_times_then_success(url: str) -> None:
    prompt = user(f"[[mock status=503 fail_times=1 id={uid()}]] hi")
    client = oai(url)
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="m", messages=prompt)
    assert (
        client.chat.completions.create(model="m", messages=prompt).choices[0].message.content
        == "mock reply: hi"
    )


def test_drop_after_mid_stream(url: str) -> None:
    got: list[str] = []
    stream = oai(url).chat.completions.create(
        model="m", messages=user("a b c d [[mock drop_after=2]]"), stream=True
    )
    with pytest.raises(openai.APIConnectionError):
        collect_text(stream, got)
    assert "".join(got) == "mock reply:"
    # the anthropic SDK lets the transport error escape mid-stream unwrapped
    with pytest.raises(httpx2.RemoteProtocolError):
        with ant(url).messages.stream(
            model="c", max_tokens=9, messages=user("a b [[mock drop_after=1]]")
        ) as s:
            s.get_final_message()
    with pytest.raises(openai.APIConnectionError):
        oai(url).chat.completions.create(model="m", messages=user("[[mock drop_after=0]]"))


def test_stall_after_detected_by_client_timeout(url: str, ctl: httpx.Client) -> None:
    tag = uid()
    stream = oai(url, timeout=0.5).chat.completions.create(
        model=tag, messages=user("a b c [[mock stall_after=1]]"), stream=True
    )
    with pytest.raises(openai.APITimeoutError):
        for _ in stream:
            pass
    deadline = time.monotonic() + 3
    rec: dict[str, Any] = {}
    while time.monotonic() < deadline and not rec.get("aborted"):
        rec = next(r for r in ctl.get("/_mock/log").json() if (r["body"] or {}).get("model") == tag)
        time.sleep(0.05)
    assert rec["aborted"]
    assert not rec["completed"]
    assert rec["output_tokens_sent"] == 1


def test_client_disconnect_counts_as_aborted(url: str, ctl: httpx.Client) -> None:
    tag = uid()
    body = {"model": tag, "stream": True, "messages": user("a b c d e f [[mock gap_ms=30]]")}
    headers = {"Authorization": "Bearer k"}
    with ctl.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
        next(r.iter_raw())  # read the first chunk, then hang up
    deadline = time.monotonic() + 3
    rec: dict[str, Any] = {}
    while time.monotonic() < deadline and not rec.get("aborted"):
        time.sleep(0.05)
        rec = next(r for r in ctl.get("/_mock/log").json() if (r["body"] or {}).get("model") == tag)
    assert rec["aborted"]
    assert not rec["completed"]
    assert rec["status"] == 200


def test_bad_json_and_error_after(url: str) -> None:
    client = oai(url)
    with pytest.raises(json.JSONDecodeError):
        client.chat.completions.create(model="m", messages=user("[[mock bad_json=1]]"))
    with pytest.raises(json.JSONDecodeError):
        list(client.chat.completions.create(model="m", messages=user("[[mock bad_json=1]]"), stream=True))
    with pytest.raises(openai.APIError) as exc:
        list(
            client.chat.completions.create(
                model="m", messages=user("a b [[mock error_after=1]]"), stream=True
            )
        )
    assert MARKER in exc.value.message
    with pytest.raises(anthropic.APIStatusError):
        with ant(url).messages.stream(
            model="c", max_tokens=9, messages=user("a [[mock error_after=1]]")
        ) as s:
            s.get_final_message()


def test_ttfb_gap_and_no_usage(url: str) -> None:
    client = oai(url)
    start = time.monotonic()
    resp = client.chat.completions.create(model="m", messages=user("x [[mock ttfb_ms=300 no_usage=1]]"))
    assert time.monotonic() - start >= 0.3
    assert resp.usage is None
    start = time.monotonic()
    chunks = list(
        client.chat.completions.create(model="m", messages=user("a b [[mock gap_ms=40]]"), stream=True)
    )
    assert time.monotonic() - start >= 0.04 * (len(chunks) - 1)


def test_instance_fault_stats_log_and_reset(url: str, ctl: httpx.Client) -> None:
    assert ctl.post("/_mock/reset").json() == {"ok": True}
    assert ctl.post("/_mock/config", json={"fault": "status=429 retry_after=1"}).json()["fault"]
    with pytest.raises(openai.RateLimitError):
        oai(url).chat.completions.create(model="m", messages=user("x"))
    ctl.post("/_mock/config", json={"fault": None})
    oai(url).chat.completions.create(model="m", messages=user("x"))
    ollama.Client(host=url).list()
    stats = ctl.get("/_mock/stats").json()
    assert stats["calls"] == 3
    assert stats["completed"] == 3
    assert stats["aborted"] == 0
    assert stats["by_path"] == {"/v1/chat/completions": 2, "/api/tags": 1}
    log = ctl.get("/_mock/log").json()
    assert [r["status"] for r in log] == [429, 200, 200]
    assert log[1]["body"]["messages"] == user("x")
    assert log[1]["headers"]["authorization"] == "Bearer sk-test"
    assert log[1]["output_tokens_sent"] == 3
    assert log[1]["stream"] is False
    ctl.post("/_mock/reset")
    assert ctl.get("/_mock/stats").json() == {
        "calls": 0,
        "by_path": {},
        "completed": 0,
        "aborted": 0,
        "dropped": 0,
    }
