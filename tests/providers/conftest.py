"""One mock upstream process for the provider integration tests (it speaks all four wire formats on one
port). It is started once per session and stopped by its own PID."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import Mock, start_mock


@pytest.fixture(scope="session")
def mock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mock]:
    proc = start_mock(tmp_path_factory.mktemp("providers"), "providers-mock")
    yield proc
    proc.stop()  # SIGTERM to this process's PID, SIGKILL if it lingers


@pytest.fixture
def upstream(mock: Mock) -> Iterator[Mock]:
    """The mock with its counters, log and fault directives reset around the test."""
    mock.reset()
    yield mock
    mock.reset()
