"""Vectorized top-K metrics (docs/metrics.md §4): accuracy, exposure, novelty, diversity, serendipity.

Every model is scored by the same code, so the conventions below are fixed here once:

* `recs` is (n_users, K) int, item indices in rank order; -1 marks an empty slot (e.g. an LLM list that
  named fewer valid items). Empty slots are never hits and expose nothing. Metrics at k use
  `recs[:, :k]`. A row must not repeat an item (ValueError). If k exceeds K, that is allowed only when
  K already covers the whole catalogue (the missing slots are then empty); otherwise it is an error,
  because a top-10 list silently scored "@50" would be misleading.
* Ground truth is a bool csr (n_users x n_items) or a 1-D int array of one target per user (-1 = none).
  Users with no ground-truth item are excluded from accuracy averages (and from serendipity, which
  needs relevance); their per-user values are NaN. Precision@k divides by k even when k > n_items.
* Distribution metrics (Coverage, Gini, Entropy, Novelty) are over all non-empty slots of all users;
  Gini counts never-recommended items as zeros over the whole catalogue.
* AvgPop / Tail average the per-list mean over users with at least one non-empty slot.
* Novelty uses Laplace-smoothed training popularity p(i) = (φ(i)+1)/(N+|I|), so items never seen in
  training (and all-zero popularity) stay finite; this matches docs/baselines.md §3.3.
* Tail follows RecBole `TailPercentage`: with 0 < tail_ratio <= 1 the tail is the max(int(|I|·ratio), 1)
  least popular items, ties broken by lower item index; with tail_ratio > 1 it is every item with
  φ(i) <= tail_ratio. Unlike RecBole (which ranks only items seen in training) the ranking is over the
  whole catalogue, so cold items are the first tail items. Default 0.1 = RecBole's default.
* ILD / serendipity similarity is the cosine of item vectors; an all-zero vector has similarity 0 with
  everything. ILD of a list with fewer than two items is defined as 0 (and counted in the mean).
  Serendipity of an item for a user with an empty history uses unexpectedness 1 (nothing expected).
* A value with nothing to average over (e.g. all slots empty at that k) is NaN.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Sequence

import numpy as np
import scipy.sparse as sp

DEFAULT_KS: tuple[int, ...] = (5, 10, 20, 50)
TAG_KS: tuple[int, ...] = (1, 3, 5, 10)
TAIL_RATIO = 0.1
_CHUNK_USERS = 8192  # bounds the per-chunk user x item / user x feature products
_CHUNK_HITS = 65536

ACCURACY_METRICS: tuple[str, ...] = ("HR", "Recall", "Precision", "NDCG", "MRR")

METRIC_DOCS: dict[str, str] = {
    "HR": "Hit rate: share of users with at least one ground-truth item in the top-k.",
    "Recall": "Share of a user's ground-truth items found in the top-k, averaged over users.",
    "Precision": "Ground-truth items in the top-k divided by k, averaged over users.",
    "NDCG": "Discounted gain 1/log2(rank+1) of hits over the ideal ordering, averaged over users.",
    "MRR": "Reciprocal rank of the first hit within the top-k (0 if none), averaged over users.",
    "Coverage": "Share of the catalogue recommended to at least one user in the top-k.",
    "Gini": "Gini index of item exposure over the whole catalogue (0 = equal, →1 = concentrated).",
    "Entropy": "Shannon entropy (bits) of the share of recommendation slots each item occupies.",
    "AvgPop": "Mean training interaction count of recommended items (per list, then over users).",
    "Tail": "Share of recommended items in the long tail (RecBole TailPercentage, tail_ratio 0.1).",
    "Novelty": "Mean -log2 p(i) over recommended slots, p = Laplace-smoothed training popularity.",
    "ILD": "Intra-list diversity: 1 - mean pairwise cosine of item feature (tag/category) vectors.",
    "ILD-emb": "Intra-list diversity on item embeddings: 1 - mean pairwise cosine.",
    "CatDiv": "Mean number of distinct item categories in a user's top-k.",
    "CatDivNorm": "Distinct categories in the top-k / min(k, #categories); >1 possible for multi-category items.",
    "Serendipity": "Mean over the top-k of relevance x (1 - mean feature cosine to the user's history).",
    "Serendipity-emb": "Serendipity with embedding cosine as the similarity.",
    "TagHR": "Share of users whose next item's category is among the categories of their first k tags "
    "(one category per tag, at one category level).",
}


# ---------------------------------------------------------------- input validation


def _check_ks(ks: Iterable[int]) -> tuple[int, ...]:
    out = tuple(sorted({int(k) for k in ks}))
    if not out or out[0] < 1:
        raise ValueError(f"cut-offs must be positive integers, got {ks!r}")
    return out


def _as_lists(recs: np.ndarray, n_cols: int, k_max: int, what: str = "recs") -> np.ndarray:
    """Validated (n_users, k_max) int64 ranked lists with -1 padding."""
    a = np.asarray(recs)
    if a.ndim != 2:
        raise ValueError(f"{what} must be 2-D (n_users, K), got shape {a.shape}")
    if a.shape[0] == 0:
        raise ValueError(f"{what} has no users")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{what} must hold integer indices, got dtype {a.dtype}")
    a = a.astype(np.int64, copy=False)
    if a.size and (a.min() < -1 or a.max() >= n_cols):
        raise ValueError(f"{what} entries must be in [-1, {n_cols}) (-1 = empty slot)")
    if a.shape[1] < k_max:
        if a.shape[1] < n_cols:
            raise ValueError(
                f"{what} has {a.shape[1]} columns but a cut-off of {k_max} was asked; pad with -1 "
                "explicitly if shorter lists are intended"
            )
        a = np.pad(a, ((0, 0), (0, k_max - a.shape[1])), constant_values=-1)
    a = a[:, :k_max]
    s = np.sort(a, axis=1)
    dup = (s[:, 1:] == s[:, :-1]) & (s[:, 1:] >= 0)
    if dup.any():
        row = int(np.nonzero(dup.any(axis=1))[0][0])
        raise ValueError(f"{what} row {row} repeats an item within its top-{k_max}")
    return a


def _as_popularity(item_popularity: np.ndarray) -> np.ndarray:
    pop = np.asarray(item_popularity, dtype=np.float64)
    if pop.ndim != 1 or pop.size == 0:
        raise ValueError("item_popularity must be a non-empty 1-D array (one count per item)")
    if not np.all(np.isfinite(pop)) or (pop < 0).any():
        raise ValueError("item_popularity must be finite and non-negative")
    return pop


def _as_csr(x: sp.spmatrix | np.ndarray, shape0: int, name: str, binary: bool = False) -> sp.csr_matrix:
    m = sp.csr_matrix(x, dtype=np.float64)
    if m.shape[0] != shape0:
        raise ValueError(f"{name} has {m.shape[0]} rows, expected {shape0}")
    if not np.all(np.isfinite(m.data)):
        raise ValueError(f"{name} must be finite")
    m.sum_duplicates()
    m.eliminate_zeros()
    if binary:
        m.data[:] = 1.0
    return m


def _unit_rows(x: sp.spmatrix | np.ndarray, n_items: int, name: str) -> sp.csr_matrix | np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero), so dot products are cosines."""
    if sp.issparse(x):
        m = _as_csr(x, n_items, name)
        norms = np.sqrt(np.asarray(m.multiply(m).sum(axis=1)).ravel())
        inv = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
        return sp.csr_matrix(sp.diags(inv) @ m)
    d = np.asarray(x, dtype=np.float64)
    if d.ndim != 2 or d.shape[0] != n_items:
        raise ValueError(f"{name} must be (n_items={n_items}, d), got shape {d.shape}")
    if not np.all(np.isfinite(d)):
        raise ValueError(f"{name} must be finite")
    norms = np.linalg.norm(d, axis=1, keepdims=True)
    return np.divide(d, norms, out=np.zeros_like(d), where=norms > 0)


