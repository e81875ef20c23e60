"""LLMEngine control flow with a scripted backend: validation, retries, typed failures, order,
cache reruns, kill-and-resume, concurrent writers, ledger counts."""

from __future__ import annotations

import json
import multiprocessing
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from recgpt.llm.backends.fake import FakeBackend, FakeBackendCrash
from recgpt.llm.cache import LLMCache
from recgpt.llm.engine import LLMEngine
from recgpt.llm.ledger import Ledger
from recgpt.llm.types import (
    FailureReason,
    GenerationInput,
    GenerationOutput,
    LLMRequest,
    SamplingParams,
)
from tests.conftest import Tags, echo, item_of, req


class Parallel(FakeBackend):
    """A fake backend that generates 4 requests at a time (like 4 workers)."""

    parallelism = 4


def test_results_in_order_and_validated() -> None:
    backend = FakeBackend(echo)
    results = LLMEngine(backend, chunk_size=3).run([req(i) for i in range(10)])
    assert [r.value.tags for r in results] == [[f"item {i}"] for i in range(10)]
    assert all(r.ok and r.failure is None and r.usage.attempts == 1 for r in results)
    assert backend.generate_calls == 10  # parallelism 1: one request per call, each cached when it exists
    parallel = Parallel(echo)
    LLMEngine(parallel, chunk_size=3).run([req(i) for i in range(10)])
    assert parallel.generate_calls == 4  # batches of min(parallelism 4, chunk_size 3): 3, 3, 3, 1
    # the backend got the grammar-friendly schema, not pydantic's raw one
    assert backend.inputs[0].json_schema["additionalProperties"] is False


def test_identical_requests_in_a_batch_are_generated_once() -> None:
    backend = FakeBackend(echo)
    results = LLMEngine(backend).run([req(1), req(2), req(1), req(1)])
    assert len(backend.inputs) == 2
    assert [r.value.tags for r in results] == [["item 1"], ["item 2"], ["item 1"], ["item 1"]]


def test_code_fences_and_trailing_text_are_tolerated() -> None:
    script = ['```json\n{"tags": ["a"]}\n```', '{"tags": ["b"]}\n\nThis JSON lists tags.']
    results = LLMEngine(FakeBackend(script)).run([req(1), req(2)])
    assert [r.value.tags for r in results] == [["a"], ["b"]]


def test_retry_uses_new_seed_repair_hint_and_nonzero_temperature() -> None:
    backend = FakeBackend(["not json at all", '{"tags": ["ok"]}'])
    result = LLMEngine(backend, max_retries=2).run_one(req(1, seed=7))
    assert result.ok and result.value.tags == ["ok"]
    assert result.usage.attempts == 2
    first, second = backend.inputs
    assert first.sampling.seed == 7 and second.sampling.seed != 7
    assert second.sampling.temperature > 0.0
    assert second.messages[: len(first.messages)] == first.messages
    assert second.messages[-1].role == "user" and "rejected" in second.messages[-1].content


@pytest.mark.parametrize(
    ("answer", "reason", "attempts"),
    [
        ("{not json", FailureReason.INVALID_JSON, 3),
        ('{"tags": []}', FailureReason.SCHEMA_MISMATCH, 3),  # min_length=1
        ('{"labels": ["x"]}', FailureReason.SCHEMA_MISMATCH, 3),
        # 256 -> 512 -> 1024 tokens (4x, the cap), then 2 repair retries
        (GenerationOutput(text='{"tags": ["a", "b', finish_reason="length"), FailureReason.TRUNCATED, 5),
        # transport failures are final at once: the stage fails loudly instead
        (GenerationOutput(text="", finish_reason="error", error="HTTP 500"), FailureReason.BACKEND_ERROR, 1),
        (
            GenerationOutput(text="", finish_reason="error", error="timeout after 30 s"),
            FailureReason.TIMEOUT,
            1,
        ),
    ],
)
def test_typed_failure_after_bounded_retries(
    answer: str | GenerationOutput, reason: FailureReason, attempts: int
) -> None:
    backend = FakeBackend(lambda _inp: answer)
    ledger = Ledger()
    result = LLMEngine(backend, ledger=ledger, max_retries=2, max_tokens_growth=4).run_one(req(1))
    assert not result.ok and result.value is None
    assert result.failure is not None and result.failure.reason == reason
    assert result.usage.attempts == attempts and len(backend.inputs) == attempts
    assert ledger.stage("tags").failures == {str(reason): 1}


