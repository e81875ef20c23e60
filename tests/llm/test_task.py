"""`run_task` with a scripted backend: first asks, re-asks of emptied answers, failures, fallbacks,
ledger counts; and a new task written in a few lines."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest
from pydantic import BaseModel, Field

from recgpt.llm.backends.fake import FakeBackend
from recgpt.llm.engine import LLMEngine
from recgpt.llm.ledger import Ledger
from recgpt.llm.task import EMPTY, LLMTask, TaskFailure, reask_request, run_task
from recgpt.llm.types import (
    ChatMessage,
    GenerationInput,
    GenerationOutput,
    LLMRequest,
    LLMResult,
    SamplingParams,
)


class Words(BaseModel):
    words: list[str] = Field(min_length=1, max_length=3)


def asked_item(inp: GenerationInput) -> str:
    return inp.messages[-1].content.removeprefix("item ")


class WordsTask(LLMTask[str]):
    """Keeps the words that are not "bad"; an item whose words are all bad is asked again."""

    name = "words"
    empty_detail = "every word was bad"

    def __init__(self, reasks: int = 2, fallback_word: str | None = "rule") -> None:
        self.reasks, self.fallback_word = reasks, fallback_word

    def prompt(self, item: str) -> LLMRequest[Any]:
        messages = (ChatMessage(role="user", content=f"item {item}"),)
        return LLMRequest(messages, Words, SamplingParams(seed=10), stage="words", key=item)

    def postprocess(self, item: str, value: Any) -> list[dict[str, Any]]:
        return [{"item": item, "word": w, "fallback": False} for w in value.words if w != "bad"]

    def fallback(self, item: str, reason: str) -> list[dict[str, Any]]:
        return [] if self.fallback_word is None else [{"item": item, "word": reason, "fallback": True}]


def scripted(answers: dict[str, list[str]]) -> FakeBackend:
    """Each item answers from its own list, in order (one entry per generation of that item)."""
    queues = {k: list(v) for k, v in answers.items()}

    def answer(inp: GenerationInput) -> str | GenerationOutput:
        queue = queues[asked_item(inp)]
        text = queue.pop(0) if queue else "exhausted"
        if text == "ERROR":
            return GenerationOutput(text="", finish_reason="error", error="backend down")
        return text

    return FakeBackend(answer)


def words(*ws: str) -> str:
    return json.dumps({"words": list(ws)})


def test_first_asks_reasks_failures_and_fallbacks() -> None:
    backend = scripted(
        {
            "a": [words("x", "bad")],  # kept at once
            "b": [words("bad"), words("bad"), words("y")],  # emptied twice, the 2nd re-ask counts
            "c": [words("bad"), words("bad"), words("bad")],  # emptied every time: "empty" + fallback
            "d": ["not json"],  # a failed request is not re-asked: its reason + fallback
            "e": ["ERROR"],  # a transport failure likewise
        }
    )
    ledger = Ledger()
    out = run_task(WordsTask(), LLMEngine(backend, ledger=ledger, max_retries=0), ["a", "b", "c", "d", "e"])
    assert out.rows == [
        {"item": "a", "word": "x", "fallback": False},
        {"item": "b", "word": "y", "fallback": False},
        {"item": "c", "word": EMPTY, "fallback": True},
        {"item": "d", "word": "invalid_json", "fallback": True},
        {"item": "e", "word": "backend_error", "fallback": True},
    ]
    assert out.on_fallback == [False, False, True, True, True]
    assert [(f.key, f.reason) for f in out.failures] == [
        ("c", "empty"),
        ("d", "invalid_json"),
        ("e", "backend_error"),
    ]
    assert out.failures[0].detail == "every word was bad" and out.failures[2].detail == "backend down"
    assert out.failure_rows("user_id")[0] == {
        "user_id": "c",
        "reason": "empty",
        "detail": "every word was bad",
    }
    # batches: the 5 first asks, then b and c, then b and c again; re-asks are sampled at a new seed
    asked = [(asked_item(i), i.sampling.seed, i.sampling.temperature) for i in backend.inputs]
    assert asked == [(x, 10, 0.0) for x in "abcde"] + [
        ("b", 11, 0.7),
        ("c", 11, 0.7),
        ("b", 12, 0.7),
        ("c", 12, 0.7),
    ]
    assert backend.generate_calls == 9  # parallelism 1: one generation per call
    stats = ledger.stage("words")
    assert (stats.requests, stats.reasks, stats.fallbacks) == (9, 4, 3)


def test_no_reasks_no_fallback_and_empty_input() -> None:
    backend = scripted({"a": [words("bad"), words("ok")]})
    out = run_task(WordsTask(reasks=0, fallback_word=None), LLMEngine(backend), ["a"])
    assert (
        out.rows == []
        and out.on_fallback == [True]
        and out.failures == [TaskFailure("a", EMPTY, "every word was bad")]
    )
    assert len(backend.inputs) == 1
    engine = LLMEngine(FakeBackend([]))
    assert (
        run_task(WordsTask(), engine, []).rows == [] and engine.ledger.stages == {}
    )  # nothing asked, nothing counted


def test_a_successful_reask_stops_the_rounds() -> None:
    backend = scripted({"a": [words("bad"), words("ok")], "b": [words("fine")]})
    out = run_task(WordsTask(reasks=5), LLMEngine(backend), ["a", "b"])
    assert [r["word"] for r in out.rows] == ["ok", "fine"] and out.failures == []
    assert len(backend.inputs) == 3


def test_requests_are_counted_under_the_task_name() -> None:
    class Renamed(WordsTask):
        name = "renamed"

    backend = scripted({"a": [words("ok")]})
    engine = LLMEngine(backend)
    run_task(Renamed(), engine, ["a"])
    assert set(engine.ledger.stages) == {"renamed"}


def test_reask_request_keeps_the_prompt() -> None:
    first = WordsTask().prompt("a")
    again = reask_request(first, 3, 0.9)
    assert again.messages == first.messages and again.key == "a" and again.output_model is Words
    assert (again.sampling.seed, again.sampling.temperature, again.sampling.max_tokens) == (13, 0.9, 256)
    assert WordsTask().request("a", 0) == first


class CheckingEngine:
    """A wrapper like the pipeline's guard: sees every request, then delegates (ledger included)."""

    def __init__(self, engine: LLMEngine) -> None:
        self.engine, self.seen = engine, 0

    @property
    def ledger(self) -> Ledger:
        return self.engine.ledger

    def run(self, requests: Sequence[LLMRequest[Any]]) -> list[LLMResult[Any]]:
        assert all(r.key for r in requests)
        self.seen += len(requests)
        return self.engine.run(requests)


