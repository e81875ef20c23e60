"""Serendipity metrics: of final top-K lists (SERAL's slot on / off) and of SerenGPT's short-list rankings.

**Top-K lists** (`recs`: (n_users, K) item indices, -1 = empty slot, as `recgpt.eval.metrics`; the
same validation and the same cosine / history helpers). `histories` is the binary (n_users x n_items)
matrix of each user's items before their split point; `truth` the held-out / future items (bool csr or
one index per user, -1 = none). serving-scale.md §4 and metrics.md give the definitions:

- `unexpectedness_at_k` (embedding): mean over users of the mean over the non-empty top-k slots of
  `1 - mean_{h in H(u)} cos(i, h)` (an empty history: 1, nothing is expected).
- `category_unexpectedness_at_k`: mean over users of the share of non-empty top-k slots whose item has
  a category and none of its categories occurs among the categories of the user's history.
- `unexpected_slots(rule)`: the per-slot rule of SERAL's log labels (H2's `is_unexpected`): 'category'
  (a new category), 'distance' (embedding unexpectedness >= `distance`) or 'either'.
- `serendipity_at_k`: `SRDP@k = mean_u |{i in R̂_k(u): i in R(u) and unexpected(u, i)}| / n_k(u)`, with
  R(u) the user's held-out / future items, unexpected by the rule, n_k(u) the non-empty slots of the
  top-k (Murakami 2008 / Ge 2010: |UNEXP ∩ USEFUL| / |R_u|); users without ground truth are left out.
  Under leave-one-out its ceiling is 1/k. (The continuous `Serendipity-emb` of `evaluate_lists`,
  relevance x embedding unexpectedness, is the graded companion.)
- `pvr_at_k`: the paper's PVR (serendipitous-item exposure ratio) offline: the share of all exposed
  (non-empty) top-k slots, over all users, whose item is unexpected by the rule. Relevance is unknown
  for most exposed slots, so PVR counts exposure of rule-serendipitous items, as an online exposure
  ratio would. With `channel` (bool (n_users, K): slots filled by the serendipity slot), a slot counts
  only when it is unexpected *and* came from that channel: the slot's own contribution.

**SerenGPT rankings** (RANKINGS against LISTS, `ranking_metrics`): Hit@1, NDCG@3, NDCG@10 over the
labelled lists (at least one positive label), each with a 95% bootstrap interval over lists
(`recgpt.eval.bootstrap`); `compare_rankings` pairs two rankings of the same lists (e.g. SFT + IPO vs
the base model) as a ratio and a difference of means with paired intervals.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Literal

import numpy as np
import polars as pl
import scipy.sparse as sp

from recgpt.eval.bootstrap import DEFAULT_RESAMPLES, paired_difference, paired_ratio
from recgpt.eval.metrics import (
    _as_csr,
    _as_lists,
    _check_ks,
    _chunks,
    _hit_unexpectedness,
    _mean,
    _relevance,
    _unit_rows,
)

Rule = Literal["category", "distance", "either"]
RULES: tuple[str, ...] = ("category", "distance", "either")
LIST_METRICS: tuple[str, ...] = ("Hit@1", "NDCG@3", "NDCG@10")
_CHUNK = 8192


def _inputs(
    recs: np.ndarray, histories: sp.spmatrix, n_items: int, k: int
) -> tuple[np.ndarray, sp.csr_matrix]:
    lists = _as_lists(recs, n_items, k)
    hist = _as_csr(histories, lists.shape[0], "histories", binary=True)
    if hist.shape[1] != n_items:
        raise ValueError(f"histories must have {n_items} columns, got {hist.shape[1]}")
    return lists, hist


def _per_user_mean(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Per user: mean of `values` over the non-empty slots (NaN for a list with none)."""
    n = valid.sum(axis=1)
    return np.where(n > 0, np.where(valid, values, 0.0).sum(axis=1) / np.maximum(n, 1), np.nan)


def _exposed(recs: np.ndarray, k: int) -> np.ndarray:
    """(n_users, k) bool: non-empty slots of the top-k (a shorter list's missing slots are empty)."""
    a = np.asarray(recs)[:, :k]
    return np.pad(a, ((0, 0), (0, k - a.shape[1])), constant_values=-1) >= 0


