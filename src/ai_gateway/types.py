"""Canonical, wire-agnostic model of a chat exchange.

Only these types cross between ingress dialects, the policy pipeline and egress providers, so any client
dialect can reach any provider. They carry the whole contract, not just text: system prompts, multi-turn
conversations, images, tool definitions, tool calls and their results, sampling parameters, JSON output,
usage with cached and reasoning tokens, finish reasons and stream events.

Plain slotted dataclasses: they are built once per request on the hot path, so they stay cheap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

__all__ = [
    "ChatRequest",
    "ChatResponse",
    "FinishReason",
    "ImagePart",
    "Message",
    "NativeEvent",
    "NativePart",
    "Part",
    "ResponseFormat",
    "Role",
    "StreamEnd",
    "StreamEvent",
    "StreamStart",
    "TextDelta",
    "TextPart",
    "Tool",
    "ToolCall",
    "ToolCallDelta",
    "ToolChoice",
    "Usage",
    "UsageEvent",
]

Role = Literal["system", "user", "assistant", "tool"]
FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "error"]


@dataclass(slots=True)
class TextPart:
    text: str
    # Provider-specific extras carried untouched (e.g. Anthropic `cache_control`).
    extra: dict[str, Any] | None = None


@dataclass(slots=True)
class ImagePart:
    """An image, either by URL or inline base64 `data` with its `media_type`."""

    url: str | None = None
    data: str | None = None
    media_type: str | None = None
    detail: str | None = None
    extra: dict[str, Any] | None = None  # as TextPart.extra


@dataclass(slots=True)
class NativePart:
    """A content block only one provider family understands, carried verbatim (Anthropic `thinking`,
    `document`, server-tool blocks, ...). Providers of that family send it back as it is; the others
    refuse it in `check()` unless it is `droppable`: reasoning a model wrote for itself, which another
    model neither needs nor can verify (Anthropic itself ignores earlier turns' thinking)."""

    family: str
    block: dict[str, Any]
    droppable: bool = False


Part = TextPart | ImagePart | NativePart


@dataclass(slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # the JSON text of the arguments, exactly as the model produced it
    extra: dict[str, Any] | None = None  # as TextPart.extra


@dataclass(slots=True)
class Message:
    role: Role
    content: list[Part] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)
    tool_call_id: str | None = None  # role "tool": which call this result answers
    name: str | None = None
    is_error: bool = False  # role "tool": the tool reported an error

    def text(self) -> str:
        return "".join(p.text for p in self.content if isinstance(p, TextPart))


@dataclass(slots=True)
class Tool:
    name: str
    description: str | None = None
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})
    strict: bool | None = None
    # Provider-specific keys of the definition (Anthropic `cache_control`; for a provider-defined tool
    # such as Anthropic's `web_search_*`, its whole definition, `type` included).
    extra: dict[str, Any] | None = None


@dataclass(slots=True)
class ToolChoice:
    mode: Literal["auto", "none", "required", "named"] = "auto"
    name: str | None = None  # mode "named"
    parallel: bool | None = None  # None = provider default


@dataclass(slots=True)
class ResponseFormat:
    type: Literal["text", "json_object", "json_schema"] = "text"
    schema: dict[str, Any] | None = None
    name: str | None = None
    strict: bool | None = None


@dataclass(slots=True)
class ChatRequest:
    """What the client asked for, independent of the dialect it asked in."""

    model: str  # the route/model string as the client wrote it
    messages: list[Message]
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] = field(default_factory=list)
    tools: list[Tool] = field(default_factory=list)
    tool_choice: ToolChoice | None = None
    response_format: ResponseFormat | None = None
    seed: int | None = None
    user: str | None = None
    stream: bool = False
    include_usage: bool = False
    # Fields only one provider family understands (e.g. Anthropic `thinking`), keyed by family.
    extra: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0  # read from a prompt cache (included in input_tokens)
    cache_creation_tokens: int = 0  # written to a prompt cache (included in input_tokens)
    reasoning_tokens: int = 0  # included in output_tokens
    cost_usd: Decimal | None = None  # cost reported by the provider itself (OpenRouter)

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(slots=True)
class ChatResponse:
    id: str
    model: str  # the upstream model that answered
    content: list[Part]
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: FinishReason = "stop"
    usage: Usage | None = None
    stop_sequence: str | None = None

    def text(self) -> str:
        return "".join(p.text for p in self.content if isinstance(p, TextPart))


# --- stream events -----------------------------------------------------------------------------------
# A provider's stream yields StreamStart first (only once the upstream has produced its first chunk, so
# failures before that can still fall back), then deltas, then exactly one StreamEnd. UsageEvent may come
# before StreamEnd (several times; the last one wins, fields merged).


@dataclass(slots=True)
class StreamStart:
    id: str
    model: str


@dataclass(slots=True)
class TextDelta:
    text: str


@dataclass(slots=True)
class ToolCallDelta:
    """A fragment of tool call number `index`. The first fragment of a call carries `id` and `name`."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(slots=True)
class UsageEvent:
    usage: Usage


@dataclass(slots=True)
class NativeEvent:
    """A stream event of a NativePart, in its family's wire shape without the block index (Anthropic
    `content_block_start` / `content_block_delta` / `content_block_stop` of a thinking block).
    Renderers of other dialects skip it."""

    family: str
    data: dict[str, Any]


@dataclass(slots=True)
class StreamEnd:
    finish_reason: FinishReason
    usage: Usage | None = None
    stop_sequence: str | None = None


StreamEvent = StreamStart | TextDelta | ToolCallDelta | UsageEvent | NativeEvent | StreamEnd
