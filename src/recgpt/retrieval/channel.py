"""`Recommender` adapters, so the evaluation harness can score the RecGPT channel and the fused list.

The harness ranks a full score matrix (`recommend` -> `mask_seen` -> `topk`). An adapter therefore
encodes its ranked list in the scores: listed items get ``2 + (K − rank)`` (above anything else) and
every other item a lower fallback score, so top-K extraction reproduces the list exactly and any
extra slots beyond the list are filled by the fallback order.

* `RecGPTChannel`: tag-aware retrieval with the tri-tower (fusion.py). Fallback = the user tower's
  cosine (in [−1, 1]). Users without tags get the pure user tower (β = 1).
* `FusedChannel`: a baseline channel (any fitted `Recommender`, e.g. ItemKNN or SASRec) and the RecGPT
  channel mixed at a share (fusion.py `mix_lists`). Fallback = the baseline's order.

Neither trains the tri-tower in `fit`: it needs item metadata that `Interactions` does not carry, so
it is trained with `recgpt.retrieval.train.train_on_split`; `RecGPTChannel.fit` only checks that the
model matches the training data's vocabularies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, fields
from typing import Any

import numpy as np
import polars as pl

from recgpt.data.interactions import Interactions, Recommender
from recgpt.data.ranking import mask_seen, topk
from recgpt.retrieval.fusion import (
    CANDIDATE_SCHEMA,
    Candidate,
    FusionConfig,
    candidates_frame,
    mix_lists,
    retrieve,
)
from recgpt.retrieval.index import ItemIndex
from recgpt.retrieval.tritower import TriTower


def _list_scores(fallback: np.ndarray, lists: Sequence[Sequence[int]], k: int) -> np.ndarray:
    """Scores whose top-k is each row's list (in order); unlisted items keep `fallback` (< 2)."""
    out = np.asarray(fallback, dtype=np.float32).copy()
    for i, lst in enumerate(lists):
        items = np.asarray(lst, dtype=np.int64)
        if len(items):
            out[i, items] = 2.0 + (k - np.arange(len(items), dtype=np.float32))
    return out


def _check_users(users: np.ndarray, histories: Sequence[np.ndarray], n_items: int) -> list[np.ndarray]:
    if len(np.asarray(users).reshape(-1)) != len(histories):
        raise ValueError(f"got {len(users)} users but {len(histories)} histories; one history per user")
    hists = [np.asarray(h, dtype=np.int64).reshape(-1) for h in histories]
    for h in hists:
        if h.size and (h.min() < 0 or h.max() >= n_items):
            raise ValueError(f"history item index out of range [0, {n_items})")
    return hists


class RecGPTChannel(Recommender):
    """Tag-aware retrieval as a recommender: per-tag fused search, interest-quota merge, user-tower fill.

    `tags` is the tags stage table (user_id, tag, interest_id, interest, rank); `context` optionally
    gives the events the caller may see (e.g. ``split.test.asof.events()``) so history items get
    their behaviour type (rating+/rating-, ...) in the user tower; otherwise training labels are used.
    Params: FusionConfig fields (beta, k, per_tag, max_tags).
    """

    name = "recgpt"

    def __init__(
        self,
        model: TriTower,
        index: ItemIndex,
        tags: pl.DataFrame | None = None,
        *,
        context: pl.DataFrame | None = None,
        **params: Any,
    ) -> None:
        super().__init__(**params)
        unknown = set(self.params) - set(self.default_params())
        if unknown:
            raise ValueError(
                f"unknown parameter(s) for 'recgpt': {sorted(unknown)}; valid: "
                f"{sorted(self.default_params())}"
            )
        self.fusion = FusionConfig(**self.params)
        if index.n_items != model.n_items:
            raise ValueError(f"index holds {index.n_items} items, the model {model.n_items}")
        self.model, self.index, self.tags = model, index, tags
        self.labels = model.labels_for(context) if context is not None else None

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        return {f.name: getattr(FusionConfig(), f.name) for f in fields(FusionConfig)}

    def fit(self, train: Interactions, *, seed: int = 0) -> RecGPTChannel:
        """Check the trained tri-tower matches `train`'s vocabularies (training happens in train.py)."""
        if train.n_items != self.model.n_items or train.n_users != len(self.model.user_ids):
            raise ValueError(
                f"tri-tower was trained on {len(self.model.user_ids)} users x {self.model.n_items} items, "
                f"these interactions have {train.n_users} x {train.n_items}"
            )
        return self

    def lists(
        self, users: np.ndarray, histories: Sequence[np.ndarray]
    ) -> tuple[np.ndarray, list[list[Candidate]]]:
        """User-tower vectors and each user's merged candidate list (seen items excluded)."""
        hists = _check_users(users, histories, self.model.n_items)
        return retrieve(self.model, self.index, self.tags, np.asarray(users), hists, self.fusion, self.labels)

    def score(self, users: np.ndarray, histories: Sequence[np.ndarray]) -> np.ndarray:
        hu, lists = self.lists(users, histories)
        fallback = hu @ self.model.item_vectors().T
        return _list_scores(fallback, [[c.item for c in lst] for lst in lists], self.fusion.k)

    def candidates(self, users: np.ndarray, histories: Sequence[np.ndarray]) -> pl.DataFrame:
        """The `candidates` table (channel "recgpt") for these users."""
        _, lists = self.lists(users, histories)
        return candidates_frame(self.model, users, lists, self.name)

    def __repr__(self) -> str:
        return f"RecGPTChannel({asdict(self.fusion)})"


