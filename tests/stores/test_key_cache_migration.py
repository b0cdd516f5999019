"""Migration 0003 (the per-key cache switch) on SQLite and PostgreSQL: keys issued before it keep the
cache on, the switch round-trips through the store, and the migration downgrades cleanly."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import create_engine, inspect, text

from ai_gateway.stores import migrate
from ai_gateway.stores.sql import SqlStore, engine_url
from tests.services import Postgres


def _to(url: str, revision: str, down: bool = False) -> None:
    engine = create_engine(engine_url(url))
    config = migrate._config()
    try:
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            (command.downgrade if down else command.upgrade)(config, revision)
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'keys.db'}"
    postgres: Postgres = request.getfixturevalue("postgres")
    return postgres.new_database()


def test_keys_from_before_the_switch_keep_the_cache(url: str) -> None:
    _to(url, "0002")
    engine = create_engine(engine_url(url))
    now = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO tenants (id, name, created_at) VALUES ('ten_old', 'old', :now)"), {"now": now}
        )
        conn.execute(
            text(
                "INSERT INTO api_keys (id, tenant_id, name, key_hash, key_prefix, key_last4, scopes, created_at) "
                "VALUES ('key_old', 'ten_old', 'old', 'h', 'sk-aigw-', 'abcd', 'chat', :now)"
            ),
            {"now": now},
        )
    store = SqlStore(url)
    try:
        assert store.upgrade()[0] == "0002"  # to head, through 0003
        key = store.get_key("key_old")
        assert key is not None and key.cache is True
        updated = store.update_key("key_old", {"cache": False})
        assert updated is not None and updated.cache is False
    finally:
        store.close()
    _to(url, "0002", down=True)
    assert "cache" not in {c["name"] for c in inspect(engine).get_columns("api_keys")}
    engine.dispose()