def embedding_unexpectedness(
    recs: np.ndarray, histories: sp.spmatrix, item_vectors: np.ndarray, *, k: int
) -> np.ndarray:
    """(n_users, k) `1 - mean cosine to the history` of each non-empty slot (NaN for empty slots)."""
    unit = _unit_rows(item_vectors, item_vectors.shape[0], "item_vectors")
    lists, hist = _inputs(recs, histories, unit.shape[0], k)
    out = np.full(lists.shape, np.nan)
    hu, hj, unexp = _hit_unexpectedness(lists, lists >= 0, hist, unit)
    out[hu, hj] = unexp
    return out


def category_unexpected(
    recs: np.ndarray, histories: sp.spmatrix, item_categories: sp.spmatrix | np.ndarray, *, k: int
) -> np.ndarray:
    """(n_users, k) bool: the slot's item has a category and none occurs in the user's history."""
    cats = _as_csr(item_categories, item_categories.shape[0], "item_categories", binary=True)
    lists, hist = _inputs(recs, histories, cats.shape[0], k)
    out = np.zeros(lists.shape, dtype=bool)
    has_cat = np.diff(cats.indptr) > 0
    for sl in _chunks(lists.shape[0], _CHUNK):
        seen = sp.csr_matrix(hist[sl] @ cats)  # users x categories met in the history
        block = lists[sl]
        u, j = np.nonzero(block >= 0)
        items = block[u, j]
        overlap = np.asarray(seen[u].multiply(cats[items]).sum(axis=1)).ravel()
        out[sl][u, j] = has_cat[items] & (overlap == 0)
    return out


def check_rule(rule: str) -> None:
    """Refuse a rule name that is not one of `RULES` (a typo would silently mean 'no slot unexpected')."""
    if rule not in RULES:
        raise ValueError(f"rule must be 'category', 'distance' or 'either', got {rule!r}")


def rule_mask(
    rule: Rule, *, category: Callable[[], np.ndarray], distance: Callable[[], np.ndarray]
) -> np.ndarray:
    """What `rule` calls unexpected, given its two tests as thunks: 'category' (a new category),
    'distance' (far from the history) or 'either'. Only the tests the rule uses are computed.

    The one definition of the rule: SERAL's candidates and labels (`recgpt.serendipity.candidates`,
    per user over the catalogue) and the metrics here (per slot of top-K lists) both combine through it.
    """
    check_rule(rule)
    parts = []
    if rule in ("category", "either"):
        parts.append(category())
    if rule in ("distance", "either"):
        parts.append(distance())
    return np.logical_or.reduce(parts)


def unexpected_slots(
    recs: np.ndarray,
    histories: sp.spmatrix,
    *,
    k: int,
    rule: Rule = "category",
    item_vectors: np.ndarray | None = None,
    item_categories: sp.spmatrix | np.ndarray | None = None,
    distance: float = 0.5,
) -> np.ndarray:
    """(n_users, k) bool: the slot is unexpected for its user by `rule` (module docstring)."""
    check_rule(rule)

    def new_category() -> np.ndarray:
        # any history category is familiar here (candidates' familiar_min=1, familiar_share=0), computed
        # per slot over users in chunks rather than per user over the catalogue
        if item_categories is None:
            raise ValueError(f"rule {rule!r} needs item_categories")
        return category_unexpected(recs, histories, item_categories, k=k)

    def far() -> np.ndarray:
        if item_vectors is None:
            raise ValueError(f"rule {rule!r} needs item_vectors")
        return np.nan_to_num(embedding_unexpectedness(recs, histories, item_vectors, k=k)) >= distance

    return rule_mask(rule, category=new_category, distance=far)


def unexpectedness_at_k(
    recs: np.ndarray, histories: sp.spmatrix, item_vectors: np.ndarray, *, k: int
) -> float:
    """Mean over users of the mean embedding unexpectedness of their non-empty top-k slots."""
    per_slot = embedding_unexpectedness(recs, histories, item_vectors, k=k)
    valid = ~np.isnan(per_slot)
    return _mean(_per_user_mean(np.nan_to_num(per_slot), valid))


def category_unexpectedness_at_k(
    recs: np.ndarray, histories: sp.spmatrix, item_categories: sp.spmatrix | np.ndarray, *, k: int
) -> float:
    """Mean over users of the share of non-empty top-k slots in a category new to the user."""
    flags = category_unexpected(recs, histories, item_categories, k=k)
    return _mean(_per_user_mean(flags.astype(np.float64), _exposed(recs, k)))


