"""Tag-to-category model φ (RecGPT §1.4) and the paper's tag HR@K.

The paper maps every predicted tag to a category with a model φ whose architecture it does not give
[GAP]. Here φ is a nearest-neighbour vote over item texts, so it needs no training and works for any
catalogue with categories:

1. `fit`: every item is embedded once as "clean title (category, category, ...)".
2. `predict`: a tag is embedded; its `k` nearest items (cosine) vote for their categories with
   weight = similarity (below `min_similarity`: no vote), split equally among an item's categories
   (`split_votes`: a multi-genre movie does not count more than a single-genre one). Categories are
   ranked by summed vote; the `top_categories` best are φ(tag).

Every category of an item counts (MovieLens genres are a set; the Amazon importer stores one
flattened leaf path), so "an item's category" means any of its categories.

Tag HR@K (paper §1.4): `HR@K = (1/|U|) Σ_u 1[C_u^gt ∈ C_u^pred]`, where C_u^pred is the union of
φ(t) over the user's tags, ranked by summed score and cut at K, and C_u^gt the categories of the user's
held-out next item (a hit when any of them is in the top K). Users asked for tags but given none count
as misses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp
from pydantic import BaseModel, ConfigDict, Field

from recgpt.data.dataset import Dataset
from recgpt.data.split import EvalTask, Split
from recgpt.eval.metrics import tag_hit_rate
from recgpt.intent.pool import TextEncoder, item_embedding_text

TAG_CATEGORY_SCHEMA = {"tag": pl.String(), "category": pl.String(), "score": pl.Float64(), "rank": pl.Int64()}
HR_KS: tuple[int, ...] = (10, 30)
_CHUNK = 256  # tags scored per matrix product (bounds memory at chunk x n_items floats)


class PhiConfig(BaseModel):
    """Neighbourhood vote settings (see the module docstring)."""

    model_config = ConfigDict(frozen=True)

    k: int = Field(default=20, ge=1)
    top_categories: int = Field(default=10, ge=1)
    min_similarity: float = 0.0
    split_votes: bool = True


class TagToCategory:
    """φ: free text (a tag, an interest) -> ranked catalogue categories, by item-neighbour votes."""

    def __init__(self, encoder: TextEncoder, config: PhiConfig | None = None) -> None:
        self.encoder = encoder
        self.config = config or PhiConfig()
        self.categories: list[str] = []
        self.item_ids: list[str] = []
        self._cat_pos: dict[str, int] = {}
        self._item_pos: dict[str, int] = {}
        self._item_cats: sp.csr_matrix | None = None
        self._votes: sp.csr_matrix | None = None
        self.vectors: np.ndarray | None = None

    # ------------------------------------------------------------------ fit

    def fit(self, data: Dataset | pl.DataFrame) -> TagToCategory:
        """Embed every item of a dataset (or items table) that has at least one category."""
        items = data.items if isinstance(data, Dataset) else data
        if "item_id" not in items.columns or "title" not in items.columns:
            raise ValueError("φ needs an items table with 'item_id' and 'title' columns")
        if "categories" not in items.columns:
            raise ValueError("φ needs item categories: the items table has no 'categories' column")
        rows = [
            r
            for r in items.select(
                [c for c in ("item_id", "title", "brand", "categories") if c in items.columns]
            ).iter_rows(named=True)
            if any(c and c.strip() for c in (r["categories"] or []))
        ]
        if not rows:
            raise ValueError("φ needs item categories: no item has any")
        cats = sorted({c.strip() for r in rows for c in r["categories"] if c and c.strip()})
        self.categories, self._cat_pos = cats, {c: i for i, c in enumerate(cats)}
        self.item_ids = [r["item_id"] for r in rows]
        self._item_pos = {iid: i for i, iid in enumerate(self.item_ids)}
        indptr, indices = [0], []
        for r in rows:
            indices.extend(sorted({self._cat_pos[c.strip()] for c in r["categories"] if c and c.strip()}))
            indptr.append(len(indices))
        member = sp.csr_matrix(
            (np.ones(len(indices)), np.asarray(indices, dtype=np.int64), np.asarray(indptr)),
            shape=(len(rows), len(cats)),
        )
        self._item_cats = member
        n_cats = np.diff(member.indptr).astype(np.float64)
        self._votes = sp.csr_matrix(sp.diags(1.0 / n_cats) @ member) if self.config.split_votes else member
        self.vectors = np.asarray(
            self.encoder.encode([item_embedding_text(r) for r in rows]), dtype=np.float32
        )
        return self

    def _check_fitted(self) -> None:
        if self.vectors is None or self._votes is None:
            raise RuntimeError("φ is not fitted: call fit(dataset) first")

    # ------------------------------------------------------------------ predict

    def category_scores(self, texts: Sequence[str]) -> sp.csr_matrix:
        """(len(texts), n_categories) summed neighbour votes, cut to each row's `top_categories`."""
        self._check_fitted()
        assert self.vectors is not None and self._votes is not None
        n, k = len(texts), min(self.config.k, len(self.item_ids))
        out = []
        for start in range(0, n, _CHUNK):
            q = np.asarray(self.encoder.encode(list(texts[start : start + _CHUNK])), dtype=np.float32)
            sims = q @ self.vectors.T
            nn = (
                np.argpartition(-sims, k - 1, axis=1)[:, :k]
                if k < sims.shape[1]
                else np.tile(np.arange(sims.shape[1]), (len(q), 1))
            )
            w = np.take_along_axis(sims, nn, axis=1)
            w = np.where(w >= self.config.min_similarity, np.maximum(w, 0.0), 0.0)
            rows = np.repeat(np.arange(len(q)), nn.shape[1])
            neigh = sp.csr_matrix((w.ravel(), (rows, nn.ravel())), shape=(len(q), len(self.item_ids)))
            out.append(_keep_top(sp.csr_matrix(neigh @ self._votes), self.config.top_categories))
        if not out:
            return sp.csr_matrix((0, len(self.categories)))
        return sp.csr_matrix(sp.vstack(out))

    def predict(self, tags: Sequence[str]) -> pl.DataFrame:
        """φ(tag) for each distinct tag: TAG_CATEGORY_SCHEMA rows, rank 1 = best category."""
        uniq = list(dict.fromkeys(t for t in tags if t and t.strip()))
        scores = self.category_scores(uniq)
        data: dict[str, list[Any]] = {k: [] for k in TAG_CATEGORY_SCHEMA}
        for i, tag in enumerate(uniq):
            lo, hi = scores.indptr[i], scores.indptr[i + 1]
            idx, val = scores.indices[lo:hi], scores.data[lo:hi]
            order = np.lexsort((idx, -val))
            for rank, j in enumerate(order, start=1):
                for key, v in zip(data, (tag, self.categories[idx[j]], float(val[j]), rank), strict=True):
                    data[key].append(v)
        return pl.DataFrame(data, schema=TAG_CATEGORY_SCHEMA)

    def category_index(self, category: str) -> int:
        """Column of a category in `categories` (KeyError names an unknown one)."""
        try:
            return self._cat_pos[category]
        except KeyError:
            raise KeyError(f"category {category!r} is unknown to φ") from None

    def item_rows(self, item_ids: Sequence[str]) -> np.ndarray:
        """Rows of items in `vectors` / `membership` (-1 for items φ does not know)."""
        return np.asarray([self._item_pos.get(i, -1) for i in item_ids], dtype=np.int64)

    @property
    def membership(self) -> sp.csr_matrix:
        """(n_items, n_categories) 0/1 item-category matrix, rows in `item_ids` order."""
        self._check_fitted()
        assert self._item_cats is not None
        return self._item_cats

    def item_categories(self, item_ids: Sequence[str]) -> list[list[str]]:
        """Categories of items (empty for items φ does not know: no category)."""
        assert self._item_cats is not None or not item_ids, "φ is not fitted"
        out = []
        for iid in item_ids:
            pos = self._item_pos.get(iid)
            if pos is None or self._item_cats is None:
                out.append([])
                continue
            lo, hi = self._item_cats.indptr[pos], self._item_cats.indptr[pos + 1]
            out.append([self.categories[c] for c in self._item_cats.indices[lo:hi]])
        return out