def _relevance(
    lists: np.ndarray, truth: sp.spmatrix | np.ndarray, n_cols: int
) -> tuple[np.ndarray, np.ndarray]:
    """(rel, n_rel): rel[u, j] = slot j of user u is a ground-truth item; n_rel = |R(u)|."""
    n_users = lists.shape[0]
    valid = lists >= 0
    if sp.issparse(truth):
        t = sp.csr_matrix(truth)
        if t.shape != (n_users, n_cols):
            raise ValueError(f"truth must be ({n_users}, {n_cols}), got {t.shape}")
        t = t.astype(bool)
        t.eliminate_zeros()
        t.sum_duplicates()  # canonical: sorted indices, so row-major keys are sorted
        n_rel = np.diff(t.indptr).astype(np.int64)
        keys = np.repeat(np.arange(n_users, dtype=np.int64), n_rel) * n_cols + t.indices
        rk = np.arange(n_users, dtype=np.int64)[:, None] * n_cols + lists
        pos = np.minimum(np.searchsorted(keys, rk), max(len(keys) - 1, 0))
        rel = valid & (keys[pos] == rk) if len(keys) else np.zeros_like(valid)
        return rel, n_rel
    t = np.asarray(truth)
    if t.ndim != 1 or len(t) != n_users:
        raise ValueError(f"1-D truth must have one entry per user ({n_users}), got shape {t.shape}")
    if not np.issubdtype(t.dtype, np.integer):
        raise ValueError(f"1-D truth must hold integer item indices, got dtype {t.dtype}")
    if (t < -1).any() or (t >= n_cols).any():
        raise ValueError(f"truth entries must be in [-1, {n_cols}) (-1 = no target)")
    t = t.astype(np.int64)
    return valid & (lists == t[:, None]), (t >= 0).astype(np.int64)