class FusedChannel(Recommender):
    """A baseline channel and the RecGPT channel sharing one list: `share` of the slots are RecGPT's."""

    name = "fused"

    def __init__(
        self, baseline: Recommender, recgpt: RecGPTChannel, *, share: float = 0.3, k: int = 50
    ) -> None:
        super().__init__(share=share, k=k)
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"share must be in [0, 1], got {share}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.baseline, self.recgpt = baseline, recgpt
        self.share, self.k = float(share), int(k)

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        return {"share": 0.3, "k": 50}

    def fit(self, train: Interactions, *, seed: int = 0) -> FusedChannel:
        """Fit the baseline (skip this if it is already fitted) and check the RecGPT channel."""
        self.baseline.fit(train, seed=seed)
        self.recgpt.fit(train, seed=seed)
        return self

    def _mix(
        self, users: np.ndarray, histories: Sequence[np.ndarray]
    ) -> tuple[np.ndarray, list[list[tuple[int, bool]]], list[list[Candidate]]]:
        hists = _check_users(users, histories, self.recgpt.model.n_items)
        base = np.array(self.baseline.score(users, hists), dtype=np.float32, copy=True)
        base_lists = topk(mask_seen(base.copy(), hists), self.k)
        _, rec = self.recgpt.lists(users, hists)
        mixed = [
            mix_lists([c.item for c in r], b, self.share, self.k)
            for r, b in zip(rec, base_lists, strict=True)
        ]
        return base, mixed, rec

    def mixed(self, users: np.ndarray, histories: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(items, from_recgpt): (n_users, k) arrays, -1 / False where a list is short."""
        _, mixed, _ = self._mix(users, histories)
        items = np.full((len(mixed), self.k), -1, dtype=np.int64)
        src = np.zeros((len(mixed), self.k), dtype=bool)
        for i, m in enumerate(mixed):
            items[i, : len(m)] = [it for it, _ in m]
            src[i, : len(m)] = [p for _, p in m]
        return items, src

    def score(self, users: np.ndarray, histories: Sequence[np.ndarray]) -> np.ndarray:
        base, mixed, _ = self._mix(users, histories)
        # fallback: the baseline's order squeezed into [0, 1), so listed items (>= 2) stay on top
        order = np.argsort(-np.nan_to_num(base, neginf=-1e30), axis=1, kind="stable")
        fallback = np.empty_like(base)
        np.put_along_axis(
            fallback, order, 1.0 - np.arange(base.shape[1], dtype=np.float32) / base.shape[1], axis=1
        )
        return _list_scores(fallback, [[it for it, _ in m] for m in mixed], self.k)

    def candidates(self, users: np.ndarray, histories: Sequence[np.ndarray]) -> pl.DataFrame:
        """The fused `candidates` table: RecGPT rows keep tag/interest (null for baseline rows); the score
        is the producing channel's own score (fused cosine or baseline score), so not comparable across
        channels — `rank` is the fused order."""
        base, mixed, rec = self._mix(users, histories)
        model = self.recgpt.model
        rows: dict[str, list[Any]] = {c: [] for c in CANDIDATE_SCHEMA}
        for i, (u, m, r) in enumerate(
            zip(np.asarray(users, dtype=np.int64).tolist(), mixed, rec, strict=True)
        ):
            prov = {c.item: c for c in r}
            for rank, (item, from_rec) in enumerate(m, start=1):
                c = prov.get(item) if from_rec else None
                rows["user_id"].append(str(model.user_ids[u]))
                rows["item_id"].append(str(model.item_ids[item]))
                rows["rank"].append(rank)
                rows["score"].append(c.score if c else float(base[i, item]))
                rows["tag"].append(c.tag if c else None)
                rows["interest_id"].append(c.interest_id if c else None)
                rows["interest"].append(c.interest if c else None)
                rows["channel"].append(self.recgpt.name if from_rec else self.baseline.name)
        return pl.DataFrame(rows, schema=CANDIDATE_SCHEMA)
