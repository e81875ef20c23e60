"""φ (tag -> categories by item-neighbour votes), the paper's tag HR@K (one category per tag, first K
tags, one category level) and its reference rows, on hand-made data."""

from __future__ import annotations

import polars as pl
import pytest

from recgpt.data.categories import categories_at_level
from recgpt.data.dataset import Dataset, Manifest
from recgpt.data.split import Split, make_split
from recgpt.intent.phi import PhiConfig, TagToCategory, tag_hr
from recgpt.intent.reference import (
    history_baseline_tags,
    reference_rows,
    separability,
    tag_hr_stats,
    tag_hr_table,
)
from recgpt.intent.tags import TAGS_SCHEMA
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
    assert nobody == {"TagHR@1": 0.0, "users": 2.0, "users_with_tags": 0.0, "users_scored": 2.0}


def test_tag_hr_looks_at_the_first_k_tags_in_rank_order(phi: TagToCategory, toy_split: Split) -> None:
    # u3 (target Comedy): the first tag maps to Sci-Fi, the second to Comedy
    tags = _tags([("u3", "space wars"), ("u3", "office party"), ("u3", "funny party")])
    hr = tag_hr(tags, phi, toy_split, ks=(1, 2))
    assert hr["TagHR@1"] == 0.0 and hr["TagHR@2"] == 1.0
    # the rank column decides the order, not the table's row order
    flipped = tags.with_columns(pl.Series("rank", [3, 1, 2]))
    assert tag_hr(flipped, phi, toy_split, ks=(1,))["TagHR@1"] == 1.0
    # a tag repeated for one user takes one slot
    repeated = _tags([("u3", "space wars"), ("u3", "space wars"), ("u3", "office party")])
    assert tag_hr(repeated, phi, toy_split, ks=(2,))["TagHR@2"] == 1.0


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


# ---------------------------------------------------------------- the cases on a path catalogue

# every path starts at one root ("Store"); leaves: Hoses, Dog Food, Cat Toys, Microscopes, Slides, Pipettes
SHOP = {
    "f1": ("Garden Hose Deluxe", ["Store", "Garden", "Hoses"]),
    "f2": ("Garden Hose Reel", ["Store", "Garden", "Hoses"]),
    "f3": ("Dog Food Chicken", ["Store", "Pets", "Dog Food"]),
    "f4": ("Dog Food Beef", ["Store", "Pets", "Dog Food"]),
    "f5": ("Cat Toy Mouse", ["Store", "Pets", "Cat Toys"]),
    "f6": ("Lab Microscope", ["Store", "Lab", "Microscopes"]),
    "f7": ("Lab Microscope Slides", ["Store", "Lab", "Slides"]),
    "f8": ("Lab Pipette", ["Store", "Lab", "Pipettes"]),
}
# the last item of each user is its test target: ua -> Slides, ub -> Dog Food, uc -> Hoses
SHOP_EVENTS = {
    "ua": ["f6", "f8", "f1", "f6", "f7"],
    "ub": ["f3", "f5", "f8", "f3", "f4"],
    "uc": ["f1", "f3", "f6", "f1", "f2"],
}
SHOP_USERS = list(SHOP_EVENTS)
UNRELATED = ["sofa", "kettle", "violin", "tyre", "lipstick", "chess", "curtain", "helmet", "saddle", "ink"]


@pytest.fixture(scope="module")
def shop() -> Dataset:
    items = pl.DataFrame(
        {
            "item_id": list(SHOP),
            "title": [t for t, _ in SHOP.values()],
            "categories": [c for _, c in SHOP.values()],
        }
    )
    rows = [(u, i) for u, seq in SHOP_EVENTS.items() for i in seq]
    events = pl.DataFrame(
        {
            "event_id": list(range(len(rows))),
            "user_id": [u for u, _ in rows],
            "item_id": [i for _, i in rows],
            "behavior": ["purchase"] * len(rows),
            "timestamp": [946_684_800 + n * 86_400 for n in range(len(rows))],
        }
    )
    users = pl.DataFrame({"user_id": SHOP_USERS})
    manifest = Manifest(name="shop", source="test", extra={"category_structure": "path"})
    return Dataset.build(items, users, events, manifest)


@pytest.fixture(scope="module")
def shop_split(shop: Dataset) -> Split:
    return make_split(shop)


def _shop_phi(shop: Dataset, level: str | int = "leaf") -> TagToCategory:
    return TagToCategory(HashEncoder(), PhiConfig(k=3)).fit(shop, level)


RELEVANT = [("ua", "microscope slides"), ("ub", "dog food"), ("uc", "garden hose")]


