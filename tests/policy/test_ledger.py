"""The ledger: rows round-trip as JSON and sanitise into anything SQL accepts; the writer loses and
duplicates nothing through a database outage, a slow database, a crash (torn spool line), a shutdown
and a poisoned row; and the delivered-chunk usage estimate for streams without usage."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from ai_gateway.errors import (
    AuthenticationError,
    DeadlineExceededError,
    InvalidRequestError,
    NotFoundError,
    ProviderError,
    RateLimitError,
    ServiceUnavailableError,
    UpstreamError,
)
from ai_gateway.policy.fallback import Attempt
from ai_gateway.policy.ledger import Ledger, default_spool_path
from ai_gateway.policy.ledger_row import (
    LEDGER_COLUMNS,
    STATUSES,
    LedgerAttempt,
    LedgerRow,
    outcome_of,
    sanitize,
)
from ai_gateway.policy.tokens import estimate_text_tokens
from ai_gateway.policy.usage_count import DeliveredCounter, estimate_output_tokens
from ai_gateway.settings import ConfigError
from ai_gateway.stores.ledger_memory import MemorySink
from ai_gateway.types import NativeEvent, StreamEnd, TextDelta, ToolCallDelta, Usage, UsageEvent

TS = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
FAST = {"flush_interval_s": 0.01, "replay_backoff_s": (0.02, 0.1), "write_timeout_s": 1.0}


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


def row(rid: str, **kw: Any) -> LedgerRow:
    base: dict[str, Any] = {
        "request_id": rid,
        "ts": TS,
        "status": "ok",
        "http_status": 200,
        "endpoint": "openai_chat",
        "tenant_id": "t1",
        "key_id": "k1",
        "route": "gpt-4o-mini",
        "provider": "openai",
        "model": "gpt-4o-mini",
        "input_tokens": 12,
        "output_tokens": 34,
        "cost_nanos": 1_234,
        "price_source": "genai-prices",
        "latency_ms": 85,
        "attempts": (LedgerAttempt("openai", "gpt-4o-mini", "ok", None, 80, 200),),
    }
    base.update(kw)
    return LedgerRow(**base)


# --- the row -------------------------------------------------------------------------------------

texts = st.text(max_size=300)
rows = st.builds(
    LedgerRow,
    request_id=st.text(min_size=1, max_size=200),
    ts=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)),
    status=st.sampled_from(sorted(STATUSES)),
    http_status=st.integers(0, 999),
    endpoint=texts,
    stream=st.booleans(),
    tenant_id=st.none() | texts,
    model=st.none() | texts,
    error_class=st.none() | texts,
    input_tokens=st.integers(0, 2**63 - 1),
    output_tokens=st.integers(0, 2**40),
    cost_nanos=st.none() | st.integers(0, 2**63 - 1),
    ttft_ms=st.none() | st.integers(0, 10**6),
    usage_estimated=st.booleans(),
    attempts=st.lists(
        st.builds(LedgerAttempt, provider=texts, model=texts, status=st.sampled_from(["ok", "error"])),
        max_size=3,
    ).map(tuple),
)


@given(rows)
@hsettings(max_examples=200, deadline=None)
def test_sanitised_rows_round_trip_through_json(r: LedgerRow) -> None:
    clean = sanitize(r)
    assert sanitize(clean) == clean  # idempotent
    line = orjson.dumps(clean.to_json())  # never raises: no lone surrogates, no huge ints
    assert LedgerRow.from_json(orjson.loads(line)) == clean
    for name in ("request_id", "endpoint", "tenant_id", "model", "error_class"):
        value = getattr(clean, name)
        assert value is None or ("\x00" not in value and len(value) <= 256)


def test_columns_map_one_to_one() -> None:
    r = row("r1")
    cols = r.to_columns()
    assert tuple(cols) == LEDGER_COLUMNS
    assert LEDGER_COLUMNS[:5] == ("request_id", "ts", "status", "http_status", "endpoint")
    assert cols["ts"] is r.ts
    assert orjson.loads(cols["attempts"]) == [
        {
            "provider": "openai",
            "model": "gpt-4o-mini",
            "status": "ok",
            "error": None,
            "latency_ms": 80,
            "http_status": 200,
            "kind": None,
        }
    ]
    a = Attempt("anthropic", "claude", "error", "timeout", 12, None, "timeout")
    assert LedgerAttempt.of(a) == LedgerAttempt(
        "anthropic", "claude", "error", "timeout", 12, None, "timeout"
    )


def test_sanitise_fixes_poison_and_keeps_ids_unique() -> None:
    long_a, long_b = "x" * 300 + "a", "x" * 300 + "b"
    r = sanitize(
        row(
            long_a,
            model="gpt\x00-4o" + "y" * 10_000,
            tenant_id="t\ud800",  # a lone surrogate
            input_tokens=-5,
            output_tokens=2**70,
            ts=datetime(2026, 1, 1, 9, tzinfo=timezone(timedelta(hours=9))),
            attempts=tuple(LedgerAttempt("p", "m", "error", "e" * 5000) for _ in range(50)),
        )
    )
    assert r.model is not None and "\x00" not in r.model and len(r.model) == 256 and r.model.endswith("…")
    assert r.tenant_id == "t?"
    assert (r.input_tokens, r.output_tokens) == (0, 2**63 - 1)
    assert r.ts == datetime(2026, 1, 1, 0, tzinfo=UTC) and r.ts.tzinfo is UTC
    assert len(r.attempts) == 32 and all(len(a.error or "") <= 300 for a in r.attempts)
    assert len(r.request_id) == 128
    assert sanitize(row(long_a)).request_id == r.request_id  # deterministic: still an idempotency key
    assert sanitize(row(long_b)).request_id != r.request_id
    plain = row("r1")
    assert sanitize(plain) is plain  # the common case allocates nothing new


def test_from_json_rejects_non_rows() -> None:
    for bad in ({}, {"request_id": "r"}, {"request_id": "", "ts": TS.isoformat()}, {"ts": "nope"}):
        with pytest.raises(ValueError):
            LedgerRow.from_json(bad)
    data = row("r1").to_json() | {"some_future_column": 1}
    assert LedgerRow.from_json(data) == row("r1")


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (RateLimitError("x", code="budget_exceeded"), ("rejected", 429, "budget_exceeded")),
        (RateLimitError("x"), ("rejected", 429, "rate_limited")),
        (RateLimitError("x", code="upstream_rate_limited"), ("upstream_error", 429, "upstream_rate_limited")),
        (AuthenticationError("x"), ("rejected", 401, "invalid_api_key")),
        (InvalidRequestError("x"), ("invalid_request", 400, "invalid_request")),
        (NotFoundError("x"), ("invalid_request", 404, "model_not_found")),
        (UpstreamError("x"), ("upstream_error", 502, "all_providers_failed")),
        (DeadlineExceededError("x"), ("upstream_timeout", 504, "upstream_timeout")),
        (ServiceUnavailableError("x", code="shutting_down"), ("shutdown", 503, "shutting_down")),
        (
            ServiceUnavailableError("x", code="accounting_unavailable"),
            ("rejected", 503, "accounting_unavailable"),
        ),
        (ProviderError("reset", "broke"), ("upstream_error", 502, "reset")),
        (asyncio.CancelledError(), ("client_disconnected", 499, "client_disconnected")),
        (KeyError("bug"), ("internal_error", 500, "KeyError")),
    ],
)
def test_outcome_of(exc: BaseException, expected: tuple[str, int, str]) -> None:
    assert outcome_of(exc) == expected
    assert expected[0] in STATUSES


def test_default_spool_path(tmp_path: Path) -> None:
    assert default_spool_path(tmp_path / "gw.db") == tmp_path / "gw.db.ledger-spool.jsonl"
    assert default_spool_path(None) == Path("ai-gateway.ledger-spool.jsonl")


# --- the writer ----------------------------------------------------------------------------------


def ids(prefix: str, n: int) -> list[str]:
    return [f"{prefix}-{i:05d}" for i in range(n)]


async def until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def test_rows_reach_the_sink_in_bounded_batches(tmp_path: Path) -> None:
    async def go() -> None:
        sink = MemorySink()
        ledger = Ledger(sink, tmp_path / "spool.jsonl", batch_size=500, **FAST)
        await ledger.start()
        for rid in ids("r", 1_000):  # research F-28: a thousand rows in one interval all land
            ledger.record(row(rid))
        await until(lambda: len(sink.rows) == 1_000)
        assert sink.batches >= 2
        await ledger.drain(1.0)
        assert ledger.stats.rows_written == 1_000 and ledger.stats.rows_spooled == 0

    run(go())


def test_database_outage_under_load_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    """research/reliability.md F-23/F-24 in miniature: 1.5 s of steady load, the sink down for 0.6 s."""

    async def go() -> None:
        sink = MemorySink()
        ledger = Ledger(sink, tmp_path / "spool.jsonl", batch_size=100, max_queue=2_000, **FAST)
        await ledger.start()
        expected = ids("load", 3_000)

        async def traffic() -> None:
            for i, rid in enumerate(expected):
                ledger.record(row(rid))
                if i % 20 == 0:
                    await asyncio.sleep(0.01)  # ~2,000 rows/s

        async def outage() -> None:
            await asyncio.sleep(0.3)
            sink.down = True
            await asyncio.sleep(0.6)
            sink.down = False

        await asyncio.gather(traffic(), outage())
        await until(lambda: len(sink.rows) == len(expected) and ledger.spool_depth == 0)
        await ledger.drain(2.0)
        assert set(sink.rows) == set(expected)  # 0 lost
        assert len(sink.rows) == len(expected)  # 0 duplicated (the sink keeps one row per id)
        assert ledger.stats.rows_spooled > 0 and ledger.stats.rows_replayed > 0
        assert ledger.stats.rows_written == len(expected) + sink.duplicates
        assert ledger.stats.write_errors > 0 and ledger.stats.rows_rejected == 0
        # record() cannot wait on the database: it is a plain function, not a coroutine (no timed
        # assertion: the machine's scheduler would make one flaky).
        assert not asyncio.iscoroutinefunction(ledger.record)
        assert not (tmp_path / "spool.jsonl.replaying").exists()

    run(go())


def test_a_slow_database_is_an_outage(tmp_path: Path) -> None:
    async def go() -> None:
        sink = MemorySink()
        sink.delay_s = 0.3
        opts = FAST | {"write_timeout_s": 0.05}
        ledger = Ledger(sink, tmp_path / "spool.jsonl", **opts)
        await ledger.start()
        for rid in ids("slow", 50):
            ledger.record(row(rid))
        await until(lambda: ledger.stats.rows_spooled == 50)
        sink.delay_s = 0.0
        await until(lambda: len(sink.rows) == 50)
        await ledger.drain(1.0)
        assert set(sink.rows) == set(ids("slow", 50))

    run(go())


def test_a_full_queue_spills_to_the_spool(tmp_path: Path) -> None:
    async def go() -> None:
        sink = MemorySink()
        ledger = Ledger(sink, tmp_path / "spool.jsonl", max_queue=10, **FAST)
        for rid in ids("burst", 100):  # before the flusher even started
            ledger.record(row(rid))
        assert ledger.queue_depth == 10 and ledger.spool_depth == 90
        await ledger.start()
        await until(lambda: len(sink.rows) == 100)
        await ledger.drain(1.0)
        assert sink.duplicates == 0

    run(go())


def test_drain_with_the_database_down_leaves_everything_in_the_spool(tmp_path: Path) -> None:
    async def go() -> None:
        path = tmp_path / "spool.jsonl"
        sink = MemorySink()
        sink.down = True
        ledger = Ledger(sink, path, **FAST)
        await ledger.start()
        for rid in ids("shut", 120):
            ledger.record(row(rid))
        await ledger.drain(1.0)
        ledger.record(row("late"))  # a stream billed after shutdown began still lands
        assert ledger.spool_depth == 121 and not sink.rows

        sink.down = False  # the next start replays it
        again = Ledger(sink, path, **FAST)
        assert again.spool_depth == 121
        await again.start()
        await until(lambda: again.spool_depth == 0)
        await again.drain(1.0)
        assert set(sink.rows) == set(ids("shut", 120)) | {"late"}

    run(go())


def test_drain_timeout_spools_the_batch_in_flight(tmp_path: Path) -> None:
    async def go() -> None:
        path = tmp_path / "spool.jsonl"
        sink = MemorySink()
        sink.delay_s = 10.0  # a write that hangs past the drain timeout
        ledger = Ledger(sink, path, **(FAST | {"write_timeout_s": 30.0}))
        await ledger.start()
        for rid in ids("hang", 30):
            ledger.record(row(rid))
        await asyncio.sleep(0.05)
        t = time.monotonic()
        await ledger.drain(0.2)
        assert time.monotonic() - t < 1.0
        assert ledger.spool_depth == 30

        sink.delay_s = 0.0
        again = Ledger(sink, path, **FAST)
        await again.start()
        await until(lambda: again.spool_depth == 0)
        await again.drain(1.0)
        assert set(sink.rows) == set(ids("hang", 30))

    run(go())


def test_a_torn_last_line_from_a_crash_is_tolerated(tmp_path: Path) -> None:
    async def go() -> None:
        path = tmp_path / "spool.jsonl"
        good = [orjson.dumps(row(rid).to_json()) + b"\n" for rid in ids("crash", 3)]
        path.write_bytes(b"".join(good) + orjson.dumps(row("torn").to_json())[:40])
        sink = MemorySink()
        sink.down = True
        ledger = Ledger(sink, path, **FAST)
        await ledger.start()
        ledger.record(row("after-crash"))  # appended after the torn tail, on its own line
        await until(lambda: ledger.stats.rows_spooled == 1)
        sink.down = False
        await until(lambda: ledger.spool_depth == 0 and len(sink.rows) == 4)
        await ledger.drain(1.0)
        assert set(sink.rows) == set(ids("crash", 3)) | {"after-crash"}
        assert ledger.stats.spool_corrupt == 1
        assert (tmp_path / "spool.jsonl.rejected").read_bytes().startswith(b'{"request_id":"torn"')

    run(go())


def test_one_process_per_spool(tmp_path: Path) -> None:
    async def go() -> None:
        path = tmp_path / "spool.jsonl"
        first = Ledger(MemorySink(), path, **FAST)
        with pytest.raises(ConfigError, match="in use by another gateway process"):
            Ledger(MemorySink(), path, **FAST)
        await first.drain(1.0)
        first.record(row("late"))  # appends, then lets go of the spool again
        second = Ledger(MemorySink(), path, **FAST)
        assert second.spool_depth == 1
        await second.drain(1.0)

    run(go())


def test_a_crash_mid_replay_replays_the_leftover_file(tmp_path: Path) -> None:
    async def go() -> None:
        path = tmp_path / "spool.jsonl"
        line = lambda rid: orjson.dumps(row(rid).to_json()) + b"\n"  # noqa: E731
        (tmp_path / "spool.jsonl.replaying").write_bytes(b"".join(line(r) for r in ids("old", 5)))
        path.write_bytes(b"".join(line(r) for r in ids("new", 5)))
        sink = MemorySink()
        sink.rows["old-00000"] = row("old-00000")  # written before the crash
        ledger = Ledger(sink, path, **FAST)
        assert ledger.spool_depth == 10
        await ledger.start()
        await until(lambda: ledger.spool_depth == 0)
        await ledger.drain(1.0)
        assert set(sink.rows) == set(ids("old", 5)) | set(ids("new", 5))
        assert sink.duplicates == 1  # replayed, skipped by its request id
        assert not path.exists() or path.stat().st_size == 0

    run(go())


def test_a_poison_row_never_sinks_its_batch(tmp_path: Path) -> None:
    """research F-27: a NUL byte and a 10 KB field in one row of a hundred."""

    async def go() -> None:
        sink = MemorySink()
        # What Postgres would refuse: NUL bytes in text, values longer than the column.
        sink.refuse = lambda r: any(
            isinstance(v, str) and ("\x00" in v or len(v) > 256) for v in r.to_columns().values()
        )
        ledger = Ledger(sink, tmp_path / "spool.jsonl", **FAST)
        await ledger.start()
        for i, rid in enumerate(ids("p", 100)):
            ledger.record(row(rid, model="bad\x00" + "z" * 10_240) if i == 42 else row(rid))
        await until(lambda: len(sink.rows) == 100)
        await ledger.drain(1.0)
        assert sink.batches == 1  # sanitised first, so the batch was never refused
        assert sink.rows["p-00042"].model is not None and "\x00" not in sink.rows["p-00042"].model

    run(go())


def test_a_row_the_database_refuses_is_isolated_then_set_aside(tmp_path: Path) -> None:
    async def go() -> None:
        sink = MemorySink()
        sink.refuse = lambda r: r.request_id == "q-00007"  # refused whatever we do to it
        ledger = Ledger(sink, tmp_path / "spool.jsonl", **FAST)
        await ledger.start()
        for rid in ids("q", 20):
            ledger.record(row(rid))
        await until(lambda: ledger.stats.rows_rejected == 1 and ledger.spool_depth == 0)
        await ledger.drain(1.0)
        assert set(sink.rows) == set(ids("q", 20)) - {"q-00007"}
        rejected = (tmp_path / "spool.jsonl.rejected").read_bytes().splitlines()
        assert [orjson.loads(x)["request_id"] for x in rejected] == ["q-00007"]

    run(go())


def test_a_sink_that_refuses_everything_is_treated_as_down(tmp_path: Path) -> None:
    async def go() -> None:
        sink = MemorySink()
        sink.refuse = lambda r: True  # e.g. a missing table: the data is not the problem
        ledger = Ledger(sink, tmp_path / "spool.jsonl", **FAST)
        await ledger.start()
        for rid in ids("b", 10):
            ledger.record(row(rid))
        await until(lambda: ledger.stats.rows_spooled >= 10)
        sink.refuse = None
        await until(lambda: len(sink.rows) == 10)
        await ledger.drain(1.0)
        assert ledger.stats.rows_rejected == 0

    run(go())


# --- usage counted from delivered chunks ---------------------------------------------------------


@given(st.lists(st.text(max_size=40), max_size=30))
def test_delivered_estimate_matches_the_prompt_estimator(chunks: list[str]) -> None:
    counter = DeliveredCounter()
    for c in chunks:
        counter.feed(TextDelta(c))
    usage, estimated = counter.usage(input_tokens_estimate=17)
    assert estimated and usage.input_tokens == 17
    assert usage.output_tokens == estimate_text_tokens("".join(chunks))
    if "".join(chunks):
        assert usage.output_tokens >= 1


def test_upstream_usage_wins_and_is_merged() -> None:
    counter = DeliveredCounter()
    counter.feed(TextDelta("hello world, this is text"))
    counter.feed(ToolCallDelta(0, "c1", "lookup", '{"q": 1}'))
    counter.feed(NativeEvent("anthropic", {"type": "content_block_delta", "delta": {"thinking": "hmm"}}))
    assert counter.chars == 25 + 8 + 6 + 3
    assert counter.usage(5) == (Usage(5, estimate_output_tokens(42)), True)
    counter.feed(UsageEvent(Usage(input_tokens=40, output_tokens=0)))  # Anthropic: input first
    assert counter.usage(5) == (Usage(40, estimate_output_tokens(42)), True)  # output still counted
    counter.feed(StreamEnd("stop", Usage(input_tokens=0, output_tokens=9)))
    assert counter.usage(5) == (Usage(40, 9), False)


def test_a_running_count_cut_short_is_topped_up_to_what_was_delivered() -> None:
    """Anthropic's `message_start` reports 1 output token; a client leaving after 5 words was delivered
    more than that, and is billed for what it received (I3), until the final report arrives."""
    counter = DeliveredCounter()
    counter.feed(UsageEvent(Usage(input_tokens=40, output_tokens=1)))
    for word in ("aaa", " bbb", " ccc", " ddd", " eee"):
        counter.feed(TextDelta(word))
    assert counter.usage(5) == (Usage(40, 5), True)
    counter.feed(StreamEnd("stop", Usage(input_tokens=40, output_tokens=4)))
    assert counter.usage(5) == (Usage(40, 4), False)  # final: the upstream's count wins


def test_output_estimate_rounds_up() -> None:
    assert estimate_output_tokens(0) == 0
    assert estimate_output_tokens(1) == 1
    assert estimate_output_tokens(8) == 2
    assert estimate_output_tokens(9) == 3
    assert estimate_output_tokens(3, extra_utf8_bytes=6) == 4  # three CJK characters
