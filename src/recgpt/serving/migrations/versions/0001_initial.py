"""The first serving store: events, list versions, list heads, the refresh queue.

A migration is a frozen record of what the schema was at this revision, so it spells the tables out
rather than importing `store_schema` (which will move on); `test_store.py` checks the migrated database
matches `store_schema.metadata`.

Revision ID: 0001
Revises:
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.String(128)


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("event_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("user_id", ID, nullable=False),
        sa.Column("item_id", ID, nullable=True),
        sa.Column("query", sa.Text, nullable=True),
        sa.Column("behavior", sa.String(32), nullable=False),
        sa.Column("timestamp", sa.BigInteger, nullable=False),
        sa.Column("value", sa.Float, nullable=True),
        sa.Column("text", sa.Text, nullable=True),
        sa.Column("received_at", sa.Float, nullable=False),
    )
    op.create_index("ix_events_user_time", "events", ["user_id", "timestamp", "event_id"])
    op.create_table(
        "lists",
        sa.Column("user_id", ID, primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("items", sa.Text, nullable=False),
    )
    op.create_index("ix_lists_created_at", "lists", ["created_at"])
    op.create_table(
        "list_heads",
        sa.Column("user_id", ID, primary_key=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_index("ix_list_heads_created_at", "list_heads", ["created_at"])
    op.create_table(
        "refresh_queue",
        sa.Column("user_id", ID, primary_key=True),
        sa.Column("generation", sa.Integer, nullable=False),
        sa.Column("first_event_at", sa.Float, nullable=False),
        sa.Column("claimed_generation", sa.Integer, nullable=True),
        sa.Column("claimed_at", sa.Float, nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("not_before", sa.Float, nullable=True),
    )
    op.create_index("ix_refresh_queue_first_event_at", "refresh_queue", ["first_event_at"])


def downgrade() -> None:
    for table in ("refresh_queue", "list_heads", "lists", "events"):
        op.drop_table(table)
