"""Opening the store's database: URL checks, engine settings per dialect, migrations, error translation.

Kept apart from `store.py` (what the store does) because this is about how a database is reached:
- SQLite: WAL (readers never wait for the writer), synchronous=FULL (a committed event is on disk
  before the server answers), busy_timeout, foreign keys; write transactions start with
  `BEGIN IMMEDIATE` so two writers queue at BEGIN instead of deadlocking half-way.
- PostgreSQL through psycopg 3 (`postgresql://` means `postgresql+psycopg://`).
- `alembic upgrade head` on open, one process at a time (SQLite's write lock, a PG advisory lock).
Errors name the URL with its password masked.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, func, select
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, InterfaceError, NoSuchModuleError, OperationalError

from recgpt.data.errors import DataError

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
BUSY_TIMEOUT_S = 30.0  # how long a SQLite writer waits for the write lock before giving up
CONNECT_TIMEOUT_S = 10  # PostgreSQL: an unreachable server fails within this
PG_MIGRATION_LOCK = 0x7265636770740E  # advisory lock key: one `alembic upgrade` at a time per database
WRITE_OPTION = "recgpt_write"  # execution option: False for read-only transactions (SQLite: plain BEGIN)


class StoreError(DataError):
    """The store cannot be opened or used: a malformed URL, an unreachable or broken database."""


class StoreUnavailable(StoreError):
    """The database went away or stayed locked while in use; retrying later may succeed (HTTP 503)."""


def masked(url: str | URL) -> str:
    """The URL as it may appear in logs and errors: any password replaced by ***."""
    if isinstance(url, URL):
        return url.render_as_string(hide_password=True)
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):  # not parseable: mask whatever sits between "user:" and "@"
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)
    return url if parsed.password is None else parsed.render_as_string(hide_password=True)


def normalise(url: str) -> URL:
    """Parse the URL and pick the driver: SQLite files, PostgreSQL through psycopg 3."""
    shown = masked(url)
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise StoreError(
            f"malformed store URL {shown!r}: expected sqlite:///PATH or postgresql://..."
        ) from exc
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            raise StoreError(f"store URL {shown!r} names no file: use sqlite:///PATH/serving.db")
        return parsed.set(drivername="sqlite+pysqlite")
    if backend in ("postgresql", "postgres"):
        driver = parsed.drivername.partition("+")[2]
        if driver not in ("", "psycopg"):
            raise StoreError(f"store URL {shown!r}: only the psycopg driver (postgresql://) is supported")
        return parsed.set(drivername="postgresql+psycopg")
    raise StoreError(f"store URL {shown!r}: unsupported database '{backend}' (sqlite or postgresql)")


def _set_wal(cur: Any, tries: int = 100) -> None:
    """`PRAGMA journal_mode = WAL`, retried: while another connection switches a new file to WAL,
    SQLite answers "database is locked" at once, without calling the busy handler."""
    import sqlite3

    for attempt in range(tries):
        try:
            cur.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == tries - 1:
                raise
            time.sleep(0.05)


def _sqlite_engine(url: URL) -> Engine:
    """A SQLite engine whose write transactions take the write lock at BEGIN."""
    engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_S})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # pysqlite's own BEGIN is deferred; ours comes from "begin"
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        _set_wal(cur)
        cur.execute("PRAGMA synchronous = FULL")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get(WRITE_OPTION, True)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def _reason(exc: DBAPIError) -> str:
    """The driver's first line (`unable to open database file`, `connection refused`, ...)."""
    text = str(exc.orig if exc.orig is not None else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def connect(url: str) -> Engine:
    """An engine on `url` with the schema at the newest migration; StoreError naming the URL if not."""
    parsed = normalise(url)
    try:
        if parsed.get_backend_name() == "sqlite":
            engine = _sqlite_engine(parsed)
        else:
            engine = create_engine(
                parsed, pool_pre_ping=True, connect_args={"connect_timeout": CONNECT_TIMEOUT_S}
            )
    except (ArgumentError, NoSuchModuleError, ImportError) as exc:
        raise StoreError(f"cannot use store {masked(url)!r}: {exc}") from exc
    try:
        _upgrade(engine)
    except DBAPIError as exc:
        engine.dispose()
        raise StoreError(f"cannot open store {masked(url)!r}: {_reason(exc)}") from exc
    except BaseException:
        engine.dispose()
        raise
    return engine


def _upgrade(engine: Engine) -> None:
    """`alembic upgrade head` on our own connection, inside one transaction holding the lock."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:  # SQLite: BEGIN IMMEDIATE holds the write lock throughout
        if engine.dialect.name == "postgresql":
            conn.execute(select(func.pg_advisory_xact_lock(PG_MIGRATION_LOCK)))
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


@contextmanager
def transaction(engine: Engine, url: str, *, write: bool) -> Iterator[Connection]:
    """One transaction, committed on success; a lost or locked database becomes StoreUnavailable."""
    try:
        with engine.connect() as conn:
            if not write:
                conn.execution_options(**{WRITE_OPTION: False})
            with conn.begin():
                yield conn
    except (OperationalError, InterfaceError) as exc:
        raise StoreUnavailable(f"store {masked(url)!r} unavailable: {_reason(exc)}") from exc
