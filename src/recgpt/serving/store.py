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

Opening (URL checks, SQLite pragmas, migrations, error messages) lives in `store_db.py`.

Concurrency: posting is idempotent by `event_id` through `INSERT ... ON CONFLICT DO NOTHING` (a race
between two posts of the same event writes it once), claims use `FOR UPDATE SKIP LOCKED` on PostgreSQL
and write transactions that take SQLite's write lock up front (`BEGIN IMMEDIATE`), so two workers never
claim the same user.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from recgpt.data.schema import EVENT_SCHEMA
from recgpt.serving.events import MAX_ID_CHARS, EventIn, event_rows
from recgpt.serving.store_db import StoreError, StoreUnavailable, connect, masked, transaction
from recgpt.serving.store_schema import events, list_heads, lists, refresh_queue

__all__ = ["Claim", "IngestResult", "Store", "StoreError", "StoreUnavailable", "StoredList"]

SQLITE_FILE = "serving.db"
KEEP_VERSIONS = 10  # older list versions of a user are pruned when a new one is written
CHUNK = 500  # rows per multi-row statement (well under SQLite's bound-parameter limit)
SOURCES = ("run", "nearline", "fallback")


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
        return cls(connect(url), url)

    def close(self) -> None:
        """Release the connections (the data is already committed)."""
        self._engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self.masked_url!r})"

    def _write(self) -> AbstractContextManager[Connection]:
        return transaction(self._engine, self.url, write=True)

    def _read(self) -> AbstractContextManager[Connection]:
        return transaction(self._engine, self.url, write=False)

    # ---- events --------------------------------------------------------------------------------------

    def add_events(self, batch: Sequence[EventIn]) -> IngestResult:
        """Write new events and queue their users, in one transaction committed before returning.

        An event whose `event_id` is already stored (or repeated in the batch) counts as a duplicate and
        is not written again; sorted keys keep concurrent posts from deadlocking on PostgreSQL.
        """
        if not batch:
            return IngestResult(accepted=0, duplicates=0, users=[])
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
        payload = _items_json(user_id, items)
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
        payloads = {u: _items_json(u, seeds[u]) for u in users}
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
                            "items": payloads[u],
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


def _items_json(user_id: str, items: list[dict]) -> str:
    """The list as JSON text, refused before any write when it cannot be stored and read back."""
    if not user_id or len(user_id) > MAX_ID_CHARS:
        raise StoreError(
            f"user_id must be 1 to {MAX_ID_CHARS} characters, got {len(user_id)}", field="user_id"
        )
    if not isinstance(items, list) or not all(isinstance(it, dict) for it in items):
        raise StoreError(f"the list of user '{user_id}' must be a list of dicts", field="items")
    try:
        return json.dumps(items, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"the list of user '{user_id}' is not JSON: {exc}", field="items") from exc
