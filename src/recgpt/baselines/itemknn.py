"""ItemKNN: item-item cosine similarity on the binary user x item matrix, scored in one sparse product.

    sim(i, j) = |U_i ∩ U_j| / (sqrt(|U_i| |U_j|) + shrink)        (0 on the diagonal)

Only the `neighbors` most similar items i are kept for every target item j (ties: lower index),
and a user's score for j is the (optionally recency-weighted) sum of sim(i, j) over the history
items i that are among j's neighbours. A batch of users is one sparse (histories x W) product.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import product
from typing import Any

import numpy as np
import scipy.sparse as sp

from recgpt.baselines.base import Interactions, Recommender
from recgpt.baselines.mostpop import check_batch, check_params, check_train, require_fitted


def history_matrix(histories: Sequence[np.ndarray], n_items: int, recency: float = 1.0) -> sp.csr_matrix:
    """Sparse (len(histories), n_items) matrix of history weights (float32).

    The item `a` steps before the most recent one weighs `recency ** a` (1.0 = plain binary sum);
    repeated items add up. Histories must already be validated (`check_batch`).
    """
    lens = np.fromiter((len(h) for h in histories), dtype=np.int64, count=len(histories))
    rows = np.repeat(np.arange(len(histories)), lens)
    cols = np.concatenate([np.asarray(h, dtype=np.int64) for h in histories]) if lens.sum() else rows
    if recency == 1.0:
        data = np.ones(len(cols), dtype=np.float64)
    else:
        ends = np.repeat(np.cumsum(lens), lens)
        age = ends - 1 - np.arange(len(cols))  # 0 for each user's last item
        data = np.power(recency, age, dtype=np.float64)
    m = sp.csr_matrix((data, (rows, cols)), shape=(len(histories), n_items))
    m.sum_duplicates()
    return m.astype(np.float32)


def top_neighbors(sim: sp.csc_matrix, k: int) -> sp.csc_matrix:
    """Keep the k largest entries of each column (ties: lower row index), drop the rest."""
    sim = sim.tocsc()
    sim.sort_indices()
    keep = np.zeros(sim.nnz, dtype=bool)
    for j in range(sim.shape[1]):
        lo, hi = sim.indptr[j], sim.indptr[j + 1]
        if hi - lo <= k:
            keep[lo:hi] = True
        else:
            order = np.lexsort((sim.indices[lo:hi], -sim.data[lo:hi]))  # score desc, index asc
            keep[lo + order[:k]] = True
    col = np.repeat(np.arange(sim.shape[1]), np.diff(sim.indptr))
    out = sp.csc_matrix((sim.data[keep], (sim.indices[keep], col[keep])), shape=sim.shape)
    return out


class ItemKNN(Recommender):
    """Item-based collaborative filtering with cosine similarity, shrinkage and top-k pruning."""

    name = "itemknn"

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        check_params(self)
        if int(self.params["neighbors"]) < 1:
            raise ValueError(f"neighbors must be >= 1, got {self.params['neighbors']}")
        if float(self.params["shrink"]) < 0:
            raise ValueError(f"shrink must be >= 0, got {self.params['shrink']}")
        if not 0.0 < float(self.params["recency"]) <= 1.0:
            raise ValueError(f"recency must be in (0, 1], got {self.params['recency']}")
        self.weights_: sp.csr_matrix | None = None

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        return {"neighbors": 100, "shrink": 0.0, "recency": 1.0}

    @classmethod
    def search_space(cls) -> list[dict[str, Any]]:
        grid = product((50, 200), (0.0, 10.0), (1.0, 0.9, 0.8))
        return [{"neighbors": k, "shrink": s, "recency": r} for k, s, r in grid]

    def fit(self, train: Interactions, *, seed: int = 0) -> ItemKNN:
        check_train(train)
        x = train.csr(binary=True).astype(np.float64)
        co = (x.T @ x).tocoo()
        norm = np.sqrt(np.asarray(x.sum(axis=0)).ravel())
        off_diag = co.row != co.col
        r, c = co.row[off_diag], co.col[off_diag]
        data = co.data[off_diag] / (norm[r] * norm[c] + float(self.params["shrink"]))
        sim = sp.csc_matrix((data, (r, c)), shape=co.shape)
        self.weights_ = top_neighbors(sim, int(self.params["neighbors"])).tocsr().astype(np.float32)
        return self

    def score(self, users: np.ndarray, histories: Sequence[np.ndarray]) -> np.ndarray:
        w = require_fitted(self, "weights_")
        _, hists = check_batch(users, histories, w.shape[0])
        h = history_matrix(hists, w.shape[0], float(self.params["recency"]))
        return np.asarray((h @ w).toarray(), dtype=np.float32)
