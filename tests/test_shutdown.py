"""Graceful shutdown (issue 5, research A6, F-29): SIGTERM with requests in flight.

- 10 streams (the mock pauses 150 ms between chunks, about 3 s each) and 10 non-stream calls (the mock
  answers after 2.5 s) are in flight when the gateway gets SIGTERM. It stops accepting at once (a new
  connection is refused, which is how a load balancer's readiness probe sees it: uvicorn closes the
  listening socket before anything else, so `/readyz` cannot be asked), every in-flight request is
  answered in full, the process exits 0, and afterwards the database holds every request's row,
  billed in full, with the spool empty.
- The same with the database unreachable at shutdown: the rows wait in the spool file, and the next
  start replays them into the database, none lost, none doubled.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.accounting_support import Sent, expected_cost, ledger_rows, send, send_all, session, sse_payloads
from tests.e2e_support import OPENAI_MODEL, gateway, new_key
from tests.services import Postgres
from tests.stores.test_ledger_sql import migrated
from tests.support import Proc, Upstreams
from tests.test_ledger_outage import ThreadedProxy

WORDS = " ".join(f"s{i:02d}" for i in range(20))
IN_FLIGHT = 10
EXIT_WITHIN_S = 20.0


def _spool_rows(tmp: Path) -> int:
    return sum(
        p.read_bytes().count(b"\n")
        for p in tmp.glob("*.ledger-spool.jsonl*")
        if not p.name.endswith((".lock", ".rejected"))
    )


def _calls(key: str, tag: str) -> list[Sent]:
    auth = {"authorization": f"Bearer {key}"}
    streams = [
        Sent(
            f"{tag}-stream-{i}",
            "/v1/chat/completions",
            {
                "model": OPENAI_MODEL,
                "stream": True,
                "stream_options": {"include_usage": True},
                "messages": [
                    {"role": "user", "content": f'draining stream {i} [[mock gap_ms=150 text="{WORDS}"]]'}
                ],
            },
            auth,
        )
        for i in range(IN_FLIGHT)
    ]
    waits = [
        Sent(
            f"{tag}-wait-{i}",
            "/v1/chat/completions",
            {
                "model": OPENAI_MODEL,
                "messages": [{"role": "user", "content": f"draining call {i} [[mock ttfb_ms=2500]]"}],
            },
            auth,
        )
        for i in range(IN_FLIGHT)
    ]
    return streams + waits


async def _refused(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return True
    writer.close()
    return False


def _wait_exit(gw: Proc, timeout_s: float) -> int:
    return gw.popen.wait(timeout=timeout_s)


def assert_clean_exit(gw: Proc, code: int) -> None:
    """uvicorn re-raises the SIGTERM it handled once its graceful shutdown is done, so a clean exit is
    "terminated by SIGTERM" (shell status 143; systemd, Docker and Kubernetes count it as clean), and the
    log shows the application's shutdown (the ledger drain) completed."""
    log = gw.log()
    assert code in (0, -signal.SIGTERM), log[-3000:]
    assert "Application shutdown complete." in log and "Finished server process" in log, log[-3000:]


@pytest.fixture
def gw(tmp_path: Path, upstreams: Upstreams) -> Iterator[Proc]:
    proc = gateway(tmp_path, upstreams, "gw-shutdown")
    yield proc
    proc.stop()


