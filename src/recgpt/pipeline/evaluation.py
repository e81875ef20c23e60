"""Evaluation of a run through the foundation harness, on the sampled test users only.

Rows: the RecGPT channel alone (`recgpt`), the fused list (`fused`), the tri-tower's user tower
without tags (`user-tower`, to show what the LLM's tags add), the baseline channel (hyper-parameters
chosen on *all* validation users by the fusion stage) and the comparison baselines (`compare`,
tuned on validation here). Every list is ranked over the full catalogue with seen items masked and
scored by `list_metrics` (accuracy and beyond-accuracy); the tag HR@K of the LLM tags is attached to
the rows that use them. `results.json` holds the table, the tag HR of a non-LLM history baseline,
and the throughput of every stage so far (users per minute on the sampled users).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import polars as pl
from rich.progress import Progress

from recgpt.eval.experiment import (
    ExperimentConfig,
    ExperimentResult,
    ModelRun,
    environment,
    list_metrics,
    recommend,
    run_experiment,
    write_json_atomic,
)
from recgpt.pipeline.state import RunState

HEADLINE = ("NDCG@10", "HR@10", "MRR@10", "HR@50", "CatDiv@10", "Coverage@10", "Gini@10", "Novelty@10",
            "ILD@10", "TagHR@10", "TagHR@30")  # fmt: skip
LOWER_BETTER = frozenset({"Gini@10"})
CHANNEL_ROWS = ("recgpt", "fused", "user-tower")


def throughput(state: RunState, stages: list[str]) -> list[dict[str, Any]]:
    """Seconds and sampled users per minute of each finished stage (from its marker)."""
    n = len(state.users)
    out = []
    for name in stages:
        m = state.marker(name)
        if m is None:
            continue
        s = float(m["seconds"])
        out.append({"stage": name, "seconds": round(s, 2), "users": n,
                    "users_per_min": round(n / s * 60, 1) if s > 0 else None})  # fmt: skip
    return out


def evaluate_channels(state: RunState) -> dict[str, Any]:
    """Score every row on the sampled users; write `lists` and `results.json` (see module docstring)."""
    from recgpt.pipeline.stages import STAGE_NAMES, tuned_baseline

    cfg, task, split = state.cfg, state.task, state.split
    k_max = max(cfg.ks)
    params, validation = tuned_baseline(state)
    models = list(dict.fromkeys([cfg.baseline, *cfg.compare]))
    exp_cfg = ExperimentConfig(models=models, split=cfg.split, ks=cfg.ks, seed=cfg.seed, tune=True,
                               model_params={cfg.baseline: params})  # fmt: skip
    with Progress(console=state.console, disable=not state.progress) as bar:
        base = run_experiment(state.dataset, exp_cfg, split=state.eval_split, progress=bar)
    channels = {"recgpt": state.recgpt_channel, "fused": state.fused_channel(params),
                "user-tower": state.user_tower_channel()}  # fmt: skip
    runs: list[ModelRun] = []
    for name, channel in channels.items():
        t0 = time.perf_counter()
        recs = recommend(channel, task, k_max, mask=True)
        runs.append(ModelRun(name, channel.params, [], list_metrics(split, task, recs, cfg.ks), 0.0,
                             time.perf_counter() - t0, recs))  # fmt: skip
    runs.extend(base.runs)
    runs[[r.name for r in runs].index(cfg.baseline)].validation = validation
    phi = state.read_stats("phi")
    for r in runs:
        if r.name in ("recgpt", "fused"):
            r.test.update({k: v for k, v in phi["llm_tags"].items() if k.startswith("TagHR@")})
    state.write("eval", "lists", lists_frame(runs, task.user_ids, split.item_ids))
    result = ExperimentResult(dataset=state.dataset.manifest.name, config=exp_cfg, runs=runs,
                              n_users_test=len(task), n_items=split.train.n_items,
                              item_exposure_base=split.train.item_popularity, env=environment(cfg.seed))  # fmt: skip
    payload = results_payload(state, result, phi, throughput(state, [s for s in STAGE_NAMES if s != "eval"]))
    write_json_atomic(state.run_dir / "results.json", payload)
    return {"results": str(state.run_dir / "results.json"), "rows": [r.name for r in runs],
            "bar": payload["bar"]}  # fmt: skip


def lists_frame(runs: list[ModelRun], user_ids: list[str], item_ids: np.ndarray) -> pl.DataFrame:
    """Every row's top-K lists as a long table (model, user_id, rank, item_id)."""
    frames = []
    for r in runs:
        n, k = r.recs.shape
        valid = r.recs >= 0
        frames.append(pl.DataFrame({
            "model": [r.name] * int(valid.sum()),
            "user_id": np.repeat(np.asarray(user_ids, dtype=object), k)[valid.ravel()].tolist(),
            "rank": np.tile(np.arange(1, k + 1), n)[valid.ravel()].tolist(),
            "item_id": item_ids[r.recs[valid]].tolist(),
        }, schema={"model": pl.String(), "user_id": pl.String(), "rank": pl.Int64(), "item_id": pl.String()}))  # fmt: skip
    return pl.concat(frames)


