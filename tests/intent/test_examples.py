"""Few-shot copies (issue 12): example phrases read from the templates, exact and near copies are
failures unless the user's own history holds their words."""

from __future__ import annotations

import json

import numpy as np
import polars as pl

from recgpt.intent.context import UserContext
from recgpt.intent.examples import CopyLog, ExampleFilter, evidence_stems, is_near, stems, template_examples
from recgpt.intent.explanations import ExplanationsConfig, check_explanation
from recgpt.intent.interests import EXAMPLE_INTERESTS, INTERESTS_SCHEMA, InterestsConfig, mine_interests
from recgpt.intent.tags import EXAMPLE_TAGS, TagsConfig, predict_tags
from recgpt.llm.backends.fake import FakeBackend
from recgpt.llm.engine import LLMEngine
from tests.conftest import BASE_TS

DAY = 86_400
ASOF = BASE_TS + 200 * DAY
SCIENCE = UserContext(  # an Amazon science-catalogue user: nothing about running or baking
    user_id="sci",
    asof_ts=ASOF,
    history="3 months ago (purchased) | Borosilicate Beaker Set 250ml [Lab/Glassware]\n"
    "1 month ago (purchased) | Digital Caliper 150mm [Measuring/Calipers]",
    pool=("Glassware", "Calipers", "Lab supplies"),
    items=(("Borosilicate Beaker Set 250ml", ASOF - 90 * DAY), ("Digital Caliper 150mm", ASOF - 30 * DAY)),
)
BAKER = UserContext(  # a user whose history truly is about baking
    user_id="baker",
    asof_ts=ASOF,
    history="6 months ago (purchased) | Bread Baking Handbook [Books/Baking]\n"
    "2 months ago (purchased) | Sourdough Bread Proofing Basket [Kitchen/Baking]",
    pool=("Baking", "Bread"),
    items=(("Bread Baking Handbook", ASOF - 180 * DAY), ("Sourdough Bread Proofing Basket", ASOF - 60 * DAY)),
)
INTEREST_COPIES = ExampleFilter(["recgpt_interests"], ("interest", "input"))
TAG_COPIES = ExampleFilter(["recgpt_tags"], ("tag", "input"))


def interests_answer(*names: str) -> str:
    rows = [
        {"id": i, "interest": n, "stage": "long-term", "reason": "seen often"} for i, n in enumerate(names, 1)
    ]
    return json.dumps({"interests": rows})


def tags_answer(*tags: str) -> str:
    return json.dumps({"tags": [{"tag": t, "interest_id": 1, "rationale": "fits the history"} for t in tags]})


def test_example_phrases_come_from_the_templates() -> None:
    texts = {(p.field, p.text) for p in template_examples("recgpt_tags")}
    # the example's answer, its recent items and its history search: whatever the model saw
    assert ("tag", "cast iron bread baking pot") in texts
    assert ("input", "Sourdough Starter Kit") in texts and ("input", "marathon training plan") in texts
    assert ("input", "age 34, gender F") not in texts  # the profile names no item or interest
    assert tuple(p.text for p in template_examples("recgpt_tags") if p.field == "tag") == EXAMPLE_TAGS
    assert EXAMPLE_INTERESTS == ("Trail running", "Marathon training", "Home baking")
    assert {"Baking", "Running", "Cycling"} <= {p.text for p in template_examples("recgpt_interests")}


def test_normalised_and_near_copies_of_the_issues_examples() -> None:
    assert stems("Sourdough starter-KITS!") == stems("kit starter sourdough")
    assert is_near(stems("Marathon training plan"), stems("Marathon training"))  # contained, 2/3
    assert is_near(stems("Baking"), stems("Home baking"))  # contained, 1/2
    assert not is_near(stems("chemistry starter kit"), stems("Sourdough Starter Kit"))  # 1/2, not contained
    assert not is_near(stems("Running"), stems("Trail Running Shoes"))  # 1/3
    evidence = evidence_stems([SCIENCE.history, *SCIENCE.pool])
    for name in ("Marathon training plan", "Baking", "Home baking", "marathon-training"):
        assert INTEREST_COPIES.copy_of(name, evidence) is not None, name
    assert TAG_COPIES.copy_of("Sourdough Starter Kit", evidence) is not None
    assert TAG_COPIES.copy_of("sourdough starter kits", evidence) is not None
    for real in ("Laboratory glassware", "Precision calipers", "chemistry starter kit"):
        assert INTEREST_COPIES.copy_of(real, evidence) is None and TAG_COPIES.copy_of(real, evidence) is None


def test_a_genuine_baking_answer_from_a_baking_history_is_kept() -> None:
    evidence = evidence_stems([BAKER.history, *BAKER.pool])
    assert INTEREST_COPIES.match("Baking") is not None  # it does match the example ...
    assert INTEREST_COPIES.copy_of("Baking", evidence) is None  # ... but the history holds its words
    assert INTEREST_COPIES.copy_of("Bread baking", evidence) is None
    engine = LLMEngine(FakeBackend([interests_answer("Baking", "Bread baking")]), max_retries=0)
    interests, failures = mine_interests(InterestsConfig(count=2, reasks=0), engine, [BAKER])
    assert interests["interest"].to_list() == ["Baking", "Bread baking"] and failures.is_empty()


