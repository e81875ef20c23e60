"""The split protocols and the leakage guard: nothing at or after a split point reaches a user's build."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from recgpt.baselines.base import Recommender
from recgpt.data.dataset import Dataset, Manifest
from recgpt.data.split import AsOf, LeakageError, SplitConfig, make_split
from recgpt.eval.experiment import ExperimentConfig, recommend


def _dataset() -> Dataset:
    # user a: 5 item events, two sharing a timestamp (tie broken by event_id), plus a search
    rows = [
        (0, "a", "i1", None, "rating", 100),
        (1, "a", "i2", None, "rating", 200),
        (2, "a", None, "red shoes", "search", 250),
        (3, "a", "i3", None, "rating", 300),
        (4, "a", "i4", None, "rating", 300),
        (5, "a", "i5", None, "rating", 400),
        (6, "b", "i2", None, "rating", 150),
        (7, "b", "i3", None, "rating", 160),
        (8, "b", "i6", None, "rating", 500),
        (9, "c", "i1", None, "rating", 50),  # only one event: never evaluated
    ]
    ev = pl.DataFrame(
        rows, schema=["event_id", "user_id", "item_id", "query", "behavior", "timestamp"], orient="row"
    )
    items = pl.DataFrame(
        {
            "item_id": [f"i{k}" for k in range(1, 7)],
            "title": [f"Movie number {k}" for k in range(1, 7)],
            "categories": [["x"], ["y"], ["x", "z"], ["y"], ["z"], ["x"]],
        }
    )
    users = pl.DataFrame({"user_id": ["a", "b", "c"]})
    return Dataset.build(items, users, ev, Manifest(name="toy", source="test"))


def test_loo_points_targets_and_train() -> None:
    sp = make_split(_dataset())
    assert sp.test.user_ids == ["a", "b"]
    ids = sp.item_ids.tolist()
    assert [ids[t[0]] for t in sp.test.targets] == ["i5", "i6"]
    assert [ids[t[0]] for t in sp.valid.targets] == ["i4", "i3"]
    # test history = everything before the test event (includes the validation item and equal-time i3)
    assert [ids[i] for i in sp.test.histories[0]] == ["i1", "i2", "i3", "i4"]
    assert [ids[i] for i in sp.valid.histories[0]] == ["i1", "i2", "i3"]
    # the AsOf view keeps non-item events (the search) and nothing at/after the point
    hist = sp.test.asof.history("a")
    assert "red shoes" in hist["query"].to_list()
    assert hist["event_id"].max() == 4
    # train: before each user's validation point; c (not evaluated) contributes everything
    train_items = {
        (sp.user_ids[u], ids[i]) for u, i in zip(sp.train.user_idx, sp.train.item_idx, strict=True)
    }
    assert train_items == {("a", "i1"), ("a", "i2"), ("a", "i3"), ("b", "i2"), ("c", "i1")}


def test_cutoff_split() -> None:
    sp = make_split(_dataset(), SplitConfig(kind="cutoff", valid_cutoff=300, test_cutoff=400))
    ids = sp.item_ids.tolist()
    assert sp.valid.user_ids == ["a"]
    assert sorted(ids[i] for i in sp.valid.targets[0]) == ["i3", "i4"]
    assert sp.test.user_ids == ["a", "b"]
    assert all(sp.train.timestamp < 300)
    for u in sp.test.user_ids:
        assert sp.test.asof.history(u)["timestamp"].max() < 400


def test_guard_detects_events_at_or_after_the_point() -> None:
    ds = _dataset()
    sp = make_split(ds)
    sp.test.asof.guard("a", sp.test.asof.history("a"))  # the view itself is clean
    leaked = ds.events.filter(pl.col("user_id") == "a")  # includes the held-out event 5
    with pytest.raises(LeakageError):
        sp.test.asof.guard("a", leaked)
    # a view built with the point one event too late must be caught by the guard
    wrong = AsOf(ds.events, pl.DataFrame({"user_id": ["a"], "point_ts": [401], "point_eid": [0]}))
    with pytest.raises(LeakageError):
        sp.test.asof.guard("a", wrong.history("a"))


def test_guard_text_catches_held_out_titles() -> None:
    sp = make_split(_dataset())
    sp.guard_text("a", "history: Movie number 1, Movie number 2", sp.test)
    with pytest.raises(LeakageError):
        sp.guard_text("a", "you may like Movie number 5", sp.test)
    with pytest.raises(LeakageError):  # the validation item is held out from the validation task
        sp.guard_text("a", "Movie number 4", sp.valid)
    sp.guard_text("a", "Movie number 4", sp.test)  # ...but is legitimate history at test time


class _Spy(Recommender):
    """Records what a recommender is shown."""

    name = "spy"

    def fit(self, train, *, seed=0):  # type: ignore[no-untyped-def]
        self.train = train
        self.seen: list[np.ndarray] = []
        return self

    def score(self, users, histories):  # type: ignore[no-untyped-def]
        self.seen.extend(histories)
        return np.zeros((len(users), self.train.n_items), dtype=np.float32)


@pytest.mark.parametrize("kind", ["loo", "cutoff"])
def test_no_held_out_item_reaches_a_recommender(kind: str) -> None:
    ds = _dataset()
    cfg = (
        SplitConfig(kind=kind, valid_cutoff=300, test_cutoff=400)
        if kind == "cutoff"
        else SplitConfig(kind=kind)
    )
    sp = make_split(ds, cfg)
    model = _Spy().fit(sp.train)
    for task in (sp.valid, sp.test):
        model.seen.clear()
        recommend(model, task, 3, mask=False)
        for u, hist, tgt in zip(task.user_ids, model.seen, task.targets, strict=True):
            # no repeats in this toy data, so a held-out item must never be in what the model saw
            assert not set(tgt.tolist()) & set(hist.tolist()), (task.name, u)
            shown = ds.events.filter(pl.col("user_id") == u).filter(
                pl.col("item_id").is_in([sp.item_ids[i] for i in hist])
            )
            task.asof.guard(u, shown)
    # training data never holds any held-out event of an evaluated user
    held = {(sp.test.user_idx[k], int(t)) for k, ts in enumerate(sp.test.targets) for t in ts}
    train_pairs = set(zip(sp.train.user_idx.tolist(), sp.train.item_idx.tolist(), strict=True))
    assert not held & train_pairs


def test_experiment_config_defaults_mask_seen() -> None:
    assert ExperimentConfig(models=["mostpop"]).mask_seen is True


def test_guard_text_ignores_numeric_ids_but_catches_word_ids_and_aliases() -> None:
    ds = _dataset()
    sp = make_split(ds)
    sp.guard_text("a", "rated 5 films in 1995", sp.test)  # no false positive on numbers
    with pytest.raises(LeakageError):
        sp.guard_text("a", "next: i5!", sp.test)  # a non-numeric id as a whole word
    sp.guard_text("a", "xi5y", sp.test)  # ...but not inside another word
    with pytest.raises(LeakageError):
        sp.guard_text("a", "the fifth movie [drama]", sp.test, aliases={"i5": ["the fifth movie"]})
