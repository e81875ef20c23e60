"""Best-of-n in `run_task`: n answers per item, the best-scoring non-empty one kept, re-asks after
them, fallback only when all are empty, every sample its own seed (so the cache reuses them)."""

from __future__ import annotations

from typing import Any

from recgpt.llm.cache import MemoryCache
from recgpt.llm.engine import LLMEngine
from recgpt.llm.ledger import Ledger
from recgpt.llm.task import EMPTY, SampleChoice, run_task
from tests.llm.test_task import WordsTask, asked_item, scripted, words


class LongestTask(WordsTask):
    """Scores an answer by its kept words; best-of-n keeps the answer with the most."""

    def __init__(self, n: int, reasks: int = 0) -> None:
        super().__init__(reasks=reasks)
        self.n_samples = n


def test_n1_is_the_plain_loop_and_records_its_choice() -> None:
    backend = scripted({"a": [words("x")], "b": [words("bad"), words("y")]})
    ledger = Ledger()
    out = run_task(LongestTask(1, reasks=1), LLMEngine(backend, ledger=ledger), ["a", "b"])
    assert [r["word"] for r in out.rows] == ["x", "y"]
    assert out.choices == [SampleChoice("a", 1, 0, 1.0), SampleChoice("b", 2, 1, 1.0)]
    stats = ledger.stage("words")
    assert (stats.samples, stats.reasks, dict(stats.winners)) == (0, 1, {"0": 1, "1": 1})


def test_best_of_n_keeps_the_higher_scoring_sample() -> None:
    backend = scripted(
        {
            "a": [words("x"), words("y", "z"), words("bad")],  # sample 1 keeps two words
            "b": [words("p", "q"), words("r", "s"), words("t")],  # a tie: the first ask stays
        }
    )
    ledger = Ledger()
    out = run_task(LongestTask(3), LLMEngine(backend, ledger=ledger), ["a", "b"])
    assert [r["word"] for r in out.rows] == ["y", "z", "p", "q"]
    assert out.choices == [SampleChoice("a", 3, 1, 2.0), SampleChoice("b", 3, 0, 2.0)]
    assert out.failures == [] and out.on_fallback == [False, False]
    # sample-major batches: the first asks as configured, then sample j at seed + j, sampled
    asked = [(asked_item(i), i.sampling.seed, i.sampling.temperature) for i in backend.inputs]
    assert asked == [
        ("a", 10, 0.0),
        ("b", 10, 0.0),
        ("a", 11, 0.7),
        ("b", 11, 0.7),
        ("a", 12, 0.7),
        ("b", 12, 0.7),
    ]
    stats = ledger.stage("words")
    assert (stats.requests, stats.samples, stats.fallbacks, dict(stats.winners)) == (
        6,
        4,
        0,
        {"0": 1, "1": 1},
    )


def test_all_samples_empty_falls_back_with_the_reason_then_reasks_continue() -> None:
    backend = scripted({"a": [words("bad"), "not json", words("bad"), words("bad")], "b": ["ERROR"] * 3})
    out = run_task(LongestTask(3, reasks=1), LLMEngine(backend, max_retries=0), ["a", "b"])
    assert out.on_fallback == [True, True]
    assert [(f.key, f.reason) for f in out.failures] == [("a", EMPTY), ("b", "backend_error")]
    assert out.failures[0].detail == "every word was bad (all 4 answers)"
    assert out.choices == [SampleChoice("a", 4, None, None), SampleChoice("b", 3, None, None)]
    # a (one answer validated) is re-asked at attempt 3; b (nothing validated) is not
    reasks = [(asked_item(i), i.sampling.seed) for i in backend.inputs[6:]]
    assert reasks == [("a", 13)]
    assert out.rows[0] == {"item": "a", "word": EMPTY, "fallback": True}


def test_a_rerun_reuses_every_sample_from_the_cache() -> None:
    answers: dict[str, Any] = {"a": [words("x"), words("y", "z"), words("w")]}
    cache = MemoryCache()
    first = scripted(answers)
    out1 = run_task(LongestTask(3), LLMEngine(first, cache=cache), ["a"])
    again = scripted({"a": []})  # would answer "exhausted" (invalid) if it were asked at all
    engine = LLMEngine(again, cache=cache)
    out2 = run_task(LongestTask(3), engine, ["a"])
    assert again.inputs == [] and out2.rows == out1.rows and out2.choices == out1.choices
    assert engine.ledger.stage("words").cache_hits == 3
