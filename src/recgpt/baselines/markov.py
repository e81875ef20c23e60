"""First-order Markov chain ("last item -> next item") with popularity back-fill.

On short-session data (Amazon, MovieLens rating bursts) this simple count model is a strong
sequential anchor (baselines.md §3.3 `Markov1`), so it must be reproduced faithfully:

    score(j) = w(j) * BIG + pop(j) / (max_pop + 1)
    w(j)     = T1[last, j] + decay * T2[second_last, j]

`T1[a, b]` counts how often b directly followed a in the training sequences, `T2[a, b]` how often
b came two steps after a. Because `pop / (max_pop + 1) < 1 <= w * BIG` for every item with a
non-zero transition weight, all transition items rank before all back-fill items, transition
ties are broken by popularity, and the rest is plain MostPop. `decay = 0` (default) is the pure
first-order chain. `tie_break="index"` breaks transition ties by item index instead of popularity
(the back-fill stays MostPop): this is exactly the reference `Markov1` of baselines.md §3.3
(Scientific no-mask NDCG@10 0.0529, masked 0.0558); the popularity tie-break (default) is slightly
stronger (0.0563 / 0.0595) and is what the search uses. Scores are computed in float64 and returned as float32;
the two-level order is exact while `max_count * BIG * max_pop` stays well below 2**24.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

from recgpt.baselines.base import Interactions, Recommender
from recgpt.baselines.mostpop import check_batch, check_params, check_train, require_fitted


def transition_counts(train: Interactions, step: int) -> sp.csr_matrix:
    """Counts of (item at t, item at t + step) pairs within each user's training sequence."""
    u, i = train.user_idx, train.item_idx
    same_user = u[:-step] == u[step:] if len(u) > step else np.zeros(0, dtype=bool)
    src, dst = i[:-step][same_user], i[step:][same_user]
    data = np.ones(len(src), dtype=np.float64)
    m = sp.csr_matrix((data, (src, dst)), shape=(train.n_items, train.n_items))
    m.sum_duplicates()
    return m


class MarkovChain(Recommender):
    """Next item from the user's last item (optionally also the one before it), popularity back-fill."""

    name = "markov"

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        check_params(self)
        decay = float(self.params["decay"])
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"decay must be in [0, 1], got {decay}")
        if self.params["tie_break"] not in ("popularity", "index"):
            raise ValueError(f"tie_break must be 'popularity' or 'index', got {self.params['tie_break']!r}")
        self.t1_: sp.csr_matrix | None = None
        self.t2_: sp.csr_matrix | None = None
        self.backfill_: np.ndarray | None = None

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        return {"decay": 0.0, "tie_break": "popularity"}

    @classmethod
    def search_space(cls) -> list[dict[str, Any]]:
        return [{"decay": d, "tie_break": "popularity"} for d in (0.0, 0.1, 0.25, 0.5)]

    def fit(self, train: Interactions, *, seed: int = 0) -> MarkovChain:
        check_train(train)
        self.t1_ = transition_counts(train, 1)
        self.t2_ = transition_counts(train, 2) if self.params["decay"] > 0 else None
        pop = train.item_popularity
        self.backfill_ = pop / (pop.max() + 1.0)
        return self

    def _rows(self, matrix: sp.csr_matrix, items: np.ndarray) -> np.ndarray:
        """Dense rows `matrix[items]`, with all-zero rows where `items` is -1 (no such item)."""
        rows = matrix[np.maximum(items, 0)].toarray()
        rows[items < 0] = 0.0
        return rows

    def score(self, users: np.ndarray, histories: Sequence[np.ndarray]) -> np.ndarray:
        t1 = require_fitted(self, "t1_")
        backfill = self.backfill_
        users, hists = check_batch(users, histories, t1.shape[0])
        last = np.array([h[-1] if len(h) else -1 for h in hists], dtype=np.int64)
        weight = self._rows(t1, last)
        decay = float(self.params["decay"])
        big = 1.0
        if decay > 0:
            prev = np.array([h[-2] if len(h) > 1 else -1 for h in hists], dtype=np.int64)
            weight += decay * self._rows(self.t2_, prev)
            big = 1.0 / decay  # smallest non-zero weight is `decay`; keep it above the back-fill
        if self.params["tie_break"] == "index":
            # transition items: weight only (ties -> lower index, centrally); the rest: MostPop below them
            return np.where(weight > 0, weight * big + 1.0, backfill).astype(np.float32)
        return (weight * big + backfill).astype(np.float32)