def serendipity_at_k(
    recs: np.ndarray,
    truth: sp.spmatrix | np.ndarray,
    histories: sp.spmatrix,
    *,
    k: int,
    n_items: int,
    **rule: Any,
) -> float:
    """SRDP@k = mean over users with ground truth of |relevant ∧ unexpected slots| / non-empty slots
    (module docstring); `rule` = `unexpected_slots`' keywords (rule, item_vectors, item_categories,
    distance)."""
    lists = _as_lists(recs, n_items, k)
    rel, n_rel = _relevance(lists, truth, n_items)
    if not (n_rel > 0).any():
        raise ValueError("no user has a ground-truth item; serendipity@k is undefined")
    unexp = unexpected_slots(lists, histories, k=k, **rule)
    per = _per_user_mean((rel & unexp).astype(np.float64), lists >= 0)
    return _mean(np.where(n_rel > 0, np.nan_to_num(per), np.nan))


def pvr_at_k(
    recs: np.ndarray,
    histories: sp.spmatrix,
    *,
    k: int,
    channel: np.ndarray | None = None,
    **rule: Any,
) -> float:
    """Share of all exposed (non-empty) top-k slots whose item is unexpected by the rule (and, with
    `channel`, came from the serendipity channel): the offline PVR (module docstring)."""
    flags = unexpected_slots(recs, histories, k=k, **rule)
    if channel is not None:
        ch = np.asarray(channel, dtype=bool)[:, :k]
        if ch.shape != flags.shape:
            raise ValueError(f"channel must be {flags.shape} after the cut-off, got {ch.shape}")
        flags = flags & ch
    exposed = _exposed(recs, k)
    return float((flags & exposed).sum() / exposed.sum()) if exposed.any() else float("nan")


def serendipity_metrics(
    recs: np.ndarray,
    truth: sp.spmatrix | np.ndarray,
    histories: sp.spmatrix,
    *,
    ks: Iterable[int] = (10,),
    item_vectors: np.ndarray | None = None,
    item_categories: sp.spmatrix | np.ndarray | None = None,
    rule: Rule = "category",
    distance: float = 0.5,
    channel: np.ndarray | None = None,
) -> dict[str, float]:
    """Unexp@k (embedding), UnexpCat@k, Serendipity@k and PVR@k (and PVR-slot@k with `channel`) for
    each cut-off; the embedding / category figures need their inputs and are left out without them."""
    basis = item_vectors if item_vectors is not None else item_categories
    if basis is None:
        raise ValueError("serendipity metrics need item_vectors or item_categories")
    n_items = basis.shape[0]
    rule_kw = {
        "rule": rule,
        "item_vectors": item_vectors,
        "item_categories": item_categories,
        "distance": distance,
    }
    out: dict[str, float] = {}
    for k in _check_ks(ks):
        if item_vectors is not None:
            out[f"Unexp@{k}"] = unexpectedness_at_k(recs, histories, item_vectors, k=k)
        if item_categories is not None:
            out[f"UnexpCat@{k}"] = category_unexpectedness_at_k(recs, histories, item_categories, k=k)
        out[f"Serendipity@{k}"] = serendipity_at_k(recs, truth, histories, k=k, n_items=n_items, **rule_kw)
        out[f"PVR@{k}"] = pvr_at_k(recs, histories, k=k, **rule_kw)
        if channel is not None:
            out[f"PVR-slot@{k}"] = pvr_at_k(recs, histories, k=k, channel=channel, **rule_kw)
    return out


# ---------------------------------------------------------------- SerenGPT's short-list rankings


