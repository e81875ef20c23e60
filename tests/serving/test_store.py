"""The serving store on both databases: idempotent events, the refresh queue, list versions, migrations.

Every test runs on SQLite and on a private PostgreSQL cluster (see conftest.py); concurrency tests use
real threads against the real database, and durability kills a writer process with SIGKILL.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy import create_engine, text

from recgpt.serving.events import EventBatch, EventIn, event_rows
from recgpt.serving.store import Store, StoreError
from recgpt.serving.store_schema import metadata

SRC = Path(__file__).resolve().parents[2] / "src"


def ev(event_id: int, user: str = "u1", *, behavior: str = "click", **kw: object) -> EventIn:
    """A valid event; a search carries a query, anything else an item."""
    fields: dict[str, object] = {"event_id": event_id, "user_id": user, "behavior": behavior}
    fields.update({"query": "q"} if behavior == "search" else {"item_id": f"i{event_id}"})
    fields.update({"timestamp": 1_000 + event_id, **kw})
    return EventIn.model_validate(fields)


def run_threads(n: int, target: Callable[[int], None]) -> None:
    """Start n threads at once (a barrier), join them, re-raise the first error."""
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def body(i: int) -> None:
        try:
            barrier.wait()
            target(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    if errors:
        raise errors[0]


# ---- events ------------------------------------------------------------------------------------------


def test_events_are_validated_with_the_field_named() -> None:
    with pytest.raises(ValidationError, match="item_id is required unless behavior is 'search'"):
        EventIn(event_id=1, user_id="u", behavior="click", timestamp=1)
    with pytest.raises(ValidationError, match="query is required when behavior is 'search'"):
        EventIn(event_id=1, user_id="u", behavior="search", timestamp=1)
    with pytest.raises(ValidationError, match="event_id"):
        EventIn(event_id=-1, user_id="u", item_id="i", behavior="click", timestamp=1)
    with pytest.raises(ValidationError, match="user_id"):
        EventIn(event_id=1, user_id="", item_id="i", behavior="click", timestamp=1)
    with pytest.raises(ValidationError, match="text"):
        EventIn(event_id=1, user_id="u", item_id="i", behavior="tag", timestamp=1, text="x" * 2001)
    with pytest.raises(ValidationError, match="colour"):
        EventIn.model_validate(
            {"event_id": 1, "user_id": "u", "item_id": "i", "behavior": "c", "timestamp": 1, "colour": 1}
        )
    with pytest.raises(ValidationError, match="events"):
        EventBatch(events=[])
    ok = EventIn(event_id=1, user_id="u", behavior="search", timestamp=1, query="red shoes")
    rows = event_rows([ok, ok], received_at=5.0)
    assert rows == [dict(ok.model_dump(), received_at=5.0)]


def test_same_batch_twice_is_written_once(fresh_store: Store) -> None:
    batch = [ev(1, "a"), ev(2, "a"), ev(3, "b", behavior="search"), ev(3, "b", behavior="search")]
    first = fresh_store.add_events(batch)
    assert (first.accepted, first.duplicates, first.users) == (3, 1, ["a", "b"])
    again = fresh_store.add_events(batch)
    assert (again.accepted, again.duplicates, again.users) == (0, 4, [])
    assert fresh_store.count_events() == 3
    assert [e["event_id"] for e in fresh_store.user_events("a")] == [1, 2]
    assert fresh_store.user_events("b")[0] == {
        "event_id": 3, "user_id": "b", "item_id": None, "query": "q", "behavior": "search",
        "timestamp": 1003, "value": None, "text": None,
    }  # fmt: skip


def test_user_events_in_time_order_then_event_id(fresh_store: Store) -> None:
    fresh_store.add_events([ev(5, timestamp=10), ev(4, timestamp=20), ev(3, timestamp=10)])
    assert [e["event_id"] for e in fresh_store.user_events("u1")] == [3, 5, 4]


def test_concurrent_overlapping_posts_store_every_event_once(fresh_store: Store) -> None:
    results = []

    def post(i: int) -> None:  # thread i posts ids [20i, 20i+40): each id is posted by two threads
        for start in range(20 * i, 20 * i + 40, 10):
            results.append(fresh_store.add_events([ev(n, f"u{n % 5}") for n in range(start, start + 10)]))

    run_threads(4, post)
    assert fresh_store.count_events() == 100  # ids 0..99
    assert sum(r.accepted for r in results) == 100
    assert sum(r.duplicates for r in results) == 60  # ids 20..79 were posted twice


# ---- the refresh queue -------------------------------------------------------------------------------


def test_event_queues_user_and_finish_dequeues(fresh_store: Store) -> None:
    assert fresh_store.claim() == []
    fresh_store.add_events([ev(1, "a")])
    assert fresh_store.queue_stats()["pending"] == 1
    [claim] = fresh_store.claim(limit=5)
    assert claim.user_id == "a" and claim.generation == 1
    assert fresh_store.claim() == []  # held by the claim
    fresh_store.finish(claim)
    assert fresh_store.queue_stats() == {"pending": 0.0, "oldest_age_s": 0.0}


def test_event_during_refresh_keeps_user_queued(fresh_store: Store) -> None:
    fresh_store.add_events([ev(1, "a")])
    [claim] = fresh_store.claim()
    fresh_store.add_events([ev(2, "a")])  # arrives while the refresh runs
    fresh_store.finish(claim)
    [again] = fresh_store.claim()
    assert again.user_id == "a" and again.generation == 2
    fresh_store.finish(again)
    assert fresh_store.claim() == []


def test_queue_keeps_the_oldest_event_time_and_orders_by_it(fresh_store: Store) -> None:
    fresh_store.add_events([ev(1, "old")])
    first = fresh_store.queue_entry("old")
    time.sleep(0.01)
    fresh_store.add_events([ev(2, "new"), ev(3, "old")])
    entry = fresh_store.queue_entry("old")
    assert entry is not None and first is not None
    assert entry["generation"] == 2 and entry["first_event_at"] == first["first_event_at"]
    assert [c.user_id for c in fresh_store.claim(limit=2)] == ["old", "new"]
    assert fresh_store.queue_stats()["oldest_age_s"] > 0


def test_concurrent_claimers_never_share_a_user(fresh_store: Store) -> None:
    fresh_store.add_events([ev(n, f"u{n}") for n in range(40)])
    claimed: list[list[str]] = [[] for _ in range(4)]

    def work(i: int) -> None:
        while batch := fresh_store.claim(limit=3):
            claimed[i].extend(c.user_id for c in batch)

    run_threads(4, work)
    everyone = [u for part in claimed for u in part]
    assert sorted(everyone) == sorted(f"u{n}" for n in range(40))  # each exactly once


def test_stale_claim_is_claimed_again_and_failure_is_recorded(fresh_store: Store) -> None:
    fresh_store.add_events([ev(1, "a")])
    assert len(fresh_store.claim()) == 1
    assert fresh_store.claim(stale_after_s=60) == []
    time.sleep(0.02)
    [retaken] = fresh_store.claim(stale_after_s=0.01)  # the first worker died
    assert retaken.user_id == "a"
    fresh_store.fail(retaken, "LLM timed out", retry_after_s=60)
    entry = fresh_store.queue_entry("a")
    assert entry is not None and entry["attempts"] == 1 and entry["last_error"] == "LLM timed out"
    assert fresh_store.claim() == []  # backing off
    fresh_store.finish(retaken)
    assert fresh_store.queue_stats()["pending"] == 0


def test_failure_without_backoff_releases_at_once(fresh_store: Store) -> None:
    fresh_store.add_events([ev(1, "a")])
    [claim] = fresh_store.claim()
    fresh_store.fail(claim, "boom")
    [again] = fresh_store.claim()
    assert again.user_id == "a"


# ---- lists -------------------------------------------------------------------------------------------


def test_put_list_bumps_the_version(fresh_store: Store) -> None:
    assert fresh_store.current_list("a") is None
    one = fresh_store.put_list("a", [{"item_id": "x", "rank": 1}], source="run")
    two = fresh_store.put_list("a", [{"item_id": "y", "rank": 1}], source="nearline")
    assert (one.version, two.version) == (1, 2)
    assert fresh_store.current_list("a") == two
    with pytest.raises(StoreError, match="source"):
        fresh_store.put_list("a", [], source="guess")


def test_concurrent_put_list_gives_distinct_versions(fresh_store: Store) -> None:
    versions: list[int] = []
    run_threads(
        4,
        lambda i: versions.extend(
            fresh_store.put_list("a", [{"n": i}], "nearline").version for _ in range(3)
        ),
    )
    assert sorted(versions) == list(range(1, 13))
    current = fresh_store.current_list("a")
    assert current is not None and current.version == 12


def test_seed_lists_writes_only_missing_users_and_versions_since(fresh_store: Store) -> None:
    fresh_store.put_list("a", [{"item_id": "mine"}], source="nearline")
    t0 = time.time()
    assert fresh_store.seed_lists({"a": [{"item_id": "run"}], "b": [{"item_id": "run"}]}) == 1
    assert fresh_store.seed_lists({"a": [], "b": []}) == 0
    a, b = fresh_store.current_list("a"), fresh_store.current_list("b")
    assert a is not None and a.items == [{"item_id": "mine"}] and a.source == "nearline"
    assert b is not None and b.version == 1 and b.source == "run"
    assert set(fresh_store.versions_since(0)) == {"a", "b"}
    assert fresh_store.versions_since(t0 - 1e-6) == {"b": (1, b.created_at)}
    two = fresh_store.put_list("b", [], "fallback")
    assert fresh_store.versions_since(b.created_at) == {"b": (2, two.created_at)}


# ---- opening, migrations, errors -------------------------------------------------------------------


def test_open_twice_and_concurrently_migrates_once(store_url: str) -> None:
    stores: list[Store] = []
    run_threads(3, lambda i: stores.append(Store.open(store_url)))
    again = Store.open(store_url)
    try:
        again.add_events([ev(1)])
        assert stores[0].count_events() == 1
        engine = create_engine(again.url.replace("postgresql://", "postgresql+psycopg://"))
        with engine.connect() as conn:
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == ["0001"]
        engine.dispose()
    finally:
        for s in [*stores, again]:
            s.close()


def test_migrated_database_matches_the_schema(fresh_store: Store) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    engine = create_engine(fresh_store.url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    engine.dispose()
    assert diff == []


def test_bad_urls_name_the_url_with_the_password_masked(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="malformed store URL 'not a url'"):
        Store.open("not a url")
    with pytest.raises(StoreError, match="unsupported database 'mysql'"):
        Store.open("mysql://u@h/db")
    with pytest.raises(StoreError, match=r"cannot open store 'sqlite:///.*missing/dir/s\.db'"):
        Store.open(f"sqlite:///{tmp_path}/missing/dir/s.db")
    with pytest.raises(StoreError) as err:
        Store.open("postgresql://bob:hunter2@127.0.0.1:1/db")  # nothing listens on port 1
    assert "postgresql://bob:***@127.0.0.1:1/db" in str(err.value) and "hunter2" not in str(err.value)
    with pytest.raises(StoreError, match="run folder"):
        Store.open(None)


def test_sqlite_reads_do_not_wait_for_a_writer(tmp_path: Path) -> None:
    """WAL: the request path keeps reading while a worker holds the write lock; writers queue."""
    with Store.open(None, run_dir=tmp_path) as store:
        store.put_list("a", [{"item_id": "x"}], source="run")
        other = sqlite3.connect(tmp_path / "serving.db", isolation_level=None)
        assert other.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        other.execute("BEGIN IMMEDIATE")
        other.execute("INSERT INTO list_heads VALUES ('b', 1, 0.0)")
        started = time.monotonic()
        current = store.current_list("a")
        assert current is not None and current.version == 1
        assert time.monotonic() - started < 1.0
        writer = threading.Thread(target=store.put_list, args=("a", [], "nearline"))
        writer.start()
        time.sleep(0.2)
        assert writer.is_alive()  # waiting for the lock, not failing
        other.execute("COMMIT")
        writer.join(10)
        current = store.current_list("a")
        assert current is not None and current.version == 2
        other.close()


def test_bad_lists_are_refused_before_writing(fresh_store: Store) -> None:
    with pytest.raises(StoreError, match=r"field 'items'.*not JSON"):
        fresh_store.put_list("a", [{"score": float("nan")}], source="nearline")
    with pytest.raises(StoreError, match="field 'user_id'"):
        fresh_store.seed_lists({"x" * 200: []})
    assert fresh_store.current_list("a") is None
    assert fresh_store.add_events([]).accepted == 0


def test_default_url_is_the_runs_sqlite_file(tmp_path: Path) -> None:
    with Store.open(None, run_dir=tmp_path) as store:
        assert store.dialect == "sqlite" and store.url.endswith("/serving.db")
    assert (tmp_path / "serving.db").is_file()


def test_import_serving_does_not_load_sqlalchemy() -> None:
    code = "import sys, recgpt.serving; print('sqlalchemy' in sys.modules, 'alembic' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(SRC)},
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert out.split() == ["False", "False"]


# ---- durability ----------------------------------------------------------------------------------------

WRITER = textwrap.dedent(
    """
    import sys
    from recgpt.serving.events import EventIn
    from recgpt.serving.store import Store
    store = Store.open(sys.argv[1])
    n = 0
    while True:
        batch = [EventIn(event_id=n + i, user_id=f"u{i % 3}", item_id="x", behavior="click", timestamp=n)
                 for i in range(5)]
        store.add_events(batch)
        n += 5
        print(n, flush=True)  # acknowledged: every id below n is committed
    """
)


def test_acknowledged_events_survive_kill_9(store_url: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, store_url],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(SRC)},
    )
    assert proc.stdout is not None
    acked = 0
    try:
        for line in proc.stdout:
            acked = int(line)
            if acked >= 50:
                break
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert acked >= 50, "the writer stopped before acknowledging 50 events"
    with Store.open(store_url) as store:
        stored = {e["event_id"] for u in ("u0", "u1", "u2") for e in store.user_events(u)}
    assert set(range(acked)) <= stored
