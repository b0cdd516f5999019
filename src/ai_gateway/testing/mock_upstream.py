"""A faithful mock upstream LLM server (aiohttp) for tests, with request-chosen faults.

Run it as a process::

    python -m ai_gateway.testing.mock_upstream --host 127.0.0.1 --port 0

It prints exactly one line, ``LISTENING <port>``, to stdout once it accepts
connections (``--port 0`` picks a free port) and stops on SIGTERM/SIGINT.
In-process: ``runner, port = await start_mock("127.0.0.1", 0)`` and later
``await runner.cleanup()``.

Wire formats, all on one port
-----------------------------
* OpenAI Chat Completions: ``POST /v1/chat/completions`` and ``POST /chat/completions``.
  Needs ``Authorization: Bearer <key>``; a missing key, or one starting with ``invalid``,
  gets 401 ``invalid_api_key`` whose message echoes the key verbatim.
* OpenRouter: ``POST /api/v1/chat/completions``; OpenAI shape plus ``provider`` and
  ``usage.cost`` (0.000001 USD per prompt+completion token). Streams start with the
  comment ``: OPENROUTER PROCESSING`` (and repeat it after the 2nd content chunk) and
  always end with a usage chunk. ``HTTP-Referer``/``X-Title`` are recorded in the log.
* Anthropic Messages: ``POST /v1/messages``. Needs ``x-api-key`` (401, or a key starting
  with ``invalid`` -> 401), ``anthropic-version`` (400) and ``max_tokens`` (400).
  ``POST /v1/messages/count_tokens`` answers ``{"input_tokens": N}`` counted as below.
  With ``thinking`` enabled the answer starts with a thinking block (``thinking_delta`` and
  ``signature_delta`` when streamed).

Every request is also checked the way the real upstream checks it (``_mock_inspect.validate``):
an OpenAI ``tool`` message must answer a preceding call and every call must be answered; an
Anthropic ``tool_use`` needs its ``tool_result`` in the next (merged) user turn and vice versa;
image sources, block types, tool names and ``temperature`` are checked; Ollama images must be
raw base64 and tool-call arguments objects. A violation is a 400 in the native shape.
* Ollama: ``POST /api/chat`` (``stream`` defaults to true -> NDJSON), ``GET /api/tags``,
  ``GET /api/version``, ``GET /``. A model whose name starts with ``missing`` -> 404.

Deterministic content
---------------------
The answer is ``"mock reply: " + <last user message text>`` with directives removed
(or the ``text`` directive verbatim). Input tokens = whitespace-separated words over
all message texts plus the system prompt, directives removed (min 1). Output tokens =
words in the answer (a tool-call answer counts 1 per call). ``max_tokens`` /
``max_completion_tokens`` / ``options.num_predict`` below the word count truncate the
answer to that many words (finish ``length`` / ``max_tokens``). The first stop sequence
(``stop`` / ``stop_sequences`` / ``options.stop``) found in the answer cuts it there
(Anthropic: ``stop_reason: stop_sequence`` with ``stop_sequence`` set). Streams send one
content chunk per word unless ``chunks=N``. The requested model name is echoed.

When the conversation ends with tool results the answer is ``"mock reply: "`` + their contents
joined by ``" | "``, and ``tool``/``tools`` directives no longer ask for calls. When the request
asks for JSON (OpenAI ``response_format``, Anthropic ``output_config.format``, Ollama ``format``)
the answer is a JSON value of the schema, strings filled with the text answer, or
``{"reply": <text>}`` without a schema.

Tool calls are answered when the request defines tools and either ``tool=1`` /
``tools=N`` is given or ``tool_choice`` forces one (OpenAI ``"required"`` or a named
function; Anthropic ``{"type": "any"}`` or ``{"type": "tool"}``); ``tool_choice`` none
disables them. Calls go to the named tool, else the first N tools (cycling).

Directives
----------
Sources, merged in this order (later wins per key): the instance default set with
``POST /_mock/config {"fault": "..."}`` (``null`` clears), every ``[[mock k=v ...]]``
block inside message/system text (removed before the answer and token counts), then
the ``x-mock-fault: k=v ...`` request header. Values are split like a shell command line,
so use quotes for spaces: ``[[mock text="two words"]]``. A bare key means ``key=1``.
Unknown keys are ignored but are part of the ``fail_times`` counter key, so add e.g.
``id=t42`` to get a fresh counter.

* ``status=N``      answer HTTP N in the native error shape (every error message
                    contains ``MOCK-UPSTREAM-ERROR-BODY``; Anthropic types are mapped
                    400 invalid_request_error, 401 authentication_error, 403 permission_error,
                    404 not_found_error, 429 rate_limit_error, 500 api_error, 529 overloaded_error).
* ``retry_after=S`` with ``status``: add ``Retry-After: S``.
* ``fail_times=K``  with ``status``: only the first K calls carrying the same merged
                    directive set fail; later ones succeed.
* ``ttfb_ms=N``     sleep N ms before sending response headers.
* ``gap_ms=N``      sleep N ms between stream writes.
* ``drop_after=N``  stream: abort the TCP connection after N content chunks (no
                    terminator). Non-stream ``drop_after=0``: close without any response.
* ``stall_after=N`` stream: after N content chunks send nothing more, keep the connection
                    open until the client disconnects (at most 120 s).
* ``error_after=N`` stream: after N content chunks send the dialect's native in-stream
                    error event and end the stream.
* ``bad_json=1``    200 with an invalid JSON body, or a garbage first content chunk.
* ``no_usage=1``    omit usage (Anthropic ``usage``; Ollama counts/durations).
* ``chunks=N``      split the streamed answer into N chunks.
* ``text=...``      the answer text.
* ``tool=1`` / ``tools=N``  answer with 1 / N tool calls (when tools are defined).
* ``tool_args=<json object>``  tool-call arguments (default ``{"arg": "value"}``).
* ``preamble=...``  text the model says before its tool calls (text block, then tool blocks).
* ``echo=1``        the answer is a JSON summary of what the mock saw (``Seen.summary()``:
                    system, roles, images, tool_calls, tool_results, tools, json, stops,
                    top_k, thinking), whatever the wire format.
* ``cached=N`` / ``cache_write=N``  report N input tokens as read from / written to a prompt
                    cache (OpenAI ``cached_tokens``; OpenRouter also ``cache_write_tokens``;
                    Anthropic ``cache_read_input_tokens`` / ``cache_creation_input_tokens``, its
                    ``input_tokens`` then excluding them; Ollama reports no cache).

Control endpoints (never counted in ``calls``)
----------------------------------------------
``GET /_mock/stats`` -> ``{"calls", "by_path", "completed", "aborted", "dropped"}``;
``GET /_mock/log`` -> the last 1000 calls ``{path, headers, body, status, stream,
completed, aborted, output_tokens_sent, fault, referer, title}``; ``POST /_mock/reset``
clears counters, log, fail_times counters and the instance fault;
``GET|POST /_mock/config`` reads/sets ``{"fault": str | null}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import signal
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson
from aiohttp import web

from ai_gateway.testing import _mock_wire as wire
from ai_gateway.testing._mock_inspect import validate
from ai_gateway.testing._mock_reply import Directives, build_reply, input_tokens, parse_directive_text
from ai_gateway.testing._mock_wire import (
    DIRECTIVE_RE,
    Dialect,
    Json,
    parse_prompt,
    raw_texts,
    wants_stream,
)

_LOG_LIMIT = 1000
_STALL_LIMIT_S = 120.0
_OLLAMA_MODELS = (
    ("llama3.2:latest", "3.2B", "llama", 2019393189),
    ("qwen2.5:0.5b", "494.03M", "qwen2", 397821319),
)


# --------------------------------------------------------------------------- directives


def _collect_directives(request: web.Request, texts: list[str], default: str | None) -> Directives:
    raw = parse_directive_text(default) if default else {}
    for text in texts:
        for m in DIRECTIVE_RE.finditer(text):
            raw |= parse_directive_text(m.group(1))
    header = request.headers.get("x-mock-fault")
    if header:
        raw |= parse_directive_text(header)
    return Directives(raw)


# --------------------------------------------------------------------------- state


@dataclass
class CallRecord:
    """One logged upstream call (mutated while its stream progresses)."""

    path: str
    headers: dict[str, str]
    body: Any = None
    status: int | None = None
    stream: bool = False
    completed: bool = False
    aborted: bool = False
    dropped: bool = False
    output_tokens_sent: int = 0
    fault: str = ""
    referer: str | None = None
    title: str | None = None


@dataclass
class MockState:
    """Per-instance counters, call log, fail_times counters and default fault."""

    fault: str | None = None
    calls: int = 0
    by_path: Counter[str] = field(default_factory=Counter)
    fail_counts: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    log: deque[CallRecord] = field(default_factory=lambda: deque(maxlen=_LOG_LIMIT))

    def reset(self) -> None:
        self.fault, self.calls = None, 0
        self.by_path.clear()
        self.fail_counts.clear()
        self.outcomes.clear()
        self.log.clear()

    def begin(self, request: web.Request) -> CallRecord:
        headers = {k.lower(): v for k, v in request.headers.items()}
        rec = CallRecord(path=request.path, headers=headers)
        rec.referer, rec.title = headers.get("http-referer"), headers.get("x-title")
        self.calls += 1
        self.by_path[request.path] += 1
        self.log.append(rec)
        return rec

    def mark(self, rec: CallRecord, outcome: str) -> None:
        """Record how a call ended: ``completed``, ``aborted`` or ``dropped``."""
        setattr(rec, outcome, True)
        self.outcomes[outcome] += 1

    def stats(self) -> Json:
        counts = {k: self.outcomes[k] for k in ("completed", "aborted", "dropped")}
        return {"calls": self.calls, "by_path": dict(self.by_path), **counts}


STATE_KEY = web.AppKey("mock_state", MockState)


# --------------------------------------------------------------------------- validation / errors


@dataclass(frozen=True)
class ErrorSpec:
    status: int
    message: str | None = None
    retry_after: str | None = None


def _bearer(request: web.Request) -> str:
    auth = request.headers.get("authorization", "")
    return auth[7:].strip() if auth.lower().startswith("bearer ") else ""


def _api_key(dialect: Dialect, request: web.Request) -> str:
    if dialect == "anthropic":
        return request.headers.get("x-api-key", "").strip() or _bearer(request)
    return _bearer(request)


def _validate_auth(dialect: Dialect, request: web.Request) -> ErrorSpec | None:
    if dialect == "ollama":
        return None
    key = _api_key(dialect, request)
    if key.startswith("invalid"):
        return ErrorSpec(401)
    if dialect == "anthropic":
        if not key:
            return ErrorSpec(401, "x-api-key header is required")
        if not request.headers.get("anthropic-version"):
            return ErrorSpec(400, "anthropic-version: header is required")
    elif not key:
        msg = "No auth credentials found" if dialect == "openrouter" else "You didn't provide an API key."
        return ErrorSpec(401, msg)
    return None


def _validate_body(dialect: Dialect, body: Json | None) -> ErrorSpec | None:
    if body is None:
        return ErrorSpec(400, "We could not parse the JSON body of your request.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return ErrorSpec(400, "model is required" if dialect == "ollama" else "model: Field required")
    if dialect != "ollama" and not isinstance(body.get("messages"), list):
        return ErrorSpec(400, "messages: Field required")
    if dialect == "anthropic" and not isinstance(body.get("max_tokens"), int):
        return ErrorSpec(400, "max_tokens: Field required")
    if dialect == "ollama" and model.startswith("missing"):
        return ErrorSpec(404)
    return None


def _validate_shape(dialect: Dialect, body: Json | None) -> ErrorSpec | None:
    problem = validate(dialect, body) if body is not None else None
    return ErrorSpec(400, problem) if problem else None


def _injected_error(d: Directives, state: MockState) -> ErrorSpec | None:
    status = d.int("status")
    if status is None or status < 400:
        return None
    state.fail_counts[d.key] += 1
    limit = d.int("fail_times")
    if limit is not None and state.fail_counts[d.key] > limit:
        return None
    return ErrorSpec(status, retry_after=d.get("retry_after"))


def _json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(obj), status=status, content_type="application/json", headers=headers
    )


def _error_response(
    dialect: Dialect, request: web.Request, body: Json | None, err: ErrorSpec
) -> web.Response:
    model = str(body.get("model") or "") if isinstance(body, dict) else ""
    payload = wire.error_body(dialect, err.status, err.message, model=model, key=_api_key(dialect, request))
    headers = {"Retry-After": err.retry_after} if err.retry_after else None
    return _json_response(payload, err.status, headers)


# --------------------------------------------------------------------------- streaming


@dataclass(frozen=True)
class Cut:
    """Where (frame index) and how a stream is interrupted."""

    index: int
    action: str


def _cut_index(frames: list[wire.Frame], n: int) -> int | None:
    if n <= 0:
        return next((i for i, f in enumerate(frames) if f.content), None)
    seen = 0
    for i, f in enumerate(frames):
        seen += f.content
        if seen == n:
            return i + 1
    return None


def _find_cut(frames: list[wire.Frame], d: Directives) -> Cut | None:
    for action in ("drop_after", "stall_after", "error_after"):
        n = d.int(action)
        index = _cut_index(frames, n) if n is not None else None
        if index is not None:
            return Cut(index, action)
    return None


def _abort(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()


async def _wait_for_disconnect(request: web.Request, limit: float) -> bool:
    """Poll until the peer closes (True), or the limit passes / the server stops (False)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    stopping = request.app[STATE_KEY].stopping
    while loop.time() < deadline and not stopping.is_set():
        transport = request.transport
        if transport is None or transport.is_closing():
            return True
        await asyncio.sleep(0.02)
    return False