def test_truncated_answer_gets_a_larger_budget_before_a_repair() -> None:
    def script(inp: GenerationInput) -> GenerationOutput:
        if inp.sampling.max_tokens < 600:  # the answer needs ~600 tokens to close
            return GenerationOutput(text='{"tags": ["a", "b', finish_reason="length")
        return GenerationOutput(text='{"tags": ["a", "b"]}', finish_reason="stop")

    backend, ledger = FakeBackend(script), Ledger()
    result = LLMEngine(backend, ledger=ledger, max_retries=1, max_tokens_growth=8).run_one(req(1))
    assert result.ok and result.value.tags == ["a", "b"]
    assert [i.sampling.max_tokens for i in backend.inputs] == [256, 512, 1024]
    assert len({(i.messages, i.sampling.seed) for i in backend.inputs}) == 1  # same prompt and seed
    stats = ledger.stage("tags")
    assert (stats.budget_retries, stats.calls, stats.ok, stats.schema_valid_rate) == (2, 3, 1, 1.0)


def test_valid_object_at_max_tokens_is_accepted() -> None:
    out = GenerationOutput(text='{"tags": ["a"]}', finish_reason="length", completion_tokens=5)
    result = LLMEngine(FakeBackend([out])).run_one(req(1))
    assert result.ok and result.value.tags == ["a"]


def test_zero_retries_means_one_attempt() -> None:
    backend = FakeBackend(lambda _inp: "nope")
    result = LLMEngine(backend, max_retries=0).run_one(req(1))
    assert result.failure.reason == FailureReason.INVALID_JSON and len(backend.inputs) == 1


def test_mixed_batch_keeps_order_and_retries_only_failures() -> None:
    def script(inp: GenerationInput) -> str:
        n = int(item_of(inp).split()[1])
        retried = "rejected" in inp.messages[-1].content
        return "garbage" if n % 2 and not retried else json.dumps({"tags": [f"t{n}"]})

    backend = FakeBackend(script)
    results = LLMEngine(backend, chunk_size=4).run([req(i) for i in range(8)])
    assert [r.value.tags for r in results] == [[f"t{i}"] for i in range(8)]
    assert [r.usage.attempts for r in results] == [1, 2] * 4
    assert len(backend.inputs) == 12  # 8 first tries + 4 retries


def test_rerun_hits_cache_and_makes_zero_backend_calls(tmp_path: Path) -> None:
    requests = [req(i) for i in range(6)]
    with LLMCache(tmp_path / "c.sqlite") as cache:
        first = LLMEngine(FakeBackend(echo), cache=cache).run(requests)
    backend = FakeBackend(echo)
    ledger = Ledger()
    with LLMCache(tmp_path / "c.sqlite") as cache:
        second = LLMEngine(backend, cache=cache, ledger=ledger).run(requests)
        assert len(cache) == 6
    assert backend.generate_calls == 0 and backend.inputs == []
    assert [r.value for r in second] == [r.value for r in first]
    assert all(r.usage.cached for r in second) and not any(r.usage.cached for r in first)
    stats = ledger.stage("tags")
    assert (stats.requests, stats.cache_hits, stats.calls, stats.prompt_tokens) == (6, 6, 0, 0)


