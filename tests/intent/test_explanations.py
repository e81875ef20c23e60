"""LLM_RE with the scripted backend: pair matching via φ, rules, fallbacks, the lookup table."""

from __future__ import annotations

import json

import polars as pl
import pytest

from recgpt.data.dataset import Dataset
from recgpt.intent.explanation_table import ExplanationTable, lookup
from recgpt.intent.explanations import (
    EXPLANATIONS_SCHEMA,
    PAIRS_SCHEMA,
    ExplanationsConfig,
    check_explanation,
    explanation_request,
    generate_explanations,
    item_explanation,
    match_pairs,
)
from recgpt.intent.phi import PhiConfig, TagToCategory
from recgpt.llm.backends.fake import FakeBackend
from recgpt.llm.engine import LLMEngine
from tests.conftest import HashEncoder

CFG = ExplanationsConfig(max_words=8, max_chars=60, phi_top_k=1, max_items_per_interest=2)


@pytest.fixture()
def phi(toy: Dataset) -> TagToCategory:
    return TagToCategory(HashEncoder(), PhiConfig(k=3)).fit(toy)


def answer(text: str) -> str:
    return json.dumps({"analysis": "the item fits the interest", "explanation": text})


def test_prompt_is_two_step() -> None:
    req = explanation_request(
        CFG,
        "Space opera",
        {"item_id": "s1", "title": "Space Wars: Galaxy Rising (1999)", "categories": ["Sci-Fi", "Action"]},
    )
    system, user = req.messages[0].content, req.messages[-1].content
    assert "1. Analysis" in system and "2. Explanation" in system and "Prohibited" in system
    assert "at most 8 words" in system
    assert "Space Wars: Galaxy Rising (1999) [Sci-Fi/Action]" in user and "Space opera" in user
    assert req.key == "s1|Space opera" and req.template == "recgpt_explanation@1"
    assert list(req.output_model.model_fields) == ["analysis", "explanation"]  # reasoning first


def test_rules() -> None:
    title = "Space Wars: Galaxy Rising (1999)"
    assert check_explanation(CFG, ' "Big battles for your space nights." ', title) == (
        "Big battles for your space nights",
        None,
    )
    assert check_explanation(CFG, "A practical pick", title)[1] == "prohibited word 'practical'"
    assert check_explanation(CFG, "Works 100% of the time", title)[1] == "prohibited word '100%'"
    assert check_explanation(CFG, "A must-watch for fans", title)[1] == "prohibited word 'must-watch'"
    assert check_explanation(CFG, "Impractically fun space battles", title)[1] is None  # whole words only
    assert (
        check_explanation(CFG, "Watch Space Wars Galaxy Rising tonight", title)[1] == "repeats the item title"
    )
    assert (
        check_explanation(CFG, "Robot Planet (1995) rocks", "Robot Planet (1995)")[1]
        == "repeats the item title"
    )
    assert check_explanation(CFG, "   ", title)[1] == "empty"
    assert check_explanation(CFG, "Galaxy [Sci-Fi/Action] fun", title)[1] == "copies the item label"
    assert check_explanation(CFG, "Dry feet for your muddy trail miles", title)[1] == "copies the example"
    long = "Huge starship battles and clever robots for every fan of space opera stories"
    text, broken = check_explanation(CFG, long, title)
    assert (text, broken) == (
        "Huge starship battles and clever robots",
        None,
    )  # cut at 8, "for every" dropped
    assert check_explanation(CFG.model_copy(update={"on_too_long": "fallback"}), long, title)[1] == "too long"


def test_match_pairs_by_phi_categories(phi: TagToCategory) -> None:
    pairs = match_pairs(CFG, ["space wars", "office party", "space wars"], phi)
    assert pairs.columns == list(PAIRS_SCHEMA)
    by = {i: g for (i,), g in pairs.group_by("interest")}
    assert set(by["space wars"]["category"]) == {"Sci-Fi"}
    assert set(by["space wars"]["item_id"]) <= {"s1", "s2", "s3", "s4"} and by["space wars"].height == 2
    assert set(by["office party"]["item_id"]) <= {"c1", "c2", "c3", "r3"}
    restricted = match_pairs(CFG, ["space wars"], phi, item_ids=["s4", "r1", "unknown"])
    assert restricted["item_id"].to_list() == ["s4"]
    assert match_pairs(CFG, [], phi).is_empty()