_STREAM_TYPES = {"ollama": "application/x-ndjson"}


async def _apply_cut(cut: Cut, request: web.Request, resp: web.StreamResponse, error_frame: bytes) -> str:
    """Interrupt the stream as the directive says; returns the call's outcome."""
    if cut.action == "drop_after":
        _abort(request)
        return "dropped"
    if cut.action == "stall_after":
        disconnected = await _wait_for_disconnect(request, _STALL_LIMIT_S)
        _abort(request)
        return "aborted" if disconnected else "dropped"
    await resp.write(error_frame)
    await resp.write_eof()
    return "completed"


async def _send_stream(
    request: web.Request, dialect: Dialect, reply: wire.Reply, d: Directives, rec: CallRecord
) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    frames = wire.render_stream(dialect, reply)
    if d.flag("bad_json"):
        frames = wire.corrupt_stream(dialect, frames)
    content_type = _STREAM_TYPES.get(dialect, "text/event-stream; charset=utf-8")
    resp = web.StreamResponse(headers={"Content-Type": content_type, "Cache-Control": "no-cache"})
    cut, gap = _find_cut(frames, d), (d.int("gap_ms") or 0) / 1000
    sent_text, sent_tools = "", 0
    try:
        await resp.prepare(request)
        for i, frame in enumerate(frames):
            if cut is not None and i == cut.index:
                error_frame = wire.stream_error_frame(dialect, reply.model).data
                state.mark(rec, await _apply_cut(cut, request, resp, error_frame))
                return resp
            if i and gap:
                await asyncio.sleep(gap)
            await resp.write(frame.data)
            sent_text, sent_tools = sent_text + frame.text, sent_tools + frame.tools
            rec.output_tokens_sent = len(sent_text.split()) + sent_tools
        await resp.write_eof()
        state.mark(rec, "completed")
    except ConnectionResetError:
        state.mark(rec, "aborted")
    return resp


