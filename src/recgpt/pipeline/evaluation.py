"""Evaluation of a run through the foundation harness, on the sampled test users only.

Rows: the RecGPT channel alone (`recgpt`), the fused list (`fused`), the tri-tower's user tower
without tags (`user-tower`, to show what the LLM's tags add), the classic channel and every other
candidate of `baselines` (hyper-parameters chosen on *all* validation users by the tune stage) and the
comparison baselines (`compare`, tuned on validation here). Every list is ranked over the full
catalogue with seen items masked and scored by `topk_metrics` (accuracy and beyond-accuracy); the tag
HR@K of the LLM tags is attached to the rows that use them.

`results.json` holds the table, the tune stage's choices (`tune`), the φ stage's tag HR with its
reference rows (`tag_hr`), the bars judged by 95% intervals over users (`bar`, `ci`: paired bootstrap
ratios of NDCG@10, the CatDiv@10 difference, Wilson intervals of the fallback shares), the
accuracy-diversity `frontier` (share 0 -> 1 on the test users; also the `frontier` table) and the
throughput of every stage so far (users per minute on the sampled users).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import polars as pl

from recgpt.eval.bootstrap import Interval, paired_difference, paired_ratio, verdict, wilson
from recgpt.eval.experiment import (
    ExperimentConfig,
    ExperimentResult,
    ModelRun,
    environment,
    recommend,
    run_experiment,
    topk_metrics,
    write_json_atomic,
)
from recgpt.pipeline.core import StageContext
from recgpt.pipeline.fitted import load_all
from recgpt.pipeline.resources import Resources
from recgpt.pipeline.runner import fallback_from_markers, stage_rate
from recgpt.pipeline.tables import fill_lists, table_lists
from recgpt.progress import make_progress

HEADLINE = (
    "NDCG@10",
    "HR@10",
    "MRR@10",
    "HR@50",
    "CatDiv@10",
    "Coverage@10",
    "Gini@10",
    "Novelty@10",
    "ILD@10",
    "TagHR@10",
    "TagHR@30",
)
LOWER_BETTER = frozenset({"Gini@10"})
CHANNEL_ROWS = ("recgpt", "fused", "user-tower")


def throughput(markers: dict[str, dict[str, Any]], users: int) -> list[dict[str, Any]]:
    """Seconds and sampled users per minute of each finished stage (from its marker)."""
    return [stage_rate(name, float(m["seconds"]), users) for name, m in markers.items()]


class _TowerCosine:
    """The user tower's cosine over the catalogue: the order a RecGPT list falls back to past its end."""

    def __init__(self, channel: Any) -> None:
        self.model, self.labels = channel.model, channel.labels

    def score(self, users: np.ndarray, histories: Sequence[np.ndarray]) -> np.ndarray:
        hists = [np.asarray(h, dtype=np.int64).reshape(-1) for h in histories]
        hu = self.model.user_vectors(np.asarray(users, dtype=np.int64).reshape(-1), hists, self.labels)
        return hu @ self.model.item_vectors().T


def _stored_run(
    name: str,
    params: dict[str, Any],
    recs: np.ndarray,
    res: Resources,
    ks: tuple[int, ...],
    seconds: float,
    level: Any = "auto",
) -> ModelRun:
    metrics = topk_metrics(res.split, res.task, recs, ks, level)
    return ModelRun(name, params, [], metrics, 0.0, seconds, recs)


