"""Real PostgreSQL and Redis for the tests that need them.

- PostgreSQL: the server on 127.0.0.1:5432 (trust auth, user postgres) if it answers; otherwise one of our
  own (initdb + pg_ctl in a temp dir, as the `postgres` OS user when running as root). Each caller gets a
  fresh database `aigw_<random>`; every one is dropped at the end of the session.
- Redis: 127.0.0.1:6379 if it answers PING; otherwise our own `redis-server --save "" --appendonly no` on
  a free port. Gateways namespace their Redis keys by their database's random installation id, so test
  sessions never share keys; `Redis.cleanup()` deletes the namespaces a session used.

A service that cannot be had skips the tests that need it, loudly, except when CI=true: then they fail.
Every process started here is stopped by its own PID.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
import redis

from tests.support import free_port

PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"
REDIS_PORT = 6379


def unavailable(reason: str) -> None:
    """Skip (loudly) outside CI; fail in CI, where every service must be there."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(f"SERVICE MISSING, TESTS NOT RUN: {reason}")


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class Postgres:
    host: str
    port: int
    proc_dir: Path | None = None  # set when we started our own server
    databases: list[str] = field(default_factory=list)

    def url(self, database: str) -> str:
        return f"postgresql://{PG_USER}@{self.host}:{self.port}/{database}"

    def _admin(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(self.url("postgres"), autocommit=True, connect_timeout=5)

    def new_database(self) -> str:
        name = f"aigw_{secrets.token_hex(6)}"
        with self._admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.databases.append(name)
        return self.url(name)

    def stop(self) -> None:
        try:
            with self._admin() as conn:
                for name in self.databases:
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            if self.proc_dir is not None:
                _pg_ctl(self.proc_dir, "stop", "-m", "fast")
                shutil.rmtree(self.proc_dir, ignore_errors=True)


def _pg_bin(name: str) -> str | None:
    for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(candidate)
    return shutil.which(name)


def _as_postgres(cmd: list[str]) -> list[str]:
    # initdb refuses to run as root.
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _pg_ctl(data: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    pg_ctl = _pg_bin("pg_ctl") or "pg_ctl"
    return subprocess.run(
        _as_postgres([pg_ctl, "-D", str(data / "data"), *args]), capture_output=True, timeout=60
    )


def _own_postgres() -> Postgres | None:
    initdb = _pg_bin("initdb")
    if initdb is None:
        return None
    root = Path(tempfile.mkdtemp(prefix="aigw-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    port = free_port()
    init = subprocess.run(
        _as_postgres([initdb, "-D", str(root / "data"), "-U", PG_USER, "--auth=trust", "-E", "UTF8"]),
        capture_output=True,
        timeout=120,
    )
    if init.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        return None
    opts = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={root} -c fsync=off"
    started = _pg_ctl(root, "start", "-w", "-l", str(root / "log"), "-o", opts)
    if started.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        return None
    return Postgres("127.0.0.1", port, proc_dir=root)


def start_postgres() -> Postgres:
    if _listening(PG_HOST, PG_PORT):
        server = Postgres(PG_HOST, PG_PORT)
        try:
            server._admin().close()
            return server
        except psycopg.Error as exc:
            unavailable(f"PostgreSQL on {PG_HOST}:{PG_PORT} refused user {PG_USER}: {exc}")
    own = _own_postgres()
    if own is None:
        unavailable(f"no PostgreSQL on {PG_HOST}:{PG_PORT} and none could be started (initdb/pg_ctl)")
    assert own is not None
    return own


@dataclass
class Redis:
    port: int
    popen: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def cleanup(self, namespaces: list[str]) -> None:
        client = self.client()
        for ns in namespaces:
            keys = list(client.scan_iter(match=f"aigw:{ns}:*"))
            if keys:
                client.delete(*keys)
        client.close()

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.terminate()
            self.popen.wait(timeout=10)


def start_redis() -> Redis:
    shared = Redis(REDIS_PORT)
    if _listening("127.0.0.1", REDIS_PORT):
        try:
            if shared.client().ping():
                return shared
        except redis.RedisError:
            pass
    binary = shutil.which("redis-server")
    if binary is None:
        unavailable("no Redis on 127.0.0.1:6379 and no redis-server binary to start one")
    port = free_port()
    popen = subprocess.Popen(
        [str(binary), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    own = Redis(port, popen)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if own.client().ping():
                return own
        except redis.RedisError:
            time.sleep(0.05)
    own.stop()
    unavailable(f"redis-server on port {port} did not answer")
    raise AssertionError("unreachable")
