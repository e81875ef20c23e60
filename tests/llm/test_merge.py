"""Pluggable and mergeable cache and ledger: what a worker (a Ray task, a forked process) needs to
answer with its own cache and counts and hand both back to the run."""

from __future__ import annotations

import json
import pickle
import sqlite3
from pathlib import Path

import pytest
from pydantic import BaseModel

from recgpt.llm.backends.fake import FakeBackend
from recgpt.llm.cache import AnswerCache, CacheEntry, LLMCache, MemoryCache
from recgpt.llm.engine import LLMEngine
from recgpt.llm.ledger import Ledger
from recgpt.llm.types import ChatMessage, GenerationInput, LLMRequest


class Label(BaseModel):
    label: str


def req(i: int, stage: str = "tags") -> LLMRequest[Label]:
    return LLMRequest((ChatMessage(role="user", content=f"item {i}"),), Label, stage=stage)


def echo(inp: GenerationInput) -> str:
    return json.dumps({"label": inp.messages[-1].content})


def entry(key: str, value: str = "v") -> CacheEntry:
    return CacheEntry(key=key, value_json=json.dumps({"label": value}), backend="fake", model_id="m")


def test_the_engine_takes_any_answer_cache() -> None:
    cache = MemoryCache()
    assert isinstance(cache, AnswerCache) and isinstance(LLMCache.__new__(LLMCache), AnswerCache)
    LLMEngine(FakeBackend(echo), cache=cache).run([req(i) for i in range(3)])
    backend = FakeBackend(echo)
    again = LLMEngine(backend, cache=cache).run([req(i) for i in range(4)])
    assert len(cache) == 4 and len(backend.inputs) == 1  # only the new request reached the model
    assert [r.value.label for r in again] == [f"item {i}" for i in range(4)]
    assert [r.usage.cached for r in again] == [True, True, True, False]


def test_memory_cache_is_insert_only() -> None:
    cache = MemoryCache([entry("k", "first")])
    assert cache.put_many([entry("k", "second"), entry("j")]) == 1
    assert json.loads(cache.get_many(["k", "missing"])["k"].value_json) == {"label": "first"}
    assert cache.get("j") is not None and cache.get("k").created_at > 0  # stamped on insert


def test_merging_a_worker_cache_file_is_idempotent_and_keeps_existing_answers(tmp_path: Path) -> None:
    requests = [req(i) for i in range(6)]
    with LLMCache(tmp_path / "worker.sqlite") as worker:
        LLMEngine(FakeBackend(echo), cache=worker).run(requests[2:])  # the worker's partition: 2..5
    with LLMCache(tmp_path / "run.sqlite") as run:
        LLMEngine(FakeBackend(echo), cache=run).run(requests[:3])  # the run already has 0..2
        kept = run.get_many(e.key for e in run.entries())
        assert run.merge(tmp_path / "worker.sqlite") == 3  # 3, 4, 5 (2 was already there)
        assert run.merge(str(tmp_path / "worker.sqlite")) == 0  # idempotent
        assert run.merge(run) == 0  # itself: nothing to add
        assert len(run) == 6
        assert all(run.get(k) == e for k, e in kept.items())  # existing rows untouched
        backend = FakeBackend(echo)
        LLMEngine(backend, cache=run).run(requests)
        assert backend.inputs == []  # every answer is served from the merged cache


def test_a_cache_and_a_ledger_travel_to_a_worker(tmp_path: Path) -> None:
    """Pickled (as Ray ships a task's arguments), the cache reopens its file and the ledger keeps counting."""
    with LLMCache(tmp_path / "run.sqlite") as cache:
        cache.put_many([entry("a")])
        ledger = Ledger("run")
        ledger.stage("tags").requests = 2
        worker_cache, worker_ledger = pickle.loads(pickle.dumps((cache, ledger)))
        assert worker_cache.path == cache.path and worker_cache.get("a") == cache.get("a")
        worker_cache.put_many([entry("b")])
        assert len(cache) == 2  # the same file
        worker_ledger.stage("tags").requests += 1
        assert ledger.merge(worker_ledger).stage("tags").requests == 5
        worker_cache.close()


def test_merging_cache_objects(tmp_path: Path) -> None:
    memory = MemoryCache([entry("a"), entry("b")])
    with LLMCache(tmp_path / "run.sqlite") as run, LLMCache(tmp_path / "other.sqlite") as other:
        other.put_many([entry("b"), entry("c")])
        assert run.merge(memory) == 2 and run.merge(other) == 1 and run.merge(memory) == 0
        assert sorted(e.key for e in run.entries()) == ["a", "b", "c"]
        assert memory.merge(run) == 1 and len(memory) == 3


def test_merging_something_that_is_not_a_cache_fails_clearly(tmp_path: Path) -> None:
    with LLMCache(tmp_path / "run.sqlite") as run:
        with pytest.raises(FileNotFoundError, match="no LLM cache file"):
            run.merge(tmp_path / "missing.sqlite")
        assert not (tmp_path / "missing.sqlite").exists()
        sqlite3.connect(tmp_path / "other.sqlite").execute("CREATE TABLE t (x)").connection.close()
        with pytest.raises(ValueError, match="not an LLM cache"):
            run.merge(tmp_path / "other.sqlite")
        run.put_many([entry("a")])  # the connection is still usable after a failed merge
        assert len(run) == 1


def test_ledgers_merge_stage_by_stage(tmp_path: Path) -> None:
    run, worker = Ledger("run"), Ledger("worker")
    LLMEngine(FakeBackend(echo), ledger=run).run([req(1), req(2, "judge")])
    LLMEngine(FakeBackend(["bad", "bad", "bad"]), ledger=worker, max_retries=2).run([req(3)])
    worker.stage("tags").reasks, worker.stage("tags").fallbacks = 2, 1
    worker.stage("tags").first_error = "timeout: slow"
    assert run.merge(worker) is run
    tags = run.stage("tags")
    assert (tags.requests, tags.ok, tags.calls, tags.reasks, tags.fallbacks) == (2, 1, 4, 2, 1)
    assert tags.failures == {"invalid_json": 1} and tags.first_error == "timeout: slow"
    assert run.stage("judge").requests == 1 and run.run_id == "run"
    with pytest.raises(ValueError, match="itself"):
        run.merge(run)


def test_a_saved_ledger_reads_back_and_merges(tmp_path: Path) -> None:
    worker = Ledger("worker")
    LLMEngine(FakeBackend(["bad", '{"label": "x"}']), ledger=worker, max_retries=1).run([req(1)])
    worker.stage("tags").fallbacks = 1
    loaded = Ledger.from_json(json.loads(worker.save(tmp_path / "ledger.json").read_text()))
    assert loaded.to_json() == worker.to_json()
    total = Ledger("run").merge(loaded).merge(Ledger.from_json(worker.to_json()))
    assert total.stage("tags").calls == 4 and total.stage("tags").fallbacks == 2
