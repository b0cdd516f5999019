"""`make bench`: the gateway against the bare pass-through floor, side by side in one run.

Processes: the project's mock upstream and the load generator pinned to core 1, the gateway (and, in
turn, the bare Starlette+aiohttp proxy in bench/bare_proxy.py) pinned to core 0. Prints one table:
req/s, latency p50/p99, RSS, and the ratio to the bare floor.

Usage: python bench/run.py [--seconds 10] [--conns 32] [--only a,c,e,f]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
PY = sys.executable
GATEWAY_CORE, LOAD_CORE = "0", "1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pinned(core: str, argv: Sequence[str]) -> list[str]:
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return ["taskset", "-c", core, *argv]
    return list(argv)


def wait_http(url: str, timeout: float = 30) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return time.monotonic() - start
        except OSError:
            time.sleep(0.01)
    raise RuntimeError(f"{url} did not come up")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child_pid(popen: subprocess.Popen[bytes]) -> int:
    """The measured process: taskset execs its command, so the PID is the same."""
    return popen.pid


class Procs:
    def __init__(self) -> None:
        self.running: list[subprocess.Popen[bytes]] = []

    def start(
        self, argv: list[str], env: dict[str, str] | None = None, stdout: int | None = None
    ) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(argv, env=env, stdout=stdout, stderr=subprocess.DEVNULL)
        self.running.append(p)
        return p

    def stop(self, p: subprocess.Popen[bytes]) -> None:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        if p in self.running:
            self.running.remove(p)

    def stop_all(self) -> None:
        for p in list(self.running):
            self.stop(p)


def load(
    port: int, body: dict[str, object], seconds: float, conns: int, headers: Sequence[str] = ()
) -> dict[str, float]:
    argv = pinned(
        LOAD_CORE,
        [
            PY,
            str(HERE / "loadgen.py"),
            "--port",
            str(port),
            "--body",
            json.dumps(body),
            "--conns",
            str(conns),
            "--seconds",
            str(seconds),
        ],
    )
    for h in headers:
        argv += ["--header", h]
    out = subprocess.run(argv, capture_output=True, check=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--conns", type=int, default=32)
    ap.add_argument("--only", default="a,c,e,f")
    args = ap.parse_args()
    only = set(args.only.split(","))
    procs = Procs()
    tmp = Path(tempfile.mkdtemp(prefix="aigw-bench-"))
    rows: list[tuple[str, str, str, str, str, str]] = []
    try:
        mock = procs.start(
            pinned(LOAD_CORE, [PY, "-m", "ai_gateway.testing.mock_upstream", "--port", "0"]),
            stdout=subprocess.PIPE,
        )
        assert mock.stdout is not None
        mock_port = int(mock.stdout.readline().split()[1])
        upstream = f"http://127.0.0.1:{mock_port}"
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("AIGW_", "OPENAI_", "ANTHROPIC_", "OPENROUTER_", "OLLAMA_"))
        }
        env.update(
            {
                "OPENAI_BASE_URL": upstream + "/v1",
                "OPENAI_API_KEY": "sk-bench",
                "AIGW_DATABASE_URL": f"sqlite:///{tmp / 'bench.db'}",
                "AIGW_LOG_LEVEL": "warning",
            }
        )
        short = {
            "model": "openai/gpt-4o-mini",
            "messages": [{"role": "user", "content": "hello bench"}],
            "max_tokens": 16,
        }
        words = " ".join(f"w{i}" for i in range(100))
        streamed = {
            "model": "openai/gpt-4o-mini",
            "stream": True,
            "messages": [{"role": "user", "content": words}],
        }

        bare_port = free_port()
        bare = procs.start(
            pinned(GATEWAY_CORE, [PY, str(HERE / "bare_proxy.py"), str(bare_port)]),
            env={**env, "BARE_UPSTREAM": upstream + "/v1"},
        )
        time.sleep(0.5)
        wait_http_post(bare_port)
        bare_a = load(bare_port, short, args.seconds, args.conns)
        rows.append(row("bare pass-through, non-stream", bare_a, rss_mb(child_pid(bare)), None))
        if "c" in only:
            bare_c = load(bare_port, {**streamed, "model": "gpt-4o-mini"}, args.seconds, args.conns)
            rows.append(
                row(
                    "bare pass-through, stream 100 chunks", bare_c, rss_mb(child_pid(bare)), None, chunks=True
                )
            )
        procs.stop(bare)

        gw_port = free_port()
        started = time.monotonic()
        gw = procs.start(
            pinned(GATEWAY_CORE, [PY, "-m", "ai_gateway", "serve", "--port", str(gw_port)]), env=env
        )
        cold = wait_http(f"http://127.0.0.1:{gw_port}/healthz") if gw else time.monotonic() - started
        if "a" in only:
            a = load(gw_port, short, args.seconds, args.conns)
            rows.append(row("(a) gateway, non-stream", a, rss_mb(child_pid(gw)), bare_a["rps"]))
        if "c" in only:
            c = load(gw_port, streamed, args.seconds, args.conns)
            rows.append(row("(c) gateway, stream 100 chunks", c, rss_mb(child_pid(gw)), None, chunks=True))
        if "e" in only:
            direct = load(
                mock_port,
                {**short, "model": "gpt-4o-mini"},
                args.seconds / 2,
                1,
                ["Authorization: Bearer sk-bench"],
            )
            via = load(gw_port, short, args.seconds / 2, 1)
            rows.append(row("(e) direct to upstream, 1 conn", direct, float("nan"), None))
            rows.append(row("(e) gateway, 1 conn", via, rss_mb(child_pid(gw)), None))
            rows.append(
                (
                    "(e) added latency",
                    "",
                    f"{via['p50_ms'] - direct['p50_ms']:.2f}",
                    f"{via['p99_ms'] - direct['p99_ms']:.2f}",
                    "",
                    "",
                )
            )
        if "f" in only:
            rows.append(("(f) cold start to ready (s)", f"{cold:.2f}", "", "", "", ""))
        procs.stop(gw)
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    print_table(rows)


def wait_http_post(port: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("bare proxy did not start")


def row(
    name: str, r: dict[str, float], rss: float, floor: float | None, chunks: bool = False
) -> tuple[str, str, str, str, str, str]:
    rate = f"{r['events_per_s']:.0f} chunks/s" if chunks else f"{r['rps']:.0f}"
    ratio = f"{r['rps'] / floor:.2f}x" if floor else ""
    errors = f" ({r['errors']:.0f} errors)" if r["errors"] else ""
    return (
        name,
        rate + errors,
        f"{r['p50_ms']:.2f}",
        f"{r['p99_ms']:.2f}",
        f"{rss:.0f}" if rss == rss else "",
        ratio,
    )


def print_table(rows: list[tuple[str, str, str, str, str, str]]) -> None:
    head = ("scenario", "req/s", "p50 ms", "p99 ms", "RSS MB", "vs bare")
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(6)]
    for r in [head, tuple("-" * w for w in widths), *rows]:
        print(" | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)))


if __name__ == "__main__":
    main()
