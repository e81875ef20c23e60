"""`Resources`: the heavy objects the RecGPT stages share, built on first use.

The dataset view (flagged spans redacted), the split, the seeded user sample and its test task, the
sentence encoder, the behaviour compressor, φ and the LLM engines are built lazily, so a resumed
run that skips a stage never pays for what only that stage needed (a fully resumed run never loads
the LLM). A resource that depends on config takes that config as an argument, which the stage reads
through its declared config view (`core.StageContext.config`), so it is part of the stage's key.

LLM engines come from `recgpt.llm.make_backend` with the run's generic options (threads, workers,
context size): each backend keeps the ones it understands, so no backend is special-cased here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

from recgpt.data.dataset import Dataset, fingerprint
from recgpt.data.runstore import RunStore
from recgpt.data.split import EvalTask, Split, make_split, sample_users, subtask
from recgpt.data.untrusted import UntrustedText, redact_dataset
from recgpt.intent.context import guard_requests
from recgpt.pipeline.config import RunConfig

if TYPE_CHECKING:  # these pull in torch / faiss / llama.cpp
    from recgpt.intent.phi import PhiConfig, TagToCategory
    from recgpt.intent.pool import TextEncoder
    from recgpt.llm.engine import LLMEngine
    from recgpt.llm.ledger import StageStats
    from recgpt.llm.types import Backend, LLMRequest, LLMResult


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


class _Lent:
    """An injected backend lent to a sub-run: everything but `close`, which stays with its owner."""

    def __init__(self, inner: Backend) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def close(self) -> None:
        """The owner closes the backend."""


class Resources:
    """The shared, lazily built objects of one RecGPT run (see the module docstring)."""

    def __init__(
        self,
        cfg: RunConfig,
        dataset: Dataset,
        store: RunStore,
        *,
        progress: bool = False,
        backend: Backend | None = None,
        encoder: TextEncoder | None = None,
    ) -> None:
        self.cfg, self.source_dataset, self.store, self.progress = cfg, dataset, store, progress
        self._backend, self._encoder = backend, encoder
        self._engines: dict[str, LLMEngine] = {}  # by backend spec
        self._encoders: dict[str, MemoEncoder] = {}
        self._phi: dict[str, TagToCategory] = {}

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

    @property
    def base_task(self) -> EvalTask:
        """The task the run samples from: test, or validation for the tuning sub-run (`cfg.task`)."""
        return self.split.valid if self.cfg.task == "valid" else self.split.test

    @cached_property
    def users(self) -> list[str]:
        """The seeded sample of the task's users, never one of `cfg.exclude_users`."""
        return sample_users(self.base_task, self.cfg.users, self.cfg.seed, exclude=self.cfg.exclude_users)

    @cached_property
    def task(self) -> EvalTask:
        """The task restricted to the sampled users: what every user-specific stage sees (its split
        points, histories and held-out items; the leakage guard checks prompts against this task)."""
        return subtask(self.base_task, self.dataset.events, self.users)

    @cached_property
    def eval_split(self) -> Split:
        """The split with `test` = the sampled users (validation keeps every user, for tuning)."""
        return dataclasses.replace(self.split, test=self.task)

    @cached_property
    def popularity(self) -> dict[str, float]:
        return dict(zip(self.split.item_ids.tolist(), self.split.train.item_popularity.tolist(), strict=True))

    def units(self) -> int:
        return len(self.users)

    def derive(self, cfg: RunConfig, store: RunStore) -> Resources:
        """The resources of a sub-run over the same dataset and split (the tune stage's validation run).

        `cfg` may differ only in who is sampled (`task`, `users`, `exclude_users`) and the LLM cache
        path: the dataset view, the split, the encoders and φ are shared, and an injected backend is
        lent without handing over its `close` (the sub-run's runner closes its own engines).
        """
        if cfg.split != self.cfg.split or cfg.dataset != self.cfg.dataset:
            raise ValueError("a derived run must keep the dataset and the split of its parent")
        backend = _Lent(self._backend) if self._backend is not None else None
        sub = Resources(cfg, self.source_dataset, store, progress=self.progress, backend=backend)
        for name in ("untrusted", "dataset", "fingerprint", "split"):  # cached: built once per run
            sub.__dict__[name] = getattr(self, name)
        sub._encoder, sub._encoders, sub._phi = self._encoder, self._encoders, self._phi
        return sub

    # ------------------------------------------------------------------ models

    def encoder(self, embedder: str) -> MemoEncoder:
        """The sentence encoder `embedder` (an injected encoder replaces it), memoised."""
        if embedder not in self._encoders:
            if self._encoder is not None:
                inner: TextEncoder = self._encoder
            else:
                from recgpt.retrieval.embeddings import Embedder

                inner = Embedder(embedder, cache_dir=self.store.run_dir / "embed-cache")
            self._encoders[embedder] = MemoEncoder(inner)
        return self._encoders[embedder]

    def compressor(self, compression: Any, tokenizer: str) -> Any:
        from recgpt.behavior import BehaviorCompressor, make_counter

        return BehaviorCompressor(self.dataset.items, make_counter(tokenizer), compression)

    def phi(self, config: PhiConfig, embedder: str) -> TagToCategory:
        """φ (tag -> category) fitted on the catalogue, memoised per config."""
        from recgpt.intent.phi import TagToCategory

        key = f"{config.model_dump_json()}|{embedder}"
        if key not in self._phi:
            self._phi[key] = TagToCategory(self.encoder(embedder), config).fit(self.dataset)
        return self._phi[key]

    def engine(self, stage: str) -> LLMEngine:
        """The engine serving one LLM stage (`llm.stages[stage]`, else `llm.spec`).

        Every engine shares one ledger, so the per-stage accounting stays in one place; an injected
        backend (tests) serves every stage. User-keyed stages wrap it in a `GuardedEngine`.
        """
        return self._engine(self.cfg.llm.spec if self._backend is not None else self.cfg.llm.spec_for(stage))

    def _engine(self, spec: str) -> LLMEngine:
        if spec not in self._engines:
            first = next(iter(self._engines.values()), None)
            self._engines[spec] = self.make_engine(spec, ledger=first.ledger if first else None)
        return self._engines[spec]

    def make_engine(self, spec: str, ledger: Any = None) -> LLMEngine:
        """One engine for `spec` with the run's cache and options."""
        from recgpt.llm import LLMCache, LLMEngine, make_backend

        llm = self.cfg.llm
        backend = self._backend or make_backend(spec, options=llm.backend_options())
        cache = LLMCache(llm.cache or self.store.run_dir / "llm-cache.sqlite")
        return LLMEngine(
            backend,
            cache=cache,
            ledger=ledger,
            max_retries=llm.max_retries,
            chunk_size=llm.chunk_size,
            max_tokens_growth=llm.max_tokens_growth,
            progress=self.progress,
        )

    def llm_stats(self, stage: str) -> StageStats | None:
        first = next(iter(self._engines.values()), None)
        return first.ledger.stages.get(stage) if first is not None else None

    def model_calls(self) -> int:
        first = next(iter(self._engines.values()), None)
        return first.ledger.total().calls if first is not None else 0

    def close(self) -> None:
        for engine in self._engines.values():
            engine.close()
        self._engines.clear()


__all__ = ["GuardedEngine", "MemoEncoder", "Resources"]
