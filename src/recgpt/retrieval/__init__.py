"""Tag-aware retrieval (RecGPT §1.5): tri-tower model, faiss item index, fusion and channel mixing.

Modules (imported lazily, so `import recgpt.retrieval` does not pull in torch or faiss):

* `embeddings` — `Embedder`: offline MiniLM sentence vectors for titles and tags.
* `tritower` — `TriTowerConfig`, the user / item / tag towers, `TriTower` (a fitted model, save/load).
* `train` — `train_on_split` / `train_tritower`: L_col + α·L_tag + (1−α)·L_cate on training data only.
* `index` — `ItemIndex`: faiss inner-product search (flat or HNSW) with seen-item exclusion.
* `fusion` — `fuse`, per-tag retrieval, interest-quota merge (`retrieve`), channel mixing (`mix_lists`).
* `channel` — `RecGPTChannel` and `FusedChannel`, `Recommender` adapters for the evaluation harness.

Typical use::

    split = make_split(dataset)
    model = train_on_split(split, TriTowerConfig(), embed=Embedder(cache_dir=...).encode).model
    index = ItemIndex.build(model.item_vectors())
    rec = RecGPTChannel(model, index, tags, context=split.test.asof.events(), beta=0.5, k=50)
    fused = FusedChannel(itemknn, rec, share=0.3, k=50)
    lists = recommend(fused, split.test, 50, mask=True)
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Embedder": "embeddings",
    "TriTowerConfig": "config",
    "TriTower": "tritower",
    "train_on_split": "train",
    "train_tritower": "train",
    "TrainResult": "train",
    "ItemIndex": "index",
    "FusionConfig": "fusion",
    "fuse": "fusion",
    "retrieve": "fusion",
    "merge_interests": "fusion",
    "mix_lists": "fusion",
    "CANDIDATE_SCHEMA": "fusion",
    "RecGPTChannel": "channel",
    "FusedChannel": "channel",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"recgpt.retrieval.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'recgpt.retrieval' has no attribute {name!r}")
