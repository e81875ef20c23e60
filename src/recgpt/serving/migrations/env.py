"""Alembic environment for the serving store.

`Store.open` runs `alembic upgrade head` programmatically and hands its own connection in through
`config.attributes["connection"]`, already inside a transaction that holds the database's write lock
(SQLite: BEGIN IMMEDIATE; PostgreSQL: an advisory lock), so two processes opening the same store upgrade
it once. Run by hand (`alembic -x url=... upgrade head` with `script_location` set to this folder), it
connects to `sqlalchemy.url` or `-x url=...` itself.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from recgpt.serving.store_schema import metadata

config = context.config


def _url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no database: pass -x url=... or set sqlalchemy.url")
    return url


def run_offline() -> None:
    """Write the SQL to stdout instead of running it (`alembic upgrade head --sql`)."""
    context.configure(url=_url(), target_metadata=metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    """Run against the connection `Store.open` passed in, or a fresh one from the URL."""
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=metadata)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(_url())
    try:
        with engine.begin() as conn:
            context.configure(connection=conn, target_metadata=metadata)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
