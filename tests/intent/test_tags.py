"""LLM_IT with the scripted backend: prompt content, freshness, interest checks, dedupe, ranking, fallback."""

from __future__ import annotations

import json

import polars as pl
import pytest

from recgpt.intent.context import UserContext
from recgpt.intent.interests import INTERESTS_SCHEMA
from recgpt.intent.tags import (
    TAGS_SCHEMA,
    TagsConfig,
    names_item,
    predict_tags,
    recent_titles,
    split_tag,
    tag_request,
    tags_model,
)
from recgpt.llm.backends.fake import FakeBackend
from recgpt.llm.engine import LLMEngine
from recgpt.llm.schema import json_schema_for
from tests.conftest import BASE_TS

DAY = 86_400
ASOF = BASE_TS + 200 * DAY  # 2000-07-19
CTX = UserContext(
    user_id="u1",
    asof_ts=ASOF,
    history="5 months ago (rated) | Heat (1995) [Action]\n2 days ago (rated) | Space Wars: Dark Empire (2001) [Sci-Fi]",
    items=(
        ("Heat (1995)", ASOF - 150 * DAY),
        ("Space Wars: Dark Empire (2001)", ASOF - 2 * DAY),
        ("Up (2009)", ASOF - 3 * DAY),
    ),
)
INTERESTS = pl.DataFrame(
    [
        {
            "user_id": "u1",
            "interest_id": 1,
            "interest": "Space opera",
            "stage": "long-term",
            "reason": "",
            "kind": "extended",
            "template": "t",
        },
        {
            "user_id": "u1",
            "interest_id": 2,
            "interest": "Crime thrillers",
            "stage": "long-term",
            "reason": "",
            "kind": "extended",
            "template": "t",
        },
    ],
    schema=INTERESTS_SCHEMA,
)


def answer(*tags: tuple[str, int]) -> str:
    return json.dumps(
        {"tags": [{"tag": t, "interest_id": i, "rationale": f"r{n}"} for n, (t, i) in enumerate(tags)]}
    )


def run(
    cfg: TagsConfig,
    script: list[str],
    contexts: list[UserContext] | None = None,
    interests: pl.DataFrame = INTERESTS,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    return predict_tags(cfg, LLMEngine(FakeBackend(script), max_retries=0), contexts or [CTX], interests)


def test_prompt_has_interests_season_and_recent_items() -> None:
    req = tag_request(
        TagsConfig(count=7, freshness_days=30), CTX, [(1, "Space opera"), (2, "Crime thrillers")]
    )
    system, user = req.messages[0].content, req.messages[-1].content
    for part in (
        "Principles",
        "Requirements",
        "Prohibited",
        "modifier + core word",
        "last 30 days",
        "Output format",
    ):
        assert part in system
    assert "2000-07-19 (July, summer)" in user
    assert "- 1: Space opera\n- 2: Crime thrillers" in user
    recent = user.split('<data name="recent_items">')[1]
    assert "Space Wars: Dark Empire (2001)" in recent and "Up (2009)" in recent and "Heat" not in recent
    assert "Give exactly 7 tags" in user and req.key == "u1" and req.template == "recgpt_tags@1"
    arr = json_schema_for(req.output_model)["properties"]["tags"]
    assert arr["minItems"] == arr["maxItems"] == 7
    assert arr["items"]["properties"]["interest_id"]["enum"] == [1, 2]  # the grammar allows only her ids
    assert tags_model(7, (1, 2)) is req.output_model
    lenient = tags_model(1, (1, 2)).model_validate(
        {"tags": [{"tag": "a b", "interest_id": 9, "rationale": ""}]}
    )
    assert lenient.tags[0].interest_id == 9  # validation stays lenient: post-processing drops it
    with pytest.raises(ValueError, match="must not be empty"):
        tags_model(3, ())


def test_modifier_core_split_and_freshness_rules() -> None:
    assert split_tag("waterproof hiking boots") == ("waterproof hiking", "boots")
    assert split_tag("boots") == ("", "boots")
    assert recent_titles(CTX, 30) == ["Space Wars: Dark Empire (2001)", "Up (2009)"]
    assert names_item("new space wars dark empire sequel", "Space Wars: Dark Empire (2001)")
    assert not names_item("dark space opera", "Space Wars: Dark Empire (2001)")
    assert names_item("up", "Up (2009)") and not names_item(
        "pick up truck toy", "Up (2009)"
    )  # short title: equality


def test_postprocessing_filters_dedupes_and_ranks_round_robin() -> None:
    cfg = TagsConfig(count=8, freshness_days=30, max_words=5)
    script = [
        answer(
            ("epic space opera novels", 1),
            ("Space Wars Dark Empire box", 1),
            ("gritty heist thriller films", 2),
            ("Epic  space opera novels.", 1),
            ("alien first contact dramas", 1),
            ("mystery tag", 9),
            ("one two three four five six", 2),
            ("heat", 2),
        )
    ]
    tags, failures = run(cfg, script)
    assert tags.columns == list(TAGS_SCHEMA) and failures.is_empty()
    # dropped: recent title (Dark Empire), duplicate, unknown interest 9, too long; "heat" is 150 days old: kept
    assert tags["tag"].to_list() == [
        "epic space opera novels",
        "gritty heist thriller films",
        "alien first contact dramas",
        "heat",
    ]
    assert tags["interest_id"].to_list() == [1, 2, 1, 2]  # round-robin over interests
    assert tags["rank"].to_list() == [1, 2, 3, 4]
    assert tags["core"][0] == "novels" and tags["modifier"][0] == "epic space opera"
    assert tags["interest"].to_list() == ["Space opera", "Crime thrillers", "Space opera", "Crime thrillers"]
    fresh0, _ = run(TagsConfig(count=8, freshness_days=0, max_words=5), script)
    assert "Space Wars Dark Empire box" in fresh0["tag"].to_list()  # no freshness window: allowed


def test_example_copies_dropped_and_failures_fall_back_to_interests() -> None:
    cfg = TagsConfig(count=2)
    ctx2 = UserContext(user_id="u2", asof_ts=ASOF)
    interests = pl.concat([INTERESTS, INTERESTS.with_columns(pl.lit("u2").alias("user_id"))])
    copied = json.dumps(
        {
            "tags": [
                {"tag": "lightweight trail running jacket", "interest_id": 1, "rationale": "x"},
                {
                    "tag": "space opera comics",
                    "interest_id": 2,
                    "rationale": "next step after the sourdough kit",
                },
            ]
        }
    )
    script = [copied, "{oops"]
    tags, failures = run(cfg, script, [CTX, ctx2], interests)
    assert failures["reason"].to_list() == ["example_copy", "invalid_json"]
    assert tags["tag"].to_list() == ["Space opera", "Crime thrillers"] * 2
    assert set(tags["rationale"]) == {"fallback: interest used as tag"}
    none, _ = run(TagsConfig(count=2, fallback_to_interests=False), script, [CTX, ctx2], interests)
    assert none.is_empty()


def test_users_without_interests_are_failures_without_a_request() -> None:
    backend = FakeBackend([])
    tags, failures = predict_tags(TagsConfig(), LLMEngine(backend), [CTX], INTERESTS.clear())
    assert tags.is_empty() and failures.rows() == [("u1", "no_interests", "no interests to tag")]
    assert backend.generate_calls == 0
    with pytest.raises(ValueError, match="lacks columns"):
        predict_tags(TagsConfig(), LLMEngine(backend), [CTX], pl.DataFrame({"user_id": ["u1"]}))
