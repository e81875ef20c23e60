"""Metric values at their limits, checked against numbers worked out by hand in the comments."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

import recgpt.eval.metrics as metrics_module
from recgpt.eval.metrics import METRIC_DOCS, evaluate_lists, evaluate_per_user, tag_hit_rate

S2 = 1 / math.sqrt(2)


def ev(recs, truth, pop=None, n_items=None, **kw):
    n = n_items if n_items is not None else (len(pop) if pop is not None else 10)
    popularity = np.ones(n) if pop is None else np.asarray(pop, dtype=float)
    return evaluate_lists(np.asarray(recs), truth, item_popularity=popularity, **kw)


# ---------------------------------------------------------------- accuracy


def test_single_target_accuracy_rank1_rank3_miss():
    # user0 target 0 at rank 1, user1 target 3 at rank 3, user2 target 9 not listed
    recs = [[0, 1, 2, 3, 4], [1, 2, 3, 4, 5], [0, 1, 2, 3, 4]]
    m = ev(recs, np.array([0, 3, 9]), ks=(2, 5))
    per = evaluate_per_user(np.asarray(recs), np.array([0, 3, 9]), n_items=10, ks=(5,))
    np.testing.assert_allclose(per["NDCG@5"], [1.0, 0.5, 0.0])  # 1/log2(2), 1/log2(4), miss
    assert m["NDCG@5"] == pytest.approx(0.5)
    assert m["HR@5"] == pytest.approx(2 / 3)
    assert m["Recall@5"] == pytest.approx(2 / 3)
    assert m["Precision@5"] == pytest.approx((1 / 5 + 1 / 5) / 3)
    assert m["MRR@5"] == pytest.approx((1 + 1 / 3) / 3)
    # at k=2 the rank-3 hit falls out
    assert m["NDCG@2"] == pytest.approx(1 / 3)
    assert m["HR@2"] == pytest.approx(1 / 3)
    assert m["MRR@2"] == pytest.approx(1 / 3)


def test_multi_target_ndcg_uses_ideal_dcg_over_min_targets_k():
    # truth {0, 2}; list [0, 5, 2]: DCG = 1 + 1/log2(4) = 1.5; IDCG@3 = 1 + 1/log2(3)
    truth = sp.csr_matrix(np.array([[1, 0, 1, 0, 0, 0]], dtype=bool))
    m = ev([[0, 5, 2]], truth, n_items=6, ks=(1, 3))
    assert m["NDCG@3"] == pytest.approx(1.5 / (1 + 1 / math.log2(3)))
    assert m["Recall@3"] == pytest.approx(1.0)
    assert m["Precision@3"] == pytest.approx(2 / 3)
    assert m["MRR@3"] == pytest.approx(1.0)
    # k=1: one hit, IDCG over min(|R|, 1) = 1 position -> NDCG 1, recall 1/2
    assert m["NDCG@1"] == pytest.approx(1.0)
    assert m["Recall@1"] == pytest.approx(0.5)


def test_csr_and_1d_truth_agree_and_per_user_matches_mean():
    rng = np.random.default_rng(0)
    recs = np.stack([rng.permutation(30)[:10] for _ in range(40)])
    target = rng.integers(0, 30, 40)
    csr = sp.csr_matrix((np.ones(40, dtype=bool), (np.arange(40), target)), shape=(40, 30))
    a = ev(recs, target, n_items=30, ks=(5, 10))
    b = ev(recs, csr, n_items=30, ks=(5, 10))
    assert a == pytest.approx(b)
    per = evaluate_per_user(recs, target, n_items=30, ks=(5, 10))
    for key, v in per.items():
        assert np.nanmean(v) == pytest.approx(a[key])


def test_users_without_truth_are_excluded_and_all_empty_raises():
    recs = np.array([[0, 1], [2, 3], [4, 5]])
    per = evaluate_per_user(recs, np.array([0, -1, 9]), n_items=10, ks=(2,))
    assert np.isnan(per["HR@2"][1])
    assert ev(recs, np.array([0, -1, 9]), ks=(2,))["HR@2"] == pytest.approx(0.5)  # 1 of 2 users
    empty = sp.csr_matrix((3, 10), dtype=bool)
    with pytest.raises(ValueError, match="ground-truth"):
        ev(recs, empty, ks=(2,))


def test_padding_slots_keep_rank_positions_and_never_hit():
    # user0: [-1, -1, 7] -> target 7 at rank 3 -> NDCG 0.5; user1 target -1 is not matched by padding
    recs = np.array([[-1, -1, 7], [1, -1, -1]])
    per = evaluate_per_user(recs, np.array([7, -1]), n_items=10, ks=(3,))
    assert per["NDCG@3"][0] == pytest.approx(0.5)
    assert np.isnan(per["NDCG@3"][1])


def test_k_larger_than_catalogue():
    # 3 items, full lists of 3: @5 pads with empty slots; Precision divides by k
    m = ev([[2, 0, 1]], np.array([1]), n_items=3, ks=(5,))
    assert m["HR@5"] == 1.0
    assert m["Precision@5"] == pytest.approx(1 / 5)
    assert m["Coverage@5"] == 1.0
    with pytest.raises(ValueError, match="columns"):
        ev([[2, 0]], np.array([1]), n_items=3, ks=(5,))  # short list, not the whole catalogue


# ---------------------------------------------------------------- exposure


def test_gini_coverage_entropy_uniform_and_concentrated():
    # uniform: every one of 4 items shown once -> Gini 0, coverage 1, entropy log2 4 = 2
    m = ev([[0, 1], [2, 3]], np.array([0, 2]), n_items=4, ks=(2,))
    assert m["Gini@2"] == pytest.approx(0.0)
    assert m["Coverage@2"] == 1.0
    assert m["Entropy@2"] == pytest.approx(2.0)
    # all exposure on item 0 of 4 -> Gini (n-1)/n = 0.75, coverage 1/4, entropy 0
    m = ev([[0], [0], [0]], np.array([0, 1, 2]), n_items=4, ks=(1,))
    assert m["Gini@1"] == pytest.approx(0.75)
    assert m["Coverage@1"] == 0.25
    assert m["Entropy@1"] == pytest.approx(0.0)


def test_gini_counts_unrecommended_items_as_zeros():
    # counts sorted [0, 0, 1, 1]: Σ(2j-5)P = 1·1 + 3·1 = 4; / (4 · 2) = 0.5
    assert ev([[0, 1]], np.array([0]), n_items=4, ks=(2,))["Gini@2"] == pytest.approx(0.5)


def test_avgpop_and_tail_with_padding():
    pop = [10, 0, 5, 1]
    recs = [[0, 1], [2, -1]]  # per list: (10+0)/2 = 5 and 5/1 = 5
    m = ev(recs, np.array([0, 2]), pop=pop, ks=(2,))
    assert m["AvgPop@2"] == pytest.approx(5.0)
    # ratio 0.25 -> int(4·0.25)=1 tail item: item 1 (pop 0). Lists: 1/2 and 0/1 -> 0.25
    assert m["Tail@2"] == pytest.approx(0.25)
    # ratio 0.5 -> items 1 and 3: same shares
    assert ev(recs, np.array([0, 2]), pop=pop, ks=(2,), tail_ratio=0.5)["Tail@2"] == pytest.approx(0.25)
    # ratio 5 (> 1) = count threshold: items with φ <= 5 are {1, 2, 3} -> 1/2 and 1/1 -> 0.75
    assert ev(recs, np.array([0, 2]), pop=pop, ks=(2,), tail_ratio=5)["Tail@2"] == pytest.approx(0.75)
    # default ratio 0.1 on 4 items still keeps max(int(0.4), 1) = 1 tail item
    assert ev(recs, np.array([0, 2]), pop=pop, ks=(2,), tail_ratio=0.1)["Tail@2"] == pytest.approx(0.25)


def test_tail_ties_broken_by_item_index_and_zero_popularity():
    # all-zero popularity: tail(0.2 of 10) = items {0, 1}; lists 1/2 and 2/2 tail; AvgPop 0
    m = ev([[0, 5], [1, 0]], np.array([0, 1]), pop=np.zeros(10), ks=(2,), tail_ratio=0.2)
    assert m["Tail@2"] == pytest.approx((1 / 2 + 2 / 2) / 2)
    assert m["AvgPop@2"] == 0.0


def test_novelty_laplace_smoothed():
    # φ = [3, 1, 0, 0], N = 4, |I| = 4 -> p = [4/8, 2/8, 1/8, 1/8] -> -log2 p = [1, 2, 3, 3]
    m = ev([[0, 1], [2, -1]], np.array([0, 2]), pop=[3, 1, 0, 0], ks=(2,))
    assert m["Novelty@2"] == pytest.approx((1 + 2 + 3) / 3)  # mean over the 3 filled slots
    # all-zero popularity -> uniform p = 1/|I| -> novelty log2 |I| = 2
    assert ev([[0, 1]], np.array([0]), pop=np.zeros(4), ks=(2,))["Novelty@2"] == pytest.approx(2.0)


# ---------------------------------------------------------------- diversity


FEATS = sp.csr_matrix(
    np.array(
        [
            [1, 0],  # item 0
            [1, 0],  # item 1: same as item 0
            [0, 1],  # item 2: orthogonal
            [1, 1],  # item 3: cos 1/√2 with items 0, 1, 2
            [0, 0],  # item 4: no features
        ],
        dtype=float,
    )
)


@pytest.mark.parametrize(
    ("lists", "expected"),
    [
        ([[0, 1]], 0.0),  # identical features
        ([[0, 2]], 1.0),  # orthogonal
        ([[0, 1, 2]], 1 - 1 / 3),  # pair sims 1, 0, 0 -> mean 1/3
        ([[0, 3]], 1 - S2),
        ([[0, -1]], 0.0),  # a single item: ILD defined as 0
        ([[4, 0]], 1.0),  # zero vector: similarity 0
        ([[0, 1], [0, 2]], 0.5),  # mean over users
    ],
)
def test_ild_hand_values(lists, expected):
    k = len(lists[0])
    truth = np.zeros(len(lists), dtype=np.int64)
    m = ev(lists, truth, n_items=5, ks=(k,), item_features=FEATS, item_embeddings=FEATS.toarray())
    assert m[f"ILD@{k}"] == pytest.approx(expected)
    assert m[f"ILD-emb@{k}"] == pytest.approx(expected)


def test_category_diversity():
    # categories: item0 {A}, item1 {A, B}, item2 {C}; lists [0, 1] -> 2, [2, -1] -> 1
    cats = sp.csr_matrix(np.array([[1, 0, 0], [1, 1, 0], [0, 0, 1]], dtype=bool))
    m = ev([[0, 1], [2, -1]], np.array([0, 2]), n_items=3, ks=(1, 2), item_categories=cats)
    assert m["CatDiv@2"] == pytest.approx(1.5)
    assert m["CatDivNorm@2"] == pytest.approx(1.5 / 2)  # min(k=2, 3 categories)
    assert m["CatDiv@1"] == pytest.approx(1.0)


def test_serendipity():
    # features: item0 e0, item1 e1, item2 (e0+e1)/√2
    feats = sp.csr_matrix(np.array([[1, 0], [0, 1], [1, 1]], dtype=float))
    recs = np.array([[2, 1], [1, 0], [0, 2]])
    truth = np.array([2, 1, 0])
    hist = sp.csr_matrix(np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0]], dtype=bool))
    # user0: hit item2 at rank 1, history {0}: unexp 1 - 1/√2
    # user1: hit item1 at rank 1, history {0, 1}: unexp 1 - (0 + 1)/2 = 0.5
    # user2: hit item0 at rank 1, empty history: unexp 1
    m = ev(recs, truth, n_items=3, ks=(1, 2), item_features=feats, histories=hist)
    assert m["Serendipity@1"] == pytest.approx((1 - S2 + 0.5 + 1) / 3)
    assert m["Serendipity@2"] == pytest.approx((1 - S2 + 0.5 + 1) / 2 / 3)  # averaged over 2 slots
    # a miss has relevance 0 -> serendipity 0
    m = ev(recs, np.array([0, 2, 1]), n_items=3, ks=(1,), item_features=feats, histories=hist)
    assert m["Serendipity@1"] == 0.0


def test_optional_keys_only_when_inputs_given():
    m = ev([[0, 1]], np.array([0]), n_items=5, ks=(2,))
    assert not any(key.startswith(("ILD", "CatDiv", "Serendipity")) for key in m)
    families = {key.split("@")[0] for key in m}
    assert families <= set(METRIC_DOCS)


# ---------------------------------------------------------------- tag HR


def test_tag_hit_rate_int_lists_and_scores():
    target = sp.csr_matrix(np.array([[1, 0, 0, 0], [0, 0, 0, 1]], dtype=bool))
    pred = np.array([[2, 0, -1], [1, 2, 3]])  # user0 hits at rank 2, user1 at rank 3
    assert tag_hit_rate(pred, target, ks=(1, 2, 3)) == pytest.approx(
        {"TagHR@1": 0.0, "TagHR@2": 0.5, "TagHR@3": 1.0}
    )
    # scores: user0 ranks [0, 2] (hit at 1), user1 ranks [1, 3] (hit at 2)
    scores = sp.csr_matrix(np.array([[0.9, 0, 0.5, 0], [0, 0.8, 0, 0.1]]))
    assert tag_hit_rate(scores, target, ks=(1, 2)) == pytest.approx({"TagHR@1": 0.5, "TagHR@2": 1.0})


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("recs", "truth", "match"),
    [
        (np.zeros((0, 5), dtype=np.int64), np.zeros(0, dtype=np.int64), "no users"),
        (np.array([[1, 1]]), np.array([1]), "repeats"),
        (np.array([[1, 10]]), np.array([1]), r"\[-1, 10\)"),
        (np.array([[1.0, 2.0]]), np.array([1]), "integer"),
        (np.array([[1, 2]]), np.array([1, 2]), "one entry per user"),
        (np.array([[1, 2]]), sp.csr_matrix((1, 9), dtype=bool), "truth must be"),
    ],
)
def test_bad_input_raises(recs, truth, match):
    with pytest.raises(ValueError, match=match):
        evaluate_lists(recs, truth, item_popularity=np.ones(10), ks=(2,))


def test_bad_popularity_raises():
    with pytest.raises(ValueError, match="non-negative"):
        evaluate_lists(np.array([[0, 1]]), np.array([0]), item_popularity=np.array([1.0, -1.0]), ks=(2,))


# ---------------------------------------------------------------- cross-check


def _naive():
    path = Path(__file__).resolve().parents[2] / "bench" / "bench_metrics.py"
    spec = importlib.util.spec_from_file_location("bench_metrics", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_vectorized_matches_naive_loop_on_random_data():
    bench = _naive()
    data = bench.make_data(300, 400, 20, seed=1)
    fast = evaluate_lists(**data, ks=(5, 10, 20))
    slow = bench.naive_evaluate(**data, ks=(5, 10, 20))
    assert bench.compare(fast, slow) < 1e-9
    # multi-target csr truth
    rng = np.random.default_rng(2)
    rows = np.repeat(np.arange(300), 3)
    cols = np.where(
        rng.random(900) < 0.5, data["recs"][rows, rng.integers(0, 20, 900)], rng.integers(0, 400, 900)
    )
    keep = cols >= 0
    data["truth"] = sp.csr_matrix(
        (np.ones(keep.sum(), dtype=bool), (rows[keep], cols[keep])), shape=(300, 400)
    )
    assert bench.compare(evaluate_lists(**data, ks=(5, 20)), bench.naive_evaluate(**data, ks=(5, 20))) < 1e-9


def test_user_chunking_does_not_change_results(monkeypatch):
    bench = _naive()
    data = bench.make_data(50, 60, 10, seed=3)
    whole = evaluate_lists(**data, ks=(5, 10))
    monkeypatch.setattr(metrics_module, "_CHUNK_USERS", 7)
    monkeypatch.setattr(metrics_module, "_CHUNK_HITS", 3)
    assert evaluate_lists(**data, ks=(5, 10)) == pytest.approx(whole, rel=1e-12)


def test_per_user_category_diversity_averages_to_the_reported_catdiv() -> None:

    from recgpt.eval.metrics import category_diversity_per_user, evaluate_lists

    rng = np.random.default_rng(0)
    recs = np.stack([rng.permutation(30)[:12] for _ in range(8)])
    recs[0, 5:] = -1  # a short list
    cats = sp.csr_matrix((np.ones(30), (np.arange(30), np.arange(30) % 7)), shape=(30, 7))
    truth = sp.csr_matrix((np.ones(8), (np.arange(8), recs[:, 0].clip(0))), shape=(8, 30))
    per = category_diversity_per_user(recs, cats, 10)
    full = evaluate_lists(recs, truth, item_popularity=np.ones(30), ks=(10,), item_categories=cats)
    assert per.shape == (8,) and per[0] <= 5
    assert per.mean() == pytest.approx(full["CatDiv@10"])