# ---------------------------------------------------------------- helpers


def _mean(v: np.ndarray) -> float:
    """Mean ignoring NaN; NaN (quietly) when nothing is left."""
    ok = ~np.isnan(v)
    return float(v[ok].mean()) if ok.any() else float("nan")


def _chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def _list_matrix(lists: np.ndarray, n_items: int) -> sp.csr_matrix:
    """0/1 user x item matrix of the non-empty slots (no duplicates by construction)."""
    valid = lists >= 0
    indptr = np.concatenate([[0], np.cumsum(valid.sum(axis=1))])
    return sp.csr_matrix((np.ones(int(indptr[-1])), lists[valid], indptr), shape=(lists.shape[0], n_items))


def _row_sq_norms(m: sp.csr_matrix | np.ndarray) -> np.ndarray:
    if sp.issparse(m):
        return np.asarray(m.multiply(m).sum(axis=1)).ravel()
    return np.einsum("ij,ij->i", m, m)


def _row_dots(a: sp.csr_matrix | np.ndarray, b: sp.csr_matrix | np.ndarray) -> np.ndarray:
    if sp.issparse(a):
        return np.asarray(a.multiply(b).sum(axis=1)).ravel()
    return np.einsum("ij,ij->i", a, b)


def _rank_scores(pred: sp.spmatrix, k_max: int) -> np.ndarray:
    """Sparse scores -> (n_users, k_max) columns by descending score (ties: lower index), -1 padded."""
    m = sp.csr_matrix(pred)
    m.sum_duplicates()
    rows = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
    order = np.lexsort((m.indices, -m.data, rows))
    pos = np.arange(len(order)) - m.indptr[rows[order]]
    keep = pos < k_max
    out = np.full((m.shape[0], k_max), -1, dtype=np.int64)
    out[rows[order][keep], pos[keep]] = m.indices[order][keep]
    return out


def _tail_items(pop: np.ndarray, tail_ratio: float) -> np.ndarray:
    if tail_ratio > 1:
        return pop <= tail_ratio
    if tail_ratio <= 0:
        raise ValueError(f"tail_ratio must be > 0, got {tail_ratio}")
    order = np.lexsort((np.arange(len(pop)), pop))
    mask = np.zeros(len(pop), dtype=bool)
    mask[order[: max(int(len(pop) * tail_ratio), 1)]] = True
    return mask


# ---------------------------------------------------------------- metric families


