"""Non-LLM references for SerenGPT on the same lists: random, popularity, embedding distance.

Each ranks every LISTS row's candidates and returns RANKINGS (`recgpt.serendipity.seren`) with source
`reference:<kind>`, so `recgpt.eval.serendipity.ranking_metrics` scores them exactly like SerenGPT:

- `random`: a seeded permutation per list (seed and list id), the chance level: Hit@1 ≈ 1/list size.
- `popularity`: most popular first (training interaction counts; ties keep the list order): what a
  filter-bubble recommender would put on top.
- `distance`: embedding distance to the user's history, most distant first (`1 - mean cosine` to the
  history items; an empty history scores 1 everywhere, ties keep the list order): pure
  unexpectedness, the reference that ignores relevance.

Scores are the reference's own (a uniform draw, the count, the distance); relevance, unexpected are 0
and the reason empty (nothing was judged).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import polars as pl

from recgpt.serendipity.seren import RANKINGS_SCHEMA

Kind = Literal["random", "popularity", "distance"]
KINDS: tuple[str, ...] = ("random", "popularity", "distance")


def _positions(item_ids: Sequence[str] | None, needed: bool, kind: str) -> dict[str, int]:
    if item_ids is None:
        if needed:
            raise ValueError(f"reference {kind!r} with array inputs needs item_ids (their row order)")
        return {}
    return {i: p for p, i in enumerate(item_ids)}


def _index(pos: Mapping[str, int], item: str, list_id: str) -> int:
    if item not in pos:
        raise ValueError(f"list {list_id!r}: item {item!r} is not in item_ids")
    return pos[item]


def _unit(item_vectors: np.ndarray) -> np.ndarray:
    v = np.asarray(item_vectors, dtype=np.float64)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return np.divide(v, norms, out=np.zeros_like(v), where=norms > 0)


def reference_rankings(
    lists: pl.DataFrame,
    kind: Kind,
    *,
    item_ids: Sequence[str] | None = None,
    popularity: Mapping[str, float] | np.ndarray | None = None,
    item_vectors: np.ndarray | None = None,
    histories: Mapping[str, np.ndarray] | None = None,
    seed: int = 0,
) -> pl.DataFrame:
    """RANKINGS of `kind` over `lists` (LISTS: list_id, user_id, item_ids).

    `item_ids` gives the row order of array inputs: `popularity` (a mapping item id -> count, or an
    array), `item_vectors` (items x d). `histories` maps a list id (else its user id) to the indices
    (rows of `item_vectors`) of the user's items before the list's point.
    """
    if kind not in KINDS:
        raise ValueError(f"reference kind must be one of {KINDS}, got {kind!r}")
    pos = _positions(item_ids, kind == "distance" or isinstance(popularity, np.ndarray), kind)
    if kind == "popularity" and popularity is None:
        raise ValueError("reference 'popularity' needs popularity")
    if kind == "distance" and (item_vectors is None or histories is None):
        raise ValueError("reference 'distance' needs item_vectors and histories")
    unit = _unit(item_vectors) if kind == "distance" and item_vectors is not None else None
    rows = []
    for r in lists.select("list_id", "user_id", "item_ids").iter_rows(named=True):
        lid, items = r["list_id"], list(r["item_ids"])
        if kind == "random":
            rng = np.random.default_rng([seed, zlib.crc32(lid.encode())])
            scores = rng.random(len(items))
        elif kind == "popularity":
            if isinstance(popularity, np.ndarray):
                scores = np.array([float(popularity[_index(pos, i, lid)]) for i in items])
            else:
                scores = np.array([float(popularity.get(i, 0.0)) for i in items])  # type: ignore[union-attr]
        else:
            assert unit is not None and histories is not None
            hist = histories.get(lid, histories.get(r["user_id"]))
            if hist is None:
                raise ValueError(f"list {lid!r}: no history for it or its user {r['user_id']!r}")
            cand = unit[[_index(pos, i, lid) for i in items]]
            h = np.asarray(hist, dtype=np.int64)
            scores = 1.0 - cand @ unit[h].mean(axis=0) if len(h) else np.ones(len(items))
        order = np.argsort(-scores, kind="stable")  # ties keep the list order
        for rank, j in enumerate(order):
            rows.append(
                {
                    "list_id": lid,
                    "user_id": r["user_id"],
                    "item_id": items[j],
                    "rank": rank,
                    "score": float(scores[j]),
                    "relevance": 0,
                    "unexpected": 0,
                    "reason": "",
                    "source": f"reference:{kind}",
                }
            )
    return pl.DataFrame(rows, schema=RANKINGS_SCHEMA)


__all__ = ["KINDS", "Kind", "reference_rankings"]
