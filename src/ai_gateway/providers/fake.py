"""A scripted provider for tests: no network, and the model name picks the behaviour (as TensorZero's
dummy provider does).

    echo          answers "echo: <last user text>"; usage = word counts (also any unknown model name)
    slow          sleeps 0.2 s, then echoes (honours the deadline: a timeout if it would pass)
    error_503     ProviderError status 503 (retryable)
    error_429     ProviderError status 429, retry_after 1
    error_400     ProviderError status 400 (the request's fault: no fallback)
    flaky_N       fails with 503 on its first N calls on this instance, then echoes
    timeout       ProviderError timeout
    stream_drop   streams two text deltas, then ProviderError reset (non-stream: reset at once)
    tool          calls the request's first tool with arguments {"arg": "value"} (no tools: echoes)

`calls` counts every complete/stream call, whatever the model.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from ai_gateway.errors import ProviderError
from ai_gateway.providers._http import HttpClient, UpstreamResponse
from ai_gateway.providers.base import Provider
from ai_gateway.settings import ProviderSettings
from ai_gateway.types import (
    ChatRequest,
    ChatResponse,
    StreamEnd,
    StreamEvent,
    StreamStart,
    TextDelta,
    TextPart,
    ToolCall,
    ToolCallDelta,
    Usage,
)

__all__ = ["BEHAVIOURS", "FakeProvider"]

BEHAVIOURS = (
    "echo",
    "slow",
    "error_503",
    "error_429",
    "error_400",
    "flaky_1",
    "timeout",
    "stream_drop",
    "tool",
)
SLOW_SECONDS = 0.2
TOOL_ARGUMENTS = '{"arg":"value"}'
_FLAKY = re.compile(r"flaky_(\d+)\Z")


class FakeProvider(Provider):
    family = "fake"

    def __init__(self, settings: ProviderSettings, http: HttpClient) -> None:
        super().__init__(settings, http)
        self.calls = 0
        self._calls_by_model: Counter[str] = Counter()

    async def complete(self, request: ChatRequest, model: str, deadline: float) -> ChatResponse:
        await self._begin(model, deadline)
        if model == "stream_drop":
            raise ProviderError("reset", f"{self.name}: connection lost reading the response body")
        call = self._tool_call(request, model)
        text = "" if call else _echo(request)
        return ChatResponse(
            id=_new_id(),
            model=model,
            content=[TextPart(text)] if text else [],
            tool_calls=[call] if call else [],
            finish_reason="tool_calls" if call else "stop",
            usage=_usage(request, text or TOOL_ARGUMENTS),
        )

    async def stream(
        self, request: ChatRequest, model: str, deadline: float
    ) -> AsyncGenerator[StreamEvent, None]:
        await self._begin(model, deadline)
        yield StreamStart(_new_id(), model)
        call = self._tool_call(request, model)
        if call:
            yield ToolCallDelta(0, id=call.id, name=call.name)
            yield ToolCallDelta(0, arguments=call.arguments)
            yield StreamEnd("tool_calls", _usage(request, call.arguments))
            return
        text = _echo(request)
        if model == "stream_drop":
            yield TextDelta(text[:6])
            yield TextDelta(text[6:])
            raise ProviderError("reset", f"{self.name}: connection lost reading the stream")
        words = text.split(" ")
        for i, word in enumerate(words):
            yield TextDelta(word if i == len(words) - 1 else word + " ")
        yield StreamEnd("stop", _usage(request, text))

    async def list_models(self, deadline: float) -> list[str]:
        return list(self.settings.models) or list(BEHAVIOURS)

    async def _begin(self, model: str, deadline: float) -> None:
        """Count the call and play the scripted failure, if the model name asks for one."""
        self.calls += 1
        self._calls_by_model[model] += 1
        if self.settings.not_configured:
            raise ProviderError("not_configured", f"{self.name}: {self.settings.not_configured}")
        if model == "slow":
            loop = asyncio.get_running_loop()
            if loop.time() + SLOW_SECONDS > deadline:
                await asyncio.sleep(max(0.0, deadline - loop.time()))
                raise ProviderError("timeout", f"{self.name}: timed out waiting for the first byte")
            await asyncio.sleep(SLOW_SECONDS)
        elif model == "timeout":
            raise ProviderError("timeout", f"{self.name}: timed out waiting for the first byte")
        elif model == "error_503":
            raise ProviderError("status", f"{self.name} is unavailable (HTTP 503)", status=503)
        elif model == "error_429":
            raise ProviderError(
                "status", f"{self.name} is rate limiting (HTTP 429)", status=429, retry_after=1
            )
        elif model == "error_400":
            raise ProviderError(
                "status",
                f"{self.name} returned an error (HTTP 400)",
                status=400,
                upstream_message="fake rejected the request",
            )
        elif (flaky := _FLAKY.match(model)) and self._calls_by_model[model] <= int(flaky.group(1)):
            raise ProviderError("status", f"{self.name} is unavailable (HTTP 503)", status=503)

    def _tool_call(self, request: ChatRequest, model: str) -> ToolCall | None:
        if model != "tool" or not request.tools:
            return None
        return ToolCall(
            id="call_" + secrets.token_hex(8), name=request.tools[0].name, arguments=TOOL_ARGUMENTS
        )

    # The wire verbs: the fake has no wire.
    def _url(self, stream: bool) -> str:
        raise NotImplementedError

    def _headers(self) -> dict[str, str]:
        raise NotImplementedError

    def _map_request(self, request: ChatRequest, model: str, stream: bool) -> dict[str, Any]:
        raise NotImplementedError

    def _process_response(self, data: Any, model: str) -> ChatResponse:
        raise NotImplementedError

    def _process_stream(self, resp: UpstreamResponse, model: str) -> AsyncIterator[StreamEvent]:
        raise NotImplementedError


def _echo(request: ChatRequest) -> str:
    last = next((m.text() for m in reversed(request.messages) if m.role == "user"), "")
    return f"echo: {last}"


def _usage(request: ChatRequest, answer: str) -> Usage:
    words = sum(len(m.text().split()) for m in request.messages)
    return Usage(input_tokens=words, output_tokens=len(answer.split()))


def _new_id() -> str:
    return "fake-" + secrets.token_hex(12)