def test_an_answer_of_copies_is_an_example_copy_failure_on_fallback() -> None:
    cfg = InterestsConfig(count=3, reasks=1)
    copied = interests_answer("Marathon training plan", "Baking", "Home baking")
    engine = LLMEngine(FakeBackend([copied, copied]), max_retries=0)
    interests, failures = mine_interests(cfg, engine, [SCIENCE])
    assert failures["reason"].to_list() == ["example_copy"] and "copied" in failures["detail"][0]
    assert set(interests["template"]) == {"pool-fallback"}  # the user is on fallback
    assert not {"Marathon training plan", "Baking", "Home baking"} & set(interests["interest"])
    # a partial copy drops only the copy: the user keeps the real interests, no failure
    engine = LLMEngine(FakeBackend([interests_answer("Lab glassware", "Baking", "Precision calipers")]))
    interests, failures = mine_interests(cfg, engine, [SCIENCE])
    assert interests["interest"].to_list() == ["Lab glassware", "Precision calipers"] and failures.is_empty()


def test_sourdough_tags_are_example_copy_failures() -> None:
    mine = pl.DataFrame(
        [
            {
                "user_id": "sci",
                "interest_id": 1,
                "interest": "Lab glassware",
                "stage": "long-term",
                "reason": "",
                "kind": "listed",
                "template": "t",
            }
        ],
        schema=INTERESTS_SCHEMA,
    )
    copied = tags_answer("Sourdough Starter Kit", "cast iron baking pot")
    engine = LLMEngine(FakeBackend([copied]), max_retries=0)
    tags, failures = predict_tags(TagsConfig(count=2, reasks=0), engine, [SCIENCE], mine)
    assert failures["reason"].to_list() == ["example_copy"]
    assert tags["tag"].to_list() == ["Lab glassware"]  # fallback: the interest as the tag
    rationale_copy = json.dumps(
        {"tags": [{"tag": "glass stirring rods", "interest_id": 1, "rationale": "Sourdough Starter Kit"}]}
    )
    engine = LLMEngine(FakeBackend([rationale_copy]), max_retries=0)
    tags, failures = predict_tags(TagsConfig(count=1, reasks=0), engine, [SCIENCE], mine)
    assert failures["reason"].to_list() == ["example_copy"]  # a copied rationale counts too (SmolLM2 did)
    engine = LLMEngine(FakeBackend([tags_answer("Sourdough Starter Kit", "graduated glass beakers")]))
    tags, failures = predict_tags(TagsConfig(count=2, reasks=0), engine, [SCIENCE], mine)
    assert tags["tag"].to_list() == ["graduated glass beakers"] and failures.is_empty()


def test_copies_dropped_from_partially_kept_answers_are_counted() -> None:
    """An answer keeping one real tag (interest) and losing one example copy is no failure, but the
    dropped copy still counts: `copies.total` is what the stage reports as `example_copies`."""
    mine = pl.DataFrame(
        [{"user_id": "sci", "interest_id": 1, "interest": "Lab glassware", "stage": "long-term"}],
        schema={k: INTERESTS_SCHEMA[k] for k in ("user_id", "interest_id", "interest", "stage")},
    )
    tag_copies = CopyLog()
    engine = LLMEngine(FakeBackend([tags_answer("graduated glass beakers", "Sourdough Starter Kit")]))
    tags, failures = predict_tags(TagsConfig(count=2, reasks=0), engine, [SCIENCE], mine, copies=tag_copies)
    assert tags["tag"].to_list() == ["graduated glass beakers"] and failures.is_empty()
    assert tag_copies.total == 1 and tag_copies.last == {"sci": 1}
    interest_copies = CopyLog()
    engine = LLMEngine(FakeBackend([interests_answer("Lab glassware", "Marathon training plan")]))
    interests, failures = mine_interests(
        InterestsConfig(count=2, reasks=0), engine, [SCIENCE], copies=interest_copies
    )
    assert interests["interest"].to_list() == ["Lab glassware"] and failures.is_empty()
    assert interest_copies.total == 1


def test_embedding_similarity_flags_paraphrases_when_an_encoder_is_given() -> None:
    class Same:  # every text the same vector: cosine 1 to every example phrase
        def encode(self, texts: list[str]) -> np.ndarray:
            return np.ones((len(texts), 4), dtype=np.float32) / 2

    assert INTEREST_COPIES.match("Long-distance jogging") is None
    assert INTEREST_COPIES.match("Long-distance jogging", Same()) is not None


def test_explanations_that_nearly_copy_the_example_break_a_rule() -> None:
    cfg = ExplanationsConfig()
    assert (
        check_explanation(cfg, "Dry feet for your muddy trail miles!", "Wool Socks")[1]
        == "copies the example"
    )
    assert check_explanation(cfg, "dry feet on muddy trail miles", "Wool Socks")[1] == "copies the example"
    assert check_explanation(cfg, "Warm feet on winter hikes", "Wool Socks")[1] is None
    # SmolLM2 on Pulp Fiction for "Crime thrillers": the example's analysis, reworded
    smol = "Dry feet for long muddy runs, which suits trail running"
    assert check_explanation(cfg, smol, "Pulp Fiction", "Crime thrillers Pulp Fiction [Crime]")[1] == (
        "copies the example"
    )
    assert (
        check_explanation(cfg, "Warm wool socks for trail runs", "Hiking Socks", "Trail running")[1] is None
    )
