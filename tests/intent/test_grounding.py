"""Tags grounded in the catalogue: the vocabulary, the schema's enum, and off-vocabulary answers dropped."""

from __future__ import annotations

import json

import polars as pl
import pytest

from recgpt.intent.context import UserContext
from recgpt.intent.grounding import build_vocabulary, grounded_share, grounded_tags_model
from recgpt.intent.interests import INTERESTS_SCHEMA
from recgpt.intent.tags import TagsConfig, predict_tags, tag_request
from recgpt.llm.backends.fake import FakeBackend
from recgpt.llm.engine import LLMEngine
from recgpt.llm.schema import json_schema_for
from tests.conftest import BASE_TS

ITEMS = pl.DataFrame(
    {
        "item_id": [f"i{n}" for n in range(8)],
        "title": [
            "Digital Compound Microscope 40X",
            "Student Compound Microscope",
            "Glass Petri Dish, 10 pack",
            "Borosilicate Glass Beaker 250ml",
            "Glass Beaker Set",
            "Digital Lab Scale",
            "Compound Microscope Slides",
            "Safety Goggles",
        ],
        "categories": [
            ["Industrial", "Lab", "Microscopes"],
            ["Industrial", "Lab", "Microscopes"],
            ["Industrial", "Lab", "Petri Dishes"],
            ["Industrial", "Lab", "Beakers"],
            ["Industrial", "Lab", "Beakers"],
            ["Industrial", "Lab", "Scales"],
            ["Industrial", "Lab", "Microscopes"],
            ["Industrial", "Safety", "Goggles"],
        ],
    }
)
CTX = UserContext("u1", BASE_TS + 100 * 86_400, history="1 day ago (purchased) | Student Compound Microscope")
INTERESTS = pl.DataFrame(
    [
        {
            "user_id": "u1",
            "interest_id": 1,
            "interest": "Microscopy",
            "stage": "long-term",
            "reason": "",
            "kind": "extended",
            "template": "t",
        }
    ],
    schema=INTERESTS_SCHEMA,
)


def test_vocabulary_is_leaf_categories_then_frequent_title_phrases() -> None:
    vocab = build_vocabulary(ITEMS, 50, min_titles=2)
    assert vocab.phrases[0] == "microscopes"  # the most frequent leaf first
    assert {"beakers", "petri dishes", "goggles"} <= set(vocab.phrases)
    assert "compound microscope" in vocab.phrases and "glass beaker" in vocab.phrases
    assert "industrial" not in vocab.phrases  # roots are not leaves
    assert vocab.cores[:2] == ("microscopes", "beakers") and "dishes" in vocab.cores
    assert "glass" in vocab.cores  # a frequent title word fills up after the leaves' heads
    small = build_vocabulary(ITEMS, 3, min_titles=2)
    assert len(small.phrases) == len(small.cores) == 3
    with pytest.raises(ValueError, match="'title'"):
        build_vocabulary(ITEMS.drop("title"))


@pytest.mark.parametrize(("mode", "field"), [("core", "core"), ("tag", "tag")])
def test_the_schema_holds_the_vocabulary_as_an_enum(mode: str, field: str) -> None:
    vocab = build_vocabulary(ITEMS, 50, min_titles=2)
    req = tag_request(TagsConfig(count=2, grounding=mode), CTX, [(1, "Microscopy")], vocabulary=vocab)  # type: ignore[arg-type]
    schema = json_schema_for(req.output_model)
    item = schema["properties"]["tags"]["items"]  # inlined by json_schema_for
    assert item["properties"][field]["enum"] == list(vocab.terms(mode))  # type: ignore[arg-type]
    assert item["properties"]["interest_id"]["enum"] == [1]
    with pytest.raises(ValueError, match="needs the catalogue's vocabulary"):
        tag_request(TagsConfig(grounding=mode), CTX, [(1, "Microscopy")])  # type: ignore[arg-type]
    # the model class (its name enters the cache key) is the same for the same vocabulary
    assert grounded_tags_model(2, (1,), mode, vocab.terms(mode)) is req.output_model  # type: ignore[arg-type]


def _core_answer(*pairs: tuple[str, str]) -> str:
    rows = [{"modifier": m, "core": c, "interest_id": 1, "rationale": "for the lab"} for m, c in pairs]
    return json.dumps({"tags": rows})


def test_a_grounded_answer_outside_the_vocabulary_is_dropped() -> None:
    cfg = TagsConfig(count=3, grounding="core", vocabulary_size=50)
    script = [
        _core_answer(
            ("oil immersion", "microscopes"), ("quantum hiking", "drone"), ("graduated glass", "Beakers")
        )
    ]
    tags, failures = predict_tags(
        cfg, LLMEngine(FakeBackend(script), max_retries=0), [CTX], INTERESTS, catalogue=ITEMS
    )
    assert tags["tag"].to_list() == ["oil immersion microscopes", "graduated glass beakers"]
    assert tags["core"].to_list() == ["microscopes", "beakers"] and failures.is_empty()
    assert grounded_share(tags, build_vocabulary(ITEMS, 50)) == 1.0
    # a modifier that already ends with the core word does not repeat it
    again = predict_tags(
        TagsConfig(count=1, grounding="core"),
        LLMEngine(FakeBackend([_core_answer(("lab beakers", "beakers"))] * 3), max_retries=0),
        [CTX],
        INTERESTS,
        catalogue=ITEMS,
    )[0]
    assert "lab beakers" in again["tag"].to_list()


def test_every_off_vocabulary_answer_means_the_fallback() -> None:
    cfg = TagsConfig(count=1, grounding="tag", reasks=1)
    script = [json.dumps({"tags": [{"tag": "space drone", "interest_id": 1, "rationale": "r"}]})] * 2
    tags, failures = predict_tags(
        cfg, LLMEngine(FakeBackend(script), max_retries=0), [CTX], INTERESTS, catalogue=ITEMS
    )
    assert failures["reason"].to_list() == ["empty"] and tags["rationale"].to_list() == [
        "fallback: interest used as tag"
    ]
    with pytest.raises(ValueError, match="needs the catalogue"):
        predict_tags(cfg, LLMEngine(FakeBackend(script)), [CTX], INTERESTS)
