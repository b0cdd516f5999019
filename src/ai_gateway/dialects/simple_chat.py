"""The simple API (`POST /v1/chat`) <-> canonical. Pure functions, no I/O.

Request: `{"prompt": str}` or `{"messages": [...]}` plus optional `provider`, `model`, `stream`,
`max_tokens`, `temperature`, `system`. `provider` alone means its default model; neither means the
`default` route (CONTRACT §4).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from ai_gateway.dialects._validate import opt_bool, opt_int, opt_number, opt_str, reject_forbidden, type_name
from ai_gateway.dialects.openai_chat import parse_messages
from ai_gateway.errors import GatewayError, InvalidRequestError
from ai_gateway.types import ChatRequest, ChatResponse, Message, TextPart, Usage

__all__ = ["attempts_json", "parse_request", "render_delta", "render_done", "render_error", "render_response"]


def parse_request(body: Any, max_messages: int, max_output_tokens: int) -> ChatRequest:
    if not isinstance(body, dict):
        raise InvalidRequestError(
            f"The request body must be a JSON object, not {type_name(body)}.", code="invalid_json"
        )
    reject_forbidden(body)
    prompt = opt_str(body, "prompt")
    if prompt is not None and body.get("messages") is not None:
        raise InvalidRequestError("Send either 'prompt' or 'messages', not both.", param="prompt")
    if prompt is not None:
        if not prompt.strip():
            raise InvalidRequestError("'prompt' must not be empty.", param="prompt")
        messages = [Message(role="user", content=[TextPart(prompt)])]
    elif body.get("messages") is not None:
        messages = parse_messages(body.get("messages"), max_messages)
    else:
        raise InvalidRequestError(
            "Missing required parameter: 'prompt' (or 'messages').", param="prompt", code="missing_required"
        )
    system = opt_str(body, "system")
    if system:
        messages.insert(0, Message(role="system", content=[TextPart(system)]))
    provider = opt_str(body, "provider")
    model = opt_str(body, "model")
    if provider is not None and not provider.strip():
        raise InvalidRequestError("'provider' must not be empty.", param="provider")
    if model is not None and not model.strip():
        raise InvalidRequestError("'model' must not be empty.", param="model")
    target = f"{provider}/{model}" if provider and model else model or provider or "default"
    return ChatRequest(
        model=target,
        messages=messages,
        max_tokens=opt_int(body, "max_tokens", 1, max_output_tokens),
        temperature=opt_number(body, "temperature", 0.0, 2.0),
        stream=bool(opt_bool(body, "stream")),
    )


def _usage(usage: Usage | None) -> dict[str, int]:
    u = usage or Usage()
    return {"input_tokens": u.input_tokens, "output_tokens": u.output_tokens, "total_tokens": u.total_tokens}


def attempts_json(attempts: Sequence[Any]) -> list[dict[str, Any]]:
    return [
        {
            "provider": a.provider,
            "model": a.model,
            "status": a.status,
            "error": a.error,
            "latency_ms": a.latency_ms,
        }
        for a in attempts
    ]


def render_response(
    resp: ChatResponse,
    request_id: str,
    provider: str,
    model: str,
    cost: float | None,
    cached: bool,
    attempts: Sequence[Any],
) -> dict[str, Any]:
    return {
        "id": request_id,
        "provider": provider,
        "model": model,
        "content": resp.text(),
        "finish_reason": resp.finish_reason,
        "usage": _usage(resp.usage),
        "cost_usd": cost,
        "cached": cached,
        "attempts": attempts_json(attempts),
    }


def render_delta(text: str) -> bytes:
    return b"data: " + orjson.dumps({"type": "delta", "text": text}) + b"\n\n"


def render_done(
    usage: Usage | None, cost: float | None, provider: str, model: str, cached: bool, finish_reason: str
) -> bytes:
    body = {
        "type": "done",
        "finish_reason": finish_reason,
        "usage": _usage(usage),
        "cost_usd": cost,
        "provider": provider,
        "model": model,
        "cached": cached,
    }
    return b"data: " + orjson.dumps(body) + b"\n\ndata: [DONE]\n\n"


def render_error(err: GatewayError, request_id: str, in_stream: bool = False) -> dict[str, Any]:
    error = {"message": err.message, "type": err.type, "param": err.param, "code": err.code}
    if in_stream:
        return {"type": "error", "error": error, "request_id": request_id}
    return {"error": error, "request_id": request_id}