def per_list_metrics(rankings: pl.DataFrame, lists: pl.DataFrame) -> pl.DataFrame:
    """Hit@1, NDCG@3, NDCG@10 of every labelled list (at least one positive label) that `rankings`
    (RANKINGS: list_id, item_id, rank) ranks. NDCG@k = DCG@k / ideal DCG@k with binary gains, so a list
    with several positives is perfect when they fill the first slots. A labelled list the rankings
    lack, or a ranking that is not a permutation of its list's items, is an error (it would bias the
    mean silently)."""
    labels = (
        lists.select("list_id", "item_ids", "labels")
        .explode("item_ids", "labels")
        .rename({"item_ids": "item_id", "labels": "label"})
    )
    n_pos = labels.group_by("list_id").agg((pl.col("label") > 0).sum().alias("n_pos"))
    labelled = set(n_pos.filter(pl.col("n_pos") > 0)["list_id"].to_list())
    ranked = rankings.filter(pl.col("list_id").is_in(list(labelled)))
    if missing := sorted(labelled - set(ranked["list_id"].unique().to_list())):
        raise ValueError(f"{len(missing)} labelled lists have no ranking, e.g. {missing[:3]}")
    joined = ranked.join(labels, on=["list_id", "item_id"], how="left")
    if (bad := joined.filter(pl.col("label").is_null())).height:
        r = bad.row(0, named=True)
        raise ValueError(
            f"list {r['list_id']!r}: ranked item {r['item_id']!r} is not one of the list's items"
        )
    size = labels.group_by("list_id").len("size")
    checked = (
        joined.group_by("list_id")
        .agg(pl.len().alias("n"), pl.col("rank").sort().alias("ranks"))
        .join(size, on="list_id")
    )
    for r in checked.iter_rows(named=True):
        if r["n"] != r["size"] or r["ranks"] != list(range(r["size"])):
            raise ValueError(
                f"list {r['list_id']!r}: the ranking must place each of its {r['size']} items once at ranks 0..{r['size'] - 1}"
            )
    rows = []
    for (list_id,), g in joined.sort("rank").group_by("list_id", maintain_order=True):
        gains = (g["label"].to_numpy() > 0).astype(np.float64)
        disc = 1.0 / np.log2(np.arange(2, len(gains) + 2))
        p = int(gains.sum())
        row: dict[str, Any] = {"list_id": list_id, "n_pos": p, "Hit@1": float(gains[0])}
        for k in (3, 10):
            row[f"NDCG@{k}"] = float((gains[:k] * disc[:k]).sum() / disc[: min(p, k)].sum())
        rows.append(row)
    schema = {"list_id": pl.String(), "n_pos": pl.Int64(), **dict.fromkeys(LIST_METRICS, pl.Float64())}
    return pl.DataFrame(rows, schema=schema).sort("list_id")


def _mean_interval(values: np.ndarray, *, resamples: int, seed: int) -> dict[str, Any]:
    """The mean with its percentile bootstrap interval over lists (the bootstrap of mean(v) - 0)."""
    return paired_difference(values, np.zeros_like(values), resamples=resamples, seed=seed).to_json()


def ranking_metrics(
    rankings: pl.DataFrame, lists: pl.DataFrame, *, seed: int = 0, resamples: int = DEFAULT_RESAMPLES
) -> dict[str, Any]:
    """Hit@1, NDCG@3, NDCG@10 (means over the labelled lists), `n_lists`, and under `ci` each metric's
    95% bootstrap interval over lists (`recgpt.eval.bootstrap`)."""
    per = per_list_metrics(rankings, lists)
    out: dict[str, Any] = {"n_lists": per.height}
    if not per.height:
        return {**out, **dict.fromkeys(LIST_METRICS, float("nan")), "ci": {}}
    out.update({m: float(per[m].mean()) for m in LIST_METRICS})  # type: ignore[arg-type]
    out["ci"] = {m: _mean_interval(per[m].to_numpy(), resamples=resamples, seed=seed) for m in LIST_METRICS}
    return out


def compare_rankings(
    a: pl.DataFrame,
    b: pl.DataFrame,
    lists: pl.DataFrame,
    *,
    seed: int = 0,
    resamples: int = DEFAULT_RESAMPLES,
) -> dict[str, dict[str, Any]]:
    """Ranking `a` against ranking `b` on the labelled lists both rank (e.g. SFT + IPO vs the base
    model): per metric the ratio of means and the difference of means, each with a paired bootstrap
    interval (the same resampled lists for both rows)."""
    pa, pb = per_list_metrics(a, lists), per_list_metrics(b, lists)
    both = pa.join(pb, on="list_id", suffix="_b")
    if not both.height:
        raise ValueError("the two rankings share no labelled list")
    out = {}
    for m in LIST_METRICS:
        x, y = both[m].to_numpy(), both[f"{m}_b"].to_numpy()
        out[m] = {
            "ratio": paired_ratio(x, y, resamples=resamples, seed=seed).to_json(),
            "difference": paired_difference(x, y, resamples=resamples, seed=seed).to_json(),
        }
    return out


__all__ = [
    "LIST_METRICS",
    "RULES",
    "Rule",
    "category_unexpected",
    "category_unexpectedness_at_k",
    "check_rule",
    "compare_rankings",
    "embedding_unexpectedness",
    "per_list_metrics",
    "pvr_at_k",
    "ranking_metrics",
    "rule_mask",
    "serendipity_at_k",
    "serendipity_metrics",
    "unexpected_slots",
    "unexpectedness_at_k",
]
