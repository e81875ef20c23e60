"""φ (tag -> categories by item-neighbour votes) and tag HR@K on hand-made data."""

from __future__ import annotations

import polars as pl
import pytest

from recgpt.data.dataset import Dataset
from recgpt.data.split import Split
from recgpt.intent.phi import PhiConfig, TagToCategory, tag_hr
from recgpt.intent.tags import TAGS_SCHEMA, history_baseline_tags
from tests.conftest import HashEncoder


@pytest.fixture()
def phi(toy: Dataset) -> TagToCategory:
    return TagToCategory(HashEncoder(), PhiConfig(k=3, top_categories=3)).fit(toy)


def test_predict_ranks_the_neighbours_categories(phi: TagToCategory) -> None:
    out = phi.predict(["space wars galaxy", "office party comedy", "space wars galaxy", ""])
    assert out.columns == ["tag", "category", "score", "rank"]
    assert out["tag"].unique(maintain_order=True).to_list() == ["space wars galaxy", "office party comedy"]
    first = {t: g.sort("rank")["category"][0] for (t,), g in out.group_by("tag")}
    assert first == {"space wars galaxy": "Sci-Fi", "office party comedy": "Comedy"}
    assert out.group_by("tag").len()["len"].max() <= 3  # top_categories
    assert (out["score"] > 0).all()
    ranks = out.filter(pl.col("tag") == "space wars galaxy")
    assert ranks["rank"].to_list() == list(range(1, ranks.height + 1))
    assert ranks["score"].is_sorted(descending=True)


def test_split_votes_weighs_multi_category_items_once(toy: Dataset) -> None:
    split = TagToCategory(HashEncoder(), PhiConfig(k=1)).fit(toy)
    whole = TagToCategory(HashEncoder(), PhiConfig(k=1, split_votes=False)).fit(toy)
    # the single nearest item of this text is s1 (Sci-Fi, Action): its vote is halved between them
    a = split.predict(["galaxy rising"]).sort("category")
    b = whole.predict(["galaxy rising"]).sort("category")
    assert a["category"].to_list() == ["Action", "Sci-Fi"] == b["category"].to_list()
    assert a["score"].to_list() == pytest.approx([s / 2 for s in b["score"].to_list()])


def test_fit_errors_and_item_categories(toy: Dataset) -> None:
    with pytest.raises(RuntimeError, match="not fitted"):
        TagToCategory(HashEncoder()).predict(["x"])
    with pytest.raises(ValueError, match="no 'categories'"):
        TagToCategory(HashEncoder()).fit(pl.DataFrame({"item_id": ["a"], "title": ["A"]}))
    phi = TagToCategory(HashEncoder()).fit(toy)
    assert phi.categories == sorted(phi.categories)
    assert phi.item_categories(["s1", "nope"]) == [["Action", "Sci-Fi"], []]
    with pytest.raises(KeyError, match="unknown to φ"):
        phi.category_index("Western")


def _tags(rows: list[tuple[str, str]]) -> pl.DataFrame:
    return pl.DataFrame(
        [
            {
                "user_id": u,
                "tag": t,
                "modifier": "",
                "core": t,
                "interest_id": 1,
                "interest": "x",
                "rationale": "",
                "rank": i,
            }
            for i, (u, t) in enumerate(rows, start=1)
        ],
        schema=TAGS_SCHEMA,
    )


def test_tag_hr_by_hand(phi: TagToCategory, toy_split: Split) -> None:
    # test targets: u1 -> s3 (Sci-Fi, Adventure), u2 -> r3 (Romance, Comedy), u3 -> c3 (Comedy)
    tags = _tags([("u1", "space wars galaxy"), ("u2", "space wars galaxy"), ("u3", "robot planet")])
    hr = tag_hr(tags, phi, toy_split, ks=(1, 3))
    assert hr["TagHR@1"] == pytest.approx(1 / 3)  # only u1: Sci-Fi first
    assert hr["users"] == 3 and hr["users_with_tags"] == 3
    good = _tags([("u1", "space wars"), ("u2", "love story wedding"), ("u3", "office party")])
    assert tag_hr(good, phi, toy_split, ks=(1,))["TagHR@1"] == pytest.approx(1.0)
    # a user asked for tags but given none is a miss
    hr2 = tag_hr(good.filter(pl.col("user_id") != "u3"), phi, toy_split, user_ids=["u1", "u2", "u3"], ks=(1,))
    assert hr2["TagHR@1"] == pytest.approx(2 / 3) and hr2["users_with_tags"] == 2
    nobody = tag_hr(good.clear(), phi, toy_split, user_ids=["u1", "u2"], ks=(1,))
    assert nobody == {"TagHR@1": 0.0, "users": 2.0, "users_with_tags": 0.0}


def test_tag_hr_sums_scores_over_a_users_tags(phi: TagToCategory, toy_split: Split) -> None:
    # two comedy tags outvote one sci-fi tag for u3 (target Comedy)
    tags = _tags([("u3", "space wars"), ("u3", "office party"), ("u3", "funny party")])
    assert tag_hr(tags, phi, toy_split, ks=(1,))["TagHR@1"] == 1.0
    only_space = _tags([("u3", "space wars")])
    assert tag_hr(only_space, phi, toy_split, ks=(1,))["TagHR@1"] == 0.0


def test_tag_hr_errors(phi: TagToCategory, toy_split: Split) -> None:
    with pytest.raises(ValueError, match="not in the test task"):
        tag_hr(_tags([("ghost", "x")]), phi, toy_split)
    with pytest.raises(ValueError, match="'user_id' and 'tag'"):
        tag_hr(pl.DataFrame({"user_id": ["u1"]}), phi, toy_split)


def test_history_baseline_tags_use_only_the_asof_history(toy: Dataset, toy_split: Split) -> None:
    base = history_baseline_tags(toy_split.test, toy.items, ["u1"], last_n=2)
    assert base.columns == list(TAGS_SCHEMA)
    # u1's last two visible items: r1 then s2 (s3 is the held-out test target)
    assert base["tag"].to_list() == [
        "Romance",
        "Paris Love Letters (1990)",
        "Sci-Fi",
        "Space Wars: Dark Empire (2001)",
    ]
    assert base["rank"].to_list() == [1, 2, 3, 4]
    assert base["core"][0] == "Romance" and base["modifier"][1] == "Paris Love Letters"
