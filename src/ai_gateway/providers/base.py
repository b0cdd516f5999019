"""The provider interface: canonical request in, canonical response or stream events out.

Each adapter keeps "which wire format" apart from "where and with which key", and uses the same verbs:
`_map_request` going out, `_process_response` / `_process_stream` coming back, `_map_usage`, and
`_map_error` for upstream error statuses. Transport errors are mapped once, in `_http.py`.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, ClassVar

from ai_gateway.errors import ProviderError
from ai_gateway.providers._http import HttpClient, UpstreamResponse, error_message_from, parse_retry_after
from ai_gateway.settings import ProviderSettings
from ai_gateway.types import ChatRequest, ChatResponse, StreamEvent

__all__ = ["Provider"]

_STATUS_WORDS = {
    401: "rejected the gateway's credentials",
    403: "refused access with the gateway's credentials",
    404: "does not know this model",
    408: "timed out",
    429: "is rate limiting",
    500: "had an internal error",
    502: "had a bad gateway",
    503: "is unavailable",
    504: "timed out",
    529: "is overloaded",
}


class Provider(abc.ABC):
    """One upstream, addressed by its configured name."""

    # The wire family: "openai" (also OpenRouter and compatible servers), "anthropic", "ollama", "fake".
    family: ClassVar[str]

    def __init__(self, settings: ProviderSettings, http: HttpClient) -> None:
        self.settings = settings
        self.name = settings.name
        self._http = http

    # --- the public surface -----------------------------------------------------------------------
    def check(self, request: ChatRequest) -> None:  # noqa: B027 - optional hook
        """Raise UnsupportedFeatureError for what this provider cannot carry. Default: everything."""

    async def complete(self, request: ChatRequest, model: str, deadline: float) -> ChatResponse:
        resp = await self._post(request, model, deadline, stream=False)
        try:
            data = await resp.json()
        finally:
            resp.release()
        try:
            return self._process_response(data, model)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            raise ProviderError("bad_response", f"{self.name}: unexpected response shape") from exc

    async def stream(
        self, request: ChatRequest, model: str, deadline: float
    ) -> AsyncGenerator[StreamEvent, None]:
        """Events of one streamed answer. Nothing is yielded before the upstream's first chunk arrives,
        and the upstream connection is closed whenever the consumer stops early."""
        resp = await self._post(request, model, deadline, stream=True)
        finished = False
        try:
            try:
                async for event in self._process_stream(resp, model):
                    yield event
            except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
                raise ProviderError("bad_response", f"{self.name}: unexpected stream chunk") from exc
            finished = True
        finally:
            # A stream abandoned part-way (client gone, error) must not go back to the pool half-read.
            if finished:
                resp.release()
            else:
                resp.close()

    async def list_models(self, deadline: float) -> list[str]:
        """Models the upstream says it serves; default: what the configuration declares."""
        return list(self.settings.models)

    async def count_tokens(self, request: ChatRequest, model: str, deadline: float) -> int | None:
        """The upstream's own count of the request's input tokens; None when it has no way to count."""
        return None

    # --- the verbs each adapter implements --------------------------------------------------------
    @abc.abstractmethod
    def _url(self, stream: bool) -> str: ...

    @abc.abstractmethod
    def _headers(self) -> dict[str, str]: ...

    def _request_headers(self, request: ChatRequest) -> dict[str, str]:
        """Headers that depend on the request (Anthropic beta flags the client sent)."""
        return {}

    @abc.abstractmethod
    def _map_request(self, request: ChatRequest, model: str, stream: bool) -> dict[str, Any]: ...

    @abc.abstractmethod
    def _process_response(self, data: Any, model: str) -> ChatResponse: ...

    @abc.abstractmethod
    def _process_stream(self, resp: UpstreamResponse, model: str) -> AsyncIterator[StreamEvent]: ...

    # --- shared plumbing --------------------------------------------------------------------------
    async def _post(
        self, request: ChatRequest, model: str, deadline: float, stream: bool
    ) -> UpstreamResponse:
        payload = self._map_request(request, model, stream)
        return await self._post_json(self._url(stream), payload, request, deadline)

    async def _post_json(
        self, url: str, payload: dict[str, Any], request: ChatRequest, deadline: float
    ) -> UpstreamResponse:
        if self.settings.not_configured:
            raise ProviderError("not_configured", f"{self.name}: {self.settings.not_configured}")
        headers = {**self._headers(), **self._request_headers(request)}
        resp = await self._http.post(url, payload, headers, self.settings.timeouts, deadline, self.name)
        if resp.status >= 400:
            raise await self._map_error(resp)
        return resp

    async def _map_error(self, resp: UpstreamResponse) -> ProviderError:
        """An upstream error status as a ProviderError; the raw body is never kept."""
        try:
            body = await resp.read()
        except ProviderError:
            body = b""
        finally:
            resp.release()
        status = resp.status
        words = _STATUS_WORDS.get(status, "returned an error")
        return ProviderError(
            "status",
            f"{self.name} {words} (HTTP {status})",
            status=status,
            retry_after=parse_retry_after(resp.headers.get("Retry-After")),
            # Only shown to the client when the request itself was at fault (400/422); 401/403 bodies
            # may echo the key, so they are dropped here.
            upstream_message=None if status in (401, 403) else error_message_from(body),
        )
