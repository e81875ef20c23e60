"""Serendipity labels from logs: the short lists SerenGPT ranks and learns from.

A candidate is **serendipitous** for a user when the user's future engages with it (log evidence of
relevance) and it is **unexpected** against their history strictly before the point
(`candidates.unexpected_mask`: a new category, an embedding distance above a threshold, or either).

* `eval_lists` (part 'eval'): for each test user, the held-out item (the split's first test target)
  is checked against the history before the test point (`split.test.histories`, the AsOf view). Only
  when it is serendipitous does the user get a list: that item (label 1) plus `list_size - 1`
  generated candidates (label 0) the user never engaged with at any time, shuffled with the seed.
  Users whose held-out item is expected are counted in the `LabelStats`, not listed.
* `train_lists` (part 'train'): from the train split only (events before each user's validation
  point), for users other than the eval users: the last train item is the future, every earlier
  train item the history, same rule. Negatives exclude the items the user engaged with in the train
  split (never a validation or test event, so a negative may be an item the user meets later; that
  noise is the price of never reading the held-out periods).

LISTS (`LISTS_SCHEMA`): list_id, user_id, part, asof_ts (the point: history is strictly before it),
item_ids, labels (1 = serendipitous), label_source ('log' here; 'human' after `apply_verdicts`).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import polars as pl
from pydantic import Field

from recgpt.data.split import LeakageError, Split
from recgpt.retrieval.index import ItemIndex
from recgpt.serendipity.candidates import (
    CandidateConfig,
    Catalogue,
    RuleConfig,
    generate_for,
    unexpected_mask,
)

LISTS_SCHEMA: dict[str, pl.DataType] = {
    "list_id": pl.String(),
    "user_id": pl.String(),
    "part": pl.String(),
    "asof_ts": pl.Int64(),
    "item_ids": pl.List(pl.String()),
    "labels": pl.List(pl.Int8()),
    "label_source": pl.List(pl.String()),
}


class LabelConfig(RuleConfig):
    """How log labels and lists are made (module docstring; the unexpectedness fields are `RuleConfig`'s)."""

    list_size: int = Field(default=10, ge=2, description="items per list: 1 positive + negatives")
    train_users: int | None = Field(default=None, ge=1, description="most train lists (None: all)")
    cuts_per_user: int = Field(default=1, ge=1, description="train lists: cuts per user, newest first")
    min_history: int = Field(default=1, ge=1, description="train lists: history items before the cut")
    seed: int = 0

    def candidates(self, base: CandidateConfig | None = None) -> CandidateConfig:
        """The candidate config for negatives: `base` (or defaults) with this config's rule and size."""
        base = base or CandidateConfig()
        return base.model_copy(update={**self.rule_only().model_dump(), "size": self.list_size - 1})


@dataclass
class LabelStats:
    """What labelling one part found: users considered, unexpected futures, lists made, short lists."""

    part: str
    users: int = 0
    unexpected: int = 0
    lists: int = 0
    short: int = 0  # serendipitous future but fewer than list_size - 1 negatives

    @property
    def share_unexpected(self) -> float:
        """Share of considered users whose future item is unexpected (engaged by definition)."""
        return self.unexpected / self.users if self.users else 0.0

    def as_dict(self) -> dict[str, float | int | str]:
        return {**asdict(self), "share_unexpected": round(self.share_unexpected, 4)}


def is_unexpected(item: int, history: np.ndarray, catalogue: Catalogue, cfg: RuleConfig) -> bool:
    """Whether item index `item` is unexpected against `history` (indices before the point) under `cfg`.

    An item already in the history is never unexpected (a re-purchase is no discovery).
    """
    if int(item) in set(np.asarray(history).tolist()):
        return False
    ok, _ = unexpected_mask(np.asarray([item]), history, catalogue.vectors, catalogue.categories, cfg)
    return bool(ok[0])


def _list_seed(seed: int, list_id: str) -> int:
    """A per-list seed independent of which other lists are made."""
    return int.from_bytes(hashlib.sha256(f"{seed}|{list_id}".encode()).digest()[:8], "little")


def _make_lists(
    part: str,
    cfg: LabelConfig,
    catalogue: Catalogue,
    list_ids: Sequence[str],
    users: Sequence[str],
    histories: Sequence[np.ndarray],
    futures: Sequence[int],
    points: Sequence[int],
    engaged: Sequence[np.ndarray],
    candidates: CandidateConfig | None,
    stats: LabelStats,
    limit: int | None = None,
) -> pl.DataFrame:
    """Lists for the users whose future item is serendipitous (shared by both parts)."""
    keep = [
        k
        for k, (h, f) in enumerate(zip(histories, futures, strict=True))
        if is_unexpected(f, h, catalogue, cfg)
    ]
    stats.users += len(users)
    stats.unexpected += len(keep)
    ccfg = cfg.candidates(candidates)
    index = ItemIndex.build(catalogue.vectors)
    rows: list[dict[str, object]] = []
    step = max(64, (limit or 0) * 2)
    for start in range(0, len(keep), step):  # in chunks, so a `limit` stops generating early
        chunk = keep[start : start + step]
        cands = generate_for(
            ccfg,
            catalogue,
            [histories[k] for k in chunk],
            [users[k] for k in chunk],
            cfg.seed,
            exclude=[np.append(engaged[k], futures[k]) for k in chunk],
            index=index,
        )
        by_user = {u[0]: g["item_id"].to_list() for u, g in cands.group_by("user_id")}
        for k in chunk:
            user = users[k]
            negs = by_user.get(user, [])
            if len(negs) < cfg.list_size - 1:
                stats.short += 1
                continue
            items = [str(catalogue.item_ids[futures[k]]), *negs[: cfg.list_size - 1]]
            labels = [1] + [0] * (cfg.list_size - 1)
            order = list(range(len(items)))
            random.Random(_list_seed(cfg.seed, list_ids[k])).shuffle(order)
            rows.append(
                {
                    "list_id": list_ids[k],
                    "user_id": user,
                    "part": part,
                    "asof_ts": int(points[k]),
                    "item_ids": [items[i] for i in order],
                    "labels": [labels[i] for i in order],
                    "label_source": ["log"] * len(items),
                }
            )
            if limit is not None and len(rows) >= limit:
                break
        if limit is not None and len(rows) >= limit:
            break
    stats.lists = len(rows)
    return pl.DataFrame(rows, schema=LISTS_SCHEMA)


def eval_lists(
    cfg: LabelConfig,
    split: Split,
    catalogue: Catalogue,
    users: Sequence[str] | None = None,
    *,
    candidates: CandidateConfig | None = None,
) -> tuple[pl.DataFrame, LabelStats]:
    """(LISTS part 'eval', stats) for the test users `users` (default: all); module docstring."""
    task = split.test
    pos = {u: i for i, u in enumerate(task.user_ids)}
    wanted = list(task.user_ids) if users is None else list(users)
    missing = [u for u in wanted if u not in pos]
    if missing:
        raise ValueError(f"users not in the test task: {missing[:5]}")
    wanted = [u for u in wanted if len(task.targets[pos[u]])]
    ev = split.dataset.events.filter(pl.col("item_id").is_not_null() & pl.col("user_id").is_in(wanted))
    ever: dict[str, np.ndarray] = {
        u[0]: np.asarray([split.item_pos[i] for i in g["item_id"].to_list()], dtype=np.int64)
        for u, g in ev.group_by("user_id")
    }
    stats = LabelStats("eval")
    lists = _make_lists(
        "eval",
        cfg,
        catalogue,
        [f"eval-{u}" for u in wanted],
        wanted,
        [task.histories[pos[u]] for u in wanted],
        [int(task.targets[pos[u]][0]) for u in wanted],
        [task.asof.point(u)[0] for u in wanted],
        [ever.get(u, np.zeros(0, dtype=np.int64)) for u in wanted],
        candidates,
        stats,
    )
    return lists, stats


def train_cuts(
    split: Split, exclude_users: Collection[str] = (), min_history: int = 1, per_user: int = 1
) -> pl.DataFrame:
    """Cuts of the train users' (not in `exclude_users`) train-split sequences, newest first.

    Cut j of a user: the train item at position j is the future, items before it the history. The
    `per_user` newest positions with at least `min_history` items before them are cut. Columns:
    list_id ('train-<user>-<j>'), user_id, history (item indices, oldest first), future (item index),
    asof_ts (the future event's timestamp). Only the train split's events are read.
    """
    tr = split.train
    bounds = np.searchsorted(tr.user_idx, np.arange(tr.n_users + 1))
    gone = set(exclude_users)
    rows = []
    for u in range(tr.n_users):
        lo, hi = int(bounds[u]), int(bounds[u + 1])
        user = str(split.user_ids[u])
        if user in gone:
            continue
        for j in range(hi - lo - 1, max(min_history, hi - lo - per_user) - 1, -1):
            rows.append(
                {
                    "list_id": f"train-{user}-{j}",
                    "user_id": user,
                    "history": tr.item_idx[lo : lo + j].tolist(),
                    "future": int(tr.item_idx[lo + j]),
                    "asof_ts": int(tr.timestamp[lo + j]),
                }
            )
    schema = {
        "list_id": pl.String(),
        "user_id": pl.String(),
        "history": pl.List(pl.Int64()),
        "future": pl.Int64(),
        "asof_ts": pl.Int64(),
    }
    return pl.DataFrame(rows, schema=schema)


def train_lists(
    cfg: LabelConfig,
    split: Split,
    catalogue: Catalogue,
    exclude_users: Collection[str] = (),
    *,
    candidates: CandidateConfig | None = None,
) -> tuple[pl.DataFrame, LabelStats]:
    """(LISTS part 'train', stats): at most `cfg.train_users` lists from train users (module docstring).

    Cuts are visited in a seeded order, so the cap picks a seeded sample of the cuts that qualify.
    Negatives never include an item of the user's whole train sequence (before or after the cut).
    """
    cuts = train_cuts(split, exclude_users, cfg.min_history, cfg.cuts_per_user)
    order = list(range(cuts.height))
    random.Random(cfg.seed).shuffle(order)
    cuts = cuts[order] if order else cuts
    users = cuts["user_id"].to_list()
    histories = [np.asarray(h, dtype=np.int64) for h in cuts["history"].to_list()]
    train_seq = split.train.sequences
    split_pos = {str(u): i for i, u in enumerate(split.user_ids)}
    futures = cuts["future"].to_list()
    stats = LabelStats("train")
    lists = _make_lists(
        "train",
        cfg,
        catalogue,
        cuts["list_id"].to_list(),
        users,
        histories,
        futures,
        cuts["asof_ts"].to_list(),
        [train_seq[split_pos[u]] for u in users],
        candidates,
        stats,
        limit=cfg.train_users,
    )
    return lists, stats


def guard_lists(split: Split, lists: pl.DataFrame) -> int:
    """Raise `LeakageError` if a list was built from the wrong side of its user's split point.

    Eval lists must sit at the user's test point; train lists strictly before the user's validation
    point (users without one: anywhere in their train events), with their log positive a train-split
    event of that user at `asof_ts`. Returns the number of lists checked.
    """
    train = split.train_events.filter(pl.col("item_id").is_not_null())
    train_pairs = {(u, i, t) for u, i, t in train.select("user_id", "item_id", "timestamp").iter_rows()}
    for row in lists.iter_rows(named=True):
        user, ts = row["user_id"], row["asof_ts"]
        if row["part"] == "eval":
            if not split.test.asof.has_point(user) or split.test.asof.point(user)[0] != ts:
                raise LeakageError(f"list {row['list_id']}: eval list of {user!r} is not at their test point")
            continue
        if split.valid.asof.has_point(user) and ts > split.valid.asof.point(user)[0]:
            raise LeakageError(
                f"list {row['list_id']}: train list of {user!r} reaches past their validation point"
            )
        for item, label, source in zip(row["item_ids"], row["labels"], row["label_source"], strict=True):
            if label == 1 and source == "log" and (user, item, ts) not in train_pairs:
                raise LeakageError(
                    f"list {row['list_id']}: the positive {item!r} is not a train-split event of {user!r} at {ts}"
                )
    return lists.height


__all__ = [
    "LISTS_SCHEMA",
    "LabelConfig",
    "LabelStats",
    "eval_lists",
    "guard_lists",
    "is_unexpected",
    "train_cuts",
    "train_lists",
]