# --------------------------------------------------------------------------- handlers


async def _read_body(request: web.Request) -> tuple[Json | None, Any]:
    raw = await request.read()
    try:
        parsed = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        return None, raw.decode(errors="replace")
    return (parsed if isinstance(parsed, dict) else None), parsed


async def _chat(request: web.Request, dialect: Dialect) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    rec = state.begin(request)
    body, rec.body = await _read_body(request)
    d = _collect_directives(request, raw_texts(dialect, body) if body else [], state.fault)
    rec.fault, rec.stream = d.key, wants_stream(dialect, body)
    await asyncio.sleep((d.int("ttfb_ms") or 0) / 1000)
    if not rec.stream and d.int("drop_after") == 0:
        state.mark(rec, "dropped")
        _abort(request)
        return web.Response()
    err = (
        _validate_auth(dialect, request)
        or _validate_body(dialect, body)
        or _validate_shape(dialect, body)
        or _injected_error(d, state)
    )
    if err is not None or body is None:
        err = err or ErrorSpec(400)
        rec.status = err.status
        state.mark(rec, "completed")
        return _error_response(dialect, request, body, err)
    reply = build_reply(dialect, parse_prompt(dialect, body), d)
    rec.status = 200
    if rec.stream:
        return await _send_stream(request, dialect, reply, d, rec)
    state.mark(rec, "completed")
    rec.output_tokens_sent = reply.output_tokens
    if d.flag("bad_json"):
        return web.Response(body=wire.GARBAGE_BODY, content_type="application/json")
    return _json_response(wire.render_body(dialect, reply))


