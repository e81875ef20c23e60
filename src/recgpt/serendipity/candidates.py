"""SerenGPT's candidates: items the user's familiar channels would not show.

A user's *familiar* categories are the categories (at one level, `recgpt.data.categories`) of the
items in their history before the split point, counted once `familiar_min` history items carry
them. An item is *unexpected* for a user under a rule:

* ``category``: it has categories at the level and none of them is familiar;
* ``distance``: its unexpectedness ``1 - mean_h cos(item, h)`` over the history items h (the
  content-based definition of `../shared/docs/serving-scale.md` §4) is at least a threshold:
  with ``distance_kind="quantile"`` (default) the `distance` quantile of the user's unexpectedness
  over the whole catalogue (0.8: farther from the history than 80% of the catalogue; scale-free
  across encoders and datasets: MiniLM's absolute distances of held-out items span 0.56-0.71 on
  MovieLens-100k), with ``"absolute"`` `distance` itself;
* ``either``: one of the two.

Default: ``distance`` at quantile 0.8. Measured on the full test users (loo split, MiniLM item
vectors, categories at level auto): the held-out item is unexpected for 9.2% of MovieLens-100k users
and 10.5% of Amazon-Scientific users under it; under ``category`` for 0.6% (MovieLens users have seen
nearly every genre) and 73% (Amazon's categories are one flattened path string per item, 767 of
them, so almost every purchase is a "new category").

A category counts as familiar once at least `familiar_min` history items and at least a share
`familiar_share` of them carry it (0.0: any engaged category is familiar; MovieLens users who have
seen every genre make the strict rule almost never fire, a share of 0.1-0.2 makes minor genres new).

`generate_candidates` retrieves, per user, the nearest neighbours (inner product over unit item
vectors in a faiss index restricted to the user's unexpected items) of their newest
`history_items` history items, ranks them by the relevance proxy ``score = max_h cos(item, h)``
(close to at least one thing the user liked; the mean would be ``1 - unexpectedness`` and would rank
the *least* unexpected first) and keeps `size`. History items are never candidates. A user with no
history gets the most popular items (every category is unfamiliar to them). Ties break by a seeded
permutation of the catalogue, so the output is a pure function of the inputs and the seed.

The functions take arrays (vectors, a csr items x categories matrix, popularity), so tests use small
synthetic catalogues; `catalogue_arrays` builds them from a `Dataset` with the project's sentence
encoder (`item_embedding_text`: clean title plus categories, as the interest pool embeds items).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import polars as pl
import scipy.sparse as sp
from pydantic import BaseModel, ConfigDict, Field, model_validator

from recgpt.data.categories import CategoryLevel, categories_at_level, parse_level
from recgpt.data.dataset import Dataset
from recgpt.eval.serendipity import Rule, rule_mask
from recgpt.intent.pool import TextEncoder, item_embedding_text
from recgpt.retrieval.index import ItemIndex

DistanceKind = Literal["quantile", "absolute"]
CANDIDATES_SCHEMA: dict[str, pl.DataType] = {
    "user_id": pl.String(),
    "item_id": pl.String(),
    "rank": pl.Int32(),
    "score": pl.Float32(),
    "category": pl.String(),
    "unexpectedness": pl.Float32(),
}
CATEGORY_SEP = "|"  # an item with several categories at the level (MovieLens genres): "Action|Comedy"


class RuleConfig(BaseModel):
    """When an item is unexpected for a user (module docstring); shared by candidates and labels."""

    model_config = ConfigDict(frozen=True)

    rule: Rule = "distance"
    distance: float = Field(default=0.8, ge=0.0, le=2.0, description="unexpectedness threshold")
    distance_kind: DistanceKind = "quantile"
    familiar_min: int = Field(default=1, ge=1, description="history items that make a category familiar")
    familiar_share: float = Field(default=0.0, ge=0.0, lt=1.0, description="history share that does")

    @model_validator(mode="after")
    def _quantile_in_range(self) -> RuleConfig:
        if self.distance_kind == "quantile" and self.distance > 1.0:
            raise ValueError(f"distance is a quantile (distance_kind='quantile'): 0..1, got {self.distance}")
        return self

    def rule_only(self) -> RuleConfig:
        """Just the unexpectedness fields (to copy into another config)."""
        return RuleConfig(**{k: getattr(self, k) for k in RuleConfig.model_fields})


class CandidateConfig(RuleConfig):
    """How candidates are generated (module docstring)."""

    size: int = Field(default=10, ge=1, description="candidates per user")
    per_item: int = Field(default=20, ge=1, description="neighbours retrieved per history item")
    history_items: int = Field(default=50, ge=1, description="newest history items used as queries")
    category_level: CategoryLevel | str = "auto"

    def level(self) -> CategoryLevel:
        """The category level, parsed."""
        return parse_level(self.category_level)


@dataclass(frozen=True)
class Catalogue:
    """The arrays candidates and labels read, row i = item index i of the dataset's items table."""

    item_ids: np.ndarray  # (n_items,) str
    vectors: np.ndarray  # (n_items, dim) float32, L2-normalised
    categories: sp.csr_matrix  # (n_items, n_categories) 0/1
    category_names: list[str]
    popularity: np.ndarray  # (n_items,) interaction counts

    def __post_init__(self) -> None:
        n = len(self.item_ids)
        if self.vectors.shape[0] != n or self.categories.shape[0] != n or len(self.popularity) != n:
            raise ValueError(
                f"catalogue arrays disagree: {n} item ids, {self.vectors.shape[0]} vectors, "
                f"{self.categories.shape[0]} category rows, {len(self.popularity)} popularity counts"
            )
        if self.categories.shape[1] != len(self.category_names):
            raise ValueError(
                f"{self.categories.shape[1]} category columns but {len(self.category_names)} category names"
            )

    def category_text(self, items: np.ndarray) -> list[str]:
        """Each item's categories at the level joined by `CATEGORY_SEP` ("" when it has none)."""
        names = self.category_names
        csr = self.categories
        return [
            CATEGORY_SEP.join(names[c] for c in csr.indices[csr.indptr[i] : csr.indptr[i + 1]])
            for i in np.asarray(items, dtype=np.int64)
        ]


