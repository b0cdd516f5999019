"""`POST /v1/messages` and `POST /v1/messages/count_tokens`: the Anthropic dialect on the shared call flow.

`x-api-key` is read by the authenticator like `Authorization: Bearer`. `anthropic-version` is accepted
and not required (every version the SDKs send shares the wire this gateway speaks); `anthropic-beta`
flags are forwarded to an Anthropic upstream and meaningless to the others.
"""

from __future__ import annotations

from typing import Any

from ai_gateway.dialects import anthropic_messages
from ai_gateway.errors import GatewayError
from ai_gateway.policy.auth import principal_of
from ai_gateway.policy.pipeline import CallContext, Pipeline
from ai_gateway.settings import ServerSettings
from ai_gateway.types import ChatRequest, ChatResponse, StreamEvent
from ai_gateway.web._asgi import Request, Send, json_bytes, until_disconnect
from ai_gateway.web.calls import Dialect

__all__ = ["ANTHROPIC", "handle_count_tokens", "is_messages_path"]

_PATH = "/v1/messages"


def is_messages_path(path: str) -> bool:
    """Whether errors on `path` take Anthropic's shape (every path under /v1/messages, unknown ones too)."""
    path = path.rstrip("/")
    return path == _PATH or path.startswith(_PATH + "/")


def _message_id(req: Request) -> str:
    # One id per request, so a retried or logged call can be matched to its answer.
    return f"msg_{req.request_id}"


def _render(resp: ChatResponse, req: Request, ctx: CallContext, provider: str, model: str) -> dict[str, Any]:
    return anthropic_messages.render_response(resp, _message_id(req), f"{provider}/{model}")


class _Stream:
    __slots__ = ("_inner",)

    def __init__(self, chat: ChatRequest, req: Request, ctx: CallContext, provider: str, model: str) -> None:
        self._inner = anthropic_messages.StreamRenderer(
            _message_id(req), f"{provider}/{model}", req.request_id
        )

    def render(self, event: StreamEvent) -> bytes:
        return self._inner.render(event)

    def error(self, err: GatewayError) -> bytes:
        return self._inner.render_error(err)


def _from_headers(chat: ChatRequest, req: Request) -> None:
    beta = req.headers.get("anthropic-beta")
    if beta:
        chat.extra["anthropic-headers"] = {"anthropic-beta": beta}


ANTHROPIC = Dialect(
    "anthropic",
    anthropic_messages.parse_request,
    _render,
    _Stream,
    anthropic_messages.render_error,
    _from_headers,
)


async def handle_count_tokens(req: Request, send: Send, pipeline: Pipeline, server: ServerSettings) -> None:
    body = await req.json(server.max_body_bytes)
    chat = anthropic_messages.parse_count_request(body, server.max_messages, server.max_output_tokens)
    _from_headers(chat, req)
    ctx = pipeline.new_context(req.request_id, principal_of(req.scope))
    count, method = await until_disconnect(pipeline.count_tokens(chat, ctx), req.receive)
    payload = json_bytes(anthropic_messages.render_count(count))
    headers = [
        (b"x-request-id", req.request_id.encode()),
        # "upstream": the provider counted; "estimate": see policy/tokens.py for how.
        (b"x-aigw-token-count", method.encode()),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
