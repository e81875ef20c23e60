"""Shared fixtures: a synthetic catalogue with planted category structure and a fast fake embedder."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import polars as pl
import pytest

from recgpt.data.dataset import Dataset, Manifest
from recgpt.data.split import Split, make_split
from tests.conftest import fake_embed

CATEGORIES = ("Action", "Comedy", "Drama", "Horror", "Romance", "SciFi", "Western", "Documentary")
N_ITEMS = 160
N_USERS = 200


def synthetic_dataset(seed: int = 0) -> Dataset:
    """Items in 8 categories (item i has category i % 8); every user loves two categories.

    Events are ratings: 5 for items of the user's two categories (90% of events), 2 for the rest,
    with Zipf-like popularity inside each category, so category taste is the planted signal.
    """
    rng = np.random.default_rng(seed)
    items = pl.DataFrame(
        {
            "item_id": [f"i{i}" for i in range(N_ITEMS)],
            "title": [f"{CATEGORIES[i % 8]} title number {i}" for i in range(N_ITEMS)],
            "categories": [[CATEGORIES[i % 8]] for i in range(N_ITEMS)],
            "brand": [f"studio{i % 5}" for i in range(N_ITEMS)],
        }
    )
    by_cat = [np.arange(c, N_ITEMS, 8) for c in range(8)]
    weights = 1.0 / np.arange(1, len(by_cat[0]) + 1) ** 0.8
    weights /= weights.sum()
    rows: dict[str, list] = {"user_id": [], "item_id": [], "behavior": [], "timestamp": [], "value": []}
    for u in range(N_USERS):
        fav = rng.choice(8, size=2, replace=False)
        n = int(rng.integers(15, 30))
        seen: set[int] = set()
        t = 1_000_000 + u
        while len(seen) < n:
            r = rng.random()
            c = fav[0] if r < 0.6 else fav[1] if r < 0.9 else int(rng.integers(8))
            item = int(by_cat[c][rng.choice(len(weights), p=weights)])
            if item in seen:
                continue
            seen.add(item)
            t += int(rng.integers(60, 3600))
            rows["user_id"].append(f"u{u}")
            rows["item_id"].append(f"i{item}")
            rows["behavior"].append("rating")
            rows["timestamp"].append(t)
            rows["value"].append(5.0 if c in fav else 2.0)
    events = pl.DataFrame(rows).with_columns(pl.int_range(pl.len()).alias("event_id"))
    users = pl.DataFrame({"user_id": [f"u{u}" for u in range(N_USERS)]})
    return Dataset.build(items, users, events, Manifest(name="synthetic", source="tests"))


@pytest.fixture(scope="session")
def split() -> Split:
    return make_split(synthetic_dataset())


# small and fast, but large enough for the planted structure to be learnt
TEST_CONFIG = dict(
    dim=32,
    id_dim=32,
    cat_dim=16,
    brand_dim=8,
    text_dim=16,
    hidden=64,
    batch_size=256,
    n_negatives=64,
    epochs=8,
    max_history=20,
    lr=3e-3,
    patience=100,
)


@pytest.fixture(scope="session")
def trained(split: Split):
    from recgpt.retrieval.train import train_on_split
    from recgpt.retrieval.tritower import TriTowerConfig

    return train_on_split(split, TriTowerConfig(**TEST_CONFIG), embed=fake_embed, progress=False)
