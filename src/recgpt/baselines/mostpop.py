"""MostPop: rank by training popularity, the lower anchor every personalised model must beat.

Also home of the small batch checks shared by the classic baselines, so every model rejects bad
input (length mismatch, out-of-catalogue ids, scoring before fitting) with the same message.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from recgpt.baselines.base import Interactions, Recommender


def require_fitted(model: Recommender, attr: str) -> Any:
    """Return `model.<attr>`, raising a clear error when `fit` has not been called yet."""
    value = getattr(model, attr, None)
    if value is None:
        raise RuntimeError(f"{type(model).__name__}.score() called before fit()")
    return value


def check_params(model: Recommender) -> None:
    """Reject hyper-parameter names the model does not know (typos would otherwise be ignored)."""
    unknown = set(model.params) - set(model.default_params())
    if unknown:
        raise ValueError(
            f"unknown parameter(s) for {model.name!r}: {sorted(unknown)}; "
            f"valid: {sorted(model.default_params())}"
        )


def check_batch(
    users: np.ndarray, histories: Sequence[np.ndarray], n_items: int
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Validate a scoring batch; returns users as int64 and histories as int64 arrays."""
    users = np.asarray(users, dtype=np.int64).reshape(-1)
    if len(histories) != len(users):
        raise ValueError(f"got {len(users)} users but {len(histories)} histories; one history per user")
    hists = [np.asarray(h, dtype=np.int64).reshape(-1) for h in histories]
    for h in hists:
        if h.size and (h.min() < 0 or h.max() >= n_items):
            raise ValueError(f"history item index out of range [0, {n_items}): {h.min()}..{h.max()}")
    return users, hists


def check_train(train: Interactions) -> None:
    """Reject training data a model cannot learn from (no interactions, no items)."""
    if train.n_items <= 0 or len(train.item_idx) == 0:
        raise ValueError("training interactions are empty")
    if train.item_idx.min() < 0 or train.item_idx.max() >= train.n_items:
        raise ValueError("training item_idx out of range [0, n_items)")


class MostPop(Recommender):
    """Score = number of training interactions of the item, the same list for every user.

    Ties are left to the central ranking (`recgpt.data.ranking.topk`, lower item index first).
    """

    name = "mostpop"

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        check_params(self)
        self.popularity_: np.ndarray | None = None

    def fit(self, train: Interactions, *, seed: int = 0) -> MostPop:
        check_train(train)
        self.popularity_ = train.item_popularity.astype(np.float32)
        return self

    def score(self, users: np.ndarray, histories: Sequence[np.ndarray]) -> np.ndarray:
        pop = require_fitted(self, "popularity_")
        users, _ = check_batch(users, histories, len(pop))
        return np.tile(pop, (len(users), 1))
