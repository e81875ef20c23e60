"""Tag-to-category model φ (RecGPT §1.4) and the paper's tag HR@K.

The paper maps every predicted tag to a category with a model φ whose architecture it does not give
[GAP]. Here φ is a nearest-neighbour vote over item texts, so it needs no training and works for any
catalogue with categories:

1. `fit`: every item with a category is embedded once as "clean title (category, category, ...)";
   its categories *for voting* are those at one level (`recgpt.data.categories`: the leaf of a path,
   a set's elements, a depth, or "all" levels). `at_level` re-levels a fitted φ without re-embedding.
2. `category_scores` / `predict`: a tag is embedded; its `k` nearest items (cosine) vote for their
   categories with weight = similarity (below `min_similarity`: no vote), split equally among an
   item's categories (`split_votes`: a multi-genre movie does not count more than a single-genre one).
   Categories are ranked by summed vote; the `top_categories` best are kept (explanations read them).
3. `top_category`: φ(tag) for tag HR, the single best category (the paper's one category per tag).

Tag HR@K (paper §1.4): `HR@K = (1/|U|) Σ_u 1[C_u^gt ∈ C_u^pred]` with C_u^pred = {φ(t_1), ..., φ(t_K)},
the categories of the user's first K tags in rank order (a tag repeated for a user counts once), and
C_u^gt the categories of the user's held-out next item at φ's level (a hit when any of them is in
C_u^pred). Users asked for tags but given none count as misses; users whose next item has no
category are left out (`users_scored` counts the rest). K counts tags, so neither ten unrelated tags'
deep φ lists nor a root category can reach a hit that one relevant tag list would not.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp
from pydantic import BaseModel, ConfigDict, Field

from recgpt.data.categories import CategoryLevel, categories_at_level
from recgpt.data.dataset import Dataset
from recgpt.data.split import EvalTask, Split
from recgpt.eval.metrics import tag_set_hit_rate
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
        self.level_name = "all"

    # ------------------------------------------------------------------ fit

    def fit(self, data: Dataset | pl.DataFrame, level: CategoryLevel | str = "all") -> TagToCategory:
        """Embed every item of a dataset (or items table) that has a category; vote at `level`."""
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
        self.item_ids = [r["item_id"] for r in rows]
        self._item_pos = {iid: i for i, iid in enumerate(self.item_ids)}
        self._index(data, level)
        self.vectors = np.asarray(
            self.encoder.encode([item_embedding_text(r) for r in rows]), dtype=np.float32
        )
        return self

    def at_level(self, data: Dataset | pl.DataFrame, level: CategoryLevel | str) -> TagToCategory:
        """A copy of this fitted φ whose votes and categories are at `level` (same item vectors)."""
        self._check_fitted()
        out = TagToCategory(self.encoder, self.config)
        out.item_ids, out._item_pos, out.vectors = self.item_ids, self._item_pos, self.vectors
        out._index(data, level)
        return out

    def _index(self, data: Dataset | pl.DataFrame, level: CategoryLevel | str) -> None:
        """Category vocabulary, membership and vote matrices of the fitted items at `level`."""
        levelled = categories_at_level(data, level)
        by_item = levelled.by_item()
        item_cats = [by_item.get(i) or [] for i in self.item_ids]
        if any(not c for c in item_cats):
            missing = self.item_ids[[bool(c) for c in item_cats].index(False)]
            raise ValueError(f"item {missing!r} has no category at level {levelled.name!r}")
        cats = sorted({c for row in item_cats for c in row})
        self.level_name = levelled.name
        self.categories, self._cat_pos = cats, {c: i for i, c in enumerate(cats)}
        indptr, indices = [0], []
        for row in item_cats:
            indices.extend(sorted({self._cat_pos[c] for c in row}))
            indptr.append(len(indices))
        member = sp.csr_matrix(
            (np.ones(len(indices)), np.asarray(indices, dtype=np.int64), np.asarray(indptr)),
            shape=(len(item_cats), len(cats)),
        )
        self._item_cats = member
        n_cats = np.diff(member.indptr).astype(np.float64)
        self._votes = sp.csr_matrix(sp.diags(1.0 / n_cats) @ member) if self.config.split_votes else member

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

    def top_category(self, texts: Sequence[str]) -> list[int]:
        """φ(text) for tag HR: the column of each text's best category (-1: no neighbour voted)."""
        scores = self.category_scores(list(texts))
        out = []
        for i in range(scores.shape[0]):
            lo, hi = scores.indptr[i], scores.indptr[i + 1]
            idx, val = scores.indices[lo:hi], scores.data[lo:hi]
            keep = val > 0
            out.append(int(idx[keep][np.lexsort((idx[keep], -val[keep]))[0]]) if keep.any() else -1)
        return out

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

    Tags are taken in `rank` order when the table has that column, else in table order. Returns
    {"TagHR@K": ..., "users": n, "users_with_tags": m, "users_scored": s}.
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
    tags = tags.with_row_index("_order").filter(
        pl.col("user_id").is_in(users) & pl.col("tag").is_not_null() & (pl.col("tag").str.strip_chars() != "")
    )
    tags = tags.sort(["rank", "_order"] if "rank" in tags.columns else ["_order"], nulls_last=True)
    uniq = list(dict.fromkeys(tags["tag"].to_list()))
    phi_of = dict(zip(uniq, phi.top_category(uniq), strict=True))
    per_user: dict[str, list[str]] = {u: [] for u in users}
    for u, t in zip(tags["user_id"], tags["tag"], strict=True):
        if t not in per_user[u]:
            per_user[u].append(t)
    targets = []
    for u in users:
        target_items = [split.item_ids[i] for i in task.targets[task_pos[u]]]
        targets.append({phi.category_index(c) for cats in phi.item_categories(target_items) for c in cats})
    out = tag_set_hit_rate([[phi_of[t] for t in per_user[u]] for u in users], targets, ks=ks)
    out["users"] = float(len(users))
    out["users_with_tags"] = float(sum(bool(per_user[u]) for u in users))
    out["users_scored"] = float(sum(bool(t) for t in targets))
    return out


__all__ = [
    "HR_KS",
    "TAG_CATEGORY_SCHEMA",
    "PhiConfig",
    "TagToCategory",
    "tag_hr",
]
