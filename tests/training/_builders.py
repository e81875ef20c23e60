"""Shared setup of the builder tests: the bundled dataset, its split, a hashing encoder, small configs.

Everything is deterministic and model-free (the word-hashing encoder of the intent tests stands in
for MiniLM, the regex counter for the SmolLM2 tokenizer), so the builder tests stay fast.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache

from recgpt.behavior import CompressionConfig
from recgpt.data.dataset import Dataset
from recgpt.data.split import Split, make_split
from recgpt.datasets import load_dataset
from recgpt.intent.interests import InterestsConfig
from recgpt.intent.pool import InterestPool, PoolConfig
from recgpt.intent.tags import TagsConfig
from recgpt.training.builders.source import LogsConfig
from tests.conftest import HashEncoder

os.environ.setdefault("OMP_NUM_THREADS", "1")

SMALL = LogsConfig(
    users=10,
    points_per_user=2,
    tags=TagsConfig(count=6, history_tokens=100, max_recent_items=6),
    interests=InterestsConfig(count=3, pool_size=6, history_tokens=125),
    tokenizer="regex",
    compression=CompressionConfig(budget=300),
)


@dataclass(frozen=True)
class Bundled:
    dataset: Dataset
    split: Split
    pool: InterestPool


@lru_cache(maxsize=1)
def bundled() -> Bundled:
    """The bundled ml-latest-small, its default split and a hash-encoded interest pool (built once)."""
    ds = load_dataset("bundled:ml-latest-small")
    return Bundled(ds, make_split(ds), InterestPool.build(ds.items, HashEncoder(), PoolConfig()))
