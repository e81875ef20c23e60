"""The reliable-behaviour filter keeps intentional feedback and searches, drops clicks and low ratings."""

from __future__ import annotations

import polars as pl
import pytest

from recgpt.behavior import FilterConfig, filter_reliable

ROWS = [
    ("purchase", "i1", None, None),
    ("cart", "i2", None, None),
    ("favorite", "i3", None, None),
    ("detail_view", "i4", None, None),
    ("review", "i5", None, None),
    ("search", None, "red shoes", None),
    ("tag", "i6", None, None),
    ("click", "i7", None, None),
    ("rating", "i8", None, 5.0),
    ("rating", "i9", None, 4.0),
    ("rating", "i10", None, 3.5),
    ("rating", "i11", None, None),
    ("share", "i12", None, None),
]


def _history() -> pl.DataFrame:
    return pl.DataFrame(
        [(k, "u", item, q, beh, 100 + k, v) for k, (beh, item, q, v) in enumerate(ROWS)],
        schema=["event_id", "user_id", "item_id", "query", "behavior", "timestamp", "value"],
        orient="row",
    )


def _kept(cfg: FilterConfig | None = None) -> list[str]:
    out = filter_reliable(_history(), cfg)
    return [i or q for i, q in out.select("item_id", "query").iter_rows()]


def test_default_keeps_intentional_feedback_searches_and_high_ratings() -> None:
    assert _kept() == ["i1", "i2", "i3", "i4", "i5", "red shoes", "i6", "i8", "i9"]


def test_rating_threshold_is_configurable() -> None:
    assert "i10" in _kept(FilterConfig(min_rating=3.5))
    assert not {"i8", "i9", "i10", "i11"} & set(_kept(FilterConfig(min_rating=None)))
    # listing "rating" in keep does not bypass the threshold
    assert "i10" not in _kept(FilterConfig(keep=("rating",), min_rating=4.0))


def test_kept_behaviours_are_configurable() -> None:
    assert _kept(FilterConfig(keep=("click",), min_rating=None)) == ["i7"]


def test_order_is_preserved_and_bad_frames_are_rejected() -> None:
    out = filter_reliable(_history())
    assert out["event_id"].to_list() == sorted(out["event_id"].to_list())
    with pytest.raises(ValueError, match=r"AsOf\.history"):
        filter_reliable(_history().drop("value"))