def evaluate_channels(ctx: StageContext, user_tower: Any) -> dict[str, Any]:
    """Score every row on the sampled users; write `lists` and `results.json` (see module docstring).

    The `recgpt` and `fused` rows are the stored `07_candidates` / `08_fusion` lists (past a list's end,
    the channel's own fallback order: the user tower's cosine, the baseline's ranking); the user tower
    and the baselines are computed here.
    """
    res, cfg = cast(Resources, ctx.resources), ctx.config
    task, split = res.task, res.split
    k_max = max(cfg.ks)
    fusion, tuned = ctx.stats("fusion"), ctx.stats("tune")["baselines"]
    classic, share = fusion["baseline"], float(fusion["share"])
    models = list(dict.fromkeys([classic, *cfg.baselines, *cfg.compare]))
    exp_cfg = ExperimentConfig(
        models=models,
        split=cfg.split,
        ks=cfg.ks,
        seed=cfg.seed,
        tune=True,
        # the tune stage tuned these on validation already: fit them with their chosen parameters
        model_params={n: tuned[n]["params"] for n in models if n in tuned},
        category_level=cfg.category_level,
    )
    # the tune stage kept its fitted models: test those instead of fitting them again
    fitted = load_all(ctx.folder("tune"), exp_cfg.model_params)
    with make_progress(ctx.console, ctx.progress) as bar:
        base = run_experiment(res.dataset, exp_cfg, split=res.eval_split, progress=bar, fitted=fitted)
    baseline_recs = next(r.recs for r in base.runs if r.name == classic)
    t0 = time.perf_counter()
    cosine = recommend(cast(Any, _TowerCosine(user_tower)), task, k_max, mask=True)
    stored_lists = table_lists(ctx.read("candidates", "candidates"), task.user_ids, split.item_pos)
    stored = fill_lists(stored_lists, cosine, k_max)
    runs = [
        _stored_run(
            "recgpt",
            dataclasses.asdict(cfg.fusion),
            stored,
            res,
            cfg.ks,
            time.perf_counter() - t0,
            cfg.category_level,
        )
    ]
    t0 = time.perf_counter()
    fused = fill_lists(
        table_lists(ctx.read("fusion", "fused"), task.user_ids, split.item_pos), baseline_recs, k_max
    )
    runs.append(
        _stored_run(
            "fused",
            {"share": share, "k": cfg.fusion.k},
            fused,
            res,
            cfg.ks,
            time.perf_counter() - t0,
            cfg.category_level,
        )
    )
    t0 = time.perf_counter()
    recs = recommend(user_tower, task, k_max, mask=True)
    runs.append(
        _stored_run(
            "user-tower", user_tower.params, recs, res, cfg.ks, time.perf_counter() - t0, cfg.category_level
        )
    )
    runs.extend(base.runs)
    for r in base.runs:
        if r.name in tuned:
            r.validation = tuned[r.name]["validation"]
            if r.name in fitted:
                r.fit_s = float(tuned[r.name]["fit_s"])  # fitted once, in the tune stage
    frontier = frontier_table(res, [list(x) for x in stored_lists], baseline_recs, cfg, share)
    ctx.write("frontier", frontier)
    phi = ctx.stats("phi")
    for r in runs:
        if r.name in ("recgpt", "fused"):
            separable = phi.get("separable", {})  # a K the reference rows cannot separate gets no figure
            r.test.update(
                {
                    k: v
                    for k, v in phi["llm_tags"].items()
                    if k.startswith("TagHR@") and separable.get(k, True)
                }
            )
    ctx.write("lists", lists_frame(runs, task.user_ids, split.item_ids))
    result = ExperimentResult(
        dataset=res.dataset.manifest.name,
        config=exp_cfg,
        runs=runs,
        n_users_test=len(task),
        n_items=split.train.n_items,
        item_exposure_base=split.train.item_popularity,
        env=environment(cfg.seed),
        category_level=base.category_level,
    )
    markers = ctx.finished()
    payload = results_payload(
        ctx,
        result,
        phi,
        throughput({n: m for n, m in markers.items() if n != ctx.stage.name}, len(res.users)),
    )
    payload["frontier"] = frontier.to_dicts()
    path = ctx.store.run_dir / "results.json"
    write_json_atomic(path, payload)
    return {"results": str(path), "rows": [r.name for r in runs], "bar": payload["bar"]}


FRONTIER_METRICS = ("NDCG@10", "CatDiv@10", "Coverage@10", "Gini@10")


def frontier_table(
    res: Resources, recgpt: list[list[int]], classic: np.ndarray, cfg: Any, chosen: float
) -> pl.DataFrame:
    """The accuracy-diversity frontier on the test users: the stored RecGPT candidates mixed with the
    classic channel's lists at every share of `tune.grid` (and the chosen one), scored like the rows.

    Share 0 is the classic channel's list, share 1 the RecGPT list (each filled past its end by the
    classic channel, as the fused row is); nothing here chooses anything, it shows the trade-off.
    """
    from recgpt.retrieval.fusion import mix_all

    k_max = classic.shape[1]
    rows = []
    for share in sorted({*cfg.tune.grid, chosen}):
        lists = fill_lists(mix_all(recgpt, classic, share, cfg.fusion.k), classic, k_max)
        m = topk_metrics(res.split, res.task, lists, cfg.ks)
        rows.append({"share": share, **{c: m.get(c) for c in FRONTIER_METRICS}, "chosen": share == chosen})
    return pl.DataFrame(
        rows,
        schema={
            "share": pl.Float64(),
            **dict.fromkeys(FRONTIER_METRICS, pl.Float64()),
            "chosen": pl.Boolean(),
        },
    )


