"""Log labels: lists only for serendipitous futures, negatives never engaged, and no leakage."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from recgpt.data.dataset import Dataset, Manifest
from recgpt.data.split import LeakageError, SplitConfig, make_split
from recgpt.serendipity.candidates import catalogue_arrays
from recgpt.serendipity.labels import (
    LISTS_SCHEMA,
    LabelConfig,
    eval_lists,
    guard_lists,
    is_unexpected,
    train_cuts,
    train_lists,
)
from tests.serendipity.test_candidates import HashEncoder

CATS = ("Drills", "Glue", "Saws", "Tape", "Paint", "Gloves")


def toy_dataset(future_shift: int = 0) -> Dataset:
    """30 evaluated users who buy in one home category, then hold out one item (even users: in a new
    category); 12 train-only users with two purchases (the second in a new category for most).

    `future_shift` changes only the validation / test events (another item of the same category),
    so anything built from the train split must not change with it.
    """
    items = [
        {"item_id": f"{c}-{k}", "title": f"{c} item {k}", "categories": ["Tools", c]}
        for c in CATS
        for k in range(10)
    ]
    rows: list[tuple[int, str, str, int]] = []
    eid = 0

    def add(user: str, item: str, ts: int) -> None:
        nonlocal eid
        rows.append((eid, user, item, ts))
        eid += 1

    for u in range(30):
        home, new = CATS[u % 3], CATS[3 + u % 3]
        for j in range(5):
            add(f"u{u}", f"{home}-{(u + j) % 8}", 1000 * u + j)
        add(f"u{u}", f"{home}-{(u + 5 + future_shift) % 8}", 1000 * u + 10)  # validation
        test_cat = new if u % 2 == 0 else home
        add(f"u{u}", f"{test_cat}-{(u + 7 + future_shift) % 10}", 1000 * u + 20)  # test
    for t in range(12):
        home, new = CATS[t % 3], CATS[3 + t % 3] if t % 4 else CATS[t % 3]
        add(f"t{t}", f"{home}-{t % 8}", 50_000 + 10 * t)
        add(f"t{t}", f"{new}-{(t + 1) % 8}", 50_000 + 10 * t + 1)
    ev = pl.DataFrame(rows, schema=["event_id", "user_id", "item_id", "timestamp"], orient="row")
    ev = ev.with_columns(pl.lit("buy").alias("behavior"))
    users = pl.DataFrame({"user_id": sorted(set(ev["user_id"].to_list()))})
    return Dataset.build(pl.DataFrame(items), users, ev, Manifest(name="toy", source="test"))


@pytest.fixture(scope="module")
def setup() -> tuple[Dataset, object, object]:
    ds = toy_dataset()
    split = make_split(ds)
    cat = catalogue_arrays(ds, HashEncoder(), "leaf", events=split.train_events)
    return ds, split, cat


CFG = LabelConfig(list_size=5, rule="category", seed=3)


def test_eval_lists_only_for_serendipitous_held_out_items(setup) -> None:  # type: ignore[no-untyped-def]
    _, split, cat = setup
    lists, stats = eval_lists(CFG, split, cat)
    assert lists.schema == pl.Schema(LISTS_SCHEMA)
    assert stats.users == 30 and stats.unexpected == 15 and stats.lists == 15
    assert stats.share_unexpected == pytest.approx(0.5)
    assert sorted(lists["user_id"].to_list()) == sorted(f"u{u}" for u in range(0, 30, 2))
    ids = split.item_ids
    for row in lists.iter_rows(named=True):
        assert len(row["item_ids"]) == 5 and sum(row["labels"]) == 1 and set(row["label_source"]) == {"log"}
        pos = row["item_ids"][row["labels"].index(1)]
        u = split.test.user_ids.index(row["user_id"])
        assert pos == ids[split.test.targets[u][0]]
        assert row["asof_ts"] == split.test.asof.point(row["user_id"])[0]
    # shuffled: the positive is not always first
    assert len({r.index(1) for r in lists["labels"].to_list()}) > 1


def test_eval_lists_are_deterministic_and_a_subset_keeps_each_users_list(setup) -> None:  # type: ignore[no-untyped-def]
    _, split, cat = setup
    a, _ = eval_lists(CFG, split, cat)
    b, _ = eval_lists(CFG, split, cat)
    assert a.equals(b)
    sub, stats = eval_lists(CFG, split, cat, users=["u0", "u1", "u4"])
    assert stats.users == 3 and sub["user_id"].to_list() == ["u0", "u4"]
    assert sub.equals(a.filter(pl.col("user_id").is_in(["u0", "u4"])))


def test_eval_negatives_were_never_engaged_at_any_time(setup) -> None:  # type: ignore[no-untyped-def]
    _, split, cat = setup
    lists, _ = eval_lists(LabelConfig(list_size=8, rule="either", distance=0.5), split, cat)
    assert lists.height
    engaged = {(u, i) for u, i in split.dataset.events.select("user_id", "item_id").iter_rows()}
    for row in lists.iter_rows(named=True):
        negs = [i for i, lab in zip(row["item_ids"], row["labels"], strict=True) if lab == 0]
        assert len(negs) == 7 and not any((row["user_id"], i) in engaged for i in negs)


def test_unexpectedness_uses_only_history_before_the_point() -> None:
    """Cut-off split: a user's test window holds a new-category item and, later, another item of that
    category; the first is labelled against the history before the point, so it stays unexpected."""
    items = [{"item_id": f"{c}-{k}", "title": f"{c} {k}", "categories": [c]} for c in CATS for k in range(6)]
    rows = []
    for u in range(6):
        rows += [(f"u{u}", f"Drills-{(u + j) % 6}", 100 + j) for j in range(4)]
        rows += [(f"u{u}", f"Glue-{u % 6}", 900), (f"u{u}", f"Glue-{(u + 1) % 6}", 950)]
    ev = pl.DataFrame(rows, schema=["user_id", "item_id", "timestamp"], orient="row").with_columns(
        pl.int_range(pl.len()).alias("event_id"), pl.lit("buy").alias("behavior")
    )
    users = pl.DataFrame({"user_id": [f"u{u}" for u in range(6)]})
    ds = Dataset.build(pl.DataFrame(items), users, ev, Manifest(name="cut", source="test"))
    split = make_split(ds, SplitConfig(kind="cutoff", valid_cutoff=500, test_cutoff=800))
    cat = catalogue_arrays(ds, HashEncoder(), "leaf", events=split.train_events)
    lists, stats = eval_lists(LabelConfig(list_size=4, rule="category"), split, cat)
    assert stats.users == 6 and stats.unexpected == 6
    for row in lists.iter_rows(named=True):
        u = int(row["user_id"][1:])
        assert row["item_ids"][row["labels"].index(1)] == f"Glue-{u % 6}" and row["asof_ts"] == 800
        assert f"Glue-{(u + 1) % 6}" not in row["item_ids"]  # engaged later: never a negative
    u0 = split.test.user_ids.index("u0")
    glue = split.item_pos["Glue-1"]  # u0's second test-window item
    assert is_unexpected(glue, split.test.histories[u0], cat, LabelConfig(rule="category"))
    assert not is_unexpected(
        glue, np.append(split.test.histories[u0], split.item_pos["Glue-0"]), cat, LabelConfig(rule="category")
    )


def test_train_lists_come_from_train_users_before_their_validation_point(setup) -> None:  # type: ignore[no-untyped-def]
    _, split, cat = setup
    lists, stats = train_lists(CFG, split, cat, exclude_users=split.test.user_ids)
    assert set(lists["part"].to_list()) == {"train"}
    assert stats.users == 12 and stats.lists == 9  # t0, t4, t8 buy twice in their home category
    assert all(u.startswith("t") for u in lists["user_id"].to_list())
    train_pairs = {(u, i) for u, i in split.train_events.select("user_id", "item_id").iter_rows()}
    for row in lists.iter_rows(named=True):
        pos = row["item_ids"][row["labels"].index(1)]
        assert (row["user_id"], pos) in train_pairs
        negs = [i for i, lab in zip(row["item_ids"], row["labels"], strict=True) if lab == 0]
        assert not any((row["user_id"], i) in train_pairs for i in negs)
    capped, _ = train_lists(CFG.model_copy(update={"train_users": 4}), split, cat, split.test.user_ids)
    assert capped.height == 4 and set(capped["list_id"].to_list()) <= set(lists["list_id"].to_list())


def test_train_lists_never_read_validation_or_test_events(setup) -> None:  # type: ignore[no-untyped-def]
    """Eval users' own train sequences may make train lists (when they are not excluded), and changing
    every validation / test event leaves those lists byte-identical."""
    _, split, cat = setup
    other = make_split(toy_dataset(future_shift=1))
    cat2 = catalogue_arrays(other.dataset, HashEncoder(), "leaf", events=other.train_events)
    cfg = LabelConfig(list_size=4, rule="either", distance=0.6, seed=1)
    a, _ = train_lists(cfg, split, cat)
    b, _ = train_lists(cfg, other, cat2)
    assert a.height and a.equals(b)
    valid_ts = {u: split.valid.asof.point(u)[0] for u in split.valid.user_ids}
    for u, ts in a.select("user_id", "asof_ts").iter_rows():
        assert u not in valid_ts or ts < valid_ts[u]


def test_several_cuts_per_user_each_see_only_earlier_items(setup) -> None:  # type: ignore[no-untyped-def]
    _, split, cat = setup
    cuts = train_cuts(split, exclude_users=[], min_history=2, per_user=3)
    u0 = cuts.filter(pl.col("user_id") == "u0")
    assert u0["list_id"].to_list() == ["train-u0-4", "train-u0-3", "train-u0-2"]
    seq = split.train.sequences[list(split.user_ids).index("u0")].tolist()
    for row in u0.iter_rows(named=True):
        j = int(row["list_id"].rsplit("-", 1)[1])
        assert row["history"] == seq[:j] and row["future"] == seq[j]
    assert cuts.filter(pl.col("user_id") == "t0").is_empty()  # one item before its only cut
    lists, stats = train_lists(
        LabelConfig(list_size=4, rule="either", distance=0.5, cuts_per_user=3), split, cat
    )
    assert stats.users == cuts.height + 12  # t users have one cut with min_history 1
    assert lists["list_id"].n_unique() == lists.height


def test_guard_lists_accepts_built_lists_and_catches_moved_ones(setup) -> None:  # type: ignore[no-untyped-def]
    _, split, cat = setup
    cfg = LabelConfig(list_size=4, rule="either", distance=0.5)
    ev, _ = eval_lists(cfg, split, cat)
    tr, _ = train_lists(cfg, split, cat)
    assert guard_lists(split, pl.concat([ev, tr])) == ev.height + tr.height
    with pytest.raises(LeakageError, match="not at their test point"):
        guard_lists(split, ev.head(1).with_columns(pl.col("asof_ts") - 1))
    late = ev.head(1).with_columns(pl.lit("train").alias("part"))  # at the test point
    with pytest.raises(LeakageError, match="past their validation point"):
        guard_lists(split, late)
    held_out = split.item_ids[split.test.targets[0][0]]
    moved = tr.head(1).with_columns(
        pl.lit([held_out] * 4).alias("item_ids"), pl.lit([1, 0, 0, 0], dtype=pl.List(pl.Int8)).alias("labels")
    )
    with pytest.raises(LeakageError, match="not a train-split event"):
        guard_lists(split, moved)
