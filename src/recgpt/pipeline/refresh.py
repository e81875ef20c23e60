"""Nearline refresh of one user of a finished RecGPT run: new events in, the user's new final list out.

The serving worker (`recgpt.serving.worker`) calls `refresh(user_id, events)` when a user's events
arrive. It runs RecGPT's per-user chain on the user's fresh history with the run's own parts and
settings, through the same functions the stages call (`recgpt.pipeline.steps`, `explain`):

compression (B_u) -> interest pool match (I_m) -> LLM_UI interests -> LLM_IT tags -> tri-tower
retrieval (the run's `06_tritower` model and index) -> fusion with the run's classic channel (the
model the tune stage fitted, `07_tune/models`) at the run's share -> explanations.

- History: serving sees everything, so the history is every dataset event of the user (the events
  the evaluation held out included) plus the user's store events (deduplicated by `event_id`; an
  event whose item is not in the catalogue is skipped and counted). A refreshed list is never read
  by an evaluation. `sees_heldout=False` keeps the run's as-of view instead (its held-out events
  stay hidden): with no new events the refresh then reproduces the run's served list, which is how
  the tests prove the refresher runs the run's code path.
- LLM: the interests and tags prompts go through the run's LLM cache (`llm-cache.sqlite`), so a
  prompt already answered, by the run or an earlier refresh, never calls the model again.
- Explanations come from the run's offline table (`10_explanations/explanations`, as the paper
  serves them); a pair the table lacks gets the stage's rule-based pair text (`template:pair`), an
  item no interest matches the item-only text. The refresh never asks LLM_RE: that stays offline.
- Classic channel: the fitted model scores the new history (ItemKNN, Markov, SASRec, MostPop and ALS
  fold it in; BPR keeps its fitted factor for a user it was trained on, newly seen items masked).

Per-step seconds and the model calls of the last refresh are in `last_timings`.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
import polars as pl

from recgpt.data.runstore import RunNotFinished, RunStore
from recgpt.data.split import AsOf, EvalTask
from recgpt.pipeline import steps
from recgpt.pipeline.config import RunConfig
from recgpt.pipeline.resources import Resources
from recgpt.serving.models import Item
from recgpt.serving.service import NotARun, ServingError, UnknownUser, recommendation

NEEDED = (
    "split",
    "compress",
    "pool",
    "interests",
    "tags",
    "tritower",
    "candidates",
    "tune",
    "fusion",
    "explanations",
)
HISTORY_ONLY_BASELINES = frozenset({"bpr"})  # score a known user by the fitted factor, not the history
NOT_IN_TABLE = "the pair is not in the run's explanation table"


class Refresher(Protocol):
    """What the serving worker calls (`recgpt.serving.worker.Refresher`)."""

    def refresh(self, user_id: str, events: list[dict[str, Any]]) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class RefreshTimings:
    """One refresh: store events applied and skipped, seconds per step, model calls (cache misses)."""

    user_id: str
    new_events: int
    skipped_unknown_items: int
    history_events: int
    steps: dict[str, float] = field(default_factory=dict)
    total_s: float = 0.0
    llm_calls: int = 0
    classic_uses_history: bool = True

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def is_seral(config: dict[str, Any]) -> bool:
    """Whether a run's config.json is a SERAL run's (its own sections; RecGPT configs have none)."""
    return config.get("pipeline") == "seral" or "seren" in config


class RecGPTRefresher:
    """Refreshes one user of a finished RecGPT run at a time (module docstring); thread-safe (serialised).

    `backend` replaces the run's LLM backend (tests, `--llm`), `encoder` its sentence encoder (tests);
    the run's tables, models and settings are loaded once, here.
    """

    def __init__(
        self,
        run_dir: str | Path,
        *,
        backend: Any = None,
        encoder: Any = None,
        sees_heldout: bool = True,
    ) -> None:
        from recgpt.datasets import load_dataset
        from recgpt.intent.explanation_table import ExplanationTable

        store, config = _open(run_dir)
        if is_seral(config):
            raise ServingError(f"{store.run_dir} is a SERAL run; RecGPTRefresher refreshes RecGPT runs")
        if missing := [s for s in NEEDED if store.marker(s) is None]:
            raise NotARun(f"{store.run_dir}: stage(s) {missing} not finished; finish the run first")
        self.run_dir, self.sees_heldout = store.run_dir, sees_heldout
        self.cfg = cfg = RunConfig.model_validate(config)
        self.res = res = Resources(cfg, load_dataset(cfg.dataset), store, backend=backend, encoder=encoder)
        split = res.split
        self._user_pos = {str(u): i for i, u in enumerate(split.user_ids.tolist())}
        self._compressor = res.compressor(cfg.compression, cfg.tokenizer)
        self._pool = steps.interest_pool(res, cfg)
        self._tower = steps.load_tritower(store.dir("tritower"), res, cfg)
        tuned = store.read_stats("tune")
        self._classic = steps.classic_channel(store.dir("tune"), tuned, split.train, cfg.seed)
        self._share = float(tuned["share"])
        self.classic_uses_history = tuned["baseline"] not in HISTORY_ONLY_BASELINES
        self._phi = res.phi(cfg.phi, cfg.embedder)
        table = store.read("explanations", "explanations")
        items = res.dataset.items
        self._known_pairs = set(table.select("interest", "item_id").iter_rows())
        self._table = ExplanationTable(
            table, items, cfg.explanations, popularity=res.popularity, untrusted=res.untrusted
        )
        self._items = {r[0]: r for r in items.select("item_id", "title", "categories").iter_rows()}
        self._events = res.dataset.events
        for stage in ("interests", "tags"):  # the model loads now, not on the first request's refresh
            res.engine(stage)
        self._lock = threading.Lock()
        self.last_timings: RefreshTimings | None = None
        self.last_tables: dict[str, pl.DataFrame] = {}  # the last refresh's interests and tags

    # ------------------------------------------------------------------ the refresh

    def refresh(self, user_id: str, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The user's new final list (`Recommendation` dicts, rank order, `fusion.k` long) from the
        run's data for the user plus `events` (the user's store events, all of them)."""
        return self.timed_refresh(user_id, events)[0]

    def timed_refresh(
        self, user_id: str, events: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], RefreshTimings]:
        """`refresh` and its timings together (`last_timings` may be another thread's by the time it is read)."""
        with self._lock:
            return self._refresh(str(user_id), events)

    def _refresh(
        self, user: str, events: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], RefreshTimings]:
        from recgpt.intent.context import build_contexts
        from recgpt.pipeline.explain import explanation_pairs, serve_slots
        from recgpt.pipeline.tables import StoredCandidates
        from recgpt.retrieval.channel import FusedChannel, RecGPTChannel

        res, cfg = self.res, self.cfg
        clock = _Clock()
        calls = res.model_calls()
        history, new, skipped = self._history(user, events)
        task = self._task(user, history, new)
        clock.lap("events")
        compressed = self._compressor.compress_many(task.asof, [user])[0]
        clock.lap("compress")
        matches = self._pool.match(task.asof, [user])
        contexts = build_contexts(
            task, res.dataset, [user], histories={user: compressed.text}, pool_matches=matches
        )
        clock.lap("pool")
        interests, _ = steps.mine(res, cfg, res.engine("interests"), contexts)
        clock.lap("interests")
        tags, _ = steps.tag(res, cfg, res.engine("tags"), contexts, interests)
        clock.lap("tags")
        model, index = self._tower
        channel = RecGPTChannel(model, index, tags, context=task.asof.events(), **asdict(cfg.fusion))
        candidates = channel.candidates(task.user_idx, task.histories)
        clock.lap("candidates")
        stored = StoredCandidates(candidates, res.split)
        fused = FusedChannel(self._classic, cast(Any, stored), share=self._share, k=cfg.fusion.k)
        lists = fused.candidates(task.user_idx, task.histories)
        clock.lap("fusion")
        top = lists.filter(pl.col("rank") <= cfg.explain_top).sort("user_id", "rank")
        slots = explanation_pairs(cfg.explanations, self._phi, top, interests)
        served = serve_slots(_TableOrTemplate(self, slots), top, slots)
        out = _recommendations(lists, served, self._items)
        clock.lap("explanations")
        self.last_tables = {"interests": interests, "tags": tags}
        self.last_timings = RefreshTimings(
            user_id=user,
            new_events=new,
            skipped_unknown_items=skipped,
            history_events=history.height,
            steps=clock.laps,
            total_s=round(clock.total(), 4),
            llm_calls=res.model_calls() - calls,
            classic_uses_history=self.classic_uses_history,
        )
        return out, self.last_timings

    def _history(self, user: str, events: Sequence[dict[str, Any]]) -> tuple[pl.DataFrame, int, int]:
        """(the user's events, how many store events are new to it, how many were skipped: unknown item).

        A store event the dataset already holds for the user (same `event_id`, item and timestamp: a
        replayed event) is not counted twice; `ValueError` names a missing or malformed field."""
        if self.sees_heldout:
            base = self._events.filter(pl.col("user_id") == user)
        else:
            view = self.res.base_task.asof
            base = (
                view.history(user) if view.has_point(user) else self._events.filter(pl.col("user_id") == user)
            )
        rows = base.select("event_id", "item_id", "timestamp").iter_rows()
        known, pos = {eid: (iid, ts) for eid, iid, ts in rows}, self.res.split.item_pos
        fresh: dict[int, dict[str, Any]] = {}
        skipped = 0
        for n, e in enumerate(events):
            row = _event(n, e, user)
            eid = row["event_id"]
            if known.get(eid) == (row["item_id"], row["timestamp"]) or eid in fresh:
                continue
            if row["item_id"] is not None and row["item_id"] not in pos:
                skipped += 1
                continue
            fresh[eid] = {c: row.get(c) for c in base.columns}
        if not fresh:
            return base, 0, skipped
        added = pl.DataFrame(list(fresh.values()), schema=base.schema)
        return pl.concat([base, added]).sort("timestamp", "event_id"), len(fresh), skipped

    def _task(self, user: str, history: pl.DataFrame, new: int) -> EvalTask:
        """A one-user task whose as-of view shows `history`: at the run's split point when nothing is
        new and the run's view is kept, else just past the user's newest event."""
        if user not in self._user_pos:
            raise UnknownUser(
                f"user {user!r} is not in the run's dataset: the tri-tower has no user vector for them"
            )
        run_view = self.res.base_task.asof
        if not self.sees_heldout and not new and run_view.has_point(user):
            point = run_view.point(user)
        else:
            point = (int(history["timestamp"].max() or 0) + 1, 0)  # type: ignore[operator]
        points = pl.DataFrame(
            {"user_id": [user], "point_ts": [point[0]], "point_eid": [point[1]]},
            schema={"user_id": pl.String(), "point_ts": pl.Int64(), "point_eid": pl.Int64()},
        )
        view = AsOf(history, points)
        return EvalTask(
            name="serving",
            user_ids=[user],
            user_idx=np.asarray([self._user_pos[user]], dtype=np.int64),
            asof=view,
            histories=view.item_sequences(self.res.split.item_pos, pl.col("item_id").is_not_null()),
            targets=[np.zeros(0, dtype=np.int64)],
        )

    def close(self) -> None:
        """Close the LLM engines (and their cache connections)."""
        self.res.close()


