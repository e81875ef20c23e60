"""The three tables every stage reads: items, users, events (Arrow / Parquet).

Column contracts are defined once here as polars schemas so importers, validators and
later stages agree on names and types. `SCHEMA_VERSION` is written into each dataset's
manifest; bump it when a column changes meaning or type.
"""

from __future__ import annotations

from enum import StrEnum

import polars as pl

SCHEMA_VERSION = 1


class Behavior(StrEnum):
    """Known behaviour types. The `behavior` column is a plain string, so custom values are allowed.

    Mapping used by the bundled importers (documented in the README):
    - MovieLens ratings -> ``rating`` with ``value`` = the star rating. Stages that need
      "intentional feedback" treat ratings >= 4 (on a 5-point scale) as strong positives.
    - MovieLens latest-small tags -> ``tag`` events, the tag text in ``text``.
    - Amazon (UniSRec) interactions are reviews of purchased items -> ``review``.
    """

    PURCHASE = "purchase"
    CART = "cart"
    FAVORITE = "favorite"
    CLICK = "click"
    DETAIL_VIEW = "detail_view"
    REVIEW = "review"
    RATING = "rating"
    SEARCH = "search"
    TAG = "tag"


ITEM_SCHEMA: dict[str, pl.DataType] = {
    "item_id": pl.String(),
    "title": pl.String(),
    "categories": pl.List(pl.String()),  # ordered path, most general first
    "brand": pl.String(),
    "merchant": pl.String(),
    "price": pl.Float64(),
    "attributes": pl.List(pl.Struct({"key": pl.String(), "value": pl.String()})),  # a map
    "description": pl.String(),
}
ITEM_REQUIRED = ("item_id", "title")

USER_SCHEMA: dict[str, pl.DataType] = {
    "user_id": pl.String(),
    "age": pl.Int32(),
    "gender": pl.String(),
    "location": pl.String(),
    "occupation": pl.String(),
    "attributes": pl.List(pl.Struct({"key": pl.String(), "value": pl.String()})),
}
USER_REQUIRED = ("user_id",)

EVENT_SCHEMA: dict[str, pl.DataType] = {
    "event_id": pl.Int64(),  # dense, unique, follows source order: the deterministic tie-break
    "user_id": pl.String(),
    "item_id": pl.String(),  # null for searches
    "query": pl.String(),  # the search text; null unless behavior == "search"
    "behavior": pl.String(),
    "timestamp": pl.Int64(),  # seconds since the Unix epoch, UTC
    "value": pl.Float64(),  # rating, dwell time, ...; null when not applicable
    "text": pl.String(),  # free text the user wrote with the event (tag, review); may be null
}
EVENT_REQUIRED = ("event_id", "user_id", "behavior", "timestamp")

# Events are always stored sorted by this key; it is the one chronological order every stage uses.
EVENT_ORDER = ("user_id", "timestamp", "event_id")


def conform(df: pl.DataFrame, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """Add missing optional columns as nulls, cast to the contract types, order columns."""
    cols = []
    for name, dtype in schema.items():
        if name in df.columns:
            cols.append(pl.col(name).cast(dtype, strict=True))
        else:
            cols.append(pl.lit(None, dtype=dtype).alias(name))
    extra = [c for c in df.columns if c not in schema]
    return df.select(cols + extra)