def test_generation_enforces_rules_with_fallbacks(toy: Dataset, phi: TagToCategory) -> None:
    pairs = pl.DataFrame(
        {
            "interest": ["Space opera", "Space opera", "romance"],
            "item_id": ["s1", "s2", "r1"],
            "category": ["Sci-Fi", "Sci-Fi", "Romance"],
            "score": [0.9, 0.8, 0.7],
        }
    )
    script = [answer("Starship duels for your space nights"), answer("A truly elegant film"), "nonsense"]
    table = generate_explanations(CFG, LLMEngine(FakeBackend(script), max_retries=0), pairs, toy.items)
    assert table.columns == list(EXPLANATIONS_SCHEMA)
    assert table["explanation"].to_list() == [
        "Starship duels for your space nights",
        "Sci-Fi pick for fans of Space opera",
        "Another Romance pick for you",  # the interest is the category itself
    ]
    assert table["fallback"].to_list() == [False, True, True]
    assert table["template"].to_list() == ["recgpt_explanation@1", "rule:pair", "rule:pair"]
    assert table["source"].to_list() == ["llm", "template:pair", "template:pair"]  # every template marked
    with pytest.raises(KeyError, match="not in the items table"):
        generate_explanations(
            CFG, LLMEngine(FakeBackend([])), pairs.with_columns(pl.lit("zz").alias("item_id")), toy.items
        )


def test_serving_lookup_and_item_only_fallback(toy: Dataset) -> None:
    table = pl.DataFrame(
        {
            "interest": ["Space opera"],
            "item_id": ["s1"],
            "explanation": ["Starship duels"],
            "template": ["recgpt_explanation@1"],
            "fallback": [False],
            "source": ["llm"],
        },
        schema=EXPLANATIONS_SCHEMA,
    )
    assert lookup(table, "space  OPERA", "s1") == "Starship duels"
    assert lookup(table, "Romance", "s1") is None
    served = ExplanationTable(table, toy.items, CFG, popularity={"s2": 10.0, "s4": 1.0})
    assert served.get("Space opera", "s1") == ("Starship duels", False)
    assert served.explain(["Romance", "Space opera"], "s1") == ("Starship duels", False)
    # item-only: s2 is the most popular Sci-Fi item (top 10% of 4 -> 1 item); s4 is not
    assert served.get("Romance", "s2") == ("Popular in Sci-Fi", True)
    assert served.explain([], "s4") == ("More Sci-Fi to explore", True)
    assert ExplanationTable(table, toy.items, CFG).get(None, "s2") == ("More Sci-Fi to explore", True)
    with pytest.raises(KeyError, match="not in the items table"):
        served.item_only("zz")
    cands = pl.DataFrame({"user_id": ["u", "u"], "item_id": ["s1", "s4"], "interest": ["Space opera", None]})
    out = served.annotate(cands)
    assert out["explanation"].to_list() == ["Starship duels", "More Sci-Fi to explore"]
    assert out["explanation_fallback"].to_list() == [False, True]
    assert out["explanation_source"].to_list() == ["llm", "template:item"]
    assert served.serve(["Romance", "Space opera"], "s1") == ("Starship duels", "llm")
    assert served.serve([None], "s4") == ("More Sci-Fi to explore", "template:item")
    legacy = ExplanationTable(table.drop("source"), toy.items, CFG)  # a table from before `source`
    assert legacy.serve(["Space opera"], "s1") == ("Starship duels", "llm")


def test_item_only_text_obeys_length_rules() -> None:
    cfg = ExplanationsConfig(max_words=4, max_chars=30)
    row = {"item_id": "x", "title": "T", "categories": ["Abrasive & Finishing Products Manual Sanding Rolls"]}
    text = item_explanation(cfg, row)
    assert len(text.split()) <= 4 and len(text) <= 30 and text.startswith("More Abrasive")
    assert item_explanation(cfg, {"item_id": "y", "title": "Bare Item (2001)"}) == "Bare Item (2001)"
