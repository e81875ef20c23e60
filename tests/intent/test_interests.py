"""LLM_UI with the scripted backend: prompt content, parsing, post-processing, failures and fallback."""

from __future__ import annotations

import json
from typing import Any

import polars as pl
import pytest

from recgpt.data.split import Split
from recgpt.intent.context import UserContext, describe_date, history_tail, prompt_text
from recgpt.intent.interests import (
    FAILURES_SCHEMA,
    INTERESTS_SCHEMA,
    InterestsConfig,
    interest_request,
    interests_model,
    mine_interests,
)
from recgpt.llm.backends.fake import FakeBackend
from recgpt.llm.engine import LLMEngine
from recgpt.llm.schema import json_schema_for
from tests.conftest import BASE_TS, HashEncoder

CTX = UserContext(
    user_id="u1",
    asof_ts=BASE_TS + 100 * 86_400,  # 2000-04-10
    attributes={"age": "34", "gender": "F"},
    history="3 months ago (rated) | Space Wars: Galaxy Rising (1999) [Sci-Fi/Action]\n1 day ago (rated) | Paris Love Letters (1990) [Romance]",
    pool=("Sci-Fi", "Space Wars", "Romance"),
    items=(
        ("Space Wars: Galaxy Rising (1999)", BASE_TS),
        ("Paris Love Letters (1990)", BASE_TS + 99 * 86_400),
    ),
)


def answer(*interests: tuple[str, str] | str) -> str:
    rows = []
    for i, it in enumerate(interests, start=1):
        name, stage = (it, "long-term") if isinstance(it, str) else it
        rows.append({"id": i, "interest": name, "stage": stage, "reason": f" because {name} "})
    return json.dumps({"interests": rows})


def run(cfg: InterestsConfig, script: list[str], contexts: list[UserContext] | None = None, **kw: Any):
    backend = FakeBackend(script)
    engine = LLMEngine(backend, max_retries=kw.pop("max_retries", 0))
    return (*mine_interests(cfg, engine, contexts or [CTX], **kw), backend)


def test_prompt_follows_the_paper_structure() -> None:
    req = interest_request(InterestsConfig(count=4), CTX)
    assert [m.role for m in req.messages] == ["system", "user", "assistant", "user"]
    system, user = req.messages[0].content, req.messages[-1].content
    for part in (
        "Interest mining principles",
        "Requirements",
        "Constraints",
        "Output format",
        "preset interest",
    ):
        assert part in system
    assert '<data name="history">' in user and "Space Wars: Galaxy Rising" in user
    assert "- Sci-Fi\n- Space Wars\n- Romance" in user
    assert "2000-04-10 (April, spring)" in user and "age 34, gender F" in user
    assert "Give exactly 4 interests" in user
    assert req.key == "u1" and req.stage == "interests" and req.template == "recgpt_interests@1"
    schema = json_schema_for(interests_model(4))
    arr = schema["properties"]["interests"]
    assert arr["minItems"] == arr["maxItems"] == 4
    assert arr["items"]["properties"]["stage"]["enum"] == ["long-term", "short-term"]


def test_postprocessing_tidies_dedupes_and_classifies() -> None:
    cfg = InterestsConfig(count=6, max_words=4)
    script = [
        answer(
            " sci-fi. ",
            "Space opera",
            "SCI-FI",
            "",
            "a very long interest name here",
            ("Romance", "short-term"),
        )
    ]
    interests, failures, _ = run(cfg, script)
    assert interests.columns == list(INTERESTS_SCHEMA) and failures.columns == list(FAILURES_SCHEMA)
    assert interests["interest"].to_list() == ["sci-fi", "Space opera", "Romance"]
    assert interests["interest_id"].to_list() == [1, 2, 3]
    assert interests["kind"].to_list() == ["listed", "extended", "listed"]
    assert interests["stage"].to_list() == ["long-term", "long-term", "short-term"]
    assert interests["reason"][0] == "because sci-fi"
    assert set(interests["template"]) == {"recgpt_interests@1"}
    assert failures.is_empty()


def test_listed_by_embedding_similarity_when_an_encoder_is_given() -> None:
    cfg = InterestsConfig(count=2, listed_similarity=0.7)
    script = [answer("Space Wars films", "Knitting")]
    plain, _, _ = run(cfg, script)
    assert plain["kind"].to_list() == ["extended", "extended"]
    embedded, _, _ = run(cfg, script, encoder=HashEncoder())
    assert embedded["kind"].to_list() == [
        "listed",
        "extended",
    ]  # cos("space wars films", "space wars") ~ 0.82