def category_matrix(
    categories: Sequence[Sequence[str]], names: Sequence[str] | None = None
) -> tuple[sp.csr_matrix, list[str]]:
    """(items x categories 0/1 csr, category names) of per-item category lists."""
    names = sorted({c for cats in categories for c in cats}) if names is None else list(names)
    col = {c: j for j, c in enumerate(names)}
    rows, cols = [], []
    for i, cats in enumerate(categories):
        for c in dict.fromkeys(cats):
            rows.append(i)
            cols.append(col[c])
    data = np.ones(len(rows), dtype=np.float32)
    mat = sp.csr_matrix((data, (rows, cols)), shape=(len(categories), len(names)), dtype=np.float32)
    return mat, names


def catalogue_arrays(
    dataset: Dataset,
    encoder: TextEncoder,
    level: CategoryLevel | str = "auto",
    *,
    events: pl.DataFrame | None = None,
) -> Catalogue:
    """The dataset's items as a `Catalogue`: encoder vectors, categories at `level`, popularity.

    Popularity counts the item events of `events` (pass the split's train events so a popularity
    fallback never sees the future); default: every event of the dataset.
    """
    items = dataset.items
    levelled = categories_at_level(dataset, level)
    mat, names = category_matrix(levelled.categories)
    vectors = np.asarray(encoder.encode([item_embedding_text(r) for r in items.iter_rows(named=True)]))
    vectors = vectors.astype(np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors = vectors / np.where(norms > 0, norms, 1.0)
    ev = (dataset.events if events is None else events).filter(pl.col("item_id").is_not_null())
    counts = dict(ev.group_by("item_id").len().iter_rows())
    ids = items["item_id"].to_numpy().astype(str)
    pop = np.asarray([counts.get(i, 0) for i in ids], dtype=np.float64)
    return Catalogue(ids, vectors, mat, names, pop)


def familiar_categories(
    history: np.ndarray, item_categories: sp.csr_matrix, familiar_min: int = 1, familiar_share: float = 0.0
) -> np.ndarray:
    """Boolean mask over categories: those carried by at least `familiar_min` distinct history items
    and by at least a share `familiar_share` of them."""
    hist = np.unique(np.asarray(history, dtype=np.int64))
    if len(hist) == 0:
        return np.zeros(item_categories.shape[1], dtype=bool)
    seen = np.zeros(item_categories.shape[0], dtype=np.float32)
    seen[hist] = 1.0
    counts = np.asarray(item_categories.T @ seen).ravel()  # a sparse mat-vec: no row slicing
    return (counts >= familiar_min) & (counts >= familiar_share * len(hist)) & (counts > 0)


def catalogue_unexpectedness(history: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """1 - mean cosine of every catalogue item to the history items (all 1.0 when history is empty)."""
    hist = np.asarray(history, dtype=np.int64)
    if len(hist) == 0:
        return np.ones(vectors.shape[0], dtype=np.float32)
    return (1.0 - vectors @ vectors[hist].mean(axis=0)).astype(np.float32)


def unexpectedness(items: np.ndarray, history: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """1 - mean cosine of each item to the history items (1.0 for every item when history is empty)."""
    items = np.asarray(items, dtype=np.int64)
    hist = np.asarray(history, dtype=np.int64)
    if len(hist) == 0:
        return np.ones(len(items), dtype=np.float32)
    return (1.0 - vectors[items] @ vectors[hist].mean(axis=0)).astype(np.float32)


def unexpected_mask(
    items: np.ndarray | None,
    history: np.ndarray,
    vectors: np.ndarray,
    item_categories: sp.csr_matrix,
    cfg: RuleConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """(is unexpected, unexpectedness) of `items` (None: the whole catalogue) against `history`
    under `cfg` (module docstring)."""
    everything = catalogue_unexpectedness(history, vectors)
    pick = slice(None) if items is None else np.asarray(items, dtype=np.int64)
    unexp = everything[pick]

    def far() -> np.ndarray:
        threshold = cfg.distance
        if cfg.distance_kind == "quantile":
            threshold = float(np.quantile(everything, cfg.distance))
        return unexp >= threshold

    def new_category() -> np.ndarray:
        familiar = familiar_categories(history, item_categories, cfg.familiar_min, cfg.familiar_share)
        touches = np.asarray(item_categories @ familiar.astype(np.float32)).ravel() > 0
        has_cats = np.diff(item_categories.indptr) > 0
        return (has_cats & ~touches)[pick]

    return rule_mask(cfg.rule, category=new_category, distance=far), unexp


def _tie_order(n: int, seed: int) -> np.ndarray:
    """A seeded rank per item that breaks score ties (lower first)."""
    return np.random.default_rng(seed).permutation(n)


def _neighbours(
    index: ItemIndex, vectors: np.ndarray, queries: np.ndarray, allowed: np.ndarray, k: int
) -> np.ndarray:
    """Distinct items among the `k` nearest allowed neighbours (a faiss bitmap selector) of each query."""
    import faiss

    mask = np.zeros(index.n_items, dtype=bool)
    mask[allowed] = True
    bits = np.packbits(mask, bitorder="little")
    params = faiss.SearchParameters(sel=faiss.IDSelectorBitmap(index.n_items, faiss.swig_ptr(bits)))
    _, ids = index.index.search(np.ascontiguousarray(vectors[queries]), min(k, len(allowed)), params=params)
    return np.unique(ids[ids >= 0].astype(np.int64))


def generate_candidates(
    cfg: CandidateConfig,
    histories: Sequence[np.ndarray],
    user_ids: Sequence[str],
    item_ids: np.ndarray,
    item_vectors: np.ndarray,
    item_categories: sp.csr_matrix,
    category_names: Sequence[str],
    popularity: np.ndarray,
    seed: int = 0,
    *,
    exclude: Sequence[np.ndarray] | None = None,
    index: ItemIndex | None = None,
) -> pl.DataFrame:
    """CANDIDATES (`CANDIDATES_SCHEMA`): up to `cfg.size` unexpected neighbours per user (module docstring).

    `histories[u]` are item indices before the user's point (oldest first); `exclude[u]` are more
    items never to propose to user u (e.g. everything they engaged with, for label negatives).
    `index` reuses a built index over `item_vectors`.
    """
    if len(histories) != len(user_ids):
        raise ValueError(f"{len(histories)} histories for {len(user_ids)} users")
    if exclude is not None and len(exclude) != len(user_ids):
        raise ValueError(f"{len(exclude)} exclusion lists for {len(user_ids)} users")
    vectors = np.ascontiguousarray(item_vectors, dtype=np.float32)
    n = vectors.shape[0]
    cat = Catalogue(
        np.asarray(item_ids).astype(str), vectors, item_categories, list(category_names), popularity
    )
    index = index or ItemIndex.build(vectors)
    tie = _tie_order(n, seed)
    pop = np.asarray(popularity, dtype=np.float64)
    users: list[str] = []
    picked: list[np.ndarray] = []
    score_parts: list[np.ndarray] = []
    unexp_parts: list[np.ndarray] = []
    for u, (user, history) in enumerate(zip(user_ids, histories, strict=True)):
        hist = np.asarray(history, dtype=np.int64)
        banned = np.zeros(n, dtype=bool)
        banned[hist] = True
        if exclude is not None:
            banned[np.asarray(exclude[u], dtype=np.int64)] = True
        ok, unexp = unexpected_mask(None, hist, vectors, item_categories, cfg)
        allowed = np.flatnonzero(ok & ~banned)
        if len(allowed) == 0:
            continue
        if len(hist) == 0:
            chosen = allowed[np.lexsort((tie[allowed], -pop[allowed]))][: cfg.size]
            scores = np.zeros(len(chosen), dtype=np.float32)
        else:
            queries = np.asarray(list(dict.fromkeys(hist[::-1].tolist())), dtype=np.int64)[
                : cfg.history_items
            ]
            found = _neighbours(index, vectors, queries, allowed, max(cfg.per_item, cfg.size))
            sims = (vectors[found] @ vectors[queries].T).max(axis=1)
            order = np.lexsort((tie[found], -sims))[: cfg.size]
            chosen, scores = found[order], sims[order].astype(np.float32)
        users += [user] * len(chosen)
        picked.append(chosen)
        score_parts.append(scores)
        unexp_parts.append(unexp[chosen])
    chosen = np.concatenate(picked) if picked else np.zeros(0, dtype=np.int64)
    ranks = np.concatenate([np.arange(len(c), dtype=np.int32) for c in picked]) if picked else []
    return pl.DataFrame(
        {
            "user_id": users,
            "item_id": cat.item_ids[chosen].tolist(),
            "rank": ranks,
            "score": np.concatenate(score_parts) if picked else [],
            "category": cat.category_text(chosen),
            "unexpectedness": np.concatenate(unexp_parts) if picked else [],
        },
        schema=CANDIDATES_SCHEMA,
    )


def generate_for(
    cfg: CandidateConfig,
    catalogue: Catalogue,
    histories: Sequence[np.ndarray],
    user_ids: Sequence[str],
    seed: int = 0,
    *,
    exclude: Sequence[np.ndarray] | None = None,
    index: ItemIndex | None = None,
) -> pl.DataFrame:
    """`generate_candidates` over a `Catalogue`."""
    return generate_candidates(
        cfg,
        histories,
        user_ids,
        catalogue.item_ids,
        catalogue.vectors,
        catalogue.categories,
        catalogue.category_names,
        catalogue.popularity,
        seed,
        exclude=exclude,
        index=index,
    )


__all__ = [
    "CANDIDATES_SCHEMA",
    "CATEGORY_SEP",
    "CandidateConfig",
    "Catalogue",
    "DistanceKind",
    "Rule",
    "RuleConfig",
    "catalogue_arrays",
    "category_matrix",
    "familiar_categories",
    "generate_candidates",
    "generate_for",
    "unexpected_mask",
    "unexpectedness",
]