def test_any_engine_with_run_and_ledger_will_do() -> None:
    wrapper = CheckingEngine(LLMEngine(scripted({"a": [words("bad"), words("ok")]})))
    out = run_task(WordsTask(), wrapper, ["a"])
    assert out.rows[0]["word"] == "ok" and wrapper.seen == 2 and wrapper.ledger.stage("words").reasks == 1


def test_a_new_task_in_a_few_lines() -> None:
    """A SerenGPT-style stage: one "surprise" per user, rejected when it repeats the history."""

    class Surprise(BaseModel):
        item: str
        why: str

    class SurpriseTask(LLMTask[tuple[str, str]]):  # (user id, history)
        name, reasks, empty_detail = "serendipity", 1, "the suggestion repeated the history"

        def prompt(self, item: tuple[str, str]) -> LLMRequest[Any]:
            messages = (ChatMessage(role="user", content=f"Surprise a user who saw: {item[1]}"),)
            return LLMRequest(messages, Surprise, stage=self.name, key=item[0])

        def postprocess(self, item: tuple[str, str], value: Any) -> list[dict[str, Any]]:
            if value.item.lower() in item[1].lower():
                return []
            return [{"user_id": item[0], "item": value.item, "why": value.why}]

        def fallback(self, item: tuple[str, str], reason: str) -> list[dict[str, Any]]:
            return [{"user_id": item[0], "item": "Staff pick", "why": "fallback"}]

    def answer(inp: GenerationInput) -> str:
        repeat = inp.sampling.seed == 0 and "Alien" in inp.messages[0].content
        return json.dumps({"item": "Alien" if repeat else "Moon (2009)", "why": "quiet sci-fi"})

    backend = FakeBackend(answer)
    out = run_task(SurpriseTask(), LLMEngine(backend), [("u1", "Alien, Aliens"), ("u2", "Amelie")])
    assert [(r["user_id"], r["item"]) for r in out.rows] == [("u1", "Moon (2009)"), ("u2", "Moon (2009)")]
    assert len(backend.inputs) == 3 and out.failures == [] and out.on_fallback == [False, False]


def test_engine_returning_the_wrong_count_is_an_error() -> None:
    class Short(CheckingEngine):
        def run(self, requests: Sequence[LLMRequest[Any]]) -> list[LLMResult[Any]]:
            return self.engine.run(requests)[:-1]

    with pytest.raises(RuntimeError, match="1 results for 2"):
        run_task(WordsTask(), Short(LLMEngine(FakeBackend(lambda _i: words("ok")))), ["a", "b"])
