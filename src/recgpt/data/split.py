"""Leakage-safe evaluation splits and the AsOf view.

Every evaluation target is an event at a *split point* (timestamp, event_id). The `AsOf` view is the
only way to see a user's past when building anything for that user: it returns events strictly
before the user's split point in the one chronological order `(timestamp, event_id)`. Anything that
can prove what it was built from (event ids) is checked with `AsOf.guard`, and text built for a user
can be checked against held-out item titles with `Split.guard_text`.

Protocols:
- ``loo``: temporal leave-one-out per user over target events (last = test, second-last = validation,
  the rest and every earlier non-target event = train). Users with fewer than 3 target events are
  not evaluated; all their events train. As in the literature, LOO does not align users on one global
  clock: another user's training events may be later than this user's test event.
- ``cutoff``: one global clock. Train = events before ``valid_cutoff``; validation targets = target
  events in [valid_cutoff, test_cutoff) of users with earlier history; test targets = target events
  at or after ``test_cutoff`` of users with earlier history. Cut-offs default to the 80% / 90%
  quantiles of event time.
"""

from __future__ import annotations

import random
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import polars as pl

from recgpt.data.dataset import Dataset
from recgpt.data.interactions import Interactions

POINT_SCHEMA = {"user_id": pl.String(), "point_ts": pl.Int64(), "point_eid": pl.Int64()}


class LeakageError(AssertionError):
    """Something built for a user saw data at or after that user's split point."""


@dataclass(frozen=True)
class SplitConfig:
    """How to split. `target_behaviors` = which item events can be held out (None: any)."""

    kind: Literal["loo", "cutoff"] = "loo"
    # None: every item event except annotations (tags), which follow a consumption rather than being one
    target_behaviors: tuple[str, ...] | None = None
    non_target_behaviors: tuple[str, ...] = ("tag",)
    valid_cutoff: int | None = None  # epoch seconds, cutoff only
    test_cutoff: int | None = None
    valid_quantile: float = 0.8
    test_quantile: float = 0.9


def _before(points: pl.DataFrame) -> pl.Expr:
    return (pl.col("timestamp") < pl.col("point_ts")) | (
        (pl.col("timestamp") == pl.col("point_ts")) & (pl.col("event_id") < pl.col("point_eid"))
    )


class AsOf:
    """A user's history strictly before their split point: the one door to a user's past."""

    def __init__(self, events: pl.DataFrame, points: pl.DataFrame) -> None:
        self._points = points.select(list(POINT_SCHEMA)).cast(POINT_SCHEMA)
        joined = events.join(self._points, on="user_id", how="inner")
        self._events = joined.filter(_before(self._points)).drop("point_ts", "point_eid")
        self._by_user: dict[str, pl.DataFrame] | None = None
        self._point_of = {r[0]: (r[1], r[2]) for r in self._points.iter_rows()}

    @property
    def user_ids(self) -> list[str]:
        """Users this view has a split point for, in point order."""
        return self._points["user_id"].to_list()

    def has_point(self, user_id: str) -> bool:
        """Whether this view has a split point for the user."""
        return user_id in self._point_of

    def point(self, user_id: str) -> tuple[int, int]:
        """(timestamp, event_id) of the user's split point."""
        return self._point_of[user_id]

    def events(self) -> pl.DataFrame:
        """All visible events of all users (every behaviour), in chronological order."""
        return self._events

    def history(self, user_id: str) -> pl.DataFrame:
        """One user's visible events (every behaviour, searches included), oldest first."""
        if self._by_user is None:
            self._by_user = {k[0]: v for k, v in self._events.partition_by("user_id", as_dict=True).items()}
        if user_id not in self._point_of:
            raise KeyError(f"user {user_id!r} has no split point in this view")
        return self._by_user.get(user_id, self._events.clear())

    def item_sequences(self, item_pos: dict[str, int], which: pl.Expr | None = None) -> list[np.ndarray]:
        """Chronological item-index sequences, one per user in `user_ids` order.

        `which` selects the events that count as interactions (default: every item event).
        """
        ev = self._events.filter(pl.col("item_id").is_not_null() if which is None else which)
        idx = np.fromiter((item_pos[i] for i in ev["item_id"]), dtype=np.int64, count=ev.height)
        users = ev["user_id"].to_list()
        seqs: dict[str, list[int]] = {}
        for u, i in zip(users, idx, strict=True):
            seqs.setdefault(u, []).append(int(i))
        return [np.asarray(seqs.get(u, []), dtype=np.int64) for u in self.user_ids]

    def guard(self, user_id: str, used: pl.DataFrame | Iterable[tuple[int, int]]) -> None:
        """Raise `LeakageError` if any used event (timestamp, event_id) is not strictly before the point."""
        ts, eid = self.point(user_id)
        rows = used.select("timestamp", "event_id").iter_rows() if isinstance(used, pl.DataFrame) else used
        for t, e in rows:
            if (t, e) >= (ts, eid):
                raise LeakageError(
                    f"user {user_id!r}: event {e} at {t} is at or after the split point (event {eid} at {ts})"
                )


