"""The serving store: posted events, versioned recommendation lists and the nearline refresh queue.

One class over SQLAlchemy Core for both databases: SQLite (the embedded default, a file next to the
run) and PostgreSQL (several servers and workers sharing one store). Every write is one transaction,
committed before the method returns, so an acknowledged event survives a crash (SQLite runs in WAL
mode with synchronous=FULL).

    store = Store.open(None, run_dir=Path("runs/quickstart"))      # sqlite:///runs/quickstart/serving.db
    store.add_events([EventIn(event_id=1, user_id="7", item_id="42", behavior="click", timestamp=...)])
    for claim in store.claim(limit=4):                              # what a nearline worker does
        store.put_list(claim.user_id, refresher.refresh(claim.user_id, store.user_events(claim.user_id)),
                       source="nearline")
        store.finish(claim)

Concurrency: posting is idempotent by `event_id` through `INSERT ... ON CONFLICT DO NOTHING` (a race
between two posts of the same event writes it once), claims use `FOR UPDATE SKIP LOCKED` on PostgreSQL
and write transactions that take SQLite's write lock up front (`BEGIN IMMEDIATE`), so two workers never
claim the same user.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, delete, event, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

from recgpt.data.errors import DataError
from recgpt.data.schema import EVENT_SCHEMA
from recgpt.serving.events import EventIn, event_rows
from recgpt.serving.store_schema import events, list_heads, lists, refresh_queue

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
SQLITE_FILE = "serving.db"
BUSY_TIMEOUT_S = 30.0  # how long a SQLite writer waits for the write lock before giving up
CONNECT_TIMEOUT_S = 10  # PostgreSQL: an unreachable server fails open() within this
KEEP_VERSIONS = 10  # older list versions of a user are pruned when a new one is written
CHUNK = 500  # rows per multi-row statement (well under SQLite's bound-parameter limit)
PG_MIGRATION_LOCK = 0x7265636770740E  # advisory lock key: one `alembic upgrade` at a time per database
SOURCES = ("run", "nearline", "fallback")


class StoreError(DataError):
    """The store cannot be opened or used: a malformed URL, an unreachable or broken database."""


@dataclass(frozen=True)
class IngestResult:
    """What `add_events` did: new events written, repeats ignored, users queued for a refresh."""

    accepted: int
    duplicates: int
    users: list[str]


@dataclass(frozen=True)
class StoredList:
    """One version of a user's list; `items` are `Recommendation.model_dump(mode="json")` dicts."""

    user_id: str
    version: int
    created_at: float
    source: str
    items: list[dict]


@dataclass(frozen=True)
class Claim:
    """A worker's hold on one queued user, at the queue generation it saw."""

    user_id: str
    generation: int
    first_event_at: float


def masked(url: str | URL) -> str:
    """The URL as it may appear in logs and errors: any password replaced by ***."""
    if isinstance(url, URL):
        return url.render_as_string(hide_password=True)
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):  # not parseable: mask whatever sits between "user:" and "@"
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)
    return url if parsed.password is None else parsed.render_as_string(hide_password=True)


def _normalise(url: str) -> URL:
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


def _sqlite_engine(url: URL) -> Engine:
    """A SQLite engine whose write transactions take the write lock at BEGIN (no upgrade deadlocks)."""
    engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_S})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # pysqlite's own BEGIN is deferred; we emit ours in "begin"
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        cur.execute("PRAGMA journal_mode = WAL")
        cur.execute("PRAGMA synchronous = FULL")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get("recgpt_write", True)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