def _event(n: int, event: dict[str, Any], user: str) -> dict[str, Any]:
    """One store event checked field by field (`n`: its position), ids and item as strings."""
    for name in ("event_id", "behavior", "timestamp"):
        if event.get(name) is None:
            raise ValueError(f"event {n}: field {name!r} is missing")
    if str(event.get("user_id", user)) != user:
        raise ValueError(f"event {n}: field 'user_id' is {event.get('user_id')!r}, not the refreshed user")
    try:
        eid, ts = int(event["event_id"]), int(event["timestamp"])
    except (TypeError, ValueError):
        raise ValueError(f"event {n}: fields 'event_id' and 'timestamp' must be integers") from None
    item = event.get("item_id")
    return {
        **event,
        "event_id": eid,
        "timestamp": ts,
        "user_id": user,
        "item_id": None if item is None else str(item),
    }


class _TableOrTemplate:
    """The run's explanation table; a pair it lacks gets the stage's rule-based pair text (never LLM_RE)."""

    def __init__(self, refresher: RecGPTRefresher, slots: pl.DataFrame) -> None:
        from recgpt.intent.explanations import ExplanationsTask

        self.table = refresher._table
        missing = [
            (i, iid, cat)
            for i, iid, cat in slots.select("interest", "item_id", "category").iter_rows()
            if i is not None and (i, iid) not in refresher._known_pairs
        ]
        self.extra: dict[tuple[str, str], tuple[str, str]] = {}
        if missing:
            items = refresher.res.dataset.items
            cols = [c for c in ("item_id", "title", "brand", "categories") if c in items.columns]
            rows = items.filter(pl.col("item_id").is_in([m[1] for m in missing])).select(cols)
            meta = {r["item_id"]: r for r in rows.iter_rows(named=True)}
            task = ExplanationsTask(refresher.cfg.explanations, meta, refresher.res.untrusted)
            for pair in missing:
                row = task.fallback(pair, NOT_IN_TABLE)[0]
                self.extra[(pair[0], pair[1])] = (row["explanation"], row["source"])

    def serve(self, interests: Sequence[str | None], item_id: str) -> tuple[str, str]:
        for interest in interests:
            if interest is not None and (interest, item_id) in self.extra:
                return self.extra[(interest, item_id)]
        return self.table.serve(interests, item_id)