@dataclass
class EvalTask:
    """One evaluation step (validation or test): users, their as-of histories and held-out items."""

    name: str
    user_ids: list[str]
    user_idx: np.ndarray
    asof: AsOf
    histories: list[np.ndarray]
    targets: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.user_ids)


@dataclass
class Split:
    """A dataset split: integer vocabularies, training interactions and the two evaluation tasks."""

    config: SplitConfig
    dataset: Dataset
    item_ids: np.ndarray
    user_ids: np.ndarray
    train_events: pl.DataFrame
    train: Interactions
    valid: EvalTask
    test: EvalTask
    item_pos: dict[str, int] = field(repr=False, default_factory=dict)

    def heldout_item_ids(self, user_id: str) -> set[str]:
        """Items the user engages with at or after their validation point (never visible to builders)."""
        view = self.valid.asof if self.valid.asof.has_point(user_id) else self.test.asof
        ts, eid = view.point(user_id)
        ev = self.dataset.events.filter(
            (pl.col("user_id") == user_id)
            & ((pl.col("timestamp") > ts) | ((pl.col("timestamp") == ts) & (pl.col("event_id") >= eid)))
            & pl.col("item_id").is_not_null()
        )
        return set(ev["item_id"].to_list())

    def guard_text(
        self,
        user_id: str,
        text: str,
        task: EvalTask,
        aliases: Mapping[str, Iterable[str]] | None = None,
    ) -> None:
        """Raise `LeakageError` if `text` names an item the user only meets at or after the task's point.

        An item is "named" by its title (8+ characters, case-insensitive), by any of its `aliases`
        (e.g. the compressed item text a stage actually wrote), or by its id as a whole word when the
        id is not purely numeric (numeric ids such as "95" would match years and counts). Items the
        user had already engaged with before the point may legitimately appear.
        """
        hist = task.asof.history(user_id)
        seen = set(hist["item_id"].drop_nulls().to_list())
        ts, eid = task.asof.point(user_id)
        future = self.dataset.events.filter(
            (pl.col("user_id") == user_id)
            & ((pl.col("timestamp") > ts) | ((pl.col("timestamp") == ts) & (pl.col("event_id") >= eid)))
        )["item_id"].drop_nulls()
        leaked = set(future.to_list()) - seen
        if not leaked:
            return
        titles = self.dataset.items.filter(pl.col("item_id").is_in(list(leaked)))
        low = text.lower()
        for iid, title in titles.select("item_id", "title").iter_rows():
            names = [title, *((aliases or {}).get(iid, ()))]
            by_name = any(n and len(n) >= 8 and n.lower() in low for n in names)
            by_id = not iid.isdigit() and re.search(rf"(?<!\w){re.escape(iid)}(?!\w)", text) is not None
            if by_name or by_id:
                raise LeakageError(f"user {user_id!r}: held-out item {iid!r} ({title!r}) reached built text")


