"""Content-addressed caches of validated LLM answers: the `AnswerCache` protocol and its stores.

The engine needs only `AnswerCache` (get and put entries by request key), so any store fits: the
persistent `LLMCache` (SQLite, WAL) of a run, or a `MemoryCache` (a worker without a disk, a test).
`LLMCache.merge(other)` copies another cache file's answers in (a Ray worker's cache after its
partition), keeping what is already there, so merging twice changes nothing.

The key is a hash of everything that determines an answer (backend, model identity, template
version, rendered messages, output schema, sampling), so a changed prompt or model can never be
served a stale answer, and re-running an unchanged batch makes zero model calls. Rows are only
ever inserted (`INSERT OR IGNORE`): a resumed or concurrent run cannot duplicate or overwrite an
answer. WAL mode lets several processes read while one writes; writers wait on a busy timeout.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from recgpt.llm.types import ChatMessage, SamplingParams

KEY_VERSION = 1  # bump when the key recipe changes, so old rows are simply never hit
_SQL_VARS = 500  # stay well under SQLite's bound-parameter limit

_SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS llm_cache (
    key TEXT PRIMARY KEY,
    backend TEXT NOT NULL,
    model_id TEXT NOT NULL,
    template TEXT,
    stage TEXT,
    value_json TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    latency_s REAL NOT NULL,
    attempts INTEGER NOT NULL,
    created_at REAL NOT NULL
) WITHOUT ROWID;
"""


def canonical_json(obj: Any) -> str:
    """Deterministic JSON text: sorted keys, no whitespace, unicode kept."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def cache_key(
    *,
    backend: str,
    model_id: str,
    template: str | None,
    messages: Sequence[ChatMessage],
    schema_json: str | None,
    sampling: SamplingParams,
) -> str:
    """sha256 of the canonical JSON of every input that determines the answer.

    `schema_json` is the canonical schema text (see `schema.schema_json_for`), passed as text so a
    batch does not re-serialise the same schema for every request.
    """
    payload = canonical_json(
        {
            "v": KEY_VERSION,
            "backend": backend,
            "model_id": model_id,
            "template": template,
            "messages": [[m.role, m.content] for m in messages],
            "sampling": sampling.model_dump(mode="json"),
        }
    )
    h = hashlib.sha256(payload.encode())
    h.update(b"\x00schema\x00")
    h.update((schema_json or "null").encode())
    return h.hexdigest()


@dataclass(frozen=True)
class CacheEntry:
    """One cached, already-validated answer and what producing it cost."""

    key: str
    value_json: str
    backend: str
    model_id: str
    template: str | None = None
    stage: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    attempts: int = 1
    created_at: float = 0.0


_COLUMNS = (
    "key, value_json, backend, model_id, template, stage, prompt_tokens, completion_tokens, "
    "latency_s, attempts, created_at"
)


@runtime_checkable
class AnswerCache(Protocol):
    """What `LLMEngine` needs of a cache: entries by request key, inserts that never overwrite."""

    def get_many(self, keys: Iterable[str]) -> dict[str, CacheEntry]:
        """The cached entries among `keys` (missing keys are absent from the result)."""
        ...

    def put_many(self, entries: Iterable[CacheEntry]) -> int:
        """Insert entries; an existing key keeps its answer. Returns how many were new."""
        ...

    def close(self) -> None:
        """Release the store (the engine closes the cache it owns)."""
        ...


class MemoryCache:
    """An `AnswerCache` in a dict: for a worker without a disk, or a test. Same insert-only rule."""

    def __init__(self, entries: Iterable[CacheEntry] = ()) -> None:
        self._entries: dict[str, CacheEntry] = {}
        self.put_many(entries)

    def get_many(self, keys: Iterable[str]) -> dict[str, CacheEntry]:
        return {k: self._entries[k] for k in dict.fromkeys(keys) if k in self._entries}

    def get(self, key: str) -> CacheEntry | None:
        return self._entries.get(key)

    def put_many(self, entries: Iterable[CacheEntry]) -> int:
        now, before = time.time(), len(self._entries)
        for e in entries:
            if e.key not in self._entries:
                self._entries[e.key] = e if e.created_at else dataclasses.replace(e, created_at=now)
        return len(self._entries) - before

    def entries(self) -> Iterator[CacheEntry]:
        """Every entry, in insertion order (what a worker ships back to be merged)."""
        return iter(list(self._entries.values()))

    def merge(self, other: LLMCache | MemoryCache) -> int:
        """Copy another cache's answers in (insert-only, so idempotent); returns entries added."""
        return self.put_many(other.entries())

    def __len__(self) -> int:
        return len(self._entries)

    def close(self) -> None:
        """Nothing to release: the entries stay readable."""