async def _anthropic_count(request: web.Request) -> web.Response:
    """``POST /v1/messages/count_tokens``: the words the chat endpoint would count as input."""
    state = request.app[STATE_KEY]
    rec = state.begin(request)
    body, rec.body = await _read_body(request)
    d = _collect_directives(request, raw_texts("anthropic", body) if body else [], state.fault)
    rec.fault = d.key
    err = (
        _validate_auth("anthropic", request)
        or _validate_shape("anthropic", body)
        or _injected_error(d, state)
    )
    if body is None or not isinstance(body.get("messages"), list) or not body.get("model"):
        err = err or ErrorSpec(400, "messages: Field required")
    state.mark(rec, "completed")
    if err is not None or body is None:
        rec.status = (err or ErrorSpec(400)).status
        return _error_response("anthropic", request, body, err or ErrorSpec(400))
    rec.status = 200
    return _json_response({"input_tokens": input_tokens(parse_prompt("anthropic", body))})


def _chat_handler(dialect: Dialect) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        return await _chat(request, dialect)

    return handler


def _ollama_models() -> Iterator[Json]:
    for name, size_label, family, size in _OLLAMA_MODELS:
        details = {
            "parent_model": "",
            "format": "gguf",
            "family": family,
            "families": [family],
            "parameter_size": size_label,
            "quantization_level": "Q4_K_M",
        }
        digest = hashlib.sha256(name.encode()).hexdigest()
        modified = "2024-11-01T12:00:00.000000000Z"
        yield {
            "name": name,
            "model": name,
            "modified_at": modified,
            "size": size,
            "digest": digest,
            "details": details,
        }


