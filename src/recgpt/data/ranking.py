"""Top-K selection with explicit seen-item masking and deterministic tie-breaking.

The ranking protocol every recommender is held to. It lives in `data/`, next to the `Recommender`
contract, so that models (which mask inside their own validation) and evaluation (which ranks them
all) share one definition without importing each other; `recgpt.eval.ranking` re-exports it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def mask_seen(scores: np.ndarray, histories: Sequence[np.ndarray]) -> np.ndarray:
    """Set the scores of items in each user's history to -inf (in place, returns `scores`)."""
    if len(histories) != scores.shape[0]:
        raise ValueError("one history per score row is required")
    lens = np.fromiter((len(h) for h in histories), dtype=np.int64, count=len(histories))
    if lens.sum():
        rows = np.repeat(np.arange(len(histories)), lens)
        cols = np.concatenate([np.asarray(h, dtype=np.int64) for h in histories])
        scores[rows, cols] = -np.inf
    return scores


def topk(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best items per row: higher score first, ties broken by lower item index.

    Exact under ties (argpartition alone is not): items are ordered by (-score, index).
    """
    n_users, n_items = scores.shape
    k = min(k, n_items)
    if k == n_items:
        cand = np.broadcast_to(np.arange(n_items), scores.shape)
    else:
        # the k-th largest value per row; every item strictly above it is in, ties filled by index
        kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1 : k]
        above = scores > kth
        n_above = above.sum(axis=1, keepdims=True)
        tie = scores == kth
        tie_rank = np.cumsum(tie, axis=1)
        keep = above | (tie & (tie_rank <= (k - n_above)))
        cand = np.nonzero(keep)[1].reshape(n_users, k)
    s = np.take_along_axis(scores, cand, axis=1)
    order = np.lexsort((cand, -s), axis=1)
    return np.take_along_axis(cand, order, axis=1).astype(np.int64)


__all__ = ["mask_seen", "topk"]
