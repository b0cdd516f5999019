"""Usage for a stream the upstream never reported on: the client left, or the stream broke, before the
final usage chunk (research/reliability.md D5, K7: never a silent zero).

Feed `DeliveredCounter` every event the client was sent. If the upstream's usage arrived, it wins; if
not, output tokens are counted from the delivered text with the same rule of thumb as the TPM estimate
(`tokens.estimate_text_tokens`: 4 ASCII characters a token, more for other scripts, rounded up), input
tokens come from the request's estimate, and the row is marked `usage_estimated`. Rounding up keeps
the estimate at or above what the client received (invariant I3), at the price of a slight overcount.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ai_gateway.types import (
    NativeEvent,
    StreamEnd,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
    Usage,
    UsageEvent,
)

__all__ = ["DeliveredCounter", "estimate_output_tokens"]


def estimate_output_tokens(chars: int, extra_utf8_bytes: int = 0) -> int:
    """Tokens in `chars` characters of generated text whose UTF-8 form has `extra_utf8_bytes` more
    bytes than characters; 0 only for no text at all."""
    if chars <= 0:
        return 0
    return (chars + 3) // 4 + extra_utf8_bytes // 2


@dataclass(slots=True)
class DeliveredCounter:
    chars: int = 0
    extra_bytes: int = 0
    reported: Usage | None = None
    ended: bool = False  # the stream's end arrived: the upstream's report is final

    def feed(self, event: StreamEvent) -> None:
        if isinstance(event, TextDelta):
            self._count(event.text)
        elif isinstance(event, ToolCallDelta):
            self._count(event.arguments)
            if event.name:
                self._count(event.name)
        elif isinstance(event, NativeEvent):
            # Thinking text (Anthropic `thinking_delta`) is billed as output like any other text.
            delta = event.data.get("delta")
            if isinstance(delta, dict):
                for key in ("thinking", "text", "partial_json"):
                    if isinstance(value := delta.get(key), str):
                        self._count(value)
        elif isinstance(event, UsageEvent | StreamEnd):
            self.ended = self.ended or isinstance(event, StreamEnd)
            if event.usage is not None:
                self.reported = _merge(self.reported, event.usage)

    def usage(self, input_tokens_estimate: int) -> tuple[Usage, bool]:
        """(usage to bill, estimated?). An upstream report without output tokens is topped up from
        the delivered text, since what reached the client was certainly generated; so is a running
        count that a stream cut short never finished (Anthropic's `message_start` says 1 output token)."""
        output = estimate_output_tokens(self.chars, self.extra_bytes)
        if self.reported is None:
            return Usage(input_tokens=input_tokens_estimate, output_tokens=output), True
        if output > self.reported.output_tokens and (self.reported.output_tokens == 0 or not self.ended):
            return replace(self.reported, output_tokens=output), True
        return self.reported, False

    def _count(self, text: str) -> None:
        self.chars += len(text)
        if not text.isascii():
            self.extra_bytes += len(text.encode("utf-8", "surrogatepass")) - len(text)


def _merge(old: Usage | None, new: Usage) -> Usage:
    """Later usage reports win field by field; a field a later report leaves at 0 keeps its value
    (types.py: "the last one wins, fields merged")."""
    if old is None:
        return new
    return Usage(
        input_tokens=new.input_tokens or old.input_tokens,
        output_tokens=new.output_tokens or old.output_tokens,
        cached_input_tokens=new.cached_input_tokens or old.cached_input_tokens,
        cache_creation_tokens=new.cache_creation_tokens or old.cache_creation_tokens,
        reasoning_tokens=new.reasoning_tokens or old.reasoning_tokens,
        cost_usd=new.cost_usd if new.cost_usd is not None else old.cost_usd,
    )