def test_cache_key_covers_model_schema_sampling_and_template(tmp_path: Path) -> None:
    class Other(BaseModel):
        labels: list[str]

    base = req(1)
    variants = [
        LLMRequest(messages=base.messages, output_model=Other),
        LLMRequest(messages=base.messages, output_model=Tags, sampling=SamplingParams(seed=1)),
        LLMRequest(messages=base.messages, output_model=Tags, template="x@2"),
    ]

    def answer(inp: GenerationInput) -> str:
        key = "labels" if "labels" in inp.json_schema["properties"] else "tags"
        return json.dumps({key: ["v"]})

    with LLMCache(tmp_path / "c.sqlite") as cache:
        LLMEngine(FakeBackend(answer), cache=cache).run([base])
        backend = FakeBackend(answer)
        LLMEngine(backend, cache=cache).run(variants)
        assert len(backend.inputs) == 3
        other_model = FakeBackend(answer, model="another-model")
        LLMEngine(other_model, cache=cache).run([base])
        assert len(other_model.inputs) == 1 and len(cache) == 5


def test_failures_are_not_cached(tmp_path: Path) -> None:
    with LLMCache(tmp_path / "c.sqlite") as cache:
        LLMEngine(FakeBackend(lambda _i: "bad"), cache=cache, max_retries=0).run([req(1)])
        assert len(cache) == 0
        backend = FakeBackend(echo)
        assert LLMEngine(backend, cache=cache).run_one(req(1)).ok and len(backend.inputs) == 1


def test_crash_mid_batch_resumes_without_loss_or_duplicates(tmp_path: Path) -> None:
    requests = [req(i) for i in range(10)]
    crashing = Parallel(echo, crash_on_call=3)  # batches 1 and 2 (8 requests) finish, then it dies
    with LLMCache(tmp_path / "c.sqlite") as cache:
        with pytest.raises(FakeBackendCrash):
            LLMEngine(crashing, cache=cache, chunk_size=16).run(requests)
        assert len(cache) == 8
    resumed = FakeBackend(echo)
    with LLMCache(tmp_path / "c.sqlite") as cache:
        results = LLMEngine(resumed, cache=cache, chunk_size=16).run(requests)
        assert len(cache) == 10
    assert sorted(item_of(i) for i in resumed.inputs) == ["item 8", "item 9"]  # only the missing ones
    assert [r.value.tags for r in results] == [[f"item {i}"] for i in range(10)]
    assert sum(r.usage.cached for r in results) == 8


def _die_after(n_answers: int) -> Callable[[GenerationInput], str]:
    count = {"n": 0}

    def script(inp: GenerationInput) -> str:
        count["n"] += 1
        if count["n"] > n_answers:
            os._exit(9)  # no cleanup, no exception handlers: like kill -9
        return echo(inp)

    return script


def _run_in_child(db: str, n_answers: int, n_requests: int) -> None:
    with LLMCache(db) as cache:
        LLMEngine(FakeBackend(_die_after(n_answers)), cache=cache, chunk_size=3).run(
            [req(i) for i in range(n_requests)]
        )


def test_hard_killed_process_resumes(tmp_path: Path) -> None:
    db = str(tmp_path / "c.sqlite")
    ctx = multiprocessing.get_context("fork")
    child = ctx.Process(target=_run_in_child, args=(db, 7, 12))  # dies at the 8th answer
    child.start()
    child.join(30)
    assert child.exitcode == 9
    backend = FakeBackend(echo)
    with LLMCache(db) as cache:
        assert len(cache) == 7  # every finished answer was committed as it came
        results = LLMEngine(backend, cache=cache, chunk_size=3).run([req(i) for i in range(12)])
        assert len(cache) == 12
    assert len(backend.inputs) == 5 and all(r.ok for r in results)


def test_concurrent_processes_share_one_cache(tmp_path: Path) -> None:
    db = str(tmp_path / "c.sqlite")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_run_in_child, args=(db, 10**6, 40)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    with LLMCache(db) as cache:
        assert len(cache) == 40


