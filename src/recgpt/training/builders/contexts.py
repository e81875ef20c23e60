"""Leakage-safe (user, as-of) contexts from interaction logs: the shared input of the log builders.

1. **Users**: a seeded sample of users with enough training history, never one of `exclude_users`
   (pass the chain's evaluation users: `eval_users(split, n, seed)`). Only `split.train_events` is
   read, i.e. nothing at or after a user's validation point.
2. **As-of points** t (`select_points`): a timestamp of one of the user's target events with at least
   `min_history` reliable events strictly before it, whose window [t, t + window_days) holds enough
   distinct, balanced targets; up to `points_per_user` non-overlapping windows per user, picked at
   random (seeded). With a global `window=(start, end)` (incremental learning over "a new time
   window") the targets are the user's interactions in that window and t is the first one's time.
   A point is a timestamp: the history is every event strictly before t (events in the same second
   are never history), so a sample's `as_of` bounds everything its prompt shows.
3. **Context** (`tag_contexts`): `intent.context.build_contexts` over `AsOf(train_events, t)`, i.e.
   the compressed history, the matched interest pool and the attributes exactly as the chain builds
   them at serving time, from events strictly before t only. The prompt's interests are the top
   `n_interests` pool matches (as the chain's fallback does) or the history's top categories.
4. **Targets** come from events at/after t: the user's next items in the window that they had not
   engaged with before t, in time order (a catalogue duplicate of a seen item, e.g. ml-100k's two
   "Ulee's Gold (1997)", is not new: the prompt already names it). Each is linked to the interest that best matches it (an
   interest equal to one of its categories, else one its title contains, else embedding similarity).

`guard.guard_samples` re-checks every built table against these rules.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from recgpt.behavior import BehaviorCompressor, filter_reliable
from recgpt.data.dataset import Dataset
from recgpt.data.split import AsOf, EvalTask, Split
from recgpt.intent.context import UserContext, build_contexts, phrase_key
from recgpt.intent.pool import InterestPool, TextEncoder
from recgpt.training.builders.source import (
    VAGUE_WORDS,
    LogContext,
    LogsConfig,
    LogSource,
    Target,
    eval_users,
    matches,
    pick_tags,
    progress_bar,
)

DAY = 86_400
MAX_TRIES = 60  # as-of candidates tried per user before giving up on them


# ---------------------------------------------------------------- as-of points


def _target_mask(split: Split, events: pl.DataFrame, min_rating: float | None) -> pl.Series:
    cfg = split.config
    is_target = pl.col("item_id").is_not_null()
    if cfg.target_behaviors:
        is_target = is_target & pl.col("behavior").is_in(list(cfg.target_behaviors))
    else:
        is_target = is_target & ~pl.col("behavior").is_in(list(cfg.non_target_behaviors))
    if min_rating is not None:
        is_target = is_target & ((pl.col("behavior") != "rating") | (pl.col("value") >= min_rating))
    return events.select(is_target.fill_null(False).alias("t"))["t"]


@dataclass
class _UserLog:
    """One user's training events as arrays, for fast as-of scans."""

    ts: np.ndarray
    eid: np.ndarray
    items: list[str | None]
    is_target: np.ndarray
    rel_before_ts: dict[int, int]  # reliable events strictly before each distinct timestamp
    first_seen: dict[str, int]  # item -> timestamp it was first engaged


def _user_log(frame: pl.DataFrame, mask: pl.Series, reliable_ids: set[int]) -> _UserLog:
    ts = frame["timestamp"].to_numpy()
    eid = frame["event_id"].to_numpy()
    items = frame["item_id"].to_list()
    rel = np.fromiter((e in reliable_ids for e in eid), dtype=bool, count=len(eid))
    rel_before: dict[int, int] = {}
    n = 0
    for t, r in zip(ts.tolist(), rel.tolist(), strict=True):
        rel_before.setdefault(t, n)
        n += int(r)
    first: dict[str, int] = {}
    for t, i in zip(ts.tolist(), items, strict=True):
        if i is not None:
            first.setdefault(i, t)
    return _UserLog(ts, eid, items, mask.to_numpy(), rel_before, first)


def _window_targets(log: _UserLog, start: int, end: int) -> list[tuple[str, int, int]]:
    """(item, ts, event id) of the user's target events in [start, end) not engaged before `start`."""
    out: dict[str, tuple[str, int, int]] = {}
    lo, hi = np.searchsorted(log.ts, start, "left"), np.searchsorted(log.ts, end, "left")
    for k in range(lo, hi):
        item = log.items[k]
        if log.is_target[k] and item is not None and log.first_seen[item] >= start and item not in out:
            out[item] = (item, int(log.ts[k]), int(log.eid[k]))
    return list(out.values())