def test_sigterm_finishes_in_flight_requests_and_records_every_row(
    gw: Proc, tmp_path: Path, mocks: Upstreams
) -> None:
    key, _ = new_key(gw)
    calls = _calls(key, "drain")

    async def go() -> tuple[bool, float, int]:
        answered = asyncio.ensure_future(send_all(gw.url, calls))
        deadline = time.monotonic() + 5
        while await asyncio.to_thread(mocks.mocks["openai"].calls) < 2 * IN_FLIGHT:
            assert time.monotonic() < deadline, "the calls did not reach the upstream"
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # all in flight: streams mid-answer, calls waiting for the upstream
        assert not answered.done()
        signalled = time.monotonic()
        gw.popen.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        refused = await _refused(gw.port)
        await answered
        code = await asyncio.to_thread(_wait_exit, gw, EXIT_WITHIN_S)
        return refused, time.monotonic() - signalled, code

    refused, exited_after, code = asyncio.run(go())
    assert refused, "the gateway still accepted connections after SIGTERM"
    assert_clean_exit(gw, code)
    assert [c.status for c in calls] == [200] * len(calls)
    for call in calls[:IN_FLIGHT]:  # every stream ran to its end
        text = "".join(
            (choice.get("delta") or {}).get("content") or ""
            for event in sse_payloads(call.raw)
            for choice in event.get("choices") or []
        )
        assert text == WORDS and call.raw.endswith(b"data: [DONE]\n\n"), call.raw[-300:]
    rows = ledger_rows(f"sqlite:///{tmp_path / 'gateway.db'}")
    assert set(rows) == {c.rid for c in calls}
    for call in calls:
        row = rows[call.rid]
        assert (row["status"], row["http_status"], row["usage_estimated"]) == ("ok", 200, False), row
        assert (
            row["cost_nanos"]
            == call.client_cost_nanos
            == expected_cost("openai", "gpt-4o-mini", row["input_tokens"], row["output_tokens"])
        )
    assert {rows[c.rid]["output_tokens"] for c in calls[:IN_FLIGHT]} == {len(WORDS.split())}
    assert _spool_rows(tmp_path) == 0
    print(
        f"\nSIGTERM with {2 * IN_FLIGHT} requests in flight: new connections refused, all answered in full, "
        f"clean exit after {exited_after:.1f}s, {len(rows)} ledger rows, spool empty"
    )


def test_rows_of_a_shutdown_with_the_database_down_are_replayed_at_the_next_start(
    tmp_path: Path, upstreams: Upstreams, postgres: Postgres
) -> None:
    direct = migrated(postgres.new_database())
    name = direct.rsplit("/", 1)[1]
    proxy = ThreadedProxy(postgres.host, postgres.port)
    proxy.start()
    env = {
        "AIGW_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{proxy.port}/{name}",
        "AIGW_AUTH_CACHE_TTL_S": "300",
    }
    first = gateway(tmp_path, upstreams, "gw-first", env=env)
    second: Proc | None = None
    try:
        key, _ = new_key(first)
        warm = Sent(
            "down-warm",
            "/v1/chat/completions",
            {"model": OPENAI_MODEL, "messages": [{"role": "user", "content": "warm"}]},
            {"authorization": f"Bearer {key}"},
        )
        calls = [
            Sent(
                f"down-{i}",
                "/v1/chat/completions",
                {"model": OPENAI_MODEL, "messages": [{"role": "user", "content": f"while down {i}"}]},
                {"authorization": f"Bearer {key}"},
            )
            for i in range(IN_FLIGHT)
        ]

        async def warm_up() -> None:
            async with session() as http:
                await send(http, first.url, warm)

        asyncio.run(warm_up())
        proxy.stop()
        asyncio.run(send_all(first.url, calls))
        assert [c.status for c in [warm, *calls]] == [200] * (IN_FLIGHT + 1)
        first.popen.send_signal(signal.SIGTERM)
        assert_clean_exit(first, _wait_exit(first, EXIT_WITHIN_S))
        wanted = {c.rid for c in [warm, *calls]}
        assert not wanted & ledger_rows(direct).keys() - {"down-warm"}
        spooled = _spool_rows(tmp_path)
        assert spooled >= IN_FLIGHT, spooled

        proxy.start()
        second = gateway(tmp_path, upstreams, "gw-second", env=env)  # takes the same spool back
        deadline = time.monotonic() + 15
        while not wanted <= ledger_rows(direct).keys() and time.monotonic() < deadline:
            time.sleep(0.2)
        rows = ledger_rows(direct)
        assert set(rows) == wanted
        assert sum(r["cost_nanos"] for r in rows.values()) == sum(
            c.client_cost_nanos or 0 for c in [warm, *calls]
        )
        assert _spool_rows(tmp_path) == 0
        print(
            f"\nshutdown with the database down: {spooled} rows spooled, replayed at the next start, 0 lost"
        )
    finally:
        first.stop()
        if second is not None:
            second.stop()
        proxy.stop()
        proxy.close()