def lists_frame(runs: list[ModelRun], user_ids: list[str], item_ids: np.ndarray) -> pl.DataFrame:
    """Every row's top-K lists as a long table (model, user_id, rank, item_id)."""
    frames = []
    for r in runs:
        n, k = r.recs.shape
        valid = r.recs >= 0
        frames.append(
            pl.DataFrame(
                {
                    "model": [r.name] * int(valid.sum()),
                    "user_id": np.repeat(np.asarray(user_ids, dtype=object), k)[valid.ravel()].tolist(),
                    "rank": np.tile(np.arange(1, k + 1), n)[valid.ravel()].tolist(),
                    "item_id": item_ids[r.recs[valid]].tolist(),
                },
                schema={
                    "model": pl.String(),
                    "user_id": pl.String(),
                    "rank": pl.Int64(),
                    "item_id": pl.String(),
                },
            )
        )
    return pl.concat(frames)


@dataclass(frozen=True)
class PerUser:
    """Per-user NDCG@10 of every row and CatDiv@10 of every row, on the same users (for paired CIs)."""

    ndcg: dict[str, np.ndarray]
    catdiv: dict[str, np.ndarray]


def per_user(result: ExperimentResult, split: Any, task: Any, level: str | int = "auto") -> PerUser:
    """Per-user NDCG@10 and CatDiv@10 of every row of `result` (NaN NDCG for a user without a target)."""
    from recgpt.eval.experiment import category_matrix, sets_matrix
    from recgpt.eval.metrics import category_diversity_per_user, evaluate_per_user

    n_items = split.train.n_items
    truth = sets_matrix(task.targets, n_items)
    cats, _ = category_matrix(split.dataset, level)
    ndcg, catdiv = {}, {}
    for r in result.runs:
        ndcg[r.name] = evaluate_per_user(r.recs, truth, n_items=n_items, ks=(10,))["NDCG@10"]
        catdiv[r.name] = category_diversity_per_user(r.recs, cats, 10)
    return PerUser(ndcg, catdiv)


def _ci(interval: Interval, bar: float, *, strict: bool = False, above: bool = True) -> dict[str, Any]:
    return {**interval.to_json(), "bar": bar, "verdict": verdict(interval, bar, strict=strict, above=above)}


FALLBACK_BAR = 0.10


