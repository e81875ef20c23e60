"""Shared fixtures of the pipeline tests: a slice of the bundled dataset, a schema-aware fake LLM, a config.

The fake backend answers every intent prompt with schema-valid JSON built from the request's own
JSON schema (counts, allowed interest ids), so the whole chain runs without a model; it counts
its generations, which is how resume is tested.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from recgpt.data.dataset import Dataset, Manifest
from recgpt.llm.backends.fake import FakeBackend
from recgpt.llm.types import GenerationInput
from recgpt.pipeline.config import RunConfig

os.environ.setdefault("OMP_NUM_THREADS", "1")

INTERESTS = ("Space adventure", "Romantic comedy", "Crime thriller", "Animated family films", "War drama")
TAGS = (
    "epic space battle",
    "witty romance comedy",
    "gritty crime thriller",
    "animated family adventure",
    "historical war drama",
    "dark psychological thriller",
)
TINY_TOWER = {
    "dim": 16,
    "id_dim": 16,
    "cat_dim": 8,
    "brand_dim": 4,
    "text_dim": 8,
    "hidden": 32,
    "batch_size": 256,
    "n_negatives": 32,
    "epochs": 2,
    "max_history": 10,
    "patience": 1,
}


def _interest_ids(schema: dict[str, Any]) -> list[int]:
    """The interest ids the tags schema allows (inlined item schema, or under $defs)."""
    items = schema["properties"]["tags"]["items"]
    for d in [items, *schema.get("$defs", {}).values()]:
        enum = d.get("properties", {}).get("interest_id", {}).get("enum")
        if enum:
            return list(enum)
    return [1]


def fake_answer(inp: GenerationInput) -> str:
    """A schema-valid answer to any of the three intent prompts (LLM_UI, LLM_IT, LLM_RE)."""
    schema = inp.json_schema or {}
    props = schema.get("properties", {})
    if "interests" in props:
        n = props["interests"]["minItems"]
        return json.dumps(
            {
                "interests": [
                    {
                        "id": i + 1,
                        "interest": INTERESTS[i % len(INTERESTS)],
                        "stage": "long-term",
                        "reason": "several films of this kind rated highly",
                    }
                    for i in range(n)
                ]
            }
        )
    if "tags" in props:
        n, ids = props["tags"]["minItems"], _interest_ids(schema)
        return json.dumps(
            {
                "tags": [
                    {
                        "tag": TAGS[i % len(TAGS)] + ("" if i < len(TAGS) else f" {i}"),
                        "interest_id": ids[i % len(ids)],
                        "rationale": "fits the interest",
                    }
                    for i in range(n)
                ]
            }
        )
    return json.dumps(
        {"analysis": "the film matches the interest", "explanation": "A fresh pick for your evenings"}
    )


def fake_backend(**kwargs: Any) -> FakeBackend:
    return FakeBackend(fake_answer, **kwargs)


def slice_dataset(n_users: int = 60, n_items: int = 500) -> Dataset:
    """The bundled ml-latest-small cut to its first users and most popular items (fast to run)."""
    from recgpt.datasets import load_bundled

    ds = load_bundled()
    users = sorted(ds.users["user_id"].to_list(), key=int)[:n_users]
    top = (
        ds.events.group_by("item_id")
        .len()
        .sort(["len", "item_id"], descending=[True, False])["item_id"][:n_items]
    )
    events = ds.events.filter(pl.col("user_id").is_in(users) & pl.col("item_id").is_in(top.implode()))
    items = ds.items.filter(pl.col("item_id").is_in(events["item_id"].unique().implode()))
    return Dataset.build(
        items,
        ds.users.filter(pl.col("user_id").is_in(users)),
        events,
        Manifest(name="mls-slice", source="tests: bundled ml-latest-small slice"),
    )


@pytest.fixture(scope="session")
def slice_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "mls-slice"
    slice_dataset().save(path)
    return path


def fast_config(slice_path: Path, runs_dir: Path, **overrides: Any) -> RunConfig:
    """A config that runs the whole chain in seconds: fake LLM, regex tokens, tiny tri-tower."""
    base: dict[str, Any] = {
        "dataset": str(slice_path),
        "runs_dir": str(runs_dir),
        "name": "t",
        "users": 8,
        "llm": {"spec": "fake", "chunk_size": 4},
        "tokenizer": "regex",
        "compression": {"budget": 300},
        "pool": {"min_support": 3, "centroid_sample": 50},
        "interests": {"count": 3},
        "tags": {"count": 4},
        "tritower": TINY_TOWER,
        "explain_top": 3,
        "compare": ["mostpop"],
        "report_users": 2,
    }
    from recgpt.pipeline.config import merge

    return RunConfig.model_validate(merge(base, overrides))