def select_points(
    src: LogSource,
    *,
    exclude_users: Collection[str] = (),
    window: tuple[int, int] | None = None,
    progress: bool = False,
) -> list[tuple[str, int, int]]:
    """(user, as_of, window end) of the sampled users' as-of points (module docstring), deterministic."""
    cfg, split = src.config, src.split
    if window is not None and not window[0] < window[1]:
        raise ValueError(f"window start must be before its end, got {window}")
    events = split.train_events
    excluded = set(exclude_users)
    need = cfg.tags.count
    mask = _target_mask(split, events, cfg.min_rating)
    counts = events.filter(mask).group_by("user_id").len()
    eligible = sorted(u for u, n in counts.iter_rows() if n >= need and u not in excluded)
    random.Random(cfg.seed).shuffle(eligible)
    reliable_ids = set(filter_reliable(events, cfg.compression.filter)["event_id"].to_list())
    frames = {
        k[0]: v
        for k, v in events.with_columns(mask.alias("_t")).partition_by("user_id", as_dict=True).items()
    }
    quota = len(eligible) if cfg.users is None else cfg.users
    out: list[tuple[str, int, int]] = []
    found = 0
    with progress_bar(progress, "choosing as-of points", quota) as advance:
        for u in eligible:
            if found >= quota:
                break
            frame = frames[u]
            log = _user_log(frame, frame["_t"], reliable_ids)
            points = _user_points(src, log, random.Random(f"{cfg.seed}|{u}"), window)
            if points:
                found += 1
                advance()
                out.extend((u, t, end) for t, end in points)
    return out


def _user_points(
    src: LogSource, log: _UserLog, rng: random.Random, window: tuple[int, int] | None
) -> list[tuple[int, int]]:
    cfg = src.config
    need = cfg.tags.count
    if window is not None:
        inside = log.ts[(log.ts >= window[0]) & (log.ts < window[1]) & log.is_target]
        if not len(inside):
            return []
        t = int(inside[0])
        ok = log.rel_before_ts[t] >= cfg.min_history
        items = [i for i, _, _ in _window_targets(log, t, window[1])]
        return [(t, window[1])] if ok and len(pick_tags(src, items, need)) == need else []
    stamps = sorted({int(t) for t, m in zip(log.ts, log.is_target, strict=True) if m})
    stamps = [t for t in stamps if log.rel_before_ts[t] >= cfg.min_history]
    rng.shuffle(stamps)
    chosen: list[tuple[int, int]] = []
    span = cfg.window_days * DAY
    for t in stamps[:MAX_TRIES]:
        if any(t < e and s < t + span for s, e in chosen):
            continue
        items = [i for i, _, _ in _window_targets(log, t, t + span)]
        if len(pick_tags(src, items, need)) == need:
            chosen.append((t, t + span))
            if len(chosen) == cfg.points_per_user:
                break
    return sorted(chosen)


# ---------------------------------------------------------------- contexts


def _history_categories(src: LogSource, seen: Collection[str], n: int) -> list[str]:
    counts: Counter[str] = Counter()
    for i in seen:
        counts.update(src.catalogue.categories(i))
    return [c for c, _ in sorted(counts.items(), key=lambda x: (-x[1], x[0]))[:n]]


def _link(
    src: LogSource, items: Sequence[str], interests: Sequence[tuple[int, str]]
) -> dict[str, tuple[int, bool]]:
    """item -> (interest id, matched): an interest equal to one of its categories (most specific wins),
    else one its title contains (matched), else the most similar by embedding (not matched)."""
    cat = src.catalogue
    keys = [(iid, phrase_key(name)) for iid, name in interests]
    out: dict[str, tuple[int, bool]] = {}
    rest = []
    for item in items:
        cats = [phrase_key(c) for c in reversed(cat.by_specificity(item))]
        hit = next((iid for c in cats for iid, k in keys if k == c), None)
        if hit is None:
            hit = next((iid for iid, name in interests if matches(src, name, item)), None)
        if hit is None:
            rest.append(item)
        else:
            out[item] = (hit, True)
    if rest:
        sims = src.pool.item_vectors(rest) @ np.asarray(src.pool.encoder.encode([n for _, n in interests])).T
        for item, row in zip(rest, sims, strict=True):
            out[item] = (interests[int(np.argmax(row))][0], False)
    return out


