"""Real processes on loopback for integration tests: the mock upstream and the gateway.

Every process started here is stopped by its own PID; nothing is ever killed by name.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROVIDERS = ("ollama", "openai", "anthropic", "openrouter")
KEYS = {
    "openai": "sk-CANARY-openai-0123456789abcdef",
    "anthropic": "sk-ant-CANARY-anthropic-0123456789",
    "openrouter": "sk-or-CANARY-openrouter-0123456789",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Proc:
    popen: subprocess.Popen[bytes]
    port: int
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""


class Mock(Proc):
    """A mock upstream process with helpers for its control endpoints."""

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"content-type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/_mock/stats")
        return result

    def calls(self) -> int:
        return int(self.stats()["calls"])

    def calls_log(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "/_mock/log")
        return result

    def reset(self) -> None:
        self._call("POST", "/_mock/reset", {})

    def fault(self, spec: str | None) -> None:
        self._call("POST", "/_mock/config", {"fault": spec})


def start_mock(tmp: Path, name: str = "mock") -> Mock:
    log_path = tmp / f"{name}.log"
    popen = subprocess.Popen(
        [sys.executable, "-m", "ai_gateway.testing.mock_upstream", "--host", "127.0.0.1", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=log_path.open("wb"),
    )
    assert popen.stdout is not None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        line = popen.stdout.readline().decode().strip()
        if line.startswith("LISTENING"):
            return Mock(popen, int(line.split()[1]), log_path)
        if popen.poll() is not None:
            break
    popen.kill()
    raise RuntimeError(f"mock upstream did not start: {log_path.read_text(errors='replace')}")


@dataclass
class Upstreams:
    mocks: dict[str, Mock] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        m = self.mocks
        return {
            "OLLAMA_BASE_URL": m["ollama"].url,
            "OPENAI_BASE_URL": m["openai"].url + "/v1",
            "OPENAI_API_KEY": KEYS["openai"],
            "ANTHROPIC_BASE_URL": m["anthropic"].url,
            "ANTHROPIC_API_KEY": KEYS["anthropic"],
            "OPENROUTER_BASE_URL": m["openrouter"].url + "/api/v1",
            "OPENROUTER_API_KEY": KEYS["openrouter"],
        }

    def reset(self) -> None:
        for mock in self.mocks.values():
            if mock.popen.poll() is None:
                mock.reset()

    def total_calls(self) -> int:
        return sum(m.calls() for m in self.mocks.values() if m.popen.poll() is None)


def start_upstreams(tmp: Path) -> Upstreams:
    return Upstreams({name: start_mock(tmp, name) for name in PROVIDERS})


def gateway_env(extra: Mapping[str, str], tmp: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AIGW_", "OPENAI_", "ANTHROPIC_", "OPENROUTER_", "OLLAMA_"))
    }
    env["AIGW_DATABASE_URL"] = f"sqlite:///{tmp / 'gateway.db'}"
    env["AIGW_LOG_LEVEL"] = "info"
    env.update(extra)
    return env


def _with_cache_off(tmp: Path, args: list[str], name: str) -> list[str]:
    """Most tests count upstream calls, so the response cache (on by default) is switched off unless a
    test asks for it or its own config file has a `cache:` section."""
    args = list(args)
    if "--config" in args:
        i = args.index("--config") + 1
        text = Path(args[i]).read_text()
        if "cache:" in text:
            return args
        path = tmp / f"{name}-nocache.yaml"
        path.write_text(text + "\ncache: {enabled: false}\n")
        args[i] = str(path)
        return args
    path = tmp / f"{name}-nocache.yaml"
    path.write_text("cache: {enabled: false}\n")
    return [*args, "--config", str(path)]


def start_gateway(
    tmp: Path,
    env: Mapping[str, str],
    args: list[str] | None = None,
    name: str = "gateway",
    cache: bool = False,
) -> Proc:
    port = free_port()
    log_path = tmp / f"{name}.log"
    args = list(args or []) if cache else _with_cache_off(tmp, args or [], name)
    popen = subprocess.Popen(
        [sys.executable, "-m", "ai_gateway", "serve", "--port", str(port), *args],
        env=gateway_env(env, tmp),
        cwd=tmp,
        stdout=log_path.open("ab"),
        stderr=subprocess.STDOUT,
    )
    proc = Proc(popen, port, log_path)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            raise RuntimeError(f"gateway exited early: {proc.log()}")
        try:
            with urllib.request.urlopen(proc.url + "/healthz", timeout=1) as resp:
                if resp.status == 200:
                    return proc
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.05)
    proc.stop()
    raise RuntimeError(f"gateway did not become healthy: {proc.log()}")


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def http(
    method: str,
    url: str,
    body: Any = None,
    headers: Mapping[str, str] | None = None,
    raw: bytes | None = None,
    timeout: float = 30,
) -> Reply:
    """One HTTP call with urllib; error statuses are returned, not raised."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    hdrs = {"content-type": "application/json"} if data is not None else {}
    hdrs.update(headers or {})
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return Reply(resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read())
    except urllib.error.HTTPError as err:
        return Reply(err.code, {k.lower(): v for k, v in err.headers.items()}, err.read())


def sse_events(body: bytes) -> list[str]:
    """The `data:` payloads of an SSE body, in order."""
    return [line[6:] for line in body.decode().split("\n") if line.startswith("data: ")]
