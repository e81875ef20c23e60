"""The tune stage: the classic channel and the RecGPT share, both chosen on validation, never on test.

1. **Classic channel** (`baseline = "auto"`): every model of `baselines` (SASRec included) is tuned
   on the validation task with the experiment harness; the one with the best validation NDCG@10 is
   the channel RecGPT is fused with (a fixed name skips the choice but is still tuned).
2. **Share** (`share = "auto"`): the chain's user stages (split -> candidates) run again as a
   *sub-run* in `07_tune/valid/`, on `tune.users` validation users drawn disjoint from the test
   sample, with the run's LLM cache and the parent's tri-tower (trained on the train split only). The
   sub-run's prompts are built from the validation split points and guarded against every later item,
   so no test target can reach them. Their RecGPT candidates are mixed with the classic channel's
   validation lists at every `tune.grid` share, and the largest share whose validation NDCG@10 stays
   within `tune.tolerance` of the classic channel's (`retrieval.fusion.choose_share`) is kept. The
   whole curve is in the stage's stats.
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np

from recgpt.data.runstore import RunStore
from recgpt.pipeline.core import StageContext
from recgpt.pipeline.fitted import load_fitted, save_fitted
from recgpt.pipeline.resources import Resources
from recgpt.pipeline.tables import fill_lists, table_lists
from recgpt.progress import make_progress

SUBRUN = "valid"  # sub-folder of the tune stage holding the validation sub-run
LAST_USER_STAGE = "candidates"


def choose_baseline(ctx: StageContext) -> dict[str, Any]:
    """Tune every candidate classic channel on validation; the validation-best one (or the fixed one)."""
    from recgpt.eval.experiment import ExperimentConfig, run_experiment

    res, cfg = cast(Resources, ctx.resources), ctx.config
    names = list(cfg.baselines) if cfg.baseline == "auto" else [cfg.baseline]
    exp_cfg = ExperimentConfig(models=names, split=cfg.split, ks=cfg.ks, seed=cfg.seed, tune=True)
    with make_progress(ctx.console, ctx.progress) as bar:
        runs = run_experiment(res.dataset, exp_cfg, split=res.eval_split, progress=bar).runs
    save_fitted(ctx.out_dir, [r.model for r in runs if r.model is not None])
    tuned = {
        r.name: {
            "params": r.params,
            "valid_NDCG@10": max(v["NDCG@10"] for v in r.validation),
            "fit_s": round(r.fit_s, 2),
            "validation": r.validation,
        }
        for r in runs
    }
    best = max(names, key=lambda n: (tuned[n]["valid_NDCG@10"], -names.index(n)))
    ctx.console.print(
        "  classic channel: "
        + ", ".join(f"{n} {t['valid_NDCG@10']:.4f}" for n, t in tuned.items())
        + f" (validation NDCG@10) -> [bold]{best}[/bold]"
    )
    return {"baseline": best, "baseline_params": tuned[best]["params"], "baselines": tuned}


def _spare_validation_users(ctx: StageContext) -> int:
    """Validation users outside the test sample: who the share may be tuned on."""
    from recgpt.data.split import sample_users

    res = cast(Resources, ctx.resources)
    test_users = ctx.read("split", "users")["user_id"].to_list()
    return len(sample_users(res.split.valid, None, 0, exclude=test_users))


def _subrun(ctx: StageContext, users: int) -> tuple[Resources, RunStore]:
    """Run split -> candidates on validation users disjoint from the test sample; its resources and store."""
    from recgpt.pipeline.runner import run_stages
    from recgpt.pipeline.stages import RECGPT

    res = cast(Resources, ctx.resources)
    test_users = tuple(ctx.read("split", "users")["user_id"].to_list())
    llm = res.cfg.llm
    cache = llm.cache or ctx.store.run_dir / "llm-cache.sqlite"  # the run's cache: answers are shared
    sub_cfg = res.cfg.model_copy(
        update={
            "task": "valid",
            "users": users,
            "exclude_users": test_users,
            "llm": llm.model_copy(update={"cache": cache}),
        }
    )
    # the tri-tower is the parent's (trained on the train split only; same key): an absolute folder,
    # so the sub-run reuses it and could never reset it (a folder outside the run is refused)
    folders = {**RECGPT.folders, "tritower": str(ctx.folder("tritower").resolve())}
    store = RunStore(ctx.out_dir / SUBRUN, folders)
    sub = res.derive(sub_cfg, store)
    ctx.console.print(
        f"  tuning sub-run on {users} validation users (none of the {len(test_users)} test users)"
    )
    run_stages(RECGPT, sub_cfg, store, sub, console=ctx.console, progress=ctx.progress, until=LAST_USER_STAGE)
    return sub, store


def validation_curve(
    sub: Resources,
    store: RunStore,
    baseline: str,
    params: dict[str, Any],
    grid: tuple[float, ...],
    k: int,
    seed: int,
    model: Any | None = None,
) -> list[dict[str, Any]]:
    """Validation NDCG@10 of the fused list at every share of `grid`, on the sub-run's users
    (`model`: the baseline already fitted on the split's train part, else it is fitted here)."""
    from recgpt.baselines.registry import get_recommender
    from recgpt.eval.experiment import recommend, sets_matrix
    from recgpt.eval.metrics import evaluate_per_user
    from recgpt.retrieval.fusion import mix_all

    split, task = sub.split, sub.task
    model = model or get_recommender(baseline, **params).fit(split.train, seed=seed)
    base = recommend(model, task, max(k, 10), mask=True)
    rec = table_lists(store.read("candidates", "candidates"), task.user_ids, split.item_pos)
    truth = sets_matrix(task.targets, split.train.n_items)
    curve = []
    for share in grid:
        lists = fill_lists(mix_all(rec, base, share, k), base, 10)
        ndcg = evaluate_per_user(lists, truth, n_items=split.train.n_items, ks=(10,))["NDCG@10"]
        curve.append(
            {"share": share, "NDCG@10": float(np.nanmean(ndcg)), "users": int(np.isfinite(ndcg).sum())}
        )
    return curve


def run_tune(ctx: StageContext) -> dict[str, Any]:
    """The tune stage (module docstring): classic channel, then share; both recorded with their evidence."""
    from recgpt.retrieval.fusion import choose_share

    cfg = ctx.config
    out = choose_baseline(ctx)
    tune = cfg.tune
    out.update(curve=[], tune_users=0, tolerance=tune.tolerance)
    if cfg.share != "auto":
        out.update(share=float(cfg.share), share_source="fixed by config (share)")
        return out
    if tune.users == 0:
        out.update(share=tune.fixed_share, share_source="tuning off (tune.users = 0): tune.fixed_share")
        return out
    spare = _spare_validation_users(ctx)
    if not spare:
        out.update(
            share=tune.fixed_share,
            share_source="tune.fixed_share: every validation user is in the test sample (sample fewer test users)",
        )
        return out
    sub, store = _subrun(ctx, min(tune.users, spare))
    fitted = load_fitted(ctx.out_dir, out["baseline"], out["baseline_params"])
    curve = validation_curve(
        sub, store, out["baseline"], out["baseline_params"], tune.grid, cfg.fusion.k, cfg.seed, fitted
    )
    choice = choose_share([(p["share"], p["NDCG@10"]) for p in curve], tune.tolerance)
    share = tune.fixed_share if choice.share is None else choice.share
    source = (
        f"chosen on {len(sub.users)} validation users: {choice.reason}"
        if choice.share is not None
        else f"tune.fixed_share ({choice.reason})"
    )
    out.update(
        share=share,
        share_source=source,
        curve=curve,
        tune_users=len(sub.users),
        valid_reference=choice.reference,
        valid_floor=choice.floor,
    )
    ctx.console.print(
        "  validation NDCG@10 by share: "
        + ", ".join(f"{p['share']:.1f}: {p['NDCG@10']:.4f}" for p in curve)
        + f" -> share [bold]{share:.2f}[/bold] ({source})"
    )
    return out


__all__ = ["SUBRUN", "choose_baseline", "run_tune", "validation_curve"]
