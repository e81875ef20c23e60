"""Implicit-feedback matrix factorisation (ALS, BPR) wrapping the `implicit` package.

`implicit` is optional (the `baselines` extra), so it is imported only when a model is fitted.
Both models train on the binary user x item matrix and score the whole catalogue as
user_factor . item_factors. One thread is the default because only then is a fit bit-for-bit
reproducible for a seed (BPR's multi-threaded SGD is Hogwild-style); BLAS is pinned to one thread
during fitting, as `implicit` recommends.

The user factor at scoring time comes from the *given* history, so test-time histories (which
include the validation item) are used:
- ALS: solved exactly from the history and the fixed item factors (`recalculate_user`, the same
  weighted least-squares step as training), for every user, known or not.
- BPR: has no closed-form fold-in. A user with training interactions keeps the fitted factor;
  anyone else gets the mean of their history items' factors (an empty history: zero vector, so
  only the learned item bias ranks). The bias column is handled explicitly (users carry a 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import product
from typing import Any

import numpy as np

from recgpt.baselines.base import Interactions, Recommender
from recgpt.baselines.itemknn import history_matrix
from recgpt.baselines.mostpop import check_batch, check_params, check_train, require_fitted


def _import_implicit() -> Any:
    try:
        import implicit.cpu.als
        import implicit.cpu.bpr
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ImportError("ALS / BPR need the 'implicit' package: pip install 'recgpt[baselines]'") from e
    return implicit


def _one_blas_thread() -> Any:
    """Context pinning BLAS to one thread (threadpoolctl comes with `implicit`)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


class ImplicitMF(Recommender):
    """Common fit/score plumbing; subclasses build the `implicit` model and the user factors."""

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        check_params(self)
        for key, low in (("factors", 1), ("iterations", 1), ("num_threads", 0)):
            if int(self.params[key]) < low:
                raise ValueError(f"{key} must be an integer >= {low}, got {self.params[key]}")
        self.model_: Any = None
        self.n_items_: int = 0
        self.n_train_items_: np.ndarray = np.zeros(0, dtype=np.int64)

    def _build(self, seed: int) -> Any:
        raise NotImplementedError

    def _user_factors(self, users: np.ndarray, hists: list[np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def fit(self, train: Interactions, *, seed: int = 0) -> ImplicitMF:
        check_train(train)
        _import_implicit()  # the clear "install the extra" error comes first
        self.n_items_ = train.n_items
        self.n_train_items_ = np.diff(train.csr().indptr)  # training interactions per user
        with _one_blas_thread():
            model = self._build(seed)
            model.fit(train.csr(binary=True), show_progress=False)
        self.model_ = model
        return self

    def score(self, users: np.ndarray, histories: Sequence[np.ndarray]) -> np.ndarray:
        require_fitted(self, "model_")
        users, hists = check_batch(users, histories, self.n_items_)
        factors = self._user_factors(users, hists)
        return np.asarray(factors @ self.model_.item_factors.T, dtype=np.float32)


class ImplicitALS(ImplicitMF):
    """Weighted-regularised ALS (Hu, Koren & Volinsky 2008); confidence of a positive = alpha."""

    name = "als"

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        return {"factors": 64, "regularization": 0.1, "alpha": 5.0, "iterations": 15, "num_threads": 1}

    @classmethod
    def search_space(cls) -> list[dict[str, Any]]:
        grid = product((64, 128), (0.1, 1.0), (2.0, 5.0, 20.0))
        return [
            {"factors": f, "regularization": r, "alpha": a, "iterations": 15, "num_threads": 1}
            for f, r, a in grid
        ]

    def _build(self, seed: int) -> Any:
        implicit = _import_implicit()
        p = self.params
        return implicit.cpu.als.AlternatingLeastSquares(
            factors=int(p["factors"]),
            regularization=float(p["regularization"]),
            alpha=float(p["alpha"]),
            iterations=int(p["iterations"]),
            num_threads=int(p["num_threads"]),
            random_state=seed,
        )

    def _user_factors(self, users: np.ndarray, hists: list[np.ndarray]) -> np.ndarray:
        h = history_matrix(hists, self.n_items_)
        h.data[:] = 1.0  # the model was trained on binary interactions
        with _one_blas_thread():
            return self.model_.recalculate_user(np.arange(len(users)), h)


class ImplicitBPR(ImplicitMF):
    """Bayesian Personalised Ranking (Rendle et al. 2009) by SGD over (user, pos, neg) triples."""

    name = "bpr"

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        return {
            "factors": 64,
            "learning_rate": 0.01,
            "regularization": 0.01,
            "iterations": 100,
            "num_threads": 1,
        }

    @classmethod
    def search_space(cls) -> list[dict[str, Any]]:
        grid = product((64, 128), (0.01, 0.001), (100, 300))
        return [
            {"factors": f, "learning_rate": 0.01, "regularization": r, "iterations": it, "num_threads": 1}
            for f, r, it in grid
        ]

    def _build(self, seed: int) -> Any:
        implicit = _import_implicit()
        p = self.params
        return implicit.cpu.bpr.BayesianPersonalizedRanking(
            factors=int(p["factors"]),
            learning_rate=float(p["learning_rate"]),
            regularization=float(p["regularization"]),
            iterations=int(p["iterations"]),
            num_threads=int(p["num_threads"]),
            random_state=seed,
        )

    def _user_factors(self, users: np.ndarray, hists: list[np.ndarray]) -> np.ndarray:
        uf, itf = self.model_.user_factors, self.model_.item_factors
        out = np.zeros((len(users), uf.shape[1]), dtype=np.float32)
        out[:, -1] = 1.0  # the last column multiplies the learned item bias
        known = (users >= 0) & (users < len(self.n_train_items_))
        known[known] = self.n_train_items_[users[known]] > 0
        out[known] = uf[users[known]]
        for row in np.flatnonzero(~known):
            if len(hists[row]):
                out[row, :-1] = itf[hists[row], :-1].mean(axis=0)
        return out