def fallback_ci(fallback: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Each LLM stage's fallback share with its Wilson interval; the bar: below 10% (met when hi < 0.10)."""
    return {
        f"{stage} fallback share": _ci(
            wilson(int(fb["fallback"]), int(fb["asked"])), FALLBACK_BAR, above=False
        )
        for stage, fb in fallback.items()
    }


def bar_check(
    rows: dict[str, dict[str, float]],
    baselines: list[str],
    users: PerUser | None = None,
    *,
    seed: int = 0,
    fallback: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The issue's bars, each judged by a 95% interval over users (`recgpt.eval.bootstrap`):

    * fused NDCG@10 >= 0.95 x the best baseline's (ratio CI: met when lo >= 0.95, missed when
      hi < 0.95), with per-user CatDiv@10 up (difference CI: met when lo > 0) and Gini@10 down
      (a whole-list figure: point estimate);
    * the RecGPT channel beats the user tower without tags (ratio CI: met when lo > 1);
    * every LLM stage's fallback share below 10% (Wilson interval: met when hi < 0.10).

    The point booleans (`ndcg_within_5pct`, ...) stay for a glance; `verdict` is what counts.
    """
    best = max(baselines, key=lambda b: rows[b]["NDCG@10"])
    f, b = rows["fused"], rows[best]
    ratio = f["NDCG@10"] / b["NDCG@10"] if b["NDCG@10"] > 0 else float("nan")
    checks = {
        "ndcg_within_5pct": bool(ratio >= 0.95),
        "catdiv_up": f["CatDiv@10"] > b["CatDiv@10"],
        "coverage_up": f["Coverage@10"] > b["Coverage@10"],
        "gini_down": f["Gini@10"] < b["Gini@10"],
    }
    out: dict[str, Any] = {"best_baseline": best, "fused_over_best_ndcg": ratio, **checks}
    ci: dict[str, Any] = {}
    if users is not None:
        ci["fused/best NDCG@10"] = _ci(paired_ratio(users.ndcg["fused"], users.ndcg[best], seed=seed), 0.95)
        ci["fused-best CatDiv@10"] = _ci(
            paired_difference(users.catdiv["fused"], users.catdiv[best], seed=seed), 0.0, strict=True
        )
        if "recgpt" in users.ndcg and "user-tower" in users.ndcg:
            ci["recgpt/user-tower NDCG@10"] = _ci(
                paired_ratio(users.ndcg["recgpt"], users.ndcg["user-tower"], seed=seed), 1.0, strict=True
            )
    ci.update(fallback_ci(fallback or {}))
    out["ci"] = ci
    fused_ci = [ci[k]["verdict"] for k in ("fused/best NDCG@10", "fused-best CatDiv@10") if k in ci]
    if fused_ci:
        parts = [*fused_ci, "met" if checks["gini_down"] else "missed"]
        out["verdict"] = (
            "met" if all(v == "met" for v in parts) else "missed" if "missed" in parts else "inconclusive"
        )
    else:
        out["verdict"] = "met" if all(checks.values()) else "missed"
    out["met"] = out["verdict"] == "met"
    return out


def results_payload(
    ctx: StageContext, result: ExperimentResult, phi: dict[str, Any], stages: list[dict[str, Any]]
) -> dict[str, Any]:
    """What `results.json` holds (module docstring)."""
    res, cfg = cast(Resources, ctx.resources), ctx.config
    split, n = res.split, len(res.users)
    rows = {r.name: r.test for r in result.runs}
    baselines = [r.name for r in result.runs if r.name not in CHANNEL_ROWS]
    note = (
        f"metrics on a seeded sample of {n} of {len(split.test)} test users"
        if n < len(split.test)
        else "all test users"
    )
    fusion, tune = ctx.stats("fusion"), ctx.stats("tune")
    fallback = fallback_from_markers(ctx.finished(), ctx.resources.cfg)
    bar = bar_check(
        rows,
        baselines,
        per_user(result, split, res.task, cfg.category_level),
        seed=cfg.seed,
        fallback=fallback,
    )
    return {
        "dataset": result.dataset,
        "run": ctx.store.run_dir.name,
        "users": {"sampled": n, "test_users": len(split.test), "seed": cfg.seed, "note": note},
        "split": cfg.split.kind,
        "n_items": result.n_items,
        "llm": ctx.declared("llm:")["spec"],
        "fusion": {
            "beta": cfg.fusion.beta,
            "share": fusion["share"],
            "share_source": fusion.get("share_source"),
            "baseline": fusion["baseline"],
        },
        "tune": {
            "baseline": tune["baseline"],
            "baselines": {
                k: {"params": v["params"], "valid_NDCG@10": v["valid_NDCG@10"], "fit_s": v.get("fit_s")}
                for k, v in tune["baselines"].items()
            },
            "share": tune["share"],
            "share_source": tune["share_source"],
            "users": tune.get("tune_users", 0),
            "tolerance": tune.get("tolerance"),
            "curve": tune.get("curve", []),
        },
        "table": [{"model": r.name, **{c: r.test.get(c) for c in HEADLINE}} for r in result.runs],
        "models": [
            {
                "name": r.name,
                "params": r.params,
                "validation": r.validation,
                "test": r.test,
                "score_s": round(r.score_s, 3),
            }
            for r in result.runs
        ],
        "category_level": result.category_level,
        "tag_hr": phi,  # level, llm/history/constant/random rows, separable, note (intent.reference)
        "bar": bar,
        "ci": bar["ci"],
        # explanations run later: the report stage adds them
        "llm_fallback": fallback,
        "throughput": stages,
        "env": result.env,
    }


def load_result(lists: pl.DataFrame, res: Resources, payload: dict[str, Any]) -> ExperimentResult:
    """An `ExperimentResult` (lists included) rebuilt from `results.json` and the `lists` table."""
    users = {u: i for i, u in enumerate(res.task.user_ids)}
    cfg = res.cfg
    k_max = max(cfg.ks)
    runs = []
    for m in payload["models"]:
        recs = np.full((len(users), k_max), -1, dtype=np.int64)
        g = lists.filter(pl.col("model") == m["name"])
        rows = np.asarray([users[u] for u in g["user_id"]], dtype=np.int64)
        cols = g["rank"].to_numpy() - 1
        recs[rows, cols] = [res.split.item_pos[i] for i in g["item_id"]]
        runs.append(ModelRun(m["name"], m["params"], m["validation"], m["test"], 0.0, m["score_s"], recs))
    exp_cfg = ExperimentConfig(models=[r.name for r in runs], split=cfg.split, ks=cfg.ks, seed=cfg.seed)
    return ExperimentResult(
        dataset=payload["dataset"],
        config=exp_cfg,
        runs=runs,
        n_users_test=len(users),
        n_items=res.split.train.n_items,
        item_exposure_base=res.split.train.item_popularity,
        env=payload.get("env", {}),
    )


__all__ = [
    "FRONTIER_METRICS",
    "HEADLINE",
    "LOWER_BETTER",
    "PerUser",
    "bar_check",
    "evaluate_channels",
    "fallback_ci",
    "frontier_table",
    "lists_frame",
    "load_result",
    "per_user",
    "results_payload",
    "throughput",
]
