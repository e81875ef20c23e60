"""The SERAL stages 02-08 (see `pipeline.seral` for the whole chain and its table of folders).

Each is a function of a `StageContext`: it reads only the tables and config it declares, writes its
tables into its own folder and returns the stats its marker keeps. User-specific text reaches an
LLM only through the leakage guards: profiles through the `GuardedEngine` (a prompt naming a
held-out item aborts the stage), SerenGPT through `seren.guard_seren_inputs` (the *profile* of each
input must not name a held-out item; the candidate list may, since a ranking evaluation includes the
target by design).
"""

from __future__ import annotations

import time
from typing import Any, cast

import numpy as np
import polars as pl

from recgpt.pipeline.core import StageContext
from recgpt.pipeline.resources import GuardedEngine, Resources
from recgpt.pipeline.runner import fallback_stats
from recgpt.serendipity.cache import VECTORS_FILE as VECTORS


def _res(ctx: StageContext) -> Resources:
    return cast(Resources, ctx.resources)


def titles(res: Resources) -> dict[str, str]:
    items = res.dataset.items
    return dict(zip(items["item_id"].to_list(), items["title"].fill_null("").to_list(), strict=True))


def points(res: Resources) -> dict[str, int]:
    """Each sampled user's split point (the AsOf timestamp every SERAL table is built at)."""
    return {u: int(res.task.asof.point(u)[0]) for u in res.users}


# ---------------------------------------------------------------- 02 profiles


def fold_ledger(ledger: Any, stage: str) -> dict[str, int]:
    """Fold the profile tasks' ledger buckets (`profiles_short`, `profiles_long`) into the stage's own,
    so the runner's LLM check and the run's ledger see the stage (calls per bucket are returned)."""
    from recgpt.serendipity.profile_tasks import LONG_STAGE, SHORT_STAGE

    total = ledger.stage(stage)
    calls = {}
    for name in (SHORT_STAGE, LONG_STAGE):
        if (part := ledger.stages.pop(name, None)) is not None:
            total.add(part)
            calls[name] = part.calls
    return calls


def run_profiles(ctx: StageContext) -> dict[str, Any]:
    """Cognition profiles of the sampled users (static, short-term per window, long-term), built from
    their `AsOf` view through the guarded engine; stats: size against the raw history, fallback."""
    from recgpt.behavior import make_counter
    from recgpt.serendipity.profiles import build_profiles, profile_inputs, profile_size

    res, cfg = _res(ctx), ctx.config
    counter = make_counter(cfg.tokenizer)
    inputs = profile_inputs(res.task.asof, res.dataset, res.users, cfg.profiles, counter.count)
    engine = GuardedEngine(ctx.engine(), res.split, res.task)
    profiles, failures = build_profiles(cfg.profiles, engine, inputs)
    levels = fold_ledger(engine.ledger, ctx.stage.name)
    ctx.write("profiles", profiles)
    ctx.write("failures", failures)
    asked = profiles.filter(pl.col("source").is_in(["llm", "fallback"]))
    fell = asked.filter(pl.col("source") == "fallback")
    reasons = dict(failures.group_by("reason").len().sort("reason").rows()) if failures.height else {}
    return {
        "users": len(res.users),
        "rows": profiles.height,
        "levels": dict(profiles.group_by("level").len().sort("level").rows()),
        "size": profile_size(profiles, inputs),
        "prompts_guarded": engine.checked,
        "llm_calls_by_level": levels,
        **fallback_stats(fell.height, asked.height, reasons, unit="profiles"),
    }


# ---------------------------------------------------------------- 03 candidates


def catalogue(ctx: StageContext) -> Any:
    """The run's `candidates.Catalogue` (unit item vectors, categories at `candidates.category_level`,
    train-split popularity) from the vectors the candidates stage saved."""
    from recgpt.serendipity.cache import stored_catalogue

    res, cfg = _res(ctx), ctx.config
    folder = ctx.out_dir if ctx.stage.name == "candidates" else ctx.folder("candidates")
    vecs = np.load(folder / VECTORS)
    return stored_catalogue(res.dataset, vecs, cfg.candidates.category_level, res.split.train_events)


