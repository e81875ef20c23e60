"""Time buckets (boundaries at exactly one month / one year), aggregation and reverse aggregation."""

from __future__ import annotations

from datetime import UTC, date, datetime

import polars as pl
import pytest

from recgpt.behavior import FilterConfig, SequenceConfig, filter_reliable, prepare_sequence, time_bucket

ASOF = date(2025, 6, 20)


@pytest.mark.parametrize(
    ("day", "asof", "relative", "calendar"),
    [
        (date(2025, 6, 20), ASOF, "today", "2025-06-20"),
        (date(2025, 6, 19), ASOF, "1 day ago", "2025-06-19"),
        (date(2025, 5, 21), ASOF, "30 days ago", "2025-05-21"),  # one day short of a month
        (date(2025, 5, 20), ASOF, "1 month ago", "2025-05"),  # exactly one month
        (date(2025, 4, 21), ASOF, "1 month ago", "2025-04"),
        (date(2025, 4, 20), ASOF, "2 months ago", "2025-04"),
        (date(2024, 6, 21), ASOF, "11 months ago", "2024-06"),  # one day short of a year
        (date(2024, 6, 20), ASOF, "1 year ago", "2024"),  # exactly one year
        (date(2023, 6, 21), ASOF, "1 year ago", "2023"),
        (date(2023, 6, 20), ASOF, "2 years ago", "2023"),
        # month ends clamp: one month before March 31 is February 28
        (date(2025, 3, 1), date(2025, 3, 31), "30 days ago", "2025-03-01"),
        (date(2025, 2, 28), date(2025, 3, 31), "1 month ago", "2025-02"),
        # one year before a leap day is February 28
        (date(2023, 3, 1), date(2024, 2, 29), "11 months ago", "2023-03"),
        (date(2023, 2, 28), date(2024, 2, 29), "1 year ago", "2023"),
    ],
)
def test_bucket_boundaries(day: date, asof: date, relative: str, calendar: str) -> None:
    assert time_bucket(day, asof) == relative
    assert time_bucket(day, asof, "calendar") == calendar


def test_future_events_are_refused() -> None:
    with pytest.raises(ValueError, match="after the as-of date"):
        time_bucket(date(2025, 6, 21), ASOF)


def _ts(day: str, hh: int = 12) -> int:
    return int(datetime.fromisoformat(day).replace(hour=hh, tzinfo=UTC).timestamp())


# (timestamp, behavior, item, query, value, text)
HISTORY = [
    (_ts("2023-05-01"), "purchase", "A", None, None, None),
    (_ts("2025-03-10"), "purchase", "A", None, None, None),
    (_ts("2025-03-12"), "cart", "B", None, None, None),
    (_ts("2025-03-12", 13), "purchase", "B", None, None, None),
    (_ts("2025-06-18"), "favorite", "A", None, None, None),
    (_ts("2025-06-18", 13), "favorite", "C", None, None, None),
    (_ts("2025-06-18", 14), "search", None, "red  shoes", None, None),
    (_ts("2025-06-19", 9), "click", "D", None, None, None),
    (_ts("2025-06-19", 10), "rating", "E", None, 5.0, None),
    (_ts("2025-06-19", 11), "rating", "F", None, 3.0, None),
    (_ts("2025-06-19", 12), "rating", "G", None, 4.0, None),
    (_ts("2025-06-19", 13), "cart", "H", None, None, None),
    (_ts("2025-06-19", 14), "purchase", "H", None, None, None),
    (_ts("2025-06-19", 15), "cart", "I", None, None, None),
    (_ts("2025-06-19", 16), "purchase", "I", None, None, None),
    (_ts("2025-06-20", 8), "detail_view", "C", None, None, None),
    (_ts("2025-06-20", 9), "tag", "E", None, None, "pixar"),
]
ASOF_TS = _ts("2025-06-20", 10)

EXPECTED = """\
3 months ago (purchased, added to cart) | B
2 years ago (purchased), 3 months ago (purchased), 2 days ago (saved) | A
2 days ago (searched) | "red shoes"
1 day ago (rated) | G
1 day ago (purchased, added to cart) | H, I
2 days ago (saved), today (viewed details) | C
1 day ago (rated), today (tagged "pixar") | E"""


def history() -> pl.DataFrame:
    """The hand-made history, shuffled (the compressor must order it by time itself)."""
    rows = [(k, "u", *r) for k, r in enumerate(HISTORY)]
    cols = ["event_id", "user_id", "timestamp", "behavior", "item_id", "query", "value", "text"]
    return pl.DataFrame(rows, schema=cols, orient="row").sample(fraction=1.0, shuffle=True, seed=3)


def test_aggregation_and_reverse_aggregation_exact_text() -> None:
    seq = prepare_sequence(filter_reliable(history()), ASOF_TS)
    assert seq.buckets == ["2 years ago", "3 months ago", "2 days ago", "1 day ago", "today"]
    assert "\n".join(seq.render(lambda i: i)) == EXPECTED


def test_calendar_labels_and_unfiltered_behaviours() -> None:
    seq = prepare_sequence(
        filter_reliable(history(), FilterConfig(keep=("click",), min_rating=None)),
        ASOF_TS,
        SequenceConfig(time_labels="calendar"),
    )
    assert seq.render(lambda i: f"<{i}>") == ["2025-06-19 (clicked) | <D>"]


def test_every_reliable_event_is_rendered_once_per_group() -> None:
    rel = filter_reliable(history())
    seq = prepare_sequence(rel, ASOF_TS)
    assert len(seq.entries) == rel.height
    text = "\n".join(seq.render(lambda i: i))
    for item in ("A", "B", "C", "E", "G", "H", "I"):
        assert sum(line.rsplit(" | ", 1)[1].split(", ").count(item) for line in text.splitlines()) == 1
    assert "D" not in text and "F" not in text
