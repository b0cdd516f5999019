"""The per-key response-cache switch: `api_keys.cache`, true unless the key opts out.

Existing keys keep the behaviour they had (the cache applies), hence the server default.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("api_keys", sa.Column("cache", sa.Boolean, nullable=False, server_default=sa.true()))


def downgrade() -> None:
    # Batch mode: SQLite before 3.35 cannot drop a column in place.
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("cache")
