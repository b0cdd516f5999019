"""Directives and the reply the mock upstream's fake model gives (see `mock_upstream`'s docstring).

Pure functions, no I/O: a request's merged ``key=value`` directives and its :class:`Prompt` decide
the :class:`~ai_gateway.testing._mock_wire.Reply`, which `_mock_wire` renders in each wire format.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

import orjson

from ai_gateway.testing import _mock_wire as wire
from ai_gateway.testing._mock_inspect import json_answer
from ai_gateway.testing._mock_wire import Dialect, Json, Prompt

# --------------------------------------------------------------------------- directives


@dataclass(frozen=True)
class Directives:
    """Merged ``key=value`` fault directives for one request."""

    raw: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return " ".join(f"{k}={v}" for k, v in sorted(self.raw.items()))

    def get(self, name: str) -> str | None:
        return self.raw.get(name)

    def int(self, name: str) -> int | None:
        try:
            return int(self.raw[name])
        except (KeyError, ValueError):
            return None

    def flag(self, name: str) -> bool:
        return self.raw.get(name, "0").lower() not in ("", "0", "false", "no")


def parse_directive_text(text: str) -> dict[str, str]:
    """``'a=1 text="x y" b'`` -> ``{"a": "1", "text": "x y", "b": "1"}``."""
    try:
        tokens = shlex.split(text)
    except ValueError:
        tokens = text.split()
    out: dict[str, str] = {}
    for tok in tokens:
        name, sep, value = tok.partition("=")
        if name:
            out[name.strip().lower()] = value if sep else "1"
    return out


# --------------------------------------------------------------------------- reply building


def _first_words(text: str, n: int) -> str:
    ends = [m.end() for m in re.finditer(r"\S+", text)]
    return text[: ends[n - 1]] if n > 0 else ""


def apply_limits(text: str, max_tokens: int | None, stops: list[str]) -> tuple[str, wire.Finish, str | None]:
    """Cut at the earliest stop sequence, then truncate to ``max_tokens`` words."""
    hits = sorted((text.find(s), s) for s in stops if s in text)
    stop_seq = hits[0][1] if hits else None
    if hits:
        text = text[: hits[0][0]]
    if max_tokens is not None and len(text.split()) > max_tokens:
        return _first_words(text, max_tokens), "length", None
    return text, ("stop_sequence" if stop_seq else "stop"), stop_seq


def split_pieces(text: str, chunks: int | None) -> tuple[str, ...]:
    """One piece per word (leading whitespace attached), or ``chunks`` even pieces."""
    pieces = re.findall(r"\s*\S+", text)
    rest = text[len("".join(pieces)) :]
    if rest:
        pieces = [*pieces[:-1], pieces[-1] + rest] if pieces else [rest]
    if not chunks or chunks <= 0 or not text:
        return tuple(pieces)
    if chunks <= len(pieces):
        q, r = divmod(len(pieces), chunks)
        sizes = [q + (1 if i < r else 0) for i in range(chunks)]
        starts = [sum(sizes[:i]) for i in range(chunks)]
        return tuple("".join(pieces[s : s + n]) for s, n in zip(starts, sizes, strict=True))
    n = min(chunks, len(text))
    bounds = [round(i * len(text) / n) for i in range(n + 1)]
    return tuple(text[bounds[i] : bounds[i + 1]] for i in range(n))


def _tool_call_id(dialect: Dialect) -> str:
    return "toolu_01" + wire.rand_hex(22) if dialect == "anthropic" else "call_" + wire.rand_hex(24)


def _tool_calls(dialect: Dialect, p: Prompt, d: Directives) -> tuple[wire.ToolCall, ...]:
    count = d.int("tools") or 0
    # After a tool round the directives that asked for calls are still in the history: answer instead.
    asked = (d.flag("tool") or count > 0) and not p.seen.ends_with_tool_results
    wanted = p.forced_tool is not None or asked
    if not p.tools or p.tools_disabled or not wanted:
        return ()
    try:
        args = orjson.loads(d.get("tool_args") or '{"arg": "value"}')
    except orjson.JSONDecodeError:
        args = {"arg": "value"}
    args = args if isinstance(args, dict) else {"arg": args}
    names = [p.forced_tool or p.tools[i % len(p.tools)] for i in range(max(1, count))]
    return tuple(wire.ToolCall(_tool_call_id(dialect), name, args) for name in names)


def input_tokens(p: Prompt) -> int:
    return max(1, sum(len(t.split()) for t in p.texts))


def _answer(p: Prompt, d: Directives) -> str:
    """``echo``: what the mock saw, as JSON; JSON mode: a value of the schema; else the text."""
    text = d.get("text")
    answer = text if text is not None else f"mock reply: {p.last_user}".strip()
    if d.flag("echo"):
        return orjson.dumps(p.seen.summary()).decode()
    if p.seen.json is not None:
        return orjson.dumps(json_answer(p.seen.schema, answer)).decode()
    return answer


def build_reply(dialect: Dialect, p: Prompt, d: Directives) -> wire.Reply:
    total = input_tokens(p)
    cached = min(total, d.int("cached") or 0)
    common: Json = {
        "model": p.model,
        "input_tokens": total,
        "usage": not d.flag("no_usage"),
        "stream_usage": p.stream_usage,
        "cached_tokens": cached,
        "cache_write_tokens": min(total - cached, d.int("cache_write") or 0),
        "thinking": f"mock thinking about: {p.last_user}" if p.seen.thinking else None,
    }
    calls = _tool_calls(dialect, p, d)
    if calls:
        preamble = split_pieces(d.get("preamble") or "", None)
        words = len("".join(preamble).split())
        return wire.Reply(
            pieces=preamble, tool_calls=calls, finish="tool_calls", output_tokens=len(calls) + words, **common
        )
    answer, finish, stop_seq = apply_limits(_answer(p, d), p.max_tokens, p.stops)
    pieces = split_pieces(answer, d.int("chunks"))
    return wire.Reply(
        pieces=pieces, finish=finish, stop_sequence=stop_seq, output_tokens=len(answer.split()), **common
    )
