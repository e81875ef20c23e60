"""The serendipity cache: each user's SerenGPT-ranked serendipitous items, ready to serve.

SERAL serves serendipity *nearline*: SerenGPT is far too slow for a request path, so it ranks each
user's serving candidates ahead of time and the top of that ranking is kept in a per-user table (the
CACHE), which the online list reads through the serendipity slot (`serendipity.slot`). A row carries
what a server needs to show and to trust the item: the score and reason SerenGPT gave, the version of
the profile it read (`profiles.profile_version`: sha256[:12] of the user's profile rows, so a stale
entry is visible), the model that ranked it and when.

This module builds the cache from SerenGPT's rankings of the serving lists (`serving_inputs` turns
candidates + profiles into SerenGPT's inputs, one list per user, `list_id = "serve:<user>"`), and
rewrites one user's rows without touching anyone else's (`replace_users`, used by nearline refresh).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import polars as pl

from recgpt.data.dataset import Dataset

CACHE_SCHEMA = {
    "user_id": pl.String(),
    "item_id": pl.String(),
    "rank": pl.Int32(),
    "score": pl.Float32(),
    "reason": pl.String(),
    "profile_version": pl.String(),
    "model": pl.String(),
    "created_ts": pl.Int64(),
}
SERVE_PREFIX = "serve:"
VECTORS_FILE = (
    "item_vectors.npy"  # 03_candidates/: the unit item vectors candidates, labels and nearline share
)


def serving_list_id(user_id: str) -> str:
    """The list id of a user's serving list (their candidates, ranked by SerenGPT for the cache)."""
    return f"{SERVE_PREFIX}{user_id}"


class StoredVectors:
    """A `TextEncoder` that answers with vectors already computed (one per catalogue item, in order):
    rebuilds a run's `candidates.Catalogue` from its saved item vectors without the sentence model."""

    def __init__(self, vectors: np.ndarray) -> None:
        self.vectors = np.asarray(vectors, dtype=np.float32)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) != len(self.vectors):
            raise ValueError(f"{len(texts)} items but {len(self.vectors)} stored vectors: another catalogue?")
        return self.vectors


def stored_catalogue(dataset: Dataset, vectors: np.ndarray, level: Any, events: pl.DataFrame) -> Any:
    """The `candidates.Catalogue` of `dataset` from stored item vectors; popularity counts `events`."""
    from recgpt.serendipity.candidates import catalogue_arrays

    return catalogue_arrays(dataset, StoredVectors(vectors), level, events=events)


def item_categories(dataset: Dataset, level: Any) -> dict[str, str]:
    """item id -> the category SerenGPT is shown (the last of the item's categories at `level`)."""
    from recgpt.data.categories import categories_at_level

    levelled = categories_at_level(dataset, level)
    return {i: (c[-1] if c else "") for i, c in zip(levelled.item_ids, levelled.categories, strict=True)}


def serving_lists(candidates: pl.DataFrame, points: Mapping[str, int]) -> pl.DataFrame:
    """Each user's serving candidates as one list (LISTS columns list_id, user_id, asof_ts, item_ids,
    candidate rank order), ready for `seren.seren_inputs`; `points[user]` is the as-of time."""
    lists = (
        candidates.sort("user_id", "rank")
        .group_by("user_id", maintain_order=True)
        .agg(pl.col("item_id").alias("item_ids"))
    )
    return lists.select(
        pl.col("user_id").map_elements(serving_list_id, return_dtype=pl.String()).alias("list_id"),
        "user_id",
        pl.col("user_id").replace_strict(dict(points), return_dtype=pl.Int64()).alias("asof_ts"),
        "item_ids",
    )


def rendered_profiles(profiles: pl.DataFrame) -> dict[str, str]:
    """user id -> the profile text SerenGPT reads (`profiles.render_profile`)."""
    from recgpt.serendipity.profiles import render_profile

    return {u: render_profile(profiles, u) for u in profiles["user_id"].unique(maintain_order=True).to_list()}


def build_cache(
    rankings: pl.DataFrame,
    versions: Mapping[str, str],
    *,
    size: int,
    model: str,
    created_ts: int,
) -> pl.DataFrame:
    """CACHE rows: the top `size` of each user's serving ranking (rank renumbered from 0), with the
    profile version each was ranked from; sorted by (user_id, rank)."""
    serve = rankings.filter(pl.col("list_id").str.starts_with(SERVE_PREFIX))
    top = serve.sort("user_id", "rank").group_by("user_id", maintain_order=True).head(size)
    top = top.with_columns(pl.int_range(pl.len()).over("user_id").alias("rank"))
    df = top.select(
        "user_id",
        "item_id",
        "rank",
        "score",
        pl.col("reason").fill_null(""),
        pl.col("user_id").replace_strict(dict(versions), default="").alias("profile_version"),
        pl.lit(model).alias("model"),
        pl.lit(int(created_ts)).alias("created_ts"),
    )
    return df.cast(CACHE_SCHEMA).sort("user_id", "rank")  # type: ignore[arg-type]


def replace_users(table: pl.DataFrame, fresh: pl.DataFrame, users: Sequence[str]) -> pl.DataFrame:
    """`table` with the rows of `users` replaced by `fresh`'s; every other row kept exactly, in place
    (the result is sorted like `table`: by user, the untouched users' row order unchanged)."""
    gone = pl.col("user_id").is_in(list(users))
    kept = table.with_row_index("_row").filter(~gone)
    new = fresh.select(table.columns).cast(dict(table.schema)).with_row_index("_row")  # type: ignore[arg-type]
    new = new.with_columns(pl.col("_row") + len(table))
    merged = pl.concat([kept, new]).sort("user_id", "_row", maintain_order=True)
    return merged.drop("_row")


__all__ = [
    "CACHE_SCHEMA",
    "SERVE_PREFIX",
    "VECTORS_FILE",
    "StoredVectors",
    "build_cache",
    "item_categories",
    "rendered_profiles",
    "replace_users",
    "serving_list_id",
    "serving_lists",
    "stored_catalogue",
]
