"""`RunState`: what the stages of one run share — the run folder, its tables, and lazily built objects.

Heavy objects (split, encoder, compressor, LLM engine, φ, tri-tower, channels) are built on first
use, so a resumed run that skips a stage never pays for what only that stage needed (a fully
resumed run never even loads the LLM). Tables go to `<run>/<NN_stage>/<table>.parquet`, written
atomically.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
from rich.console import Console

from recgpt.behavior.report import write_parquet_atomic
from recgpt.data.dataset import Dataset, fingerprint
from recgpt.data.interactions import Recommender
from recgpt.data.leakage import shadowed_items as _shadowed_items
from recgpt.data.split import EvalTask, LeakageError, Split, make_split, sample_users, subtask
from recgpt.data.untrusted import UntrustedText, redact_dataset
from recgpt.datasets import load_dataset
from recgpt.intent.context import UserContext, build_contexts, guard_requests
from recgpt.intent.pool import TextEncoder
from recgpt.llm.types import Backend, LLMRequest, LLMResult
from recgpt.pipeline.config import RunConfig

MARKER = "done.json"

if TYPE_CHECKING:  # these pull in torch / faiss / llama.cpp
    from recgpt.intent.phi import TagToCategory
    from recgpt.llm.engine import LLMEngine
    from recgpt.retrieval.channel import FusedChannel, RecGPTChannel


class MemoEncoder:
    """A text encoder with an in-memory memo: pool, φ, tags and interests repeat many texts."""

    def __init__(self, inner: TextEncoder) -> None:
        self.inner = inner
        self._memo: dict[str, np.ndarray] = {}
        self._dim: int | None = None

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        todo = list(dict.fromkeys(t for t in texts if t not in self._memo))
        if todo:
            vecs = np.asarray(self.inner.encode(todo), dtype=np.float32)
            self._memo.update(zip(todo, vecs, strict=True))
            self._dim = vecs.shape[1]
        if not texts:
            if self._dim is None:
                self._dim = int(np.asarray(self.inner.encode(["dimension probe"])).shape[1])
            return np.zeros((0, self._dim), dtype=np.float32)
        return np.stack([self._memo[t] for t in texts])


def shadowed_items(split: Split, task: EvalTask, user_id: str, titles: dict[str, str | None]) -> set[str]:
    """`recgpt.data.leakage.shadowed_items` with the compressor's cleaned titles as aliases."""
    from recgpt.behavior.items import clean_title

    return _shadowed_items(split, task, user_id, titles, alias=clean_title)


def guard_user_prompts(split: Split, task: EvalTask, requests: Sequence[LLMRequest[Any]]) -> None:
    """`recgpt.intent.context.guard_requests` (the exemption now lives in `recgpt.data.leakage`)."""
    guard_requests(split, task, requests)


class GuardedEngine:
    """An LLM engine that checks every user-keyed prompt against held-out items before generating.

    The intent stages' requests are keyed by user id; `guard_requests` raises `LeakageError` when
    a rendered prompt names an item the user only meets at or after their split point, so a leaky
    context aborts the stage before a single token is generated.
    """

    def __init__(self, engine: LLMEngine, split: Split, task: EvalTask) -> None:
        self.engine, self.split, self.task = engine, split, task
        self.checked = 0

    @property
    def ledger(self) -> Any:
        return self.engine.ledger

    def run(self, requests: Sequence[LLMRequest[Any]]) -> list[LLMResult[Any]]:
        guard_requests(self.split, self.task, requests)
        self.checked += len(requests)
        return self.engine.run(requests)


