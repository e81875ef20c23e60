"""The tri-tower learns the planted structure, deterministically, from training data only."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from recgpt.baselines.mostpop import MostPop
from recgpt.eval.experiment import recommend
from recgpt.retrieval.index import ItemIndex
from recgpt.retrieval.train import evaluate_user_tower, train_on_split, train_tritower, training_behaviors
from recgpt.retrieval.tritower import TriTower, TriTowerConfig
from tests.conftest import fake_embed
from tests.retrieval.conftest import CATEGORIES, TEST_CONFIG


def test_loss_falls_and_all_three_losses_are_trained(trained) -> None:
    first, last = trained.history[0], trained.history[-1]
    for part in ("loss", "col", "tag", "cate"):
        assert last[part] < first[part] * 0.9, (part, first[part], last[part])
    assert trained.model.groups == ["rating+", "rating-"]


def test_tag_tower_retrieves_the_tags_category(trained) -> None:
    model = trained.model
    index = ItemIndex.build(model.item_vectors())
    item_cat = np.arange(model.n_items) % 8
    _, ids = index.search(model.tag_vectors(list(CATEGORIES)), 20)
    precision = (item_cat[ids] == np.arange(8)[:, None]).mean()
    assert precision > 0.7  # chance is 1/8


def test_user_tower_beats_popularity(split, trained) -> None:
    model = trained.model
    labels = model.labels_for(split.test.asof.events())
    tower = evaluate_user_tower(model, split.test, labels, k=10)
    pop = recommend(MostPop().fit(split.train), split.test, 10, mask=True)
    truth = np.asarray([t[0] for t in split.test.targets])
    pop_hr = float(np.mean([truth[i] in pop[i] for i in range(len(truth))]))
    assert tower["HR@10"] > pop_hr + 0.05, (tower, pop_hr)


def test_early_stopping_uses_validation_and_keeps_the_best_epoch(split, trained) -> None:
    scores = [h["valid_NDCG@10"] for h in trained.history]
    assert trained.best_epoch == int(np.argmax(scores)) + 1
    model = trained.model
    now = evaluate_user_tower(model, split.valid, model.labels_for(split.valid.asof.events()))
    assert now["NDCG@10"] == pytest.approx(max(scores))  # the best epoch's weights were restored


def test_training_uses_only_split_train(split, trained) -> None:
    users, items = trained.pairs
    assert np.array_equal(users, split.train.user_idx) and np.array_equal(items, split.train.item_idx)
    used = set(zip(users.tolist(), items.tolist(), strict=True))
    for task in (split.valid, split.test):
        held = {(int(u), int(t)) for u, ts in zip(task.user_idx, task.targets, strict=True) for t in ts}
        assert held and not (held & used)
    # and the behaviour labels line up with the training interactions, row by row
    assert len(training_behaviors(split)) == len(split.train.item_idx)


def test_same_seed_same_model_other_seed_other_model(split) -> None:
    cfg = TriTowerConfig(**{**TEST_CONFIG, "epochs": 2})
    a = train_on_split(split, cfg, embed=fake_embed, early_stopping=False, progress=False).model
    b = train_on_split(split, cfg, embed=fake_embed, early_stopping=False, progress=False).model
    c = train_on_split(
        split,
        TriTowerConfig(**{**TEST_CONFIG, "epochs": 2, "seed": 1}),
        embed=fake_embed,
        early_stopping=False,
        progress=False,
    ).model
    assert np.array_equal(a.item_vectors(), b.item_vectors())
    assert not np.allclose(a.item_vectors(), c.item_vectors())


def test_save_load_round_trip(tmp_path, split, trained) -> None:
    model = trained.model
    model.save(tmp_path / "m")
    back = TriTower.load(tmp_path / "m", embed=fake_embed)
    np.testing.assert_array_equal(back.item_vectors(), model.item_vectors())
    u = split.test.user_idx[:5]
    h = split.test.histories[:5]
    np.testing.assert_array_equal(back.user_vectors(u, h), model.user_vectors(u, h))
    np.testing.assert_array_equal(back.tag_vectors(["Horror"]), model.tag_vectors(["Horror"]))
    with pytest.raises(RuntimeError, match="embedder"):
        TriTower.load(tmp_path / "m").tag_vectors(["Horror"])


def test_behaviour_labels_come_from_the_events_given(split, trained) -> None:
    model = trained.model
    labels = model.labels_for(split.test.asof.events())
    u = split.test.user_idx[0]
    hist = split.test.histories[0]
    got = labels.lookup(np.asarray([u]), [hist])[0]
    ev = split.test.asof.history(split.test.user_ids[0]).filter(pl.col("item_id").is_not_null())
    want = np.where(ev["value"].to_numpy() >= 4, 0, 1)
    np.testing.assert_array_equal(got, want)


def test_bad_input_is_rejected(split) -> None:
    with pytest.raises(ValueError, match="must be in"):
        TriTowerConfig(alpha=1.5)
    with pytest.raises(ValueError, match="unknown TriTowerConfig"):
        TriTowerConfig.from_dict({"dimm": 3})
    with pytest.raises(ValueError, match="rows"):
        train_tritower(split.train, split.dataset.items.head(3), embed=fake_embed, progress=False)
    with pytest.raises(ValueError, match="behaviour labels"):
        train_tritower(split.train, split.dataset.items, embed=fake_embed, behaviors=["x"], progress=False)


def test_causal_windows_match_a_naive_prefix_scan() -> None:
    from recgpt.baselines.base import Interactions
    from recgpt.retrieval.train import _Sampler
    from recgpt.retrieval.tritower import history_windows

    rng = np.random.default_rng(3)
    users = np.sort(rng.integers(0, 6, 120))
    items = rng.integers(0, 40, 120)
    groups = rng.integers(0, 3, 120)
    train = Interactions(n_users=7, n_items=40, user_idx=users, item_idx=items, timestamp=np.arange(120))
    sampler = _Sampler(train, groups, 3, 4)
    got = sampler.windows(np.arange(120))
    for j in range(120):
        prefix = (users == users[j]) & (np.arange(120) < j)
        want = history_windows([items[prefix]], [groups[prefix]], 3, 4)[0]
        np.testing.assert_array_equal(got[j], want)  # the positive itself is never in its own window


def test_items_without_categories_or_brands_still_train(split) -> None:
    items = split.dataset.items.with_columns(
        pl.lit(None, dtype=pl.List(pl.String)).alias("categories"),
        pl.lit(None, dtype=pl.String).alias("brand"),
    )
    res = train_tritower(
        split.train, items, TriTowerConfig(**{**TEST_CONFIG, "epochs": 1}), embed=fake_embed, progress=False
    )
    assert res.history[0]["cate"] == 0.0 and np.isfinite(res.history[0]["loss"])
    assert res.model.item_vectors().shape == (split.train.n_items, TEST_CONFIG["dim"])