class Store:
    """Events, lists and the refresh queue in one database; safe to share between threads."""

    def __init__(self, engine: Engine, url: str) -> None:
        self._engine = engine
        self.url = url  # the URL to reopen this store with (it may hold a password: log `masked_url`)
        self.masked_url = masked(url)
        self.dialect: str = engine.dialect.name
        self._insert = sqlite.insert if self.dialect == "sqlite" else postgresql.insert

    # ---- opening -------------------------------------------------------------------------------------

    @classmethod
    def open(cls, url: str | None, *, run_dir: Path | None = None) -> Store:
        """Connect, bring the schema to the newest migration, and return the store.

        `url` None means the run's own SQLite file, `run_dir/serving.db`.
        """
        if url is None:
            if run_dir is None:
                raise StoreError("no store: pass a URL or the run folder to keep serving.db in")
            url = f"sqlite:///{Path(run_dir).resolve() / SQLITE_FILE}"
        parsed = _normalise(url)
        try:
            if parsed.get_backend_name() == "sqlite":
                engine = _sqlite_engine(parsed)
            else:
                engine = create_engine(
                    parsed, pool_pre_ping=True, connect_args={"connect_timeout": CONNECT_TIMEOUT_S}
                )
        except (ArgumentError, NoSuchModuleError, ImportError) as exc:
            raise StoreError(f"cannot use store {masked(url)!r}: {exc}") from exc
        store = cls(engine, url)
        try:
            store._upgrade()
        except DBAPIError as exc:
            engine.dispose()
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
            raise StoreError(f"cannot open store {store.masked_url!r}: {reason}") from exc
        except BaseException:
            engine.dispose()
            raise
        return store

    def _upgrade(self) -> None:
        """`alembic upgrade head` on our own connection, one process at a time."""
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with self._engine.begin() as conn:  # SQLite: BEGIN IMMEDIATE holds the write lock throughout
            if self.dialect == "postgresql":
                conn.execute(select(func.pg_advisory_xact_lock(PG_MIGRATION_LOCK)))
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    def close(self) -> None:
        """Release the connections (the data is already committed)."""
        self._engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self.masked_url!r})"

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self._engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._engine.connect() as conn:
            conn.execution_options(recgpt_write=False)
            with conn.begin():
                yield conn

    # ---- events --------------------------------------------------------------------------------------

    def add_events(self, batch: Sequence[EventIn]) -> IngestResult:
        """Write new events and queue their users, in one transaction committed before returning.

        An event whose `event_id` is already stored (or repeated in the batch) counts as a duplicate and
        is not written again; sorted keys keep concurrent posts from deadlocking on PostgreSQL.
        """
        now = time.time()
        rows = sorted(event_rows(batch, now), key=lambda r: r["event_id"])
        inserted: set[int] = set()
        with self._write() as conn:
            for start in range(0, len(rows), CHUNK):
                stmt = (
                    self._insert(events)
                    .values(rows[start : start + CHUNK])
                    .on_conflict_do_nothing(index_elements=["event_id"])
                    .returning(events.c.event_id)
                )
                inserted.update(conn.execute(stmt).scalars())
            users = sorted({r["user_id"] for r in rows if r["event_id"] in inserted})
            for start in range(0, len(users), CHUNK):
                ins = self._insert(refresh_queue).values(
                    [
                        {"user_id": u, "generation": 1, "first_event_at": now, "attempts": 0}
                        for u in users[start : start + CHUNK]
                    ]
                )
                conn.execute(
                    ins.on_conflict_do_update(
                        index_elements=["user_id"], set_={"generation": refresh_queue.c.generation + 1}
                    )
                )
        return IngestResult(accepted=len(inserted), duplicates=len(batch) - len(inserted), users=users)

    def user_events(self, user_id: str) -> list[dict]:
        """The user's stored events in EVENT_SCHEMA columns, oldest first (timestamp, then event_id)."""
        cols = [events.c[name] for name in EVENT_SCHEMA]
        stmt = (
            select(*cols).where(events.c.user_id == user_id).order_by(events.c.timestamp, events.c.event_id)
        )
        with self._read() as conn:
            return [dict(row._mapping) for row in conn.execute(stmt)]

    def count_events(self) -> int:
        """How many events are stored."""
        with self._read() as conn:
            return int(conn.execute(select(func.count()).select_from(events)).scalar_one())

    # ---- lists ---------------------------------------------------------------------------------------

    def current_list(self, user_id: str) -> StoredList | None:
        """The user's newest list, or None when none was ever written."""
        stmt = (
            select(lists.c.version, lists.c.created_at, lists.c.source, lists.c["items"])
            .where(lists.c.user_id == user_id)
            .order_by(lists.c.version.desc())
            .limit(1)
        )
        with self._read() as conn:
            row = conn.execute(stmt).first()
        if row is None:
            return None
        return StoredList(
            user_id, int(row.version), float(row.created_at), row.source, json.loads(row._mapping["items"])
        )

    def put_list(self, user_id: str, items: list[dict], source: str) -> StoredList:
        """Write a new version of the user's list (previous version + 1, or 1) and return it."""
        _check_source(source)
        payload = json.dumps(items, ensure_ascii=False, separators=(",", ":"))
        now = time.time()
        with self._write() as conn:
            head = (
                self._insert(list_heads)
                .values(user_id=user_id, version=1, created_at=now)
                .on_conflict_do_update(
                    index_elements=["user_id"],
                    set_={"version": list_heads.c.version + 1, "created_at": now},
                )
                .returning(list_heads.c.version)
            )
            version = int(conn.execute(head).scalar_one())
            conn.execute(
                lists.insert().values(
                    user_id=user_id, version=version, created_at=now, source=source, items=payload
                )
            )
            if version > KEEP_VERSIONS:
                conn.execute(
                    delete(lists).where(
                        lists.c.user_id == user_id, lists.c.version <= version - KEEP_VERSIONS
                    )
                )
        return StoredList(user_id, version, now, source, items)

    def seed_lists(self, seeds: Mapping[str, list[dict]], source: str = "run") -> int:
        """Write version 1 for every user that has no list yet; users with one keep theirs.

        Several servers starting at once may all seed: the head row decides who writes each user.
        """
        _check_source(source)
        now = time.time()
        users = sorted(seeds)
        written = 0
        with self._write() as conn:
            for start in range(0, len(users), CHUNK):
                part = users[start : start + CHUNK]
                heads = (
                    self._insert(list_heads)
                    .values([{"user_id": u, "version": 1, "created_at": now} for u in part])
                    .on_conflict_do_nothing(index_elements=["user_id"])
                    .returning(list_heads.c.user_id)
                )
                new = sorted(conn.execute(heads).scalars())
                if not new:
                    continue
                conn.execute(
                    lists.insert(),
                    [
                        {
                            "user_id": u,
                            "version": 1,
                            "created_at": now,
                            "source": source,
                            "items": json.dumps(seeds[u], ensure_ascii=False, separators=(",", ":")),
                        }
                        for u in new
                    ],
                )
                written += len(new)
        return written

    def versions_since(self, after: float) -> dict[str, tuple[int, float]]:
        """user -> (version, created_at) of each user whose current list was written after `after`.

        `created_at` is stamped when the write starts, so a transaction that began earlier can commit
        later: a poller should ask with some overlap (its previous poll's start minus a few seconds).
        """
        stmt = select(list_heads.c.user_id, list_heads.c.version, list_heads.c.created_at).where(
            list_heads.c.created_at > after
        )
        with self._read() as conn:
            return {r.user_id: (int(r.version), float(r.created_at)) for r in conn.execute(stmt)}

    # ---- refresh queue -------------------------------------------------------------------------------

    def claim(self, limit: int = 1, *, stale_after_s: float = 300.0) -> list[Claim]:
        """Claim up to `limit` queued users, oldest events first, for this worker alone.

        A claim older than `stale_after_s` (its worker died) can be claimed again.
        """
        now = time.time()
        q = refresh_queue.c
        stmt = (
            select(q.user_id, q.generation, q.first_event_at)
            .where(
                (q.claimed_generation.is_(None)) | (q.claimed_at < now - stale_after_s),
                (q.not_before.is_(None)) | (q.not_before <= now),
            )
            .order_by(q.first_event_at, q.user_id)
            .limit(limit)
        )
        if self.dialect == "postgresql":
            stmt = stmt.with_for_update(skip_locked=True)
        with self._write() as conn:
            rows = conn.execute(stmt).all()
            for r in rows:
                conn.execute(
                    update(refresh_queue)
                    .where(q.user_id == r.user_id)
                    .values(claimed_generation=r.generation, claimed_at=now)
                )
        return [Claim(r.user_id, int(r.generation), float(r.first_event_at)) for r in rows]

    def finish(self, claim: Claim) -> None:
        """The user's list was refreshed: dequeue them, unless events arrived since the claim.

        Then the claim is released instead, and the queue age restarts at the claim's time (the newer
        events arrived after it), so the user is refreshed again.
        """
        q = refresh_queue.c
        with self._write() as conn:
            done = conn.execute(
                delete(refresh_queue).where(q.user_id == claim.user_id, q.generation == claim.generation)
            )
            if done.rowcount == 0:
                conn.execute(
                    update(refresh_queue)
                    .where(q.user_id == claim.user_id, q.claimed_generation == claim.generation)
                    .values(
                        claimed_generation=None,
                        claimed_at=None,
                        first_event_at=func.coalesce(q.claimed_at, q.first_event_at),
                        attempts=0,
                        last_error=None,
                        not_before=None,
                    )
                )

    def fail(self, claim: Claim, error: str, *, retry_after_s: float = 0.0) -> None:
        """The refresh failed: release the claim, count the attempt, keep the error for operators.

        `retry_after_s` > 0 keeps the user from being claimed again for that long (a back-off).
        """
        q = refresh_queue.c
        with self._write() as conn:
            conn.execute(
                update(refresh_queue)
                .where(q.user_id == claim.user_id, q.claimed_generation == claim.generation)
                .values(
                    claimed_generation=None,
                    claimed_at=None,
                    attempts=q.attempts + 1,
                    last_error=error[:2000],
                    not_before=time.time() + retry_after_s if retry_after_s > 0 else None,
                )
            )

    def queue_stats(self) -> dict[str, float]:
        """{"pending": users queued, "oldest_age_s": seconds since the oldest unrefreshed event}."""
        q = refresh_queue.c
        with self._read() as conn:
            row = conn.execute(select(func.count(), func.min(q.first_event_at))).one()
        pending, oldest = int(row[0]), row[1]
        return {"pending": float(pending), "oldest_age_s": max(0.0, time.time() - oldest) if oldest else 0.0}

    def queue_entry(self, user_id: str) -> dict[str, Any] | None:
        """The user's refresh-queue row (for operators and tests), or None when not queued."""
        with self._read() as conn:
            row = conn.execute(select(refresh_queue).where(refresh_queue.c.user_id == user_id)).first()
        return dict(row._mapping) if row is not None else None


def _check_source(source: str) -> None:
    if source not in SOURCES:
        raise StoreError(f"unknown list source '{source}' (one of {', '.join(SOURCES)})", field="source")