def _count_simple(request: web.Request) -> None:
    state = request.app[STATE_KEY]
    rec = state.begin(request)
    rec.status = 200
    state.mark(rec, "completed")


async def _ollama_tags(request: web.Request) -> web.Response:
    _count_simple(request)
    return _json_response({"models": list(_ollama_models())})


async def _ollama_version(request: web.Request) -> web.Response:
    _count_simple(request)
    return _json_response({"version": "0.6.0"})


async def _ollama_root(request: web.Request) -> web.Response:
    return web.Response(text="Ollama is running")


async def _stats(request: web.Request) -> web.Response:
    return _json_response(request.app[STATE_KEY].stats())


async def _log(request: web.Request) -> web.Response:
    return _json_response([asdict(r) for r in request.app[STATE_KEY].log])


async def _reset(request: web.Request) -> web.Response:
    request.app[STATE_KEY].reset()
    return _json_response({"ok": True})


async def _config(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    if request.method == "POST":
        body, _ = await _read_body(request)
        if body is None or not isinstance(body.get("fault"), str | None):
            return _json_response({"error": 'expected {"fault": str | null}'}, 400)
        state.fault = body.get("fault") or None
    return _json_response({"fault": state.fault})


async def _on_shutdown(app: web.Application) -> None:
    app[STATE_KEY].stopping.set()  # releases stalled streams so shutdown is quick


def build_app() -> web.Application:
    """The mock as an aiohttp application (one fresh :class:`MockState`)."""
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[STATE_KEY] = MockState()
    app.on_shutdown.append(_on_shutdown)
    r = app.router
    for path in ("/v1/chat/completions", "/chat/completions"):
        r.add_post(path, _chat_handler("openai"))
    r.add_post("/api/v1/chat/completions", _chat_handler("openrouter"))
    r.add_post("/v1/messages", _chat_handler("anthropic"))
    r.add_post("/v1/messages/count_tokens", _anthropic_count)
    r.add_post("/api/chat", _chat_handler("ollama"))
    r.add_get("/api/tags", _ollama_tags)
    r.add_get("/api/version", _ollama_version)
    r.add_get("/", _ollama_root)
    r.add_get("/_mock/stats", _stats)
    r.add_get("/_mock/log", _log)
    r.add_post("/_mock/reset", _reset)
    r.add_route("*", "/_mock/config", _config)
    return app


async def start_mock(host: str = "127.0.0.1", port: int = 0) -> tuple[web.AppRunner, int]:
    """Start the mock in the running loop; returns the runner and the bound port."""
    runner = web.AppRunner(build_app(), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = int(runner.addresses[0][1])
    return runner, bound


async def _serve(host: str, port: int) -> None:
    runner, bound = await start_mock(host, port)
    print(f"LISTENING {bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Mock upstream LLM server (OpenAI/OpenRouter/Anthropic/Ollama)."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.host, args.port))


if __name__ == "__main__":
    main()