def _accuracy(rel: np.ndarray, n_rel: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Per-user HR/Recall/Precision/NDCG/MRR at k (NaN for users without ground truth)."""
    r = rel[:, :k]
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    hits = r.sum(axis=1)
    has = n_rel > 0
    nan = np.full(len(n_rel), np.nan)
    idcg = np.concatenate([[1.0], np.cumsum(disc)])[np.minimum(n_rel, k)]  # [1.0] only guards n_rel=0
    first = r.argmax(axis=1)
    mrr = np.where(hits > 0, 1.0 / (first + 1), 0.0)
    return {
        "HR": np.where(has, (hits > 0).astype(np.float64), nan),
        "Recall": np.where(has, hits / np.maximum(n_rel, 1), nan),
        "Precision": np.where(has, hits / k, nan),
        "NDCG": np.where(has, (r @ disc) / idcg, nan),
        "MRR": np.where(has, mrr, nan),
    }


def _exposure(lists: np.ndarray, pop: np.ndarray, tail: np.ndarray, k: int) -> dict[str, float]:
    """Catalogue-level exposure metrics and per-list popularity metrics at k."""
    n_items = len(pop)
    valid = lists >= 0
    shown = lists[valid]
    counts = np.bincount(shown, minlength=n_items).astype(np.float64)
    total = counts.sum()
    out = {f"Coverage@{k}": float((counts > 0).sum() / n_items)}
    if total == 0:
        for name in ("Gini", "Entropy", "Novelty", "AvgPop", "Tail"):
            out[f"{name}@{k}"] = float("nan")
        return out
    srt = np.sort(counts)
    j = np.arange(1, n_items + 1)
    out[f"Gini@{k}"] = float(((2 * j - n_items - 1) * srt).sum() / (n_items * total))
    p = counts[counts > 0] / total
    out[f"Entropy@{k}"] = float(-(p * np.log2(p)).sum())
    smoothed = (pop + 1.0) / (pop.sum() + n_items)
    out[f"Novelty@{k}"] = float(-np.log2(smoothed[shown]).mean())
    n_valid = valid.sum(axis=1)
    safe = np.where(valid, lists, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        avg_pop = np.where(valid, pop[safe], 0.0).sum(axis=1) / n_valid
        tail_share = (valid & tail[safe]).sum(axis=1) / n_valid
    out[f"AvgPop@{k}"] = _mean(avg_pop)
    out[f"Tail@{k}"] = _mean(tail_share)
    return out


def _ild(lists: np.ndarray, unit: sp.csr_matrix | np.ndarray) -> np.ndarray:
    """Per-user 1 - mean cosine over ordered pairs, via ||Σv||² - Σ||v||² (0 for lists < 2 items)."""
    n_items = unit.shape[0]
    has_vec = (_row_sq_norms(unit) > 0).astype(np.float64)
    out = np.zeros(lists.shape[0])
    for sl in _chunks(lists.shape[0], _CHUNK_USERS):
        a = _list_matrix(lists[sl], n_items)
        pair_sum = _row_sq_norms(a @ unit) - a @ has_vec
        m = np.diff(a.indptr).astype(np.float64)
        pairs = m * (m - 1)
        out[sl] = np.where(pairs > 0, 1.0 - pair_sum / np.maximum(pairs, 1.0), 0.0)
    return out


def category_diversity_per_user(
    recs: np.ndarray, item_categories: sp.spmatrix | np.ndarray, k: int = 10
) -> np.ndarray:
    """Per-user CatDiv@k (distinct categories among the non-empty top-k slots), the values whose mean
    `evaluate_lists` reports: for paired bootstrap intervals."""
    n_items = item_categories.shape[0]
    lists = _as_lists(recs, n_items, k)[:, :k]
    return _category_diversity(lists, _as_csr(item_categories, n_items, "item_categories", True))


def _category_diversity(lists: np.ndarray, cats: sp.csr_matrix) -> np.ndarray:
    """Per-user number of distinct categories among the non-empty slots."""
    out = np.zeros(lists.shape[0])
    for sl in _chunks(lists.shape[0], _CHUNK_USERS):
        b = _list_matrix(lists[sl], cats.shape[0]) @ cats
        out[sl] = np.diff(sp.csr_matrix(b).indptr)
    return out


def _hit_unexpectedness(
    lists: np.ndarray, rel: np.ndarray, hist: sp.csr_matrix, unit: sp.csr_matrix | np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user, column, 1 - mean cosine to the user's history) for every relevant slot.

    Serendipity = unexpectedness x relevance, so only relevant slots need the history product.
    """
    hu, hj = np.nonzero(rel)
    items = lists[hu, hj]
    h_len = np.diff(hist.indptr).astype(np.float64)
    unexp = np.ones(len(hu))
    for sl in _chunks(len(hu), _CHUNK_HITS):
        profile = hist[hu[sl]] @ unit  # Σ_{j∈H(u)} unit_j
        dots = _row_dots(profile, unit[items[sl]])
        n_h = h_len[hu[sl]]
        unexp[sl] = np.where(n_h > 0, 1.0 - dots / np.maximum(n_h, 1.0), 1.0)
    return hu, hj, unexp


# ---------------------------------------------------------------- entry points


def evaluate_per_user(
    recs: np.ndarray,
    truth: sp.spmatrix | np.ndarray,
    *,
    n_items: int,
    ks: Iterable[int] = DEFAULT_KS,
) -> dict[str, np.ndarray]:
    """Per-user accuracy arrays ("NDCG@10" -> (n_users,)), NaN where a user has no ground truth.

    For paired significance tests and bootstrap CIs: the mean of the non-NaN entries equals the value
    `evaluate_lists` reports.
    """
    ks = _check_ks(ks)
    lists = _as_lists(recs, int(n_items), ks[-1])
    rel, n_rel = _relevance(lists, truth, int(n_items))
    if not (n_rel > 0).any():
        raise ValueError("no user has a ground-truth item; accuracy is undefined")
    return {f"{name}@{k}": v for k in ks for name, v in _accuracy(rel, n_rel, k).items()}


def evaluate_lists(
    recs: np.ndarray,
    truth: sp.spmatrix | np.ndarray,
    *,
    item_popularity: np.ndarray,
    ks: Iterable[int] = DEFAULT_KS,
    item_features: sp.spmatrix | np.ndarray | None = None,
    item_embeddings: np.ndarray | None = None,
    item_categories: sp.spmatrix | np.ndarray | None = None,
    histories: sp.spmatrix | None = None,
    tail_ratio: float = TAIL_RATIO,
) -> dict[str, float]:
    """All metrics for top-K lists, keyed "<Metric>@<k>" (see METRIC_DOCS and the module docstring).

    ILD / Serendipity need `item_features`, ILD-emb / Serendipity-emb need `item_embeddings`
    (serendipity also `histories`), CatDiv / CatDivNorm need `item_categories`; absent inputs simply
    leave those keys out.
    """
    pop = _as_popularity(item_popularity)
    n_items = len(pop)
    ks = _check_ks(ks)
    lists = _as_lists(recs, n_items, ks[-1])
    n_users = lists.shape[0]
    rel, n_rel = _relevance(lists, truth, n_items)
    has_truth = n_rel > 0
    if not has_truth.any():
        raise ValueError("no user has a ground-truth item; accuracy is undefined")
    if not (lists >= 0).any():
        raise ValueError("recs holds no item at all (every slot is -1)")
    tail = _tail_items(pop, tail_ratio)

    sims: dict[str, sp.csr_matrix | np.ndarray] = {}
    if item_features is not None:
        sims[""] = _unit_rows(item_features, n_items, "item_features")
    if item_embeddings is not None:
        if sp.issparse(item_embeddings):
            raise ValueError("item_embeddings must be a dense array")
        sims["-emb"] = _unit_rows(item_embeddings, n_items, "item_embeddings")
    cats = None if item_categories is None else _as_csr(item_categories, n_items, "item_categories", True)
    unexpected: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    if histories is not None:
        hist = _as_csr(histories, n_users, "histories", binary=True)
        if hist.shape[1] != n_items:
            raise ValueError(f"histories must have {n_items} columns, got {hist.shape[1]}")
        unexpected = {sfx: _hit_unexpectedness(lists, rel, hist, u) for sfx, u in sims.items()}

    out: dict[str, float] = {}
    for k in ks:
        top = lists[:, :k]
        for name, v in _accuracy(rel, n_rel, k).items():
            out[f"{name}@{k}"] = _mean(v)
        out.update(_exposure(top, pop, tail, k))
        for sfx, unit in sims.items():
            out[f"ILD{sfx}@{k}"] = float(_ild(top, unit).mean())
        if cats is not None:
            distinct = _category_diversity(top, cats)
            out[f"CatDiv@{k}"] = float(distinct.mean())
            out[f"CatDivNorm@{k}"] = float(distinct.mean() / min(k, cats.shape[1])) if cats.shape[1] else 0.0
        n_valid = (top >= 0).sum(axis=1)
        for sfx, (hu, hj, unexp) in unexpected.items():
            inside = hj < k
            per = np.bincount(hu[inside], weights=unexp[inside], minlength=n_users)
            per = np.where(has_truth, per / np.maximum(n_valid, 1), np.nan)
            out[f"Serendipity{sfx}@{k}"] = _mean(per)
    return out


def tag_hit_rate(
    pred_categories: sp.spmatrix | np.ndarray,
    target_categories: sp.spmatrix,
    *,
    ks: Iterable[int] = TAG_KS,
) -> dict[str, float]:
    """TagHR@k: share of users whose first k predicted categories include one of the target's categories.

    `pred_categories` is either (n_users, K) int category indices in rank order with -1 padding, or a
    sparse (n_users x n_categories) matrix of scores (higher = ranked earlier, ties by lower index;
    a row ranks only its stored entries). `target_categories` is the bool csr of the categories of each
    user's next item; users with no target category are left out of the average.
    """
    if not sp.issparse(target_categories):
        raise ValueError("target_categories must be a sparse (n_users x n_categories) matrix")
    ks = _check_ks(ks)
    n_cats = target_categories.shape[1]
    if sp.issparse(pred_categories):
        if pred_categories.shape != target_categories.shape:
            raise ValueError(
                f"pred_categories shape {pred_categories.shape} != target shape {target_categories.shape}"
            )
        pred = _rank_scores(pred_categories, ks[-1])
    else:
        pred = _as_lists(pred_categories, n_cats, ks[-1], what="pred_categories")
    rel, n_rel = _relevance(pred, target_categories, n_cats)
    if not (n_rel > 0).any():
        raise ValueError("no user has a target category; TagHR is undefined")
    return {f"TagHR@{k}": _mean(_accuracy(rel, n_rel, k)["HR"]) for k in ks}


def tag_set_hit_rate(
    tag_categories: Sequence[Sequence[int]],
    target_categories: Sequence[Collection[int]],
    *,
    ks: Iterable[int] = TAG_KS,
) -> dict[str, float]:
    """The paper's TagHR@k (§1.4): each tag maps to one category; a user is a hit when a target
    category is in {φ(t_1), ..., φ(t_k)}, the categories of the user's first k tags.

    `tag_categories[u]` lists the category of each of user u's tags in rank order (-1: the tag maps to
    none); `target_categories[u]` the categories of u's held-out item. Users with no target category
    are left out of the average; a user with no tags is a miss. Unlike `tag_hit_rate`, k counts
    tags, not categories, so many tags of one category cannot reach further down a ranking.
    """
    ks = _check_ks(ks)
    if len(tag_categories) != len(target_categories):
        raise ValueError(
            f"{len(tag_categories)} users have tags but {len(target_categories)} have targets; "
            "pass one row per user to both"
        )
    scored = [u for u, t in enumerate(target_categories) if t]
    if not scored:
        raise ValueError("no user has a target category; TagHR is undefined")
    out = {}
    for k in ks:
        hits = [bool(set(target_categories[u]) & set(tag_categories[u][:k])) for u in scored]
        out[f"TagHR@{k}"] = float(np.mean(hits))
    return out
