"""The serendipity slot: quota, positions, no duplicates, the classic order kept around it."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from recgpt.serendipity.slot import BASE, SEREN, SlotConfig, merge_slot, spread

BASE_LIST = [f"b{i}" for i in range(20)]
CACHE = ["s1", "s2", "s3", "s4"]


def _seren(out: list[tuple[str, str]], k: int = 10) -> list[tuple[int, str]]:
    return [(r, i) for r, (i, c) in enumerate(out[:k]) if c == SEREN]


def test_default_quota_two_of_ten_at_spread_positions() -> None:
    cfg = SlotConfig()
    assert (cfg.k, cfg.quota, cfg.slots()) == (10, 2, (3, 6)) and spread(10, 2) == (3, 6)
    out = merge_slot(BASE_LIST, CACHE, cfg, length=20)
    assert _seren(out) == [(3, "s1"), (6, "s2")]  # the cache's best two, in cache order
    assert [i for i, c in out if c == BASE] == BASE_LIST[:18]  # the classic order kept, shifted down
    assert len(out) == 20 and len({i for i, _ in out}) == 20


@pytest.mark.parametrize("quota", [0, 1, 3, 5, 10])
def test_quota_is_respected_and_no_item_repeats(quota: int) -> None:
    cfg = SlotConfig(quota=quota)
    out = merge_slot(BASE_LIST, [f"s{i}" for i in range(12)], cfg, length=15)
    assert len(_seren(out)) == quota and len(out) == 15
    assert len({i for i, _ in out}) == len(out)
    assert [r for r, _ in _seren(out)] == list(cfg.slots())


def test_explicit_positions() -> None:
    cfg = SlotConfig(quota=2, positions=(0, 9))
    out = merge_slot(BASE_LIST, CACHE, cfg, length=10)
    assert _seren(out) == [(0, "s1"), (9, "s2")] and out[1] == ("b0", BASE)


def test_cache_items_already_in_the_classic_top_k_are_skipped() -> None:
    out = merge_slot(BASE_LIST, ["b2", "s1", "b15", "s1"], SlotConfig(), length=12)
    # b2 is already shown; b15 is below the top 10, so the slot lifts it; s1 only once
    assert _seren(out) == [(3, "s1"), (6, "b15")]
    assert [i for i, _ in out].count("b15") == 1 and len({i for i, _ in out}) == 12


def test_short_inputs_leave_no_holes() -> None:
    assert _seren(merge_slot(BASE_LIST, [], SlotConfig(), length=10)) == []
    assert [i for i, _ in merge_slot(BASE_LIST, [], SlotConfig(), length=10)] == BASE_LIST[:10]
    out = merge_slot(["b0", "b1"], CACHE, SlotConfig())  # the classic list runs out: the cache follows
    assert out == [("b0", BASE), ("b1", BASE), ("s1", SEREN), ("s2", SEREN)]


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ValidationError, match=r"slot\.quota"):
        SlotConfig(quota=11)
    with pytest.raises(ValidationError, match=r"exactly slot\.quota"):
        SlotConfig(quota=2, positions=(1,))
    with pytest.raises(ValidationError, match="distinct ranks"):
        SlotConfig(quota=2, positions=(3, 3))