class RunState:
    """The shared state of one run (see the module docstring)."""

    def __init__(
        self,
        cfg: RunConfig,
        dataset: Dataset,
        *,
        console: Console,
        progress: bool = True,
        backend: Backend | None = None,
        encoder: TextEncoder | None = None,
        folders: dict[str, str] | None = None,
    ) -> None:
        self.cfg, self.source_dataset, self.console, self.progress = cfg, dataset, console, progress
        self.run_dir = cfg.run_dir(dataset.manifest.name)
        self._backend, self._encoder = backend, encoder
        self._engines: dict[str, LLMEngine] = {}  # llm.stages overrides, by spec
        self.folders = folders or {}

    # ------------------------------------------------------------------ tables

    def dir(self, stage: str) -> Path:
        return self.run_dir / self.folders.get(stage, stage)

    def path(self, stage: str, table: str) -> Path:
        return self.dir(stage) / f"{table}.parquet"

    def write(self, stage: str, table: str, df: pl.DataFrame) -> Path:
        return write_parquet_atomic(df, self.path(stage, table))

    def marker(self, stage: str) -> dict[str, Any] | None:
        """The stage's `done.json` (None when the stage has not finished)."""
        p = self.dir(stage) / MARKER
        try:
            return dict(json.loads(p.read_text()))
        except (OSError, ValueError):
            return None

    def read_stats(self, stage: str) -> dict[str, Any]:
        m = self.marker(stage)
        if m is None:
            raise FileNotFoundError(f"stage {stage!r} has not finished in {self.run_dir}")
        return dict(m["stats"])

    def read(self, stage: str, table: str) -> pl.DataFrame:
        p = self.path(stage, table)
        if not p.exists():
            raise FileNotFoundError(f"{p} is missing: re-run the {stage!r} stage (delete its done.json)")
        return pl.read_parquet(p)

    # ------------------------------------------------------------------ data

    @cached_property
    def untrusted(self) -> UntrustedText:
        """Instruction-like catalogue / user text of the dataset (scanned once): the intent stages drop
        LLM output that repeats a flagged payload (`recgpt.data.untrusted`)."""
        return UntrustedText.of(self.source_dataset)

    @cached_property
    def dataset(self) -> Dataset:
        """The dataset every stage reads: flagged spans redacted, so no prompt carries them (the same
        object when nothing is flagged)."""
        return redact_dataset(self.source_dataset, self.untrusted.report)

    @cached_property
    def fingerprint(self) -> str:
        return fingerprint(self.dataset)

    @cached_property
    def split(self) -> Split:
        sp = make_split(self.dataset, self.cfg.split)
        if len(sp.test) == 0:
            raise ValueError("the split has no test users (each needs at least 3 item events)")
        return sp

    @cached_property
    def users(self) -> list[str]:
        return sample_users(self.split.test, self.cfg.users, self.cfg.seed)

    @cached_property
    def task(self) -> EvalTask:
        """The test task restricted to the sampled users: what every user-specific stage sees."""
        return subtask(self.split.test, self.dataset.events, self.users)

    @cached_property
    def eval_split(self) -> Split:
        """The split with `test` = the sampled users (validation keeps every user, for tuning)."""
        return dataclasses.replace(self.split, test=self.task)

    @cached_property
    def popularity(self) -> dict[str, float]:
        return dict(zip(self.split.item_ids.tolist(), self.split.train.item_popularity.tolist(), strict=True))

    # ------------------------------------------------------------------ models

    @cached_property
    def encoder(self) -> MemoEncoder:
        if self._encoder is not None:
            return MemoEncoder(self._encoder)
        from recgpt.retrieval.embeddings import Embedder

        return MemoEncoder(Embedder(self.cfg.embedder, cache_dir=self.run_dir / "embed-cache"))

    @cached_property
    def compressor(self) -> Any:
        from recgpt.behavior import BehaviorCompressor, make_counter

        return BehaviorCompressor(self.dataset.items, make_counter(self.cfg.tokenizer), self.cfg.compression)

    @cached_property
    def contexts(self) -> list[UserContext]:
        """Every sampled user's intent-stage input, from the test `AsOf` view only."""
        return build_contexts(
            self.task, self.dataset, self.users, compressor=self.compressor,
            pool_matches=self.read("pool", "matches"),
        )  # fmt: skip

    @cached_property
    def engine(self) -> LLMEngine:
        """The engine of `llm.spec` (an injected backend replaces it); its ledger is the run's."""
        return self._make_engine(self.cfg.llm.spec, self._backend)

    def _make_engine(self, spec: str, backend: Backend | None = None, ledger: Any = None) -> LLMEngine:
        from recgpt.llm import LLMCache, LLMEngine, make_backend

        llm = self.cfg.llm
        if backend is None:
            kwargs: dict[str, Any] = {}
            if spec.split(":", 1)[0].lower() == "llamacpp":
                kwargs = {"n_threads": llm.threads, "n_workers": llm.workers, "n_ctx": llm.n_ctx}
            backend = make_backend(spec, **kwargs)
        cache = LLMCache(llm.cache or self.run_dir / "llm-cache.sqlite")
        return LLMEngine(backend, cache=cache, ledger=ledger, max_retries=llm.max_retries,
                         chunk_size=llm.chunk_size, max_tokens_growth=llm.max_tokens_growth, progress=self.progress)  # fmt: skip

    def engine_for(self, stage: str) -> LLMEngine:
        """The engine serving one LLM stage: `llm.stages[stage]` when set, else the run's engine.

        An override engine is built on first use and shares the run's ledger, so the per-stage
        accounting stays in one place; an injected backend (tests) serves every stage.
        """
        spec = self.cfg.llm.spec_for(stage)
        if spec == self.cfg.llm.spec or self._backend is not None:
            return self.engine
        if spec not in self._engines:
            self._engines[spec] = self._make_engine(spec, ledger=self.engine.ledger)
        return self._engines[spec]

    def guarded_engine(self, stage: str | None = None) -> GuardedEngine:
        return GuardedEngine(self.engine_for(stage) if stage else self.engine, self.split, self.task)

    @cached_property
    def phi(self) -> TagToCategory:
        from recgpt.intent.phi import TagToCategory

        return TagToCategory(self.encoder, self.cfg.phi).fit(self.dataset)

    @cached_property
    def recgpt_channel(self) -> RecGPTChannel:
        from recgpt.retrieval.channel import RecGPTChannel
        from recgpt.retrieval.index import ItemIndex
        from recgpt.retrieval.tritower import TriTower

        model = TriTower.load(self.dir("tritower") / "model", embed=self.encoder.encode)
        index = ItemIndex.load(self.dir("tritower") / "index")
        return RecGPTChannel(model, index, self.read("tags", "tags"), context=self.task.asof.events(),
                             **dataclasses.asdict(self.cfg.fusion))  # fmt: skip

    def user_tower_channel(self) -> RecGPTChannel:
        """The tri-tower without tags (β = 1 for everyone): what the LLM's tags add is measured against it."""
        from recgpt.retrieval.channel import RecGPTChannel

        ch = self.recgpt_channel
        return RecGPTChannel(ch.model, ch.index, None, context=self.task.asof.events(),
                             **dataclasses.asdict(self.cfg.fusion))  # fmt: skip

    def baseline(self, params: dict[str, Any]) -> Recommender:
        """The classic channel fitted on the training split with the validation-chosen params."""
        from recgpt.baselines.registry import get_recommender

        return get_recommender(self.cfg.baseline, **params).fit(self.split.train, seed=self.cfg.seed)

    def fused_channel(self, params: dict[str, Any]) -> FusedChannel:
        from recgpt.retrieval.channel import FusedChannel

        return FusedChannel(self.baseline(params), self.recgpt_channel, share=self.cfg.share, k=self.cfg.fusion.k)

    def close(self) -> None:
        for engine in self._engines.values():
            engine.close()
        self._engines.clear()
        if "engine" in self.__dict__:
            self.engine.close()


__all__ = [
    "MARKER",
    "GuardedEngine",
    "LeakageError",
    "MemoEncoder",
    "RunState",
    "fingerprint",
    "guard_user_prompts",
    "load_dataset",
    "sample_users",
    "shadowed_items",
    "subtask",
]
