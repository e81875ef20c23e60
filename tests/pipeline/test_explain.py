"""Stage 10 (issue 12): which interest an explained slot speaks to, and who wrote every served text."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from recgpt.data.dataset import Dataset
from recgpt.intent.explanation_table import llm_share
from recgpt.intent.explanations import SOURCE_ITEM, SOURCE_LLM, SOURCES, ExplanationsConfig
from recgpt.intent.phi import PhiConfig, TagToCategory
from recgpt.pipeline.explain import explanation_pairs
from tests.conftest import HashEncoder

INVENTED = "sourdough baking love kit"  # shares one word ("love") with a romance title, nothing else


@pytest.fixture()
def phi(toy: Dataset) -> TagToCategory:
    return TagToCategory(HashEncoder(), PhiConfig(k=3)).fit(toy)


def _top(rows: list[tuple[str, str | None]]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "user_id": ["u"] * len(rows),
            "rank": list(range(1, len(rows) + 1)),
            "item_id": [r[0] for r in rows],
            "interest": [r[1] for r in rows],
        },
        schema={"user_id": pl.String(), "rank": pl.Int64(), "item_id": pl.String(), "interest": pl.String()},
    )


def test_a_classic_item_gets_only_an_interest_it_matches(phi: TagToCategory) -> None:
    interests = pl.DataFrame(
        {"user_id": ["u", "u"], "interest_id": [1, 2], "interest": [INVENTED, "Space Wars"]}
    )
    top = _top([("s1", None), ("r1", None), ("c1", "Space Wars")])  # two classic items, one RecGPT item
    loose = explanation_pairs(ExplanationsConfig(attach_similarity=-1.0), phi, top, interests)
    assert loose["interest"].to_list()[1] == INVENTED  # φ alone attaches the invented interest ...
    slots = explanation_pairs(ExplanationsConfig(), phi, top, interests)
    got = dict(zip(slots["item_id"].to_list(), slots["interest"].to_list(), strict=True))
    assert got["s1"] == "Space Wars"  # a classic item the interest truly matches
    assert got["r1"] is None  # ... the floor does not: the romance item is explained on its own
    assert got["c1"] == "Space Wars"  # a RecGPT item keeps the interest that retrieved it
    assert INVENTED not in slots["interest"].to_list()
    assert slots.filter(pl.col("item_id") == "c1")["category"].to_list() == [None]  # φ did not match it


def test_llm_share_counts_every_source() -> None:
    share = llm_share([SOURCE_LLM, SOURCE_ITEM, "template:pair", SOURCE_LLM, None])
    assert share == {
        "served": 4,
        "by_source": {"llm": 2, "template:pair": 1, "template:item": 1},
        "llm_share": 0.5,
    }
    assert llm_share([])["llm_share"] == 0.0


def test_the_run_marks_every_template_and_reports_the_llm_share(finished_run: Path) -> None:
    served = pl.read_parquet(finished_run / "10_explanations/served.parquet")
    table = pl.read_parquet(finished_run / "10_explanations/explanations.parquet")
    assert set(served["source"]) <= set(SOURCES) and set(table["source"]) <= {"llm", "template:pair"}
    assert (table["source"] == "template:pair").to_list() == table["fallback"].to_list()
    assert (served["source"] == SOURCE_ITEM).to_list() == served["item_only"].to_list()
    assert served.filter(pl.col("explained_interest").is_null())["source"].to_list() == [SOURCE_ITEM] * int(
        served["explained_interest"].null_count()
    )
    # a classic item never speaks to an interest that did not produce it unless φ and the floor agree:
    # with the scripted chain's toy interests, no baseline slot names an interest outside the user's own
    interests = pl.read_parquet(finished_run / "03_interests/interests.parquet")
    own = {(u, i) for u, i in interests.select("user_id", "interest").iter_rows()}
    for u, i in (
        served.filter(pl.col("explained_interest").is_not_null())
        .select("user_id", "explained_interest")
        .iter_rows()
    ):
        assert (u, i) in own
    stats = json.loads((finished_run / "10_explanations/done.json").read_text())["stats"]
    share = stats["served_explanations"]
    assert share["served"] == served.height
    assert share["by_source"]["llm"] == int((served["source"] == "llm").sum())
    html = (finished_run / "report.html").read_text()
    assert f"{share['by_source']['llm']} of {share['served']}" in html and "written by the LLM" in html
    if share["by_source"][SOURCE_ITEM]:
        assert "[template: item only]" in html
