"""Nearline refresh: new events for a few users -> their profile, SerenGPT ranking and cache entry, now.

SERAL's serendipity channel is *nearline*: too slow for the request path, too important to wait for
the next batch run. `refresh(run_dir, events)` applies new events to a finished SERAL run and
refreshes only the users they belong to:

1. the events are read (CSV / Parquet / JSONL with user_id, item_id, timestamp, behavior) and
   validated: a malformed row stops everything with an error naming the file, the row (1-based) and
   the field; a row for an item not in the catalogue, or for a user this run does not serve (no
   cache entry), is *rejected* and reported, not applied;
2. the accepted events are appended to `RUN_DIR/nearline/events.parquet` (atomically; every refresh
   sees all earlier appended events);
3. for each affected user, one at a time (so the latency is per user): the profile is rebuilt with
   the AsOf point moved past the user's newest event, the serving candidates are regenerated from
   that history, SerenGPT re-ranks them and the user's CACHE rows are rewritten.

Nearline *serves*, it does not evaluate: a refreshed profile sees every event of the user, the ones
the evaluation held out included, so refreshed rows are never read by an evaluation. That is why
the serving state lives apart from the run's stage tables: `RUN_DIR/nearline/{profiles,candidates,
cache}.parquet` start as copies of `02_profiles`, `03_candidates` and `06_cache` and are rewritten
atomically, every other user's rows kept exactly (`cache.replace_users`); the stage tables, and so
the run's metrics and its resume keys, never change. `serving_table(run_dir, name)` reads the
current serving table (the nearline copy once there is one). Popularity for the candidate generator
is the whole log's (the run's stage used the train split's): serving may count everything.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from recgpt.data.atomic import write_parquet_atomic
from recgpt.data.errors import DataError
from recgpt.data.runstore import RunNotFinished, RunStore

NEARLINE = "nearline"
EVENT_COLUMNS = ("user_id", "item_id", "timestamp", "behavior")
SERVING = {
    "profiles": ("profiles", "profiles"),
    "candidates": ("candidates", "candidates"),
    "cache": ("cache", "cache"),
}
LOG = "refreshes.jsonl"


class EventsError(DataError):
    """A new-events file that cannot be applied: names the file, the row and the field."""


@dataclass(frozen=True)
class UserRefresh:
    """One user's refresh: events applied, seconds taken, profile versions before and after."""

    user_id: str
    events: int
    seconds: float
    profile_before: str
    profile_after: str
    cache_rows: int
    seren_source: str  # 'llm' when SerenGPT's answer was used, else 'fallback'


@dataclass(frozen=True)
class NearlineReport:
    """What a refresh did: accepted / rejected events, per-user refreshes (latency), where it wrote."""

    run_dir: Path
    source: str
    accepted: int
    rejected: list[dict[str, Any]]
    users: list[UserRefresh]
    wall_s: float
    files: dict[str, str] = field(default_factory=dict)

    def latency(self) -> dict[str, float]:
        """Per-user refresh seconds: mean, max and count."""
        s = [u.seconds for u in self.users]
        return {"users": len(s), "mean_s": float(np.mean(s)) if s else 0.0, "max_s": max(s, default=0.0)}

    def to_json(self) -> dict[str, Any]:
        return {
            "run_dir": str(self.run_dir),
            "source": self.source,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "users": [asdict(u) for u in self.users],
            "latency": self.latency(),
            "wall_s": round(self.wall_s, 3),
            "files": self.files,
        }


# ---------------------------------------------------------------- events in