def test_example_copies_and_item_titles_are_dropped() -> None:
    cfg = InterestsConfig(count=4)
    script = [answer("Trail running", "Home baking", "Paris Love Letters", "Romance")]
    interests, _, _ = run(cfg, script)
    assert interests["interest"].to_list() == ["Romance"]
    ctx = UserContext(**{**CTX.__dict__, "history": CTX.history + "\n1 day ago | Trail running shoes"})
    kept, _, _ = run(cfg, script, [ctx])
    assert kept["interest"].to_list() == ["Trail running", "Romance"]  # the user's own history mentions it
    titled = UserContext(**{**CTX.__dict__, "items": (*CTX.items, ("Romance (1999)", BASE_TS))})
    still, _, _ = run(cfg, script, [titled])
    assert still["interest"].to_list() == ["Romance"]  # a pool entry that is also a title stays
    unpooled = UserContext(**{**titled.__dict__, "pool": ()})
    assert run(cfg, script, [unpooled])[0].is_empty()


def test_failures_fall_back_to_the_pool() -> None:
    cfg = InterestsConfig(count=2)
    ctx2 = UserContext(user_id="u2", asof_ts=BASE_TS, pool=("Comedy", "Office Party", "Drama"))
    script = ["not json at all", answer("Trail running", "Marathon training")]
    interests, failures, _ = run(cfg, script, [CTX, ctx2])
    assert failures.rows() == [
        ("u1", "invalid_json", failures["detail"][0]),
        ("u2", "example_copy", failures["detail"][1]),
    ]
    assert interests.filter(pl.col("user_id") == "u2")["interest"].to_list() == ["Comedy", "Office Party"]
    assert set(interests["template"]) == {"pool-fallback"} and set(interests["kind"]) == {"listed"}
    none, failures2, _ = run(InterestsConfig(count=2, fallback_to_pool=False), script, [CTX, ctx2])
    assert none.is_empty() and failures2.height == 2


def test_wrong_count_is_a_schema_failure_and_retried() -> None:
    cfg = InterestsConfig(count=3)
    interests, failures, backend = run(
        cfg, [answer("A", "B"), answer("Sci-Fi", "Romance", "Space Wars")], max_retries=1
    )
    assert backend.generate_calls == 2 and failures.is_empty()
    assert interests["interest"].to_list() == ["Sci-Fi", "Romance", "Space Wars"]


def test_duplicate_users_are_refused() -> None:
    with pytest.raises(ValueError, match="duplicate user"):
        run(InterestsConfig(), [], [CTX, CTX])


def test_clean_phrase() -> None:
    from recgpt.intent.context import clean_phrase

    cases = {
        ' "Sci-fi films." ': "Sci-fi films",
        "Heat (1995)": "Heat (1995)",
        "The Last Kingdoms (1994": "The Last Kingdoms",
        "[Sci-Fi]": "Sci-Fi",
        "**bold**": "bold",
        "(Romance) and (Drama)": "(Romance) and (Drama)",
        "(1995": "",
    }
    assert {k: clean_phrase(k) for k in cases} == cases


def test_date_and_history_helpers() -> None:
    assert describe_date(BASE_TS) == {"date": "2000-01-01", "month": "January", "season": "winter"}
    assert describe_date(BASE_TS, "south")["season"] == "summer"
    text = "old line one\nmiddle line\nnewest line"
    assert history_tail(text, 25) == "middle line\nnewest line"
    assert history_tail(text, None) == text
    assert history_tail("2 days ago | A, B, C, D", 8) == "C, D"


def test_contexts_from_the_split(toy_split: Split) -> None:
    from recgpt.behavior import BehaviorCompressor, CompressionConfig, RegexTokenCounter
    from recgpt.intent.context import build_contexts
    from recgpt.intent.pool import InterestPool, PoolConfig

    ds = toy_split.dataset
    comp = BehaviorCompressor(ds.items, RegexTokenCounter(), CompressionConfig(budget=500))
    pool = InterestPool.build(ds.items, HashEncoder(), PoolConfig(min_support=2, top_n=4))
    ctxs = build_contexts(toy_split.test, ds, ["u1", "u2"], compressor=comp, pool=pool)
    assert [c.user_id for c in ctxs] == ["u1", "u2"]
    assert ctxs[0].attributes == {"age": "34", "gender": "F"} and ctxs[1].attributes == {}
    assert len(ctxs[0].pool) == 4 and "Space Wars: Dark Empire" in ctxs[0].history
    assert "Final Frontier" not in prompt_text(interest_request(InterestsConfig(), ctxs[0]))
    assert [t for t, _ in ctxs[0].items] == [
        "Space Wars: Galaxy Rising (1999)",
        "Robot Planet (1995)",
        "Space Wars: Dark Empire (2001)",
        "Paris Love Letters (1990)",
    ]
    with pytest.raises(ValueError, match="without a split point"):
        build_contexts(toy_split.test, ds, ["ghost"], compressor=comp)