def make_split(dataset: Dataset, config: SplitConfig | None = None) -> Split:
    """Split a dataset for evaluation (see the module docstring for the protocols)."""
    config = config or SplitConfig()
    events = dataset.events
    item_ids = dataset.items["item_id"].to_numpy().astype(str)
    item_pos = {iid: i for i, iid in enumerate(item_ids)}
    is_target = pl.col("item_id").is_not_null()
    if config.target_behaviors:
        is_target = is_target & pl.col("behavior").is_in(list(config.target_behaviors))
    else:
        is_target = is_target & ~pl.col("behavior").is_in(list(config.non_target_behaviors))
    targets = events.filter(is_target)

    if config.kind == "loo":
        ranked = targets.with_columns(
            pl.int_range(pl.len()).reverse().over("user_id").alias("_from_end"),
            pl.len().over("user_id").alias("_n"),
        ).filter(pl.col("_n") >= 3)
        test_t = ranked.filter(pl.col("_from_end") == 0)
        valid_t = ranked.filter(pl.col("_from_end") == 1)
        test_points = test_t.select("user_id", point_ts="timestamp", point_eid="event_id")
        valid_points = valid_t.select("user_id", point_ts="timestamp", point_eid="event_id")
        test_targets = {u: [i] for u, i in test_t.select("user_id", "item_id").iter_rows()}
        valid_targets = {u: [i] for u, i in valid_t.select("user_id", "item_id").iter_rows()}
        # train: evaluated users' events before their validation point, everyone else's events
        train_points = pl.concat(
            [
                valid_points,
                events.select("user_id")
                .unique()
                .join(valid_points, on="user_id", how="anti")
                .with_columns(
                    pl.lit(np.iinfo(np.int64).max, dtype=pl.Int64).alias("point_ts"),
                    pl.lit(0, dtype=pl.Int64).alias("point_eid"),
                ),
            ],
            how="vertical_relaxed",
        ).cast(POINT_SCHEMA)
    elif config.kind == "cutoff":
        ts = events["timestamp"]
        t_valid = (
            config.valid_cutoff
            if config.valid_cutoff is not None
            else int(ts.quantile(config.valid_quantile))
        )
        t_test = (
            config.test_cutoff if config.test_cutoff is not None else int(ts.quantile(config.test_quantile))
        )
        if not t_valid < t_test:
            raise ValueError(f"valid_cutoff ({t_valid}) must be before test_cutoff ({t_test})")
        users_before = {
            t: set(events.filter(pl.col("timestamp") < t)["user_id"].unique().to_list())
            for t in (t_valid, t_test)
        }

        def window(lo: int, hi: int | None) -> dict[str, list[str]]:
            w = targets.filter(
                (pl.col("timestamp") >= lo) & (pl.col("timestamp") < hi if hi else pl.lit(True))
            )
            out: dict[str, list[str]] = {}
            for u, i in w.select("user_id", "item_id").iter_rows():
                if u in users_before[lo]:
                    out.setdefault(u, []).append(i)
            return out

        valid_targets, test_targets = window(t_valid, t_test), window(t_test, None)

        def cut(users: Iterable[str], t: int) -> pl.DataFrame:
            us = sorted(users)
            return pl.DataFrame(
                {"user_id": us, "point_ts": [t] * len(us), "point_eid": [-1] * len(us)}, schema=POINT_SCHEMA
            )

        valid_points, test_points = cut(valid_targets, t_valid), cut(test_targets, t_test)
        train_points = cut(events["user_id"].unique().to_list(), t_valid)
    else:
        raise ValueError(f"unknown split kind {config.kind!r}; use 'loo' or 'cutoff'")

    user_ids = np.asarray(sorted(events["user_id"].unique().to_list()), dtype=str)
    user_pos = {u: i for i, u in enumerate(user_ids)}
    train_view = AsOf(events, train_points)
    train_events = train_view.events()
    tr = train_events.filter(is_target)
    train = Interactions(
        n_users=len(user_ids),
        n_items=len(item_ids),
        user_idx=np.fromiter((user_pos[u] for u in tr["user_id"]), dtype=np.int64, count=tr.height),
        item_idx=np.fromiter((item_pos[i] for i in tr["item_id"]), dtype=np.int64, count=tr.height),
        timestamp=tr["timestamp"].to_numpy().astype(np.int64),
        value=tr["value"].to_numpy().astype(np.float32) if tr["value"].is_not_null().any() else None,
        item_text=dataset.items["title"].to_list(),
    )

    def task(name: str, points: pl.DataFrame, tgt: dict[str, list[str]]) -> EvalTask:
        points = points.sort("user_id")
        view = AsOf(events, points)
        return EvalTask(
            name=name,
            user_ids=view.user_ids,
            user_idx=np.asarray([user_pos[u] for u in view.user_ids], dtype=np.int64),
            asof=view,
            histories=view.item_sequences(item_pos, is_target),
            targets=[np.asarray([item_pos[i] for i in tgt[u]], dtype=np.int64) for u in view.user_ids],
        )

    return Split(
        config=config,
        dataset=dataset,
        item_ids=item_ids,
        user_ids=user_ids,
        train_events=train_events,
        train=train,
        valid=task("valid", valid_points, valid_targets),
        test=task("test", test_points, test_targets),
        item_pos=item_pos,
    )


def sample_users(task: EvalTask, n: int | None, seed: int, exclude: Collection[str] = ()) -> list[str]:
    """A seeded sample of a task's users, sorted (all of them when n is None or too large).

    `exclude` leaves users out before sampling: a tuning sample of validation users drawn disjoint
    from the test sample, so the users a figure is reported on never shaped a tuned choice.
    """
    gone = set(exclude)
    ids = [u for u in task.user_ids if u not in gone]
    if n is None or n >= len(ids):
        return ids
    return sorted(random.Random(seed).sample(ids, n))


def subtask(task: EvalTask, events: pl.DataFrame, users: Sequence[str]) -> EvalTask:
    """The task restricted to `users` (same split points, histories and targets)."""
    pos = {u: i for i, u in enumerate(task.user_ids)}
    missing = [u for u in users if u not in pos]
    if missing:
        raise ValueError(f"users not in the {task.name} task: {missing[:5]}")
    idx = [pos[u] for u in users]
    points = pl.DataFrame(
        {
            "user_id": list(users),
            "point_ts": [task.asof.point(u)[0] for u in users],
            "point_eid": [task.asof.point(u)[1] for u in users],
        },
        schema={"user_id": pl.String(), "point_ts": pl.Int64(), "point_eid": pl.Int64()},
    )
    return EvalTask(
        name=task.name,
        user_ids=list(users),
        user_idx=task.user_idx[idx],
        asof=AsOf(events, points),
        histories=[task.histories[i] for i in idx],
        targets=[task.targets[i] for i in idx],
    )