def test_unrelated_and_constant_root_tags_lose_to_relevant_tags(shop: Dataset, shop_split: Split) -> None:
    phi = _shop_phi(shop)
    assert phi.level_name == "leaf" and "Store" not in phi.categories
    relevant = tag_hr(_tags(RELEVANT), phi, shop_split)
    assert relevant["TagHR@10"] == 1.0
    # ten tags that have nothing to do with the shop (each shares only the root's word)
    unrelated = _tags([(u, f"store {w}") for u in SHOP_USERS for w in UNRELATED])
    assert tag_hr(unrelated, phi, shop_split)["TagHR@30"] < relevant["TagHR@30"]
    # the constant root tag: no root at the leaf level, one leaf for everyone
    root = _tags([(u, "Store") for u in SHOP_USERS])
    assert tag_hr(root, phi, shop_split)["TagHR@10"] < relevant["TagHR@10"]
    # every level counted (the old behaviour): the root is a category and hits everyone
    assert tag_hr(root, _shop_phi(shop, "all"), shop_split)["TagHR@10"] == 1.0


def test_a_category_only_deep_in_a_tags_phi_list_is_not_a_hit(shop: Dataset, shop_split: Split) -> None:
    phi = _shop_phi(shop)
    deep = phi.predict(["lab pipette"])
    assert deep["category"][0] == "Pipettes" and "Slides" in deep["category"].to_list()[1:]
    # ua's target is in Slides: in φ's list for the tag, but not its one category
    assert tag_hr(_tags([("ua", "lab pipette")]), phi, shop_split)["TagHR@30"] == 0.0


def test_at_level_reuses_the_item_vectors(shop: Dataset) -> None:
    leaf = _shop_phi(shop)
    calls = leaf.encoder.calls
    mid = leaf.at_level(shop, 1)
    assert mid.vectors is leaf.vectors and leaf.encoder.calls == calls
    assert mid.level_name == "depth 1" and mid.categories == ["Garden", "Lab", "Pets"]
    assert mid.item_categories(["f7"]) == [["Lab"]]


def test_reference_rows_on_the_same_users(shop: Dataset, shop_split: Split) -> None:
    phi = _shop_phi(shop)
    levelled = categories_at_level(shop, "leaf")
    rows = reference_rows(phi, shop_split, levelled, SHOP_USERS, llm_tags=_tags(RELEVANT), ks=(1, 3))
    assert list(rows) == ["llm", "history", "constant", "random"]
    assert {r["users"] for r in rows.values()} == {3.0}
    assert rows["llm"]["TagHR@1"] == 1.0
    assert rows["constant"]["TagHR@3"] <= 1 / 3  # one category, at most one user's target
    # the history baseline offers leaves, never the root
    hist = history_baseline_tags(shop_split.test, levelled.items_table(shop.items), SHOP_USERS)
    assert "Store" not in hist["tag"].to_list() and "Slides" not in hist["tag"].to_list()
    with pytest.raises(ValueError, match="φ votes at level"):
        reference_rows(_shop_phi(shop, 1), shop_split, levelled, SHOP_USERS)


def test_separability_on_a_three_category_level(shop: Dataset, shop_split: Split) -> None:
    phi = _shop_phi(shop, 1)
    stats = tag_hr_stats(phi, shop_split, categories_at_level(shop, 1), SHOP_USERS, llm_tags=_tags(RELEVANT))
    assert stats["level"] == stats["category_level"] == "depth 1" and stats["categories"] == 3
    assert stats["separable"] == {"TagHR@10": False, "TagHR@30": False}
    assert "only 3 categories" in stats["note"]
    assert {"llm_tags", "history_tags", "constant_tags", "random_tags"} <= set(stats)
    table = tag_hr_table(stats)
    assert [r["reference"].split()[0] for r in table] == ["LLM", "history", "constant", "random"]
    assert all(r["TagHR@10"] is None and r["TagHR@30"] is None and r["users"] == 3 for r in table)


def test_separability_rule() -> None:
    def rows(const: float, rand: float) -> dict[str, dict[str, float]]:
        return {"constant": {"TagHR@10": const}, "random": {"TagHR@10": rand}, "llm": {"TagHR@10": 0.9}}

    assert separability(rows(0.2, 0.5), 50, (10,)) == ({"TagHR@10": True}, "")
    flags, note = separability(rows(0.2, 0.85), 50, (10,))
    assert flags == {"TagHR@10": False} and "random reference already reaches 0.85" in note
    assert separability(rows(0.1, 0.1), 10, (10,))[0] == {"TagHR@10": False}