def _recommendations(
    lists: pl.DataFrame, served: pl.DataFrame, items: dict[str, tuple[Any, ...]]
) -> list[dict[str, Any]]:
    """The fused list joined with its explanations, as the service serves a run's list."""
    explained = served.select(
        "user_id", "rank", "item_id", "explained_interest", "explanation", "item_only", "source"
    )
    rows = lists.join(explained, on=["user_id", "rank", "item_id"], how="left").sort("rank")
    out = []
    for r in rows.iter_rows(named=True):
        _, title, cats = items.get(r["item_id"], (None, None, None))
        item = Item(item_id=r["item_id"], title=title, categories=list(cats or []))
        out.append(recommendation(r, item).model_dump(mode="json"))
    return out


class _Clock:
    """Seconds per named step since the previous lap."""

    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self.last, 4)
        self.last = now

    def total(self) -> float:
        return time.perf_counter() - self.start


def _open(run_dir: str | Path) -> tuple[RunStore, dict[str, Any]]:
    """The run folder's store and its config.json, or `NotARun` saying what is wrong."""
    try:
        store = RunStore.open(run_dir)
    except RunNotFinished as e:
        raise NotARun(str(e)) from None
    path = store.run_dir / "config.json"
    if not path.is_file():
        raise NotARun(f"{store.run_dir} is not a run folder (no config.json)")
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise NotARun(f"{path}: cannot read the run's config: {e}") from e
    if not isinstance(data, dict):
        raise NotARun(f"{path}: the run's config is not a JSON object")
    return store, data


def make_refresher(run_dir: str | Path, *, llm: str | None = None) -> Refresher:
    """The refresher of the run in `run_dir`, picked by its config: RecGPT runs get `RecGPTRefresher`.

    `llm` (a backend spec, e.g. "llamacpp") replaces the run's LLM. SERAL runs are refreshed by
    `recgpt nearline` (`recgpt.serendipity.nearline`), which does not serve a final list per user yet,
    so serving one is a clear error for now."""
    store, config = _open(run_dir)
    if is_seral(config):
        raise ServingError(
            f"{store.run_dir} is a SERAL run: serving SERAL runs is not supported yet "
            "(refresh its serendipity cache with `recgpt nearline --run DIR --events FILE`)"
        )
    backend = None
    if llm is not None:
        from recgpt.llm import make_backend

        backend = make_backend(llm, options=RunConfig.model_validate(config).llm.backend_options())
    return RecGPTRefresher(store.run_dir, backend=backend)


__all__ = ["RecGPTRefresher", "RefreshTimings", "Refresher", "is_seral", "make_refresher"]