def tag_contexts(
    dataset: Dataset,
    split: Split,
    config: LogsConfig | None = None,
    *,
    encoder: TextEncoder | None = None,
    pool: InterestPool | None = None,
    compressor: BehaviorCompressor | None = None,
    exclude_users: Collection[str] = (),
    window: tuple[int, int] | None = None,
    progress: bool = True,
    source: LogSource | None = None,
) -> list[LogContext]:
    """The (user, as-of) contexts, prompt interests and linked next items the log builders use.

    Self-training asks the current model the same prompts (`tag_prompts(contexts)`); the targets
    stay available for tag HR. Deterministic given `config.seed`.
    """
    src = source or LogSource(dataset, split, config, encoder=encoder, pool=pool, compressor=compressor)
    cfg = src.config
    points = select_points(src, exclude_users=exclude_users, window=window, progress=progress)
    rounds: dict[int, list[tuple[str, int, int]]] = {}
    per_user: Counter[str] = Counter()
    for u, t, end in points:
        rounds.setdefault(per_user[u], []).append((u, t, end))
        per_user[u] += 1
    out: list[LogContext] = []
    top_n = max(cfg.n_interests, cfg.interests.pool_size)
    with progress_bar(progress, "building contexts", len(points)) as advance:
        for j in sorted(rounds):
            pts = rounds[j]
            users = [u for u, _, _ in pts]
            frame = pl.DataFrame(
                {"user_id": users, "point_ts": [t for _, t, _ in pts], "point_eid": [-1] * len(pts)},
                schema={"user_id": pl.String(), "point_ts": pl.Int64(), "point_eid": pl.Int64()},
            )
            view = AsOf(split.train_events, frame)
            task = EvalTask(
                name=f"train-asof-{j}",
                user_ids=users,
                user_idx=np.zeros(len(users), dtype=np.int64),
                asof=view,
                histories=[],
                targets=[],
            )
            matches = src.pool.match(view, users, top_n=top_n)
            ctxs = build_contexts(task, dataset, users, compressor=src.compressor, pool_matches=matches)
            for (u, t, end), ctx in zip(pts, ctxs, strict=True):
                hist = view.history(u)
                seen = frozenset(hist["item_id"].drop_nulls().to_list())
                lc = _context(src, ctx, seen, t, end, window)
                if lc is not None:
                    out.append(lc)
                advance()
    return out


def _context(
    src: LogSource, ctx: UserContext, seen: frozenset[str], t: int, end: int, window: tuple[int, int] | None
) -> LogContext | None:
    cfg = src.config
    names = list(ctx.pool[: cfg.n_interests]) if cfg.interests_from == "pool" else []
    if not names:
        names = _history_categories(src, seen, cfg.n_interests)
    if not names:
        return None
    interests = tuple((i, n) for i, n in enumerate(names, start=1))
    ev = src.split.train_events.filter(
        (pl.col("user_id") == ctx.user_id) & (pl.col("timestamp") >= t) & (pl.col("timestamp") < end)
    )
    ev = ev.filter(_target_mask(src.split, ev, cfg.min_rating))
    seen_names = [n for i in seen for n in src.catalogue.names(i)]
    rows: dict[str, tuple[int, int]] = {}
    for item, ts, eid in ev.select("item_id", "timestamp", "event_id").iter_rows():
        if item in seen or item in rows:
            continue
        if any(n in s for n in src.catalogue.names(item) for s in seen_names):
            continue  # a duplicate (or a name inside the name) of a seen item: the prompt names it already
        rows[item] = (int(ts), int(eid))
    links = _link(src, list(rows), interests) if rows else {}
    targets = tuple(Target(i, ts, eid, *links[i]) for i, (ts, eid) in rows.items())
    lineage = {
        "dataset": src.dataset.manifest.name,
        "fingerprint": src.fingerprint,
        "as_of": t,
        "window": [t, end],
        "global_window": list(window) if window else None,
        "seed": cfg.seed,
    }
    return LogContext(ctx, interests, targets, seen, (t, end), lineage)


__all__ = [
    "VAGUE_WORDS",
    "LogContext",
    "LogSource",
    "LogsConfig",
    "Target",
    "eval_users",
    "matches",
    "pick_tags",
    "progress_bar",
    "select_points",
    "tag_contexts",
]
