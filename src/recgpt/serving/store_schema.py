"""The serving store's tables (SQLAlchemy Core), the same on SQLite and PostgreSQL.

This is the schema the code reads and writes; the database gets it through the Alembic migrations in
`migrations/versions/`, and `tests/serving/test_store.py` checks that the two agree.

- `events`: every posted event once (the client's `event_id` is the key that makes posts idempotent),
  in the dataset contract's columns plus `received_at` (server clock, seconds).
- `lists`: every user's recommendation lists, one row per version, items as JSON text.
- `list_heads`: each user's current version, so a version bump is one row update and "what changed
  since t" is an index range scan.
- `refresh_queue`: users with events not yet reflected in their list. `generation` counts event batches;
  a worker claims a user at a generation and may only dequeue it if no newer events arrived.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Float, Index, Integer, MetaData, String, Table, Text

ID = String(128)

metadata = MetaData()

events = Table(
    "events",
    metadata,
    Column("event_id", BigInteger, primary_key=True, autoincrement=False),
    Column("user_id", ID, nullable=False),
    Column("item_id", ID, nullable=True),
    Column("query", Text, nullable=True),
    Column("behavior", String(32), nullable=False),
    Column("timestamp", BigInteger, nullable=False),
    Column("value", Float, nullable=True),
    Column("text", Text, nullable=True),
    Column("received_at", Float, nullable=False),
    Index("ix_events_user_time", "user_id", "timestamp", "event_id"),
)

lists = Table(
    "lists",
    metadata,
    Column("user_id", ID, primary_key=True),
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("created_at", Float, nullable=False),
    Column("source", String(16), nullable=False),
    Column("items", Text, nullable=False),
    Index("ix_lists_created_at", "created_at"),
)

list_heads = Table(
    "list_heads",
    metadata,
    Column("user_id", ID, primary_key=True),
    Column("version", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
    Index("ix_list_heads_created_at", "created_at"),
)

refresh_queue = Table(
    "refresh_queue",
    metadata,
    Column("user_id", ID, primary_key=True),
    Column("generation", Integer, nullable=False),
    Column("first_event_at", Float, nullable=False),
    Column("claimed_generation", Integer, nullable=True),
    Column("claimed_at", Float, nullable=True),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("last_error", Text, nullable=True),
    Column("not_before", Float, nullable=True),  # set by a failed refresh that asked for a back-off
    Index("ix_refresh_queue_first_event_at", "first_event_at"),
)
