"""SerenGPT's candidate generator: unexpected neighbours of the history, never familiar, never seen."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import polars as pl
import pytest

from recgpt.data.dataset import Dataset, Manifest
from recgpt.serendipity.candidates import (
    CandidateConfig,
    RuleConfig,
    catalogue_arrays,
    category_matrix,
    familiar_categories,
    generate_candidates,
    unexpected_mask,
)


class HashEncoder:
    """A deterministic stand-in for the sentence encoder: texts sharing a word get close vectors."""

    dim = 16

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for r, text in enumerate(texts):
            for word in text.lower().replace("(", " ").replace(")", " ").replace(",", " ").split():
                seed = int.from_bytes(hashlib.sha256(word.encode()).digest()[:4], "little")
                out[r] += np.random.default_rng(seed).normal(size=self.dim).astype(np.float32)
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)
        return out


def synthetic(n_items: int = 60, n_cats: int = 6, seed: int = 0) -> tuple[np.ndarray, object, list[str]]:
    """Unit vectors clustered by category, and the items x categories matrix (item i in category i % n)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_cats, 12))
    cats = [[f"c{i % n_cats}"] + ([f"c{(i + 1) % n_cats}"] if i % 7 == 0 else []) for i in range(n_items)]
    vecs = np.stack([centres[i % n_cats] + 0.6 * rng.normal(size=12) for i in range(n_items)]).astype(
        np.float32
    )
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    mat, names = category_matrix(cats)
    return vecs, mat, names


def _histories(n_users: int, n_items: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.choice(n_items, size=int(rng.integers(1, 8)), replace=False) for _ in range(n_users)]


def _run(cfg: CandidateConfig, histories: list[np.ndarray], seed: int = 0) -> pl.DataFrame:
    vecs, mat, names = synthetic()
    ids = np.asarray([f"i{k}" for k in range(vecs.shape[0])])
    pop = np.arange(vecs.shape[0], dtype=np.float64) % 9
    users = [f"u{k}" for k in range(len(histories))]
    return generate_candidates(cfg, histories, users, ids, vecs, mat, names, pop, seed)


def test_familiar_category_items_are_never_candidates() -> None:
    vecs, mat, names = synthetic()
    histories = _histories(40, vecs.shape[0], 1)
    out = _run(CandidateConfig(size=8, rule="category"), histories)
    assert out.height > 0
    for u, hist in enumerate(histories):
        familiar = {names[c] for c in np.flatnonzero(familiar_categories(hist, mat))}
        got = out.filter(pl.col("user_id") == f"u{u}")
        for cats in got["category"].to_list():
            assert cats and not (set(cats.split("|")) & familiar), (u, cats, familiar)


@pytest.mark.parametrize("rule", ["category", "distance", "either"])
def test_history_items_are_never_candidates_and_ranks_are_by_score(rule: str) -> None:
    histories = _histories(30, 60, 2)
    cfg = CandidateConfig(size=6, rule=rule, distance=0.9, distance_kind="absolute")  # type: ignore[arg-type]
    out = _run(cfg, histories)
    assert out.height > 0
    for u, hist in enumerate(histories):
        got = out.filter(pl.col("user_id") == f"u{u}").sort("rank")
        assert not set(got["item_id"].to_list()) & {f"i{k}" for k in hist}
        assert got["rank"].to_list() == list(range(got.height))
        assert got["score"].to_list() == sorted(got["score"].to_list(), reverse=True)
        if rule == "distance":
            assert (got["unexpectedness"] >= 0.9).all()