def _keep_top(m: sp.csr_matrix, top: int) -> sp.csr_matrix:
    """Keep each row's `top` largest positive entries (ties: lower column)."""
    m.eliminate_zeros()
    rows, cols, vals = [], [], []
    for i in range(m.shape[0]):
        lo, hi = m.indptr[i], m.indptr[i + 1]
        idx, val = m.indices[lo:hi], m.data[lo:hi]
        keep = np.lexsort((idx, -val))[:top]
        rows.extend([i] * len(keep))
        cols.extend(idx[keep])
        vals.extend(val[keep])
    return sp.csr_matrix((vals, (rows, cols)), shape=m.shape)


# ---------------------------------------------------------------- tag HR


def tag_hr(
    tags: pl.DataFrame,
    phi: TagToCategory,
    split: Split,
    *,
    task: EvalTask | None = None,
    user_ids: Sequence[str] | None = None,
    ks: Sequence[int] = HR_KS,
) -> dict[str, float]:
    """The paper's tag HR@K (module docstring) over `user_ids` (default: the users in `tags`).

    Returns {"TagHR@K": ..., "users": n, "users_with_tags": m}; users without a target category are
    left out of the average by `tag_hit_rate`.
    """
    task = task or split.test
    if "user_id" not in tags.columns or "tag" not in tags.columns:
        raise ValueError("tags table needs 'user_id' and 'tag' columns")
    users = list(dict.fromkeys(user_ids if user_ids is not None else tags["user_id"].to_list()))
    if not users:
        raise ValueError("no users to evaluate")
    task_pos = {u: i for i, u in enumerate(task.user_ids)}
    unknown = [u for u in users if u not in task_pos]
    if unknown:
        raise ValueError(f"users not in the {task.name} task: {unknown[:5]}")
    user_row = {u: i for i, u in enumerate(users)}
    tags = tags.filter(pl.col("user_id").is_in(users) & pl.col("tag").is_not_null())
    uniq = list(dict.fromkeys(tags["tag"].to_list()))
    per_tag = phi.category_scores(uniq)
    tag_row = {t: i for i, t in enumerate(uniq)}
    pick = sp.csr_matrix(
        (np.ones(tags.height), ([user_row[u] for u in tags["user_id"]], [tag_row[t] for t in tags["tag"]])),
        shape=(len(users), len(uniq)),
    )
    pick.data[:] = 1.0  # a tag repeated for one user counts once
    pred = sp.csr_matrix(pick @ per_tag)
    pred.eliminate_zeros()
    t_rows, t_cols = [], []
    for u in users:
        target_items = [split.item_ids[i] for i in task.targets[task_pos[u]]]
        for cats in phi.item_categories(target_items):
            for c in cats:
                t_rows.append(user_row[u])
                t_cols.append(phi.category_index(c))
    target = sp.csr_matrix((np.ones(len(t_rows)), (t_rows, t_cols)), shape=pred.shape, dtype=bool)
    out = tag_hit_rate(pred, target, ks=ks)
    out["users"] = float(len(users))
    out["users_with_tags"] = float(len(set(tags["user_id"].to_list())))
    return out


__all__ = [
    "HR_KS",
    "TAG_CATEGORY_SCHEMA",
    "PhiConfig",
    "TagToCategory",
    "tag_hr",
]