def read_events(path: Path) -> pl.DataFrame:
    """New events from CSV, Parquet or JSONL (by suffix); an unreadable file is an `EventsError`."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return pl.read_csv(path, infer_schema_length=0)  # all strings: validated row by row below
        if suffix == ".parquet":
            return pl.read_parquet(path)
        if suffix in (".jsonl", ".ndjson"):
            return pl.read_ndjson(path)
    except (OSError, pl.exceptions.PolarsError) as e:
        raise EventsError(f"{path}: cannot read events: {e}") from e
    raise EventsError(f"{path}: events must be .csv, .parquet or .jsonl, got {suffix or 'no suffix'!r}")


def validate_events(df: pl.DataFrame, source: str) -> pl.DataFrame:
    """The events as (row, user_id, item_id, timestamp, behavior), checked field by field; `row` is the
    1-based data row of `source`. A missing column or a bad value is an `EventsError` naming both."""
    if missing := [c for c in EVENT_COLUMNS if c not in df.columns]:
        raise EventsError(f"{source}: missing column(s) {missing}; an event needs {list(EVENT_COLUMNS)}")
    rows = []
    for n, r in enumerate(df.select(EVENT_COLUMNS).iter_rows(named=True), start=1):
        for col in ("user_id", "item_id", "behavior"):
            v = r[col]
            if v is None or not str(v).strip():
                raise EventsError(f"{source}: row {n}, field {col!r}: empty")
            r[col] = str(v).strip()
        ts = r["timestamp"]
        try:
            r["timestamp"] = int(ts) if not isinstance(ts, float) or ts.is_integer() else None
        except (TypeError, ValueError):
            r["timestamp"] = None
        if r["timestamp"] is None or r["timestamp"] < 0:
            raise EventsError(
                f"{source}: row {n}, field 'timestamp': {ts!r} is not epoch seconds (an integer >= 0)"
            )
        rows.append({"row": n, **r})
    return pl.DataFrame(
        rows,
        schema={
            "row": pl.Int64(),
            "user_id": pl.String(),
            "item_id": pl.String(),
            "timestamp": pl.Int64(),
            "behavior": pl.String(),
        },
    )


def screen_events(
    events: pl.DataFrame, item_ids: set[str], served: set[str]
) -> tuple[pl.DataFrame, list[dict[str, Any]]]:
    """(accepted, rejected rows with a reason): unknown items and users without a cache entry are rejected."""
    rejected = []
    keep = []
    for r in events.iter_rows(named=True):
        reason = (
            "unknown item (not in the catalogue)"
            if r["item_id"] not in item_ids
            else "user not served by this run (no cache entry)"
            if r["user_id"] not in served
            else None
        )
        if reason:
            rejected.append(
                {"row": r["row"], "user_id": r["user_id"], "item_id": r["item_id"], "reason": reason}
            )
        else:
            keep.append(r["row"])
    return events.filter(pl.col("row").is_in(keep)), rejected


# ---------------------------------------------------------------- serving state


def serving_table(run_dir: Path, name: str) -> pl.DataFrame:
    """The current serving table `name` (profiles, candidates, cache): the nearline copy, else the stage's."""
    path = Path(run_dir) / NEARLINE / f"{name}.parquet"
    if path.exists():
        return pl.read_parquet(path)
    stage, table = SERVING[name]
    return RunStore.open(run_dir).read(stage, table)


def _engines(llm: dict[str, Any], run_dir: Path, backend: Any) -> dict[str, Any]:
    """One engine per SERAL LLM stage (profiles, seren), with the run's answer cache and one ledger."""
    from recgpt.llm import Ledger, LLMCache, LLMEngine, make_backend

    ledger = Ledger(f"{run_dir.name}-nearline")
    cache = LLMCache(llm.get("cache") or run_dir / "llm-cache.sqlite")
    options = {k: llm[k] for k in ("threads", "workers", "n_ctx") if k in llm}
    out: dict[str, Any] = {}
    by_spec: dict[str, Any] = {}
    for stage in ("profiles", "seren"):
        spec = (llm.get("stages") or {}).get(stage, llm.get("spec", "llamacpp"))
        if spec not in by_spec:
            by_spec[spec] = LLMEngine(
                backend if backend is not None else make_backend(spec, options=options),
                cache=cache,
                ledger=ledger,
                max_retries=int(llm.get("max_retries", 1)),
                chunk_size=int(llm.get("chunk_size", 16)),
                max_tokens_growth=float(llm.get("max_tokens_growth", 2.0)),
            )
        out[stage] = by_spec[spec]
    return out


def _view(events: pl.DataFrame, users: list[str]) -> Any:
    """An `AsOf` view whose point is just past each user's newest event: the serving view."""
    from recgpt.data.split import AsOf

    last = events.filter(pl.col("user_id").is_in(users)).group_by("user_id").agg(pl.col("timestamp").max())
    points = last.select(
        "user_id", (pl.col("timestamp") + 1).alias("point_ts"), pl.lit(0, pl.Int64).alias("point_eid")
    )
    return AsOf(events, points)


def _append(dataset: Any, appended: pl.DataFrame) -> pl.DataFrame:
    """The dataset's events followed by the appended ones (new event ids after the largest)."""
    ev = dataset.events
    start = int(ev["event_id"].max() or 0) + 1  # type: ignore[arg-type]
    new = appended.select("user_id", "item_id", "behavior", "timestamp").with_columns(
        pl.int_range(start, start + appended.height, dtype=pl.Int64).alias("event_id")
    )
    return pl.concat([ev, new], how="diagonal_relaxed").sort("timestamp", "event_id")


def refresh(
    run_dir: str | Path,
    events: pl.DataFrame | Path | str,
    *,
    backend: Any = None,
    model: str | None = None,
) -> NearlineReport:
    """Apply `events` to the finished SERAL run in `run_dir` and refresh only the affected users
    (module docstring), under the run folder's lock (never beside a running `recgpt run`).
    `backend` replaces the run's LLM backend (tests, `--llm`); `model` is then the identity the
    cache rows record (default: the run's SerenGPT spec)."""
    from recgpt.folders import FolderLock

    lock = FolderLock(Path(run_dir)).acquire()
    try:
        return _refresh(Path(run_dir), events, backend, model)
    finally:
        lock.release()


