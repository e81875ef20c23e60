"""Best-of-n for LLM_UI / LLM_IT with the scripted backend: the better sample wins, all-empty falls
back with its reason, grounding and judge checks add to the score, the tables record the choice."""

from __future__ import annotations

import json

import pytest

from recgpt.intent.bestofn import AnswerScorer, catalogue_grounding, distinctness
from recgpt.intent.interests import FAILURES_SCHEMA, InterestsConfig, mine_interests
from recgpt.intent.tags import TAGS_SCHEMA, TagsConfig
from recgpt.llm.backends.fake import FakeBackend
from recgpt.llm.engine import LLMEngine
from tests.conftest import HashEncoder
from tests.intent.test_tags import CTX, answer, run


def test_n1_tables_record_one_sample_and_the_defaults_are_unchanged() -> None:
    assert TagsConfig().n_samples == 1 and InterestsConfig().n_samples == 1
    tags, failures = run(
        TagsConfig(count=2), [answer(("epic space opera novels", 1), ("gritty heist films", 2))]
    )
    assert tags.columns == list(TAGS_SCHEMA) and failures.is_empty()
    assert set(tags["samples"]) == {1} and set(tags["sample"]) == {0}


def test_best_of_n_keeps_the_sample_with_more_kept_and_distinct_tags() -> None:
    script = [
        answer(("heat", 9), ("space opera box", 1)),  # one tag kept (interest 9 is not hers)
        answer(("epic space opera novels", 1), ("gritty heist films", 2)),  # two kept: wins
        answer(("space opera", 1), ("space opera films", 2)),  # two kept, but less distinct
    ]
    tags, failures = run(TagsConfig(count=2, n_samples=3), script)
    assert failures.is_empty()
    assert tags["tag"].to_list() == ["epic space opera novels", "gritty heist films"]
    assert set(tags["samples"]) == {3} and set(tags["sample"]) == {1}
    assert tags["sample_score"][0] == pytest.approx(2 + distinctness(tags["tag"].to_list()), abs=1e-6)


def test_all_samples_empty_fall_back_and_say_how_many_were_drawn() -> None:
    empty = answer(("mystery tag", 9), ("other tag", 9))
    tags, failures = run(TagsConfig(count=2, n_samples=2, reasks=1), [empty] * 3)
    assert failures.columns == list(FAILURES_SCHEMA) and failures["reason"].to_list() == ["empty"]
    assert "(all 3 answers)" in failures["detail"][0]
    assert tags["rationale"].to_list() == ["fallback: interest used as tag"] * 2
    assert tags["sample"].to_list() == [None, None] and set(tags["samples"]) == {3}


def test_grounding_and_judge_checks_add_to_the_score() -> None:
    enc = HashEncoder()
    ground = catalogue_grounding(enc, ["Epic Space Opera Novels", "Garden hose"], floor=0.99)
    rows = [{"tag": "epic space opera novels"}, {"tag": "gritty heist films"}]
    assert list(ground(CTX, rows)) == [True, False]
    no_cat = catalogue_grounding(
        enc, ["Epic Space Opera Novels"], floor=0.99, category_of=lambda ts: [None] * len(ts)
    )
    assert list(no_cat(CTX, rows)) == [False, False]
    plain = AnswerScorer("tag")(CTX, rows)
    assert AnswerScorer("tag", grounding=ground)(CTX, rows) == pytest.approx(plain + 1)
    assert AnswerScorer("tag", grounding=ground, judge=lambda c, r: [True] * len(r))(
        CTX, rows
    ) == pytest.approx(plain + 3)
    with pytest.raises(ValueError, match="verdicts"):
        AnswerScorer("tag", judge=lambda c, r: [True])(CTX, rows)
    # a grounded sample beats an ungrounded one with as many kept tags
    script = [
        answer(("gritty heist films", 2), ("dark crime dramas", 2)),
        answer(("epic space opera novels", 1), ("dark crime dramas", 2)),
    ]
    from recgpt.intent.tags import predict_tags
    from tests.intent.test_tags import INTERESTS

    scorer = AnswerScorer("tag", grounding=ground)
    tags, _ = predict_tags(
        TagsConfig(count=2, n_samples=2), LLMEngine(FakeBackend(script)), [CTX], INTERESTS, scorer=scorer
    )
    assert tags["sample"].to_list() == [1, 1] and "epic space opera novels" in tags["tag"].to_list()


def test_interests_best_of_n() -> None:
    def interests(*names: str) -> str:
        items = [
            {"id": i, "interest": n, "stage": "long-term", "reason": "r"} for i, n in enumerate(names, 1)
        ]
        return json.dumps({"interests": items})

    script = [interests("Trail running", "Trail running"), interests("Space opera", "Crime thrillers")]
    table, failures = mine_interests(
        InterestsConfig(count=2, n_samples=2), LLMEngine(FakeBackend(script)), [CTX]
    )
    assert failures.is_empty() and table["interest"].to_list() == ["Space opera", "Crime thrillers"]
    assert table["sample"].to_list() == [1, 1] and set(table["samples"]) == {2}


def test_a_calibrated_judge_votes_per_row() -> None:
    from recgpt.judge.bestofn import judge_check

    check = judge_check(lambda t: t.filter(~t["output"].str.contains("meh")), "tags")
    rows = [
        {"tag": "epic space opera novels", "interest": "Space opera"},
        {"tag": "meh heist films", "interest": "Crime thrillers"},
    ]
    assert check(CTX, rows) == [True, False]
    scorer = AnswerScorer("tag", judge=check)
    assert scorer(CTX, rows) == pytest.approx(AnswerScorer("tag")(CTX, rows) + 1)
    with pytest.raises(ValueError, match="not 'explanations'"):
        judge_check(lambda t: t, "explanations")
