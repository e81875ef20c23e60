"""Leakage: B_u is built from the AsOf view only; held-out items never reach it."""

from __future__ import annotations

import polars as pl
import pytest

from recgpt.behavior import (
    BehaviorCompressor,
    CompressionConfig,
    RegexTokenCounter,
    filter_reliable,
    prepare_sequence,
)
from recgpt.data.dataset import Dataset, Manifest
from recgpt.data.split import LeakageError, Split, make_split

DAY = 86_400
Setup = tuple[Dataset, Split, BehaviorCompressor]
TITLES = {
    "m-alpha": "Alpha Centauri Story",
    "m-bravo": "Bravo Company Returns",
    "m-charlie": "Charlie and the Lighthouse",
    "m-delta": "Delta Blues Night",
    "m-echo": "Echo Chamber Diaries",
    "m-omega": "Omega Final Chapter",
}


def _dataset() -> Dataset:
    # u1's last two item events (validation: m-echo, test: m-omega) are held out from its test/valid views
    rows = [
        (0, "u1", "m-alpha", None, "rating", 10 * DAY, 5.0),
        (1, "u1", None, "lighthouse movies", "search", 40 * DAY, None),
        (2, "u1", "m-bravo", None, "rating", 400 * DAY, 4.0),
        (3, "u1", "m-charlie", None, "rating", 420 * DAY, 5.0),
        (4, "u1", "m-echo", None, "rating", 430 * DAY, 5.0),
        (5, "u1", "m-omega", None, "rating", 430 * DAY, 5.0),  # same second as the validation event
        (6, "u2", "m-delta", None, "rating", 5 * DAY, 4.5),
        (7, "u2", "m-alpha", None, "rating", 6 * DAY, 5.0),
        (8, "u2", "m-omega", None, "rating", 7 * DAY, 4.0),
        (9, "u2", "m-echo", None, "rating", 9 * DAY, 5.0),
    ]
    ev = pl.DataFrame(
        rows,
        schema=["event_id", "user_id", "item_id", "query", "behavior", "timestamp", "value"],
        orient="row",
    )
    items = pl.DataFrame(
        {"item_id": list(TITLES), "title": list(TITLES.values()), "categories": [["Drama"]] * len(TITLES)}
    )
    return Dataset.build(
        items, pl.DataFrame({"user_id": ["u1", "u2"]}), ev, Manifest(name="toy", source="test")
    )


@pytest.fixture(scope="module")
def setup() -> Setup:
    ds = _dataset()
    sp = make_split(ds)
    comp = BehaviorCompressor(ds.items, RegexTokenCounter(), CompressionConfig(budget=10_000))
    return ds, sp, comp


def test_texts_from_the_view_pass_guard_text(setup: Setup) -> None:
    _, sp, comp = setup
    for task in (sp.valid, sp.test):
        for u in task.user_ids:
            c = comp.compress(task.asof, u)
            sp.guard_text(u, c.text, task)
            assert c.n_events == task.asof.history(u).height
    u1 = comp.compress(sp.test.asof, "u1")
    assert "Omega" not in u1.text and "Echo Chamber Diaries" in u1.text  # validation item is history for test
    assert '"lighthouse movies"' in u1.text
    assert "Echo" not in comp.compress(sp.valid.asof, "u1").text


def test_frames_reaching_the_split_point_are_caught_by_asof_guard(setup: Setup) -> None:
    ds, sp, comp = setup
    full = ds.events.filter(pl.col("user_id") == "u1")
    with pytest.raises(LeakageError, match="at or after the split point"):
        comp.compress(sp.test.asof, "u1", history=full)
    # the test event itself shares its second with the validation event: only event_id tells them apart
    upto = full.filter(pl.col("event_id") <= 5)
    with pytest.raises(LeakageError):
        comp.compress(sp.test.asof, "u1", history=upto)
    ok = comp.compress(sp.test.asof, "u1", history=full.filter(pl.col("event_id") <= 4))
    assert ok.text == comp.compress(sp.test.asof, "u1").text
    with pytest.raises(ValueError, match="other users"):
        comp.compress(sp.test.asof, "u1", history=ds.events.filter(pl.col("event_id").is_in([0, 6])))


def test_guard_text_catches_text_built_without_the_view(setup: Setup) -> None:
    ds, sp, comp = setup
    full = ds.events.filter(pl.col("user_id") == "u1")
    seq = prepare_sequence(filter_reliable(full), int(full["timestamp"].max()))
    leaky = "\n".join(seq.render(comp.items.text))
    with pytest.raises(LeakageError, match="m-omega"):
        sp.guard_text("u1", leaky, sp.test)