def run_candidates(ctx: StageContext) -> dict[str, Any]:
    """Serving candidates of every sampled user: items their familiar channels would not show
    (`candidates.generate_candidates` over their history before the split point); saves the item
    vectors (`item_vectors.npy`) the labels stage and nearline refresh reuse."""
    from recgpt.serendipity.candidates import catalogue_arrays, generate_for

    res, cfg = _res(ctx), ctx.config
    cat = catalogue_arrays(
        res.dataset, res.encoder(cfg.embedder), cfg.candidates.category_level, events=res.split.train_events
    )
    np.save(ctx.out_dir / VECTORS, cat.vectors)
    task = res.task
    cand = generate_for(cfg.candidates, cat, task.histories, task.user_ids, cfg.seed)
    ctx.write("candidates", cand)
    lens = cand.group_by("user_id").len()["len"]
    return {
        "users": cand["user_id"].n_unique(),
        "mean_list": float(lens.mean()) if lens.len() else 0.0,  # type: ignore[arg-type]
        "mean_unexpectedness": float(cand["unexpectedness"].mean()) if cand.height else 0.0,  # type: ignore[arg-type]
        "distinct_items": cand["item_id"].n_unique(),
        "categories": cand["category"].n_unique(),
    }


# ---------------------------------------------------------------- 04 labels


def run_labels(ctx: StageContext) -> dict[str, Any]:
    """Labelled evaluation lists of the sampled users (`labels.eval_lists`: a list per user whose
    held-out item is serendipitous), with people's verdicts (`RUN_DIR/verdicts.parquet`) applied
    over the log labels."""
    from recgpt.pipeline.seral_config import VERDICTS_FILE
    from recgpt.serendipity.labels import eval_lists

    res, cfg = _res(ctx), ctx.config
    lists, stats = eval_lists(cfg.labels, res.split, catalogue(ctx), res.users, candidates=cfg.candidates)
    verdicts = 0
    if cfg.verdicts is not None:
        from recgpt.serendipity.verdicts import apply_verdicts, read_verdicts

        table = read_verdicts(ctx.store.run_dir / VERDICTS_FILE)
        lists, verdicts = apply_verdicts(lists, table), table.height
    ctx.write("lists", lists)
    return {
        **stats.as_dict(),
        "positives": int(lists["labels"].list.sum().sum()) if lists.height else 0,
        "verdicts": verdicts,
    }


# ---------------------------------------------------------------- 05 SerenGPT


def run_seren(ctx: StageContext) -> dict[str, Any]:
    """SerenGPT ranks (a) each user's serving candidates (-> the cache) and (b) the labelled evaluation
    lists (-> Hit@1 / NDCG@3 in the eval stage). Profiles are guarded; candidates may hold the target."""
    from recgpt.serendipity.cache import SERVE_PREFIX, item_categories, rendered_profiles, serving_lists
    from recgpt.serendipity.seren import PARTIAL, guard_seren_inputs, rank_lists, seren_inputs

    res, cfg = _res(ctx), ctx.config
    profiles = rendered_profiles(ctx.read("profiles", "profiles"))
    lists = pl.concat(
        [
            serving_lists(ctx.read("candidates", "candidates"), points(res)),
            ctx.read("labels", "lists").select("list_id", "user_id", "asof_ts", "item_ids"),
        ],
        how="vertical_relaxed",
    )
    inputs = seren_inputs(
        lists, profiles, res.dataset.items, item_categories(res.dataset, cfg.candidates.category_level)
    )
    guarded = guard_seren_inputs(res.split, res.task, inputs)
    t0 = time.perf_counter()
    rankings, failures = rank_lists(cfg.seren, ctx.engine(), inputs)
    seconds = time.perf_counter() - t0
    is_serve = pl.col("list_id").str.starts_with(SERVE_PREFIX)
    ctx.write("serving", rankings.filter(is_serve))
    ctx.write("eval", rankings.filter(~is_serve))
    ctx.write("failures", failures)
    fell = failures.filter(pl.col("reason") != PARTIAL)
    n_serve = int(lists["list_id"].str.starts_with(SERVE_PREFIX).sum())
    return {
        "serving_lists": n_serve,
        "eval_lists": len(inputs) - n_serve,
        "partial_lists": int((failures["reason"] == PARTIAL).sum()),
        "profiles_guarded": guarded,
        "seconds_per_list": round(seconds / len(inputs), 3) if inputs else 0.0,
        **fallback_stats(
            fell["list_id"].n_unique(),
            len(inputs),
            dict(fell.group_by("reason").len().sort("reason").rows()),
            unit="lists",
        ),
    }


# ---------------------------------------------------------------- 06 cache, 07 base, 08 slot


