"""What a provider does with what only another wire family understands (CONTRACT §4: never a silent drop).

Ingress dialects park fields that have no canonical counterpart in `ChatRequest.extra[family]`
(Anthropic `top_k`, `thinking`; OpenAI `logprobs`, ...), provider-specific keys of parts and tools in
their `extra`, and whole blocks in `NativePart`s. A provider of the same family sends them on as they
are. A provider of another family either maps them itself (Ollama takes Anthropic `top_k` as
`options.top_k`), ignores them when they cannot change the answer (`HARMLESS`, each with the reason),
or refuses the request here with a 400 naming the field and the provider, so the fallback walk can try
a target that can carry it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from ai_gateway.errors import UnsupportedFeatureError
from ai_gateway.types import ChatRequest, Message, NativePart

__all__ = ["HARMLESS", "error_marked", "refuse_foreign"]

_DISPLAY = {"anthropic": "Anthropic", "openai": "OpenAI", "ollama": "Ollama", "openrouter": "OpenRouter"}

# Fields of a family that another family's provider may leave out, and why that cannot change the answer.
# Dotted names are keys inside an object field (`output_config.effort`).
HARMLESS: Mapping[str, Mapping[str, str]] = {
    "anthropic": {
        # Claude Code sends `thinking` on most requests. An answer without thinking blocks is a valid
        # answer to it: with adaptive thinking Claude itself may skip thinking.
        # https://docs.anthropic.com/en/docs/build-with-claude/extended-thinking
        "thinking": "a reasoning budget",
        "output_config.effort": "a reasoning budget",
        "cache_control": "a prompt-caching hint",
        "citations": "citation metadata on earlier answers",
        "eager_input_streaming": "how finely tool input is streamed",
        "service_tier": "a capacity choice",
        "speed": "a capacity choice",
        "diagnostics": "prompt-cache diagnostics",
        # Server-side trimming of old tool results: without it the target sees the whole conversation.
        "context_management": "server-side context trimming",
    },
    "openai": {
        "reasoning_effort": "a reasoning budget",
        "service_tier": "a capacity choice",
    },
}
# Headers forwarded to the family's own upstream (Anthropic `anthropic-beta` flags); others ignore them.
_HEADER_SUFFIX = "-headers"


def _display(family: str) -> str:
    return _DISPLAY.get(family, family)


def _harmless(family: str, key: str, value: Any) -> bool:
    known = HARMLESS.get(family, {})
    if key in known:
        return True
    return isinstance(value, dict) and bool(value) and all(f"{key}.{k}" in known for k in value)


def _refuse(provider: str, family: str, what: str, param: str) -> UnsupportedFeatureError:
    return UnsupportedFeatureError(
        f"{provider} cannot carry {what}: it is {_display(family)}-only and would change the answer; "
        f"send it to an {family} model, or leave it out",
        param=param,
    )


def _check_extra(
    extra: dict[str, Any] | None, own: str, origin: str, provider: str, param: str, what: str
) -> None:
    if not extra or origin == own:
        return
    for key, value in extra.items():
        if not _harmless(origin, key, value):
            raise _refuse(provider, origin, f"'{key}' on {what}", param)


def refuse_foreign(
    request: ChatRequest,
    provider: str,
    family: str,
    maps: Collection[str] = (),
    parts_from: str = "anthropic",
) -> None:
    """Raise UnsupportedFeatureError for the first foreign field or block `provider` would have to drop.

    `maps` names the foreign fields this provider carries itself, as `family.field`. Part and tool
    extras come only from the Anthropic dialect today (`parts_from`).
    """
    for origin, fields in request.extra.items():
        if origin == family or origin.endswith(_HEADER_SUFFIX):
            continue
        for key, value in fields.items():
            if f"{origin}.{key}" not in maps and not _harmless(origin, key, value):
                raise _refuse(provider, origin, f"the field '{key}'", key)
    if request.max_tokens == 0 and family != "anthropic":
        raise UnsupportedFeatureError(
            f"{provider} cannot take max_tokens 0: warming a prompt cache without an answer is "
            "Anthropic-only",
            param="max_tokens",
        )
    for i, tool in enumerate(request.tools):
        kind = (tool.extra or {}).get("type")
        what = f"the {kind!r} tool" if kind else f"tool '{tool.name}'"
        _check_extra(tool.extra, family, parts_from, provider, f"tools[{i}]", what)
    for i, msg in enumerate(request.messages):
        for j, part in enumerate(msg.content):
            param = f"messages[{i}].content[{j}]"
            if isinstance(part, NativePart):
                if part.family != family and not part.droppable:
                    kind = part.block.get("type")
                    raise _refuse(provider, part.family, f"a {kind!r} content block", param)
            else:
                _check_extra(part.extra, family, parts_from, provider, param, "a content block")
        for j, call in enumerate(msg.tool_calls):
            param = f"messages[{i}].tool_calls[{j}]"
            _check_extra(call.extra, family, parts_from, provider, param, "a tool call")


def error_marked(msg: Message, content: str | list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """A failed tool's result, marked as such in its text: Chat Completions and Ollama have no error flag
    on tool results (Anthropic's `is_error`), and the model must still learn that the call failed."""
    if not msg.is_error:
        return content
    if isinstance(content, str):
        return f"Error: {content}" if content else "Error"
    return [{"type": "text", "text": "Error:"}, *content]
