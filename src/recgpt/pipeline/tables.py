"""Stored lists as channels: what lets fusion and evaluation read the candidate tables instead of recomputing.

`StoredCandidates` serves the `07_candidates` table behind the two members `FusedChannel` reads of
a RecGPT channel (`model` ids, `lists`), so the fused list mixes exactly the stored candidates.
`table_lists` and `fill_lists` turn a stored list table into the (users x K) matrix the evaluation
harness scores: the stored list first, then the channel's fallback order for any slot it leaves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from recgpt.data.split import Split


@dataclass(frozen=True)
class _Ids:
    """The id vocabularies `FusedChannel` reads from a channel's model."""

    user_ids: np.ndarray
    item_ids: np.ndarray

    @property
    def n_items(self) -> int:
        return len(self.item_ids)


class StoredCandidates:
    """A RecGPT channel that answers with the stored `candidates` table (provenance included)."""

    name = "recgpt"

    def __init__(self, table: pl.DataFrame, split: Split) -> None:
        from recgpt.retrieval.fusion import Candidate

        self.model = _Ids(np.asarray(split.user_ids).astype(str), np.asarray(split.item_ids).astype(str))
        pos = split.item_pos
        self._lists: dict[str, list[Any]] = {}
        rows = table.sort("user_id", "rank").select(
            "user_id", "item_id", "score", "tag", "interest_id", "interest"
        )
        for u, iid, score, tag, interest_id, interest in rows.iter_rows():
            self._lists.setdefault(u, []).append(Candidate(pos[iid], score, tag, interest_id, interest))

    def lists(self, users: np.ndarray, histories: Sequence[np.ndarray]) -> tuple[None, list[list[Any]]]:
        """(no user vectors, each user's stored list in rank order; [] for a user without one)."""
        uids = self.model.user_ids[np.asarray(users, dtype=np.int64).reshape(-1)]
        return None, [self._lists.get(str(u), []) for u in uids]


def table_lists(table: pl.DataFrame, user_ids: Sequence[str], item_pos: dict[str, int]) -> list[list[int]]:
    """Each user's stored list (item indices in rank order), in `user_ids` order."""
    by_user: dict[str, list[int]] = {}
    for u, iid in table.sort("user_id", "rank").select("user_id", "item_id").iter_rows():
        by_user.setdefault(u, []).append(item_pos[iid])
    return [by_user.get(u, []) for u in user_ids]


def fill_lists(lists: Sequence[Sequence[int]], fallback: np.ndarray, k: int) -> np.ndarray:
    """(n_users, k) lists: each stored list's first k items, then `fallback`'s items (a ranked matrix,
    seen items already masked) that are not listed, in order; -1 where both run out."""
    out = np.full((len(lists), k), -1, dtype=np.int64)
    for i, lst in enumerate(lists):
        row = list(lst[:k])
        listed = set(row)
        for it in fallback[i].tolist():
            if len(row) >= k:
                break
            if it >= 0 and it not in listed:
                row.append(it)
                listed.add(it)
        out[i, : len(row)] = row
    return out


__all__ = ["StoredCandidates", "fill_lists", "table_lists"]