def run_cache(ctx: StageContext) -> dict[str, Any]:
    """The CACHE table: each user's top `slot.cache_size` of SerenGPT's serving ranking."""
    from recgpt.serendipity.cache import build_cache
    from recgpt.serendipity.profiles import profile_version

    cfg = ctx.config
    profiles = ctx.read("profiles", "profiles")
    rankings = ctx.read("seren", "serving")
    versions = {u: profile_version(profiles, u) for u in profiles["user_id"].unique().to_list()}
    model = str(ctx.declared("llm:seren")["spec"])
    cache = build_cache(
        rankings, versions, size=cfg.slot.cache_size, model=model, created_ts=int(time.time())
    )
    ctx.write("cache", cache)
    per = cache.group_by("user_id").len()["len"]
    return {
        "users": cache["user_id"].n_unique(),
        "rows": cache.height,
        "mean_per_user": float(per.mean()) if per.len() else 0.0,  # type: ignore[arg-type]
        "model": model,
    }


def run_base(ctx: StageContext) -> dict[str, Any]:
    """The classic channel's list of every sampled user: the validation-best of `baselines` (tuned on
    validation with the RecGPT chain's own `tune.choose_baseline`), fitted on the train split."""
    from recgpt.baselines.registry import get_recommender
    from recgpt.eval.experiment import recommend
    from recgpt.pipeline.tune import choose_baseline

    res, cfg = _res(ctx), ctx.config
    chosen = choose_baseline(ctx)
    name, params = chosen["baseline"], chosen["baseline_params"]
    model = get_recommender(name, **params).fit(res.split.train, seed=cfg.seed)
    k = max(max(cfg.ks), cfg.slot.k)
    recs = recommend(model, res.task, k, mask=True)
    rows = [
        (u, r, str(res.split.item_ids[i]))
        for u, lst in zip(res.task.user_ids, recs.tolist(), strict=True)
        for r, i in enumerate(lst)
        if i >= 0
    ]
    ctx.write(
        "base",
        pl.DataFrame(
            rows, schema={"user_id": pl.String(), "rank": pl.Int32(), "item_id": pl.String()}, orient="row"
        ),
    )
    return {
        "baseline": name,
        "baseline_params": params,
        "baselines": {
            n: {k: v for k, v in t.items() if k != "validation"} for n, t in chosen["baselines"].items()
        },
    }


LISTS_SCHEMA = {
    "list": pl.String(),
    "user_id": pl.String(),
    "rank": pl.Int32(),
    "item_id": pl.String(),
    "channel": pl.String(),
}
WITH_SLOT, WITHOUT_SLOT, CACHE_ONLY = "with-slot", "without-slot", "cache-only"


def run_slot(ctx: StageContext) -> dict[str, Any]:
    """The final lists: the classic list with the serendipity slot merged at the quota, without it,
    and `cache-only` (every one of the top `slot.k` slots given to the cache: the slot's far end)."""
    from recgpt.serendipity.slot import SEREN, merge_slot

    res, cfg = _res(ctx), ctx.config
    length = max(max(cfg.ks), cfg.slot.k)
    base = {
        u: g["item_id"].to_list()
        for (u,), g in ctx.read("base", "base")
        .sort("user_id", "rank")
        .partition_by("user_id", as_dict=True)
        .items()
    }
    cache = {
        u: g["item_id"].to_list()
        for (u,), g in ctx.read("cache", "cache")
        .sort("user_id", "rank")
        .partition_by("user_id", as_dict=True)
        .items()
    }
    everything = cfg.slot.model_copy(update={"quota": cfg.slot.k, "positions": ()})
    rows: list[tuple[str, str, int, str, str]] = []
    placed = 0
    for u in res.task.user_ids:
        b = base.get(u, [])
        rows += [(WITHOUT_SLOT, u, r, i, "base") for r, i in enumerate(b[:length])]
        merged = merge_slot(b, cache.get(u, []), cfg.slot, length)
        placed += sum(c == SEREN for _, c in merged)
        rows += [(WITH_SLOT, u, r, i, c) for r, (i, c) in enumerate(merged)]
        whole = merge_slot(b, cache.get(u, []), everything, length)
        rows += [(CACHE_ONLY, u, r, i, c) for r, (i, c) in enumerate(whole)]
    ctx.write("lists", pl.DataFrame(rows, schema=LISTS_SCHEMA, orient="row"))
    n = len(res.task.user_ids)
    return {
        "users": n,
        "quota": cfg.slot.quota,
        "positions": list(cfg.slot.slots()),
        "seren_items": placed,
        "mean_seren_per_user": placed / n if n else 0.0,
    }


__all__ = [
    "CACHE_ONLY",
    "LISTS_SCHEMA",
    "VECTORS",
    "WITHOUT_SLOT",
    "WITH_SLOT",
    "catalogue",
    "points",
    "run_base",
    "run_cache",
    "run_candidates",
    "run_labels",
    "run_profiles",
    "run_seren",
    "run_slot",
    "titles",
]