def test_ledger_counts_per_stage_and_saves(tmp_path: Path) -> None:
    script = ['{"tags": ["a"]}', "bad", "bad", '{"tags": ["b"]}', "bad", "bad", "bad"]
    ledger = Ledger(run_id="t")
    with LLMCache(tmp_path / "c.sqlite") as cache:
        engine = LLMEngine(FakeBackend(script), cache=cache, ledger=ledger, max_retries=2, chunk_size=1)
        engine.run([req(1, "tags"), req(2, "judge"), req(3, "judge")])
        engine.run([req(1, "tags")])  # a cache hit
    tags, judge = ledger.stage("tags"), ledger.stage("judge")
    assert (tags.requests, tags.cache_hits, tags.calls, tags.ok) == (2, 1, 1, 2)
    assert (judge.requests, judge.calls, judge.ok) == (2, 6, 1)
    assert judge.failures == {"invalid_json": 1}
    assert judge.schema_valid_rate == pytest.approx(0.5)
    assert judge.call_valid_rate == pytest.approx(1 / 6)
    assert tags.prompt_tokens > 0 and judge.completion_tokens > 0 and tags.wall_s > 0
    saved = json.loads(ledger.save(tmp_path / "ledger.json").read_text())
    assert saved["total"]["requests"] == 4 and saved["total"]["calls"] == 7
    assert saved["stages"]["judge"]["failures"] == {"invalid_json": 1}
    table = ledger.table()
    assert [c.header for c in table.columns] == ["measure", "judge", "tags", "TOTAL"]


def test_bad_input_raises_clearly() -> None:
    engine = LLMEngine(FakeBackend(echo))
    with pytest.raises(TypeError, match="LLMRequest"):
        engine.run([{"messages": []}])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="no messages"):
        engine.run([LLMRequest(messages=(), output_model=Tags)])
    with pytest.raises(ValueError, match="max_retries"):
        LLMEngine(FakeBackend(echo), max_retries=-1)


def test_backend_returning_wrong_count_is_an_error() -> None:
    class Short(Parallel):
        def generate(self, inputs: list[GenerationInput]) -> list[GenerationOutput]:
            return super().generate(inputs)[:-1]

    with pytest.raises(RuntimeError, match="returned 1 outputs for 2 inputs"):
        LLMEngine(Short(echo)).run([req(1), req(2)])


class _Streaming(FakeBackend):
    """A worker pool stand-in: answers come back out of order, one at a time, and it can die mid-batch."""

    streams = True

    def __init__(self, *args: Any, die_after: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.die_after = die_after
        self.batches: list[int] = []

    def generate_iter(self, inputs: list[GenerationInput]) -> Iterator[tuple[int, GenerationOutput]]:
        self.batches.append(len(inputs))
        for n, i in enumerate(reversed(range(len(inputs)))):  # completion order != submission order
            if self.die_after is not None and n == self.die_after:
                raise FakeBackendCrash("killed mid-batch")
            yield i, self.generate([inputs[i]])[0]


def test_a_streaming_backend_gets_whole_chunks_and_every_answer_is_cached_as_it_arrives(
    tmp_path: Path,
) -> None:
    requests = [req(i) for i in range(10)]
    dying = _Streaming(echo, die_after=3)
    with LLMCache(tmp_path / "c.sqlite") as cache:
        with pytest.raises(FakeBackendCrash):
            LLMEngine(dying, cache=cache, chunk_size=16).run(requests)
        assert dying.batches == [10]  # one chunk, not batches of the backend's parallelism
        assert len(cache) == 3  # the answers that completed before the kill
    resumed = _Streaming(echo)
    with LLMCache(tmp_path / "c.sqlite") as cache:
        results = LLMEngine(resumed, cache=cache, chunk_size=16).run(requests)
    assert len(resumed.inputs) == 7 and all(r.ok for r in results)
    assert [r.value.tags for r in results] == [[f"item {i}"] for i in range(10)]  # in request order
