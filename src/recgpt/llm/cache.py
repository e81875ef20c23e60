"""Persistent, content-addressed cache of validated LLM answers (SQLite, WAL).

The key is a hash of everything that determines an answer (backend, model identity, template
version, rendered messages, output schema, sampling), so a changed prompt or model can never be
served a stale answer, and re-running an unchanged batch makes zero model calls. Rows are only
ever inserted (`INSERT OR IGNORE`): a resumed or concurrent run cannot duplicate or overwrite an
answer. WAL mode lets several processes read while one writes; writers wait on a busy timeout.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
