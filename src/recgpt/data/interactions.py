"""The contracts every recommender shares: `Interactions` (the training data) and `Recommender`.

They live in `data/` so that splits, evaluation, baselines and retrieval all build on them
without importing one another. The interface is small on purpose:

A recommender is fitted on training interactions (integer-indexed) and then asked for full-catalogue
scores for a batch of users, given each user's history *as of the split point*. Masking of seen
items, deterministic tie-breaking and top-K selection happen once, centrally, in
`recgpt.data.ranking`, so every model is ranked the same way.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp


@dataclass(frozen=True)
class Interactions:
    """Training interactions with dense integer ids, sorted by (user, time, event order).

    `user_idx` / `item_idx` index into the split's user and item vocabularies; `n_items` is the
    whole catalogue (items never interacted with still get a score).
    """

    n_users: int
    n_items: int
    user_idx: np.ndarray  # int64, sorted ascending (stable within a user: chronological)
    item_idx: np.ndarray  # int64
    timestamp: np.ndarray  # int64 seconds
    value: np.ndarray | None = None  # float32 (e.g. ratings); None when not applicable
    item_text: Sequence[str] | None = field(default=None, compare=False)  # optional, for content models

    def __post_init__(self) -> None:
        if not (len(self.user_idx) == len(self.item_idx) == len(self.timestamp)):
            raise ValueError("user_idx, item_idx and timestamp must have the same length")

    @cached_property
    def sequences(self) -> list[np.ndarray]:
        """Per-user chronological item sequences (index = user_idx)."""
        bounds = np.searchsorted(self.user_idx, np.arange(self.n_users + 1))
        return [self.item_idx[bounds[u] : bounds[u + 1]] for u in range(self.n_users)]

    @cached_property
    def item_popularity(self) -> np.ndarray:
        """Interaction count per item (float64, length n_items)."""
        return np.bincount(self.item_idx, minlength=self.n_items).astype(np.float64)

    def csr(self, binary: bool = True) -> sp.csr_matrix:
        """User x item matrix (float32); repeated interactions summed unless `binary`."""
        data = np.ones(len(self.user_idx), dtype=np.float32)
        m = sp.csr_matrix((data, (self.user_idx, self.item_idx)), shape=(self.n_users, self.n_items))
        m.sum_duplicates()
        if binary:
            m.data[:] = 1.0
        return m


class Recommender(ABC):
    """Fit on training interactions; score the whole catalogue for users as of the split point."""

    name: ClassVar[str]

    def __init__(self, **params: Any) -> None:
        self.params: dict[str, Any] = {**self.default_params(), **params}

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        """Hyper-parameters used when nothing else is given."""
        return {}

    @classmethod
    def search_space(cls) -> list[dict[str, Any]]:
        """Candidate hyper-parameter sets, chosen between on the validation split only."""
        return [cls.default_params()]

    @abstractmethod
    def fit(self, train: Interactions, *, seed: int = 0) -> Recommender:
        """Learn from training interactions. Must be deterministic for a given seed."""

    @abstractmethod
    def score(self, users: np.ndarray, histories: Sequence[np.ndarray]) -> np.ndarray:
        """Scores (len(users), n_items), float32, higher is better.

        `histories[i]` is user `users[i]`'s chronological item sequence strictly before the split
        point (from the AsOf view). It may be longer than what the model saw in `fit` (at test time
        it includes the validation item), and the model should use it.
        """

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"


__all__ = ["Interactions", "Recommender"]
