"""A migrated ledger database on each backend: a SQLite file, and a fresh PostgreSQL database."""

from __future__ import annotations

from pathlib import Path

import pytest

from ai_gateway.stores.sql import SqlStore


@pytest.fixture(params=["sqlite", "postgres"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'ledger.db'}"
    else:
        url = request.getfixturevalue("postgres").new_database()
    store = SqlStore(url)
    store.upgrade()
    store.close()
    return url
