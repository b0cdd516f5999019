"""A real Redis for tests, on loopback only.

`shared_redis()` uses a Redis already listening on 127.0.0.1:6379 (tests keep to their own key prefix)
or, failing that, starts one for the session. `start_redis()` always starts a private server, for tests
that flush scripts or kill the server; it is stopped by its own PID, never by name. Without a Redis
and without `redis-server`, tests skip, except under CI=true, where they fail.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import free_port

_DEFAULT = ("127.0.0.1", 6379)
_session: list[RedisServer] = []


@dataclass
class RedisServer:
    port: int
    popen: subprocess.Popen[bytes] | None = None  # None: not ours, never stopped

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def kill(self) -> None:
        """SIGKILL, as a crash would; waits until the port is closed."""
        assert self.popen is not None, "only a server this test started may be killed"
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(timeout=10)

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=5)

    def restart(self) -> None:
        """Start a fresh, empty server on the same port (after `kill`)."""
        assert self.popen is not None
        self.popen = _spawn(self.port)

    def command(self, *args: str) -> bytes:
        """One raw command over a plain socket (for SCRIPT FLUSH, PTTL, a wrong-typed key)."""
        return _command(self.port, *args)


def unique_prefix(tag: str) -> str:
    return f"aigw-test:{tag}:{uuid.uuid4().hex[:12]}:"


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"Redis is required under CI: {reason}")
    pytest.skip(reason)


def _command(port: int, *args: str, timeout: float = 2.0) -> bytes:
    payload = f"*{len(args)}\r\n".encode()
    for arg in args:
        data = arg.encode()
        payload += b"$%d\r\n%s\r\n" % (len(data), data)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(payload)
        return conn.recv(65536)


def _pings(port: int) -> bool:
    try:
        return _command(port, "PING", timeout=0.5).startswith(b"+PONG")
    except OSError:
        return False


def _spawn(port: int) -> subprocess.Popen[bytes]:
    binary = shutil.which("redis-server")
    if binary is None:
        _unavailable("redis-server is not installed (apt-get install redis-server)")
    assert binary is not None
    popen = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=Path(os.environ.get("TMPDIR", "/tmp")),
    )
    deadline = time.monotonic() + 10
    while not _pings(port):
        if popen.poll() is not None or time.monotonic() > deadline:
            popen.kill()
            _unavailable(f"redis-server did not start on port {port}")
        time.sleep(0.02)
    return popen


def start_redis() -> RedisServer:
    """A private server on a free port; the caller stops it (or kills it) by PID."""
    port = free_port()
    return RedisServer(port, _spawn(port))


def shared_redis() -> RedisServer:
    """A server for the whole session: the local default one if it answers, else one started here."""
    if not _session:
        if _pings(_DEFAULT[1]):
            _session.append(RedisServer(_DEFAULT[1]))
        else:
            server = start_redis()
            atexit.register(server.stop)
            _session.append(server)
    return _session[0]