def _refresh(
    run_dir: Path, events: pl.DataFrame | Path | str, backend: Any, model: str | None
) -> NearlineReport:
    from recgpt.behavior import make_counter
    from recgpt.data.untrusted import UntrustedText, redact_dataset
    from recgpt.datasets import load_dataset
    from recgpt.serendipity.cache import (
        VECTORS_FILE,
        build_cache,
        item_categories,
        rendered_profiles,
        replace_users,
        serving_lists,
        stored_catalogue,
    )
    from recgpt.serendipity.candidates import CandidateConfig, generate_for
    from recgpt.serendipity.profiles import ProfileConfig, build_profiles, profile_inputs, profile_version
    from recgpt.serendipity.seren import SerenConfig, rank_lists, seren_inputs

    started = time.perf_counter()
    store = RunStore.open(run_dir)
    if store.marker("cache") is None:
        raise RunNotFinished(f"{run_dir}: the SERAL run has no finished cache stage (06_cache); run it first")
    cfg = store.read_json("config.json")
    source = str(events) if not isinstance(events, pl.DataFrame) else "<events table>"
    new = validate_events(
        read_events(Path(events)) if not isinstance(events, pl.DataFrame) else events, source
    )

    raw = load_dataset(cfg["dataset"])
    dataset = redact_dataset(raw, UntrustedText.of(raw).report)
    state = {name: serving_table(run_dir, name) for name in SERVING}
    accepted, rejected = screen_events(
        new, set(dataset.items["item_id"].to_list()), set(state["cache"]["user_id"].to_list())
    )
    folder = run_dir / NEARLINE
    log_path = folder / "events.parquet"
    earlier = pl.read_parquet(log_path) if log_path.exists() else accepted.clear().drop("row")
    appended = pl.concat([earlier, accepted.drop("row")], how="vertical_relaxed")
    users = sorted(set(accepted["user_id"].to_list()))
    if not users:
        return NearlineReport(run_dir, source, 0, rejected, [], time.perf_counter() - started)

    pcfg = ProfileConfig.model_validate(cfg.get("profiles") or {})
    ccfg = CandidateConfig.model_validate(cfg.get("candidates") or {})
    scfg = SerenConfig.model_validate(cfg.get("seren") or {})
    slot = cfg.get("slot") or {}
    all_events = _append(dataset, appended)
    view = _view(all_events, users)
    vectors = np.load(store.dir("candidates") / VECTORS_FILE)
    catalogue = stored_catalogue(dataset, vectors, ccfg.category_level, all_events)
    pos = {i: n for n, i in enumerate(catalogue.item_ids.tolist())}
    categories = item_categories(dataset, ccfg.category_level)
    counter = make_counter(cfg.get("tokenizer", "smollm2"))
    engines = _engines(cfg.get("llm") or {}, run_dir, backend)
    llm = cfg.get("llm") or {}
    model = model or str((llm.get("stages") or {}).get("seren") or llm.get("spec", ""))
    fresh: dict[str, list[pl.DataFrame]] = {name: [] for name in SERVING}
    done: list[UserRefresh] = []
    try:
        for u in users:
            t0 = time.perf_counter()
            before = profile_version(state["profiles"], u)
            inputs = profile_inputs(view, dataset, [u], pcfg, counter.count)
            profiles, _ = build_profiles(pcfg, engines["profiles"], inputs)
            hist = view.history(u)["item_id"].drop_nulls().to_list()
            history = np.asarray([pos[i] for i in hist if i in pos], dtype=np.int64)
            cand = generate_for(ccfg, catalogue, [history], [u], int(cfg.get("seed", 0)))
            lists = serving_lists(cand, {u: view.point(u)[0]})
            seren_in = seren_inputs(lists, rendered_profiles(profiles), dataset.items, categories)
            rankings, _ = rank_lists(scfg, engines["seren"], seren_in)
            after = profile_version(profiles, u)
            cache = build_cache(
                rankings,
                {u: after},
                size=int(slot.get("cache_size", 10)),
                model=model,
                created_ts=int(time.time()),
            )
            seconds = time.perf_counter() - t0
            for name, df in (("profiles", profiles), ("candidates", cand), ("cache", cache)):
                fresh[name].append(df)
            src = "fallback" if rankings.height and (rankings["source"] == "fallback").all() else "llm"
            done.append(
                UserRefresh(
                    u,
                    int((accepted["user_id"] == u).sum()),
                    round(seconds, 3),
                    before,
                    after,
                    cache.height,
                    src,
                )
            )
    finally:
        for e in {id(e): e for e in engines.values()}.values():
            e.close()
    files = {}
    for name in SERVING:
        table = replace_users(state[name], pl.concat(fresh[name], how="vertical_relaxed"), users)
        files[name] = str(write_parquet_atomic(table, folder / f"{name}.parquet"))
    files["events"] = str(write_parquet_atomic(appended, log_path))  # last: a failed refresh logs nothing
    out = NearlineReport(
        run_dir, source, accepted.height, rejected, done, time.perf_counter() - started, files
    )
    with (folder / LOG).open("a") as f:
        f.write(json.dumps({"at": int(time.time()), **out.to_json()}) + "\n")
    return out


__all__ = [
    "EVENT_COLUMNS",
    "NEARLINE",
    "EventsError",
    "NearlineReport",
    "UserRefresh",
    "read_events",
    "refresh",
    "screen_events",
    "serving_table",
    "validate_events",
]
