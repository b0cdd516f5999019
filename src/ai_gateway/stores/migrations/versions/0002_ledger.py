"""The ledger: one row per request (policy/ledger_row.py), columns 1:1 with LEDGER_COLUMNS.

Indexes serve the report queries (a time range, optionally one tenant or one key) and the budget seed
(one key's or one tenant's spend over a calendar window). There is no (model, ts) index: grouping by
model or provider scans the (ts) range, which is what a report over a period reads anyway, and each
extra index is paid on every insert.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ledger",
        sa.Column("request_id", sa.String(128), primary_key=True),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("http_status", sa.SmallInteger, nullable=False),
        sa.Column("endpoint", sa.String(64), nullable=False),
        sa.Column("stream", sa.Boolean, nullable=False),
        sa.Column("tenant_id", sa.String(128)),
        sa.Column("key_id", sa.String(128)),
        sa.Column("route", sa.String(256)),
        sa.Column("provider", sa.String(256)),
        sa.Column("model", sa.String(256)),
        sa.Column("error_class", sa.String(128)),
        sa.Column("input_tokens", sa.BigInteger, nullable=False),
        sa.Column("output_tokens", sa.BigInteger, nullable=False),
        sa.Column("cached_tokens", sa.BigInteger, nullable=False),
        sa.Column("cost_nanos", sa.BigInteger),  # NULL: price unknown, never a silent 0
        sa.Column("cost_saved_nanos", sa.BigInteger, nullable=False),
        sa.Column("price_source", sa.String(32)),
        sa.Column("latency_ms", sa.Integer, nullable=False),
        sa.Column("ttft_ms", sa.Integer),
        sa.Column("cache_hit", sa.Boolean, nullable=False),
        sa.Column("usage_estimated", sa.Boolean, nullable=False),
        sa.Column("attempts", sa.Text, nullable=False),
    )
    op.create_index("ix_ledger_ts", "ledger", ["ts"])
    op.create_index("ix_ledger_tenant_ts", "ledger", ["tenant_id", "ts"])
    op.create_index("ix_ledger_key_ts", "ledger", ["key_id", "ts"])


def downgrade() -> None:
    op.drop_index("ix_ledger_key_ts", "ledger")
    op.drop_index("ix_ledger_tenant_ts", "ledger")
    op.drop_index("ix_ledger_ts", "ledger")
    op.drop_table("ledger")