def test_distance_rule_admits_only_far_items() -> None:
    vecs, mat, _ = synthetic()
    hist = np.asarray([0, 6, 12])  # all category c0
    items = np.arange(60)
    absolute = RuleConfig(rule="distance", distance=1.0, distance_kind="absolute")
    ok, unexp = unexpected_mask(items, hist, vecs, mat, absolute)
    assert np.array_equal(ok, unexp >= 1.0)
    assert np.allclose(unexp, 1.0 - vecs @ vecs[hist].mean(axis=0), atol=1e-5)
    ok_cat, _ = unexpected_mask(items, hist, vecs, mat, absolute.model_copy(update={"rule": "category"}))
    ok_either, _ = unexpected_mask(items, hist, vecs, mat, absolute.model_copy(update={"rule": "either"}))
    assert np.array_equal(ok_either, ok | ok_cat)
    assert not ok_cat[hist].any()
    # quantile: farther from the history than 75% of the catalogue
    ok_q, unexp_q = unexpected_mask(items, hist, vecs, mat, RuleConfig(rule="distance", distance=0.75))
    assert np.array_equal(unexp_q, unexp) and ok_q.sum() == 15
    assert unexp[ok_q].min() > unexp[~ok_q].max()
    with pytest.raises(ValueError, match="quantile"):
        RuleConfig(distance=1.5)


def test_familiar_needs_enough_history_items() -> None:
    _, mat, names = synthetic()
    hist = np.asarray([0, 6, 12, 18, 1, 2])  # c0 x4 (item 0 is also c1), c1 x2, c2 x1
    assert [names[c] for c in np.flatnonzero(familiar_categories(hist, mat))] == ["c0", "c1", "c2"]
    assert [names[c] for c in np.flatnonzero(familiar_categories(hist, mat, 2))] == ["c0", "c1"]
    assert [names[c] for c in np.flatnonzero(familiar_categories(hist, mat, 1, 0.5))] == ["c0"]


def test_deterministic_with_the_seed() -> None:
    histories = _histories(25, 60, 3)
    cfg = CandidateConfig(size=5, rule="either", distance=0.8)
    a, b = _run(cfg, histories, seed=7), _run(cfg, histories, seed=7)
    assert a.equals(b)


def test_empty_history_gets_popular_items_and_exclusions_hold() -> None:
    vecs, mat, names = synthetic()
    ids = np.asarray([f"i{k}" for k in range(60)])
    pop = np.zeros(60)
    pop[[5, 9, 33]] = [10, 30, 20]
    empty = np.zeros(0, dtype=np.int64)
    out = generate_candidates(
        CandidateConfig(size=3),
        [empty, empty],
        ["new", "x"],
        ids,
        vecs,
        mat,
        names,
        pop,
        exclude=[empty, np.asarray([9])],
    )
    assert out.filter(pl.col("user_id") == "new")["item_id"].to_list() == ["i9", "i33", "i5"]
    assert out.filter(pl.col("user_id") == "x")["item_id"].to_list()[:2] == ["i33", "i5"]


def test_catalogue_arrays_from_a_dataset() -> None:
    items = pl.DataFrame(
        {
            "item_id": ["a", "b", "c"],
            "title": ["Red drill", "Blue drill", "Green glue"],
            "categories": [["Tools", "Drills"], ["Tools", "Drills"], ["Tools", "Glue"]],
        }
    )
    ev = pl.DataFrame(
        {
            "event_id": [0, 1, 2],
            "user_id": ["u", "u", "v"],
            "item_id": ["a", "c", "c"],
            "behavior": "buy",
            "timestamp": [1, 2, 3],
        }
    )
    ds = Dataset.build(items, pl.DataFrame({"user_id": ["u", "v"]}), ev, Manifest(name="t", source="t"))
    cat = catalogue_arrays(ds, HashEncoder(), "leaf")
    assert cat.category_names == ["Drills", "Glue"]
    assert cat.category_text(np.asarray([0, 2])) == ["Drills", "Glue"]
    assert cat.popularity.tolist() == [1.0, 0.0, 2.0]
    assert np.allclose(np.linalg.norm(cat.vectors, axis=1), 1.0, atol=1e-5)
    assert float(cat.vectors[0] @ cat.vectors[1]) > float(cat.vectors[0] @ cat.vectors[2])
