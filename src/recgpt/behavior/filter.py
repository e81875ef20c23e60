"""Reliable-behaviour extraction (RecGPT §1.2): keep intentional feedback and searches, drop noise.

The paper keeps favorites, purchases, add-to-cart, "deliberate clicks" (detail views, review reading)
and search queries, and drops ordinary clicks. Our datasets add two behaviours the paper does not
have, and the defaults treat them as follows (all configurable through `FilterConfig`):

- ``rating``: kept only when ``value >= min_rating`` (default 4 on a 5-point scale), because a
  MovieLens rating says the user watched the movie, but only a high one says they liked it.
  A rating without a value cannot be judged and is dropped.
- ``tag``: a user-written tag is deliberate feedback, so it is kept.
- ``review`` (Amazon: a review implies a purchase) is kept.

Behaviours outside ``keep`` (``click`` and any custom value) are dropped.
"""

from __future__ import annotations

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from recgpt.data.schema import Behavior

DEFAULT_KEEP: tuple[str, ...] = (
    Behavior.PURCHASE,
    Behavior.CART,
    Behavior.FAVORITE,
    Behavior.DETAIL_VIEW,
    Behavior.REVIEW,
    Behavior.SEARCH,
    Behavior.TAG,
)


class FilterConfig(BaseModel):
    """Which behaviours count as reliable. Ratings are governed by `min_rating` only (0 keeps them all)."""

    model_config = ConfigDict(frozen=True)

    keep: tuple[str, ...] = Field(default=tuple(str(b) for b in DEFAULT_KEEP))
    min_rating: float | None = Field(
        default=4.0, description="ratings with value >= this are kept; None drops every rating"
    )


REQUIRED_COLUMNS = ("event_id", "behavior", "timestamp", "item_id", "query", "value")


def filter_reliable(history: pl.DataFrame, config: FilterConfig | None = None) -> pl.DataFrame:
    """The reliable events of a history frame (from `AsOf.history`), order preserved."""
    config = config or FilterConfig()
    missing = [c for c in REQUIRED_COLUMNS if c not in history.columns]
    if missing:
        raise ValueError(f"history frame lacks columns {missing}; pass a frame from AsOf.history()")
    is_rating = pl.col("behavior") == Behavior.RATING
    keep = ~is_rating & pl.col("behavior").is_in(list(config.keep))
    if config.min_rating is not None:
        keep = keep | (is_rating & (pl.col("value") >= config.min_rating))
    return history.filter(keep.fill_null(False))
