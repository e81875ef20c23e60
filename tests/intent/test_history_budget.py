"""The history budget is the serving model's: context - prompt - answer, oldest part cut first."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from recgpt.intent.context import UserContext, fit_history, fit_request, history_stats, prompt_text
from recgpt.intent.interests import InterestsConfig, interest_prompt, interest_request, mine_interests
from recgpt.intent.tags import TagsConfig, tag_prompt
from recgpt.llm.backends.fake import FakeBackend
from recgpt.llm.engine import LLMEngine, engine_window
from recgpt.llm.prompts import DATA_CAP, Fitted, clean_text, data
from recgpt.llm.types import LLMRequest, approx_tokens
from tests.conftest import BASE_TS

LINES = [f"{d} days ago (rated) | Film number {d} (1990) [Drama/Comedy]" for d in range(400, 0, -1)]
LONG = "\n".join(LINES)  # oldest first, newest ("1 days ago") last, ~15k characters
CTX = UserContext("u1", BASE_TS + 500 * 86_400, {"age": "30"}, LONG, ("Drama", "Comedy"), ())
OLDEST, NEWEST = LINES[0], LINES[-1]


def interests_answer(n: int) -> str:
    return json.dumps(
        {
            "interests": [
                {"id": i, "interest": f"Drama kind {i}", "stage": "long-term", "reason": "many dramas"}
                for i in range(1, n + 1)
            ]
        }
    )


def test_fit_history_cuts_the_oldest_lines_and_keeps_the_newest() -> None:
    fit = fit_history(LONG, 100, approx_tokens)
    assert fit.text.endswith(NEWEST) and OLDEST not in fit.text
    assert fit.tokens == approx_tokens(fit.text) <= 100
    assert fit.cut == approx_tokens(LONG) - fit.tokens > 0
    kept = fit.text.splitlines()
    assert kept == LINES[-len(kept) :]  # whole lines, a contiguous newest run
    assert fit_history(LONG, None, approx_tokens).text == LONG
    whole = fit_history("a | b", 10, approx_tokens)
    assert whole.text == "a | b" and whole.cut == 0


def test_an_overlong_newest_line_keeps_its_newest_events() -> None:
    line = "2 days ago (rated) | " + ", ".join(f"Item{i}" for i in range(100))
    fit = fit_history("old line\n" + line, 20, approx_tokens)
    assert fit.text.startswith("2 days ago (rated) | ") and fit.text.endswith("Item99")
    assert "Item0," not in fit.text and fit.tokens <= 20


def test_an_overlong_older_line_fills_the_room_left_with_its_newest_events() -> None:
    big = "8 months ago (rated) | " + ", ".join(f"Old{i}" for i in range(200))
    fit = fit_history(big + "\ntoday (rated) | Newest film", 60, approx_tokens)
    first, last = fit.text.splitlines()
    assert last == "today (rated) | Newest film" and first.startswith("8 months ago (rated) | ")
    assert first.endswith("Old199") and "Old0," not in first and 50 <= fit.tokens <= 60


@pytest.mark.parametrize("n_ctx", [1200, 1500, 4000])
def test_the_request_renders_within_the_fake_models_context(n_ctx: int) -> None:
    window = FakeBackend(n_ctx=n_ctx).token_window()
    req, fit = interest_prompt(InterestsConfig(count=3), CTX, window)
    assert window.count_messages(req.messages) + req.sampling.max_tokens <= n_ctx
    user = req.messages[-1].content
    assert NEWEST in user and OLDEST not in user and fit.cut > 0
    assert fit.tokens == approx_tokens(fit.text) and fit.text in user
    # the budget is the model's: a larger context shows more history
    if n_ctx > 1200:
        smaller = interest_prompt(InterestsConfig(count=3), CTX, FakeBackend(n_ctx=1200).token_window())[1]
        assert fit.tokens > smaller.tokens


def test_tags_request_is_fitted_too() -> None:
    window = FakeBackend(n_ctx=1200).token_window()
    req, fit = tag_prompt(TagsConfig(count=4), CTX, [(1, "Drama")], window)
    assert window.count_messages(req.messages) + req.sampling.max_tokens <= 1200
    assert NEWEST in prompt_text(req) and fit.cut > 0


def test_user_cap_in_tokens_bounds_the_models_budget() -> None:
    window = FakeBackend(n_ctx=100_000).token_window()
    whole = interest_prompt(InterestsConfig(), CTX, window)[1]
    assert whole.cut == 0 and whole.text == LONG  # the model's context holds it all
    capped = interest_prompt(InterestsConfig(history_tokens=50), CTX, window)[1]
    assert capped.tokens <= 50 and capped.text.endswith(NEWEST)


def test_the_old_oldest_kept_data_cap_is_gone() -> None:
    """A history longer than the old 2,000-character data block is shown up to its newest line."""
    assert len(LONG) > DATA_CAP
    req = interest_request(InterestsConfig(), CTX, FakeBackend(n_ctx=None).token_window())
    user = req.messages[-1].content
    assert NEWEST in user and OLDEST in user  # no model limit, no cap: all of it
    body = data(Fitted(LONG), "history")
    assert body.rstrip().endswith(NEWEST + "\n</data>")
    # a plain value keeps its head under the cap; a tail cut keeps the end
    assert clean_text("abcdefghijklmnopqrstuvwxyz" * 10, 40, keep="tail").endswith("xyz")


def test_history_tokens_are_recorded_per_user_and_match_the_tokenizer() -> None:
    backend = FakeBackend([interests_answer(3)], n_ctx=1000)
    interests, _ = mine_interests(InterestsConfig(count=3), LLMEngine(backend, max_retries=0), [CTX])
    seen, cut = interests["history_tokens"].unique().to_list(), interests["history_cut"].unique().to_list()
    assert len(seen) == 1 and len(cut) == 1 and cut[0] > 0
    sent = backend.inputs[0].messages[-1].content
    shown = sent.split('<data name="history">\n', 1)[1].split("\n</data>", 1)[0]
    assert seen[0] == approx_tokens(shown)
    assert history_stats(interests) == {"history_tokens_mean": float(seen[0]), "history_cut_share": 1.0}


def test_engine_window_reaches_through_a_wrapper() -> None:
    engine = LLMEngine(FakeBackend(n_ctx=777))

    class Guard:  # a prompt guard that holds the engine, like the pipeline's
        def __init__(self, engine: LLMEngine) -> None:
            self.engine = engine

    for e in (engine, Guard(engine)):
        window = engine_window(e)
        assert window is not None and window.n_ctx == 777
    assert engine_window(object()) is None


def test_fit_request_without_a_window_applies_only_the_cap() -> None:
    def build(history: str) -> LLMRequest[Any]:
        return interest_request(InterestsConfig(), UserContext("u", BASE_TS, history=history))

    req, fit = fit_request(build, LONG, None, cap=None)
    assert fit.cut == 0 and NEWEST in prompt_text(req)


def test_the_old_history_chars_key_is_a_clear_error() -> None:
    with pytest.raises(ValidationError, match=r"history_chars was replaced by interests\.history_tokens"):
        InterestsConfig.model_validate({"history_chars": 700})
    with pytest.raises(ValidationError, match=r"tags\.history_tokens"):
        TagsConfig.model_validate({"history_chars": 400})
