"""Serendipity metrics (`recgpt.eval.serendipity`) on hand-checked lists, and the non-LLM references
(`recgpt.serendipity.references`) scored by them."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp

from recgpt.eval.serendipity import (
    category_unexpectedness_at_k,
    compare_rankings,
    per_list_metrics,
    pvr_at_k,
    ranking_metrics,
    serendipity_at_k,
    serendipity_metrics,
    unexpected_slots,
    unexpectedness_at_k,
)
from recgpt.serendipity.references import reference_rankings
from recgpt.serendipity.seren import RANKINGS_SCHEMA

# ---------------------------------------------------------------- top-K lists

# items 0..4; categories: 0 A, 1 A, 2 B, 3 C, 4 (none)
CATS = sp.csr_matrix(np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0]]))
VECS = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, 0.0]])
# user 0 saw item 0 (category A); user 1 saw nothing
HIST = sp.csr_matrix(np.array([[1, 0, 0, 0, 0], [0, 0, 0, 0, 0]]))
RECS = np.array([[1, 2, 3], [0, 2, -1]])
TRUTH = np.array([2, 0])


def test_embedding_and_category_unexpectedness() -> None:
    # user 0: 1 - cos to item 0 = 0, 1, 2 -> mean 1; user 1: empty history -> 1, 1
    assert unexpectedness_at_k(RECS, HIST, VECS, k=3) == pytest.approx(1.0)
    assert unexpectedness_at_k(RECS, HIST, VECS, k=1) == pytest.approx(0.5)
    # user 0: item 1 (A, seen) no, 2 (B) yes, 3 (C) yes -> 2/3; user 1: nothing seen: both new -> 1
    assert category_unexpectedness_at_k(RECS, HIST, CATS, k=3) == pytest.approx((2 / 3 + 1) / 2)


def test_unexpected_rules() -> None:
    cat = unexpected_slots(RECS, HIST, k=3, rule="category", item_categories=CATS)
    assert cat.tolist() == [[False, True, True], [True, True, False]]
    dist = unexpected_slots(RECS, HIST, k=3, rule="distance", item_vectors=VECS, distance=1.5)
    assert dist.tolist() == [[False, False, True], [False, False, False]]
    either = unexpected_slots(
        RECS, HIST, k=3, rule="either", item_vectors=VECS, item_categories=CATS, distance=1.5
    )
    assert (either == (cat | dist)).all()
    with pytest.raises(ValueError, match="needs item_categories"):
        unexpected_slots(RECS, HIST, k=3, rule="category")


def test_serendipity_counts_relevant_and_unexpected_slots_over_non_empty_slots() -> None:
    # user 0: target 2 at slot 1, new category -> 1/3; user 1: target 0 at slot 0, new (empty history) -> 1/2
    s = serendipity_at_k(RECS, TRUTH, HIST, k=3, n_items=5, rule="category", item_categories=CATS)
    assert s == pytest.approx((1 / 3 + 1 / 2) / 2)
    # a relevant but expected item is not serendipitous
    s1 = serendipity_at_k(
        np.array([[0, 2]]), np.array([0]), HIST[:1], k=2, n_items=5, rule="category", item_categories=CATS
    )
    assert s1 == 0.0


def test_pvr_is_the_share_of_exposed_slots_unexpected_by_the_rule() -> None:
    # exposed: 5 slots; unexpected: user 0 slots 1, 2; user 1 slots 0, 1 -> 4/5
    assert pvr_at_k(RECS, HIST, k=3, rule="category", item_categories=CATS) == pytest.approx(4 / 5)
    channel = np.array([[False, False, True], [False, True, False]])
    assert pvr_at_k(RECS, HIST, k=3, channel=channel, rule="category", item_categories=CATS) == pytest.approx(
        2 / 5
    )
    out = serendipity_metrics(
        RECS, TRUTH, HIST, ks=(3,), item_vectors=VECS, item_categories=CATS, channel=channel
    )
    assert set(out) == {"Unexp@3", "UnexpCat@3", "Serendipity@3", "PVR@3", "PVR-slot@3"}
    assert out["PVR@3"] == pytest.approx(4 / 5)


# ---------------------------------------------------------------- short-list rankings


def _lists(n_lists: int, size: int, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(n_lists):
        items = [f"x{k}_{j}" for j in range(size)]
        labels = [0] * size
        labels[int(rng.integers(size))] = 1
        rows.append({"list_id": f"L{k}", "user_id": f"u{k}", "item_ids": items, "labels": labels})
    return pl.DataFrame(rows, schema_overrides={"labels": pl.List(pl.Int8)})


def _ranking(lists: pl.DataFrame, best_first: bool) -> pl.DataFrame:
    rows = []
    for r in lists.iter_rows(named=True):
        order = sorted(
            range(len(r["item_ids"])), key=lambda j: -r["labels"][j] if best_first else r["labels"][j]
        )
        for rank, j in enumerate(order):
            rows.append(
                {
                    "list_id": r["list_id"],
                    "user_id": r["user_id"],
                    "item_id": r["item_ids"][j],
                    "rank": rank,
                    "score": 1.0 - rank / 10,
                    "relevance": 0,
                    "unexpected": 0,
                    "reason": "",
                    "source": "llm",
                }
            )
    return pl.DataFrame(rows, schema=RANKINGS_SCHEMA)


def test_perfect_ranking_scores_one_and_reversed_scores_lower() -> None:
    lists = _lists(50, 10)
    perfect = ranking_metrics(_ranking(lists, True), lists, seed=1)
    assert perfect["n_lists"] == 50
    assert perfect["Hit@1"] == perfect["NDCG@3"] == perfect["NDCG@10"] == 1.0
    reversed_ = ranking_metrics(_ranking(lists, False), lists, seed=1)
    assert reversed_["Hit@1"] == 0.0 and reversed_["NDCG@3"] == 0.0
    assert reversed_["NDCG@10"] == pytest.approx(1 / math.log2(11))
    ci = perfect["ci"]["Hit@1"]
    assert ci["lo"] == ci["hi"] == 1.0 and ci["n"] == 50


def test_ndcg_with_two_positives_and_unlabelled_lists_left_out() -> None:
    lists = pl.DataFrame(
        {"list_id": ["a", "b"], "user_id": ["u", "v"], "item_ids": [["p", "q", "r"], ["s", "t"]]}
    ).with_columns(labels=pl.Series([[1, 0, 1], [0, 0]], dtype=pl.List(pl.Int8)))
    ranking = pl.DataFrame(
        {
            "list_id": ["a"] * 3,
            "user_id": ["u"] * 3,
            "item_id": ["p", "q", "r"],
            "rank": [0, 1, 2],
        }
    )
    per = per_list_metrics(ranking, lists)
    assert per["list_id"].to_list() == ["a"]  # list b has no positive: not scored (and need not be ranked)
    ideal = 1 + 1 / math.log2(3)
    assert per["NDCG@3"][0] == pytest.approx((1 + 1 / math.log2(4)) / ideal)
    with pytest.raises(ValueError, match="not one of the list's items"):
        per_list_metrics(ranking.with_columns(item_id=pl.Series(["p", "q", "zz"])), lists)
    with pytest.raises(ValueError, match=r"ranks 0\.\.2"):
        per_list_metrics(ranking.head(2), lists)
    with pytest.raises(ValueError, match="have no ranking"):
        per_list_metrics(ranking.filter(pl.col("list_id") == "none"), lists)


def test_random_reference_hits_about_one_in_list_size() -> None:
    lists = _lists(3000, 10, seed=2)
    m = ranking_metrics(reference_rankings(lists, "random", seed=5), lists, seed=0, resamples=200)
    assert m["Hit@1"] == pytest.approx(0.1, abs=0.02)
    assert m["ci"]["Hit@1"]["lo"] < 0.1 < m["ci"]["Hit@1"]["hi"] or abs(m["Hit@1"] - 0.1) < 0.02
    again = reference_rankings(lists.head(5), "random", seed=5)
    assert again.equals(
        reference_rankings(lists, "random", seed=5).filter(
            pl.col("list_id").is_in(again["list_id"].to_list())
        )
    )


def test_popularity_and_distance_references() -> None:
    lists = pl.DataFrame({"list_id": ["L"], "user_id": ["u"], "item_ids": [["a", "b", "c", "d"]]})
    pop = reference_rankings(lists, "popularity", popularity={"a": 1, "b": 9, "c": 9, "d": 3})
    assert pop["item_id"].to_list() == ["b", "c", "d", "a"]  # ties keep the list order
    assert set(pop["source"]) == {"reference:popularity"} and pop.schema == pl.Schema(RANKINGS_SCHEMA)
    pop_arr = reference_rankings(
        lists, "popularity", popularity=np.array([1, 9, 9, 3]), item_ids=["a", "b", "c", "d"]
    )
    assert pop_arr["item_id"].to_list() == ["b", "c", "d", "a"]
    vecs = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [1.0, 1.0], [1.0, 0.1]])
    ids = ["a", "b", "c", "d", "h"]
    dist = reference_rankings(
        lists, "distance", item_ids=ids, item_vectors=vecs, histories={"u": np.array([4])}
    )
    assert dist["item_id"].to_list() == ["c", "b", "d", "a"]  # most distant from the history item h first
    assert dist["score"].to_list() == sorted(dist["score"].to_list(), reverse=True)
    with pytest.raises(ValueError, match="needs item_vectors"):
        reference_rankings(lists, "distance", item_ids=ids)
    with pytest.raises(ValueError, match="not in item_ids"):
        reference_rankings(lists, "distance", item_ids=ids[:2], item_vectors=vecs[:2], histories={"u": []})


def test_compare_rankings_pairs_the_same_lists() -> None:
    lists = _lists(40, 5)
    good, rand = _ranking(lists, True), reference_rankings(lists, "random", seed=1)
    out = compare_rankings(good, rand, lists, seed=0, resamples=300)
    base = ranking_metrics(rand, lists)["Hit@1"]
    assert out["Hit@1"]["ratio"]["value"] == pytest.approx(1.0 / base)
    assert out["Hit@1"]["difference"]["value"] == pytest.approx(1.0 - base)
    assert out["NDCG@3"]["difference"]["lo"] > 0 and out["Hit@1"]["ratio"]["n"] == 40
