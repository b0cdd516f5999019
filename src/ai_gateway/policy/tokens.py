"""A cheap, tokenizer-free estimate of a request's tokens, for reserving TPM before the upstream call.

It only has to be in the right range: the reservation is settled to the provider's real usage after
the answer. The rules, from OpenAI's published rules of thumb and its cookbook's message counting:
- English text is about 4 characters per token; characters outside ASCII cost more (accented Latin and
  Cyrillic about 1.3 characters per token here, CJK about 0.8), which errs high for modern tokenizers;
- each message adds 4 tokens of framing, and the reply is primed with 3;
- tool definitions, tool calls and JSON schemas count by the length of their JSON text;
- an image counts a fixed 765 tokens (a 1024x1024 image at high detail), 85 at `detail: low`;
- a provider-native block counts by the length of its JSON text.
"""

from __future__ import annotations

import orjson

from ai_gateway.types import ChatRequest, ImagePart, Message, NativePart, TextPart

__all__ = [
    "DEFAULT_OUTPUT_TOKENS",
    "IMAGE_TOKENS",
    "IMAGE_TOKENS_LOW",
    "estimate_input_tokens",
    "estimate_reservation",
    "estimate_text_tokens",
]

IMAGE_TOKENS = 765
IMAGE_TOKENS_LOW = 85
MESSAGE_TOKENS = 4
REPLY_TOKENS = 3
TOOL_TOKENS = 8
# Reserved for the answer when the request sets no max_tokens: a typical chat answer. It is only a
# reservation; the settle charges what the answer really used.
DEFAULT_OUTPUT_TOKENS = 1024


def estimate_text_tokens(text: str) -> int:
    if text.isascii():
        return (len(text) + 3) // 4
    extra_bytes = len(text.encode("utf-8", "surrogatepass")) - len(text)
    return (len(text) + 3) // 4 + extra_bytes // 2


def _json_tokens(value: object) -> int:
    try:
        return estimate_text_tokens(orjson.dumps(value, default=str).decode())
    except TypeError:  # an integer beyond 64 bits somewhere in a schema
        return estimate_text_tokens(str(value))


def _message_tokens(message: Message) -> int:
    total = MESSAGE_TOKENS + (estimate_text_tokens(message.name) if message.name else 0)
    for part in message.content:
        if isinstance(part, TextPart):
            total += estimate_text_tokens(part.text)
        elif isinstance(part, ImagePart):
            total += IMAGE_TOKENS_LOW if part.detail == "low" else IMAGE_TOKENS
        elif isinstance(part, NativePart):
            total += _json_tokens(part.block)
    for call in message.tool_calls:
        total += TOOL_TOKENS + estimate_text_tokens(call.name) + estimate_text_tokens(call.arguments)
    return total


def estimate_input_tokens(request: ChatRequest) -> int:
    """Tokens the prompt will likely count as: messages, tools and the output schema."""
    total = REPLY_TOKENS + sum(_message_tokens(m) for m in request.messages)
    for tool in request.tools:
        total += TOOL_TOKENS + estimate_text_tokens(tool.name)
        total += estimate_text_tokens(tool.description or "") + _json_tokens(tool.parameters)
    if request.response_format is not None and request.response_format.schema is not None:
        total += _json_tokens(request.response_format.schema)
    return total


def estimate_reservation(request: ChatRequest, default_output: int = DEFAULT_OUTPUT_TOKENS) -> int:
    """What TPM reserves before the call: the prompt estimate plus the answer's allowance."""
    output = request.max_tokens if request.max_tokens is not None else default_output
    return estimate_input_tokens(request) + output