def bar_check(rows: dict[str, dict[str, float]], baselines: list[str]) -> dict[str, Any]:
    """The issue's bar: fused NDCG@10 within 5% of the best baseline's, with more CatDiv and Coverage
    and a lower Gini than that baseline."""
    best = max(baselines, key=lambda b: rows[b]["NDCG@10"])
    f, b = rows["fused"], rows[best]
    ratio = f["NDCG@10"] / b["NDCG@10"] if b["NDCG@10"] > 0 else float("nan")
    checks = {"ndcg_within_5pct": bool(ratio >= 0.95), "catdiv_up": f["CatDiv@10"] > b["CatDiv@10"],
              "coverage_up": f["Coverage@10"] > b["Coverage@10"], "gini_down": f["Gini@10"] < b["Gini@10"]}  # fmt: skip
    return {"best_baseline": best, "fused_over_best_ndcg": ratio, **checks, "met": all(checks.values())}


def results_payload(state: RunState, result: ExperimentResult, phi: dict[str, Any],
                    stages: list[dict[str, Any]]) -> dict[str, Any]:
    """What `results.json` holds (module docstring)."""
    from recgpt.pipeline.stages import fallback_summary

    cfg, split = state.cfg, state.split
    rows = {r.name: r.test for r in result.runs}
    baselines = [r.name for r in result.runs if r.name not in CHANNEL_ROWS]
    return {
        "dataset": result.dataset,
        "run": state.run_dir.name,
        "users": {"sampled": len(state.users), "test_users": len(split.test), "seed": cfg.seed,
                  "note": f"metrics on a seeded sample of {len(state.users)} of {len(split.test)} test users"
                  if len(state.users) < len(split.test) else "all test users"},
        "split": cfg.split.kind,
        "n_items": result.n_items,
        "llm": cfg.llm.shown_spec(),
        "fusion": {"beta": cfg.fusion.beta, "share": cfg.share, "baseline": cfg.baseline},
        "table": [{"model": r.name, **{c: r.test.get(c) for c in HEADLINE}} for r in result.runs],
        "models": [{"name": r.name, "params": r.params, "validation": r.validation, "test": r.test,
                    "score_s": round(r.score_s, 3)} for r in result.runs],
        "tag_hr": {"llm_tags": phi["llm_tags"], "history_tags": phi["history_tags"]},
        "bar": bar_check(rows, baselines),
        "llm_fallback": fallback_summary(state),  # explanations run later: the report stage adds them
        "throughput": stages,
        "env": result.env,
    }


def load_result(state: RunState, payload: dict[str, Any]) -> ExperimentResult:
    """An `ExperimentResult` (lists included) rebuilt from `results.json` and the `lists` table."""
    lists = state.read("eval", "lists")
    users = {u: i for i, u in enumerate(state.task.user_ids)}
    k_max = max(state.cfg.ks)
    runs = []
    for m in payload["models"]:
        recs = np.full((len(users), k_max), -1, dtype=np.int64)
        g = lists.filter(pl.col("model") == m["name"])
        rows = np.asarray([users[u] for u in g["user_id"]], dtype=np.int64)
        cols = g["rank"].to_numpy() - 1
        recs[rows, cols] = [state.split.item_pos[i] for i in g["item_id"]]
        runs.append(ModelRun(m["name"], m["params"], m["validation"], m["test"], 0.0, m["score_s"], recs))
    cfg = state.cfg
    return ExperimentResult(
        dataset=payload["dataset"], config=ExperimentConfig(models=[r.name for r in runs], split=cfg.split,
                                                            ks=cfg.ks, seed=cfg.seed),
        runs=runs, n_users_test=len(users), n_items=state.split.train.n_items,
        item_exposure_base=state.split.train.item_popularity, env=payload.get("env", {}),
    )  # fmt: skip


__all__ = ["HEADLINE", "LOWER_BETTER", "bar_check", "evaluate_channels", "lists_frame", "load_result",
           "results_payload", "throughput"]  # fmt: skip