class LLMCache:
    """SQLite-backed answer cache, safe to share between threads and processes."""

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout_s: float = 60.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._busy_timeout_s = busy_timeout_s
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = -1
        self._connect()

    def __getstate__(self) -> dict[str, Any]:
        """Pickled as its path (a Ray task, a spawned process): the copy opens its own connection."""
        return {"path": self.path, "busy_timeout_s": self._busy_timeout_s}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path, self._busy_timeout_s = state["path"], state["busy_timeout_s"]
        self._lock, self._conn, self._pid = threading.Lock(), None, -1

    def _connect(self) -> sqlite3.Connection:
        # A connection must not cross a fork: reopen when used from a child process.
        if self._conn is None or self._pid != os.getpid():
            conn = sqlite3.connect(
                self.path, timeout=self._busy_timeout_s, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # durable across process kills in WAL mode
            conn.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_s * 1000)}")
            conn.execute(_SCHEMA_SQL)
            self._conn, self._pid = conn, os.getpid()
        return self._conn

    def get_many(self, keys: Iterable[str]) -> dict[str, CacheEntry]:
        """The cached entries among `keys` (missing keys are absent from the result)."""
        wanted = list(dict.fromkeys(keys))
        found: dict[str, CacheEntry] = {}
        with self._lock:
            conn = self._connect()
            for start in range(0, len(wanted), _SQL_VARS):
                part = wanted[start : start + _SQL_VARS]
                marks = ",".join("?" * len(part))
                rows = conn.execute(f"SELECT {_COLUMNS} FROM llm_cache WHERE key IN ({marks})", part)
                for row in rows:
                    found[row[0]] = CacheEntry(*row)
        return found

    def get(self, key: str) -> CacheEntry | None:
        return self.get_many([key]).get(key)

    def put_many(self, entries: Iterable[CacheEntry]) -> int:
        """Insert entries in one transaction; existing keys are kept. Returns rows inserted."""
        now = time.time()
        rows = [
            (
                e.key,
                e.value_json,
                e.backend,
                e.model_id,
                e.template,
                e.stage,
                e.prompt_tokens,
                e.completion_tokens,
                e.latency_s,
                e.attempts,
                e.created_at or now,
            )
            for e in entries
        ]
        if not rows:
            return 0
        with self._lock:
            conn = self._connect()
            conn.execute("BEGIN IMMEDIATE")
            try:
                before = conn.total_changes
                conn.executemany(
                    f"INSERT OR IGNORE INTO llm_cache ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows
                )
                inserted = conn.total_changes - before
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return inserted

    def entries(self) -> Iterator[CacheEntry]:
        """Every entry, oldest first (read in one go: safe while others write)."""
        with self._lock:
            rows = (
                self._connect()
                .execute(f"SELECT {_COLUMNS} FROM llm_cache ORDER BY created_at, key")
                .fetchall()
            )
        return iter([CacheEntry(*row) for row in rows])

    def merge(self, other: LLMCache | MemoryCache | str | os.PathLike[str]) -> int:
        """Copy another cache's answers in (a worker's cache file or cache object); returns rows added.

        Insert-only like every write: a key already here keeps its answer, so merging the same cache
        twice (or a cache into itself) adds nothing. A file is read by SQLite directly, in one
        transaction; it must exist and be an answer cache.
        """
        if not isinstance(other, (LLMCache, str, os.PathLike)):
            return self.put_many(other.entries())
        path = Path(other.path if isinstance(other, LLMCache) else other)
        if not path.is_file():
            raise FileNotFoundError(f"no LLM cache file at {path}")
        if path.resolve() == self.path.resolve():
            return 0
        with self._lock:
            conn = self._connect()
            conn.execute("ATTACH DATABASE ? AS other", (str(path),))
            try:
                found = conn.execute(
                    "SELECT 1 FROM other.sqlite_master WHERE type = 'table' AND name = 'llm_cache'"
                ).fetchone()
                if found is None:
                    raise ValueError(f"{path} is not an LLM cache (no llm_cache table)")
                conn.execute("BEGIN IMMEDIATE")
                try:
                    before = conn.total_changes
                    conn.execute(
                        f"INSERT OR IGNORE INTO main.llm_cache ({_COLUMNS}) SELECT {_COLUMNS} FROM other.llm_cache"
                    )
                    inserted = conn.total_changes - before
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            finally:
                conn.execute("DETACH DATABASE other")
        return inserted

    def __len__(self) -> int:
        with self._lock:
            return int(self._connect().execute("SELECT COUNT(*) FROM llm_cache").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None

    def __enter__(self) -> LLMCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
