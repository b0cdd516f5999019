"""Redis killed mid-run, through real gateway processes, under each `limits.on_backend_error` mode
(research/reliability.md F-19; CONTRACT §6).

One private redis-server (killed and restarted by its PID) serves three gateways at once, one per mode,
so a single outage exercises all three. While Redis is down:
- `local`: decisions on per-process buckets (a full replica share: `expected_replicas` is 1 here), so
  the key's rpm=6 admits 6 of 10 and the rest are 429 `rate_limited`;
- `allow`: everything is admitted and no `x-ratelimit-*` header pretends a limit was checked;
- `deny`: 503 `rate_limiter_unavailable` with Retry-After;
and in every mode the cache degrades to misses, no answer is a 500, and no request waits on the dead
Redis for long (one short timeout per call until the breaker opens). Once Redis is back (empty), every
gateway decides on it again within the breaker's cooldown, and the cache serves hits again.
"""

from __future__ import annotations

import secrets
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tests.e2e_support import chat, gateway, new_key, openai_body
from tests.redis_server import start_redis
from tests.support import Proc, Reply, Upstreams

MODES = ("local", "allow", "deny")
RPM = 6
OUTAGE_CALLS = 10
RECOVERY_S = 12.0  # the breaker leaves Redis alone for 5 s after 3 failures, then probes


@dataclass
class Replica:
    mode: str
    gw: Proc
    key: str


def limited_by_redis(reply: Reply) -> bool:
    """Admitted on the shared bucket: a fresh Redis has tokens left, the drained local bucket none."""
    remaining = reply.headers.get("x-ratelimit-remaining-requests")
    return reply.status == 200 and remaining is not None and int(remaining) >= 1


def test_redis_killed_mid_run_under_each_mode(tmp_path: Path, mocks: Upstreams) -> None:
    redis = start_redis()
    replicas: list[Replica] = []
    seen: Counter[int] = Counter()
    try:
        for mode in MODES:
            home = tmp_path / mode
            home.mkdir()
            config = f"limits: {{on_backend_error: {mode}}}\ncache: {{enabled: true}}\n"
            gw = gateway(home, mocks, f"gw-{mode}", config=config, env={"AIGW_REDIS_URL": redis.url})
            replicas.append(Replica(mode, gw, new_key(gw, rpm=RPM)[0]))
        body = openai_body(f"outage {secrets.token_hex(4)}")

        # Redis up: the limits and the cache live there.
        for r in replicas:
            first, second = chat(r.gw, r.key, body), chat(r.gw, r.key, body)
            seen.update((first.status, second.status))
            assert (first.headers["x-aigw-cache"], second.headers["x-aigw-cache"]) == ("miss", "hit")
            assert second.headers["x-ratelimit-remaining-requests"] == str(RPM - 2)
        before = mocks.mocks["openai"].calls()

        redis.kill()
        outage: dict[str, list[Reply]] = {}
        for r in replicas:
            started = time.monotonic()
            outage[r.mode] = [chat(r.gw, r.key, body) for _ in range(OUTAGE_CALLS)]
            # Every call pays at most the 50 ms Redis timeout (limiter and cache), until the breakers open.
            assert time.monotonic() - started < 3.0, r.mode
            seen.update(reply.status for reply in outage[r.mode])

        local = outage["local"]
        assert Counter(reply.status for reply in local) == {200: RPM, 429: OUTAGE_CALLS - RPM}
        for reply in local:
            assert reply.headers["x-ratelimit-limit-requests"] == str(RPM)
            if reply.status == 429:
                assert (
                    reply.json()["error"]["code"] == "rate_limited" and int(reply.headers["retry-after"]) >= 1
                )
            else:
                assert reply.headers["x-aigw-cache"] == "miss"  # the cache is down too: a miss, not an error
        for reply in outage["allow"]:
            assert reply.status == 200 and reply.headers["x-aigw-cache"] == "miss"
            assert not [h for h in reply.headers if h.startswith("x-ratelimit-")]
        for reply in outage["deny"]:
            assert reply.status == 503, reply.body
            assert reply.json()["error"]["code"] == "rate_limiter_unavailable"
            assert int(reply.headers["retry-after"]) >= 1
        assert mocks.mocks["openai"].calls() - before == RPM + OUTAGE_CALLS
        for r in replicas:
            assert f"rate limiter backend (on_backend_error={r.mode}) unavailable" in r.gw.log()

        redis.restart()  # empty, on the same port
        restarted = time.monotonic()
        waiting = list(replicas)
        while waiting and time.monotonic() - restarted < RECOVERY_S:
            for r in list(waiting):
                reply = chat(r.gw, r.key, body)
                seen[reply.status] += 1
                if limited_by_redis(reply):
                    waiting.remove(r)
            time.sleep(0.2)
        recovered_s = time.monotonic() - restarted
        assert not waiting, f"still not back on Redis after {RECOVERY_S} s: {[r.mode for r in waiting]}"
        print(f"F-19: all three modes back on Redis {recovered_s:.1f} s after it restarted")

        fresh = openai_body(f"after the outage {secrets.token_hex(4)}")
        for r in replicas:
            assert chat(r.gw, r.key, fresh).headers["x-aigw-cache"] == "miss"
            again = chat(r.gw, r.key, fresh)
            assert again.status == 200 and again.headers["x-aigw-cache"] == "hit", r.mode
    finally:
        for r in replicas:
            r.gw.stop()
        redis.stop()
    assert set(seen) <= {200, 429, 503}, seen  # never a 500
