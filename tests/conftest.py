"""Shared fixtures: one set of mock upstreams (one process per provider) and one gateway for the session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.services import Postgres, Redis, start_postgres, start_redis
from tests.support import Proc, Upstreams, start_gateway, start_upstreams


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("aigw")


@pytest.fixture(scope="session")
def upstreams(workdir: Path) -> Iterator[Upstreams]:
    ups = start_upstreams(workdir)
    yield ups
    for mock in ups.mocks.values():
        mock.stop()


@pytest.fixture(scope="session")
def gateway(workdir: Path, upstreams: Upstreams) -> Iterator[Proc]:
    proc = start_gateway(workdir, upstreams.env())
    yield proc
    proc.stop()


@pytest.fixture
def mocks(upstreams: Upstreams) -> Iterator[Upstreams]:
    """The upstreams, reset before and after the test (counters, logs and instance faults)."""
    upstreams.reset()
    yield upstreams
    upstreams.reset()


# --- PostgreSQL and Redis for the auth tests (tests/services.py) ----------------------------------------


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A PostgreSQL server; `postgres.new_database()` gives a fresh database, dropped at session end."""
    server = start_postgres()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[Redis]:
    server = start_redis()
    yield server
    server.stop()
