"""The RecGPT chain as a `Pipeline` value (`RECGPT`): each stage reads tables, writes tables, returns stats.

Every stage declares the config fields and tables it reads (`core.Stage`); its key is derived from
them, so a change re-runs exactly that stage and what reads from it (e.g. a new `tags.count` re-runs
LLM_IT, φ, retrieval, fusion, explanations, evaluation and the report, but not compression,
interests or the tri-tower). No stage recomputes an upstream output: the intent stages build their
user contexts from the compress and pool tables, fusion mixes the stored RecGPT candidates, and
the evaluation scores the stored candidate and fused lists.

| folder | tables | what |
| --- | --- | --- |
| 00_split | users, untrusted | seeded sample of test users, their split points and held-out items |
| 01_compress | compressed, report | B_u from the test `AsOf` view; raw vs compressed tokens |
| 02_pool | pool, matches | catalogue interest pool, I_m per user |
| 03_interests | interests, failures | LLM_UI (prompts guarded against held-out items) |
| 04_tags | tags, failures | LLM_IT (guarded likewise) |
| 05_phi | tag_categories | φ(tag) at one category level; tag HR@10/@30 of LLM tags and 3 reference rows |
| 06_tritower | history (+ model/, index/) | tri-tower trained on the train split only |
| 07_candidates | candidates | RecGPT channel: per-tag β-fused retrieval, interest-quota merge |
| 07_tune | (valid/: sub-run) | classic channel = validation-best baseline; share chosen on validation users |
| 08_fusion | fused | classic channel mixed with the RecGPT candidates at the tuned share |
| 09_eval | lists, frontier (+ results.json) | metrics of every row, CIs, share 0 -> 1 frontier |
| 10_explanations | pairs, explanations, served | LLM_RE for matched (interest, item) pairs of the final lists |
| 11_report | (report.html) | metrics table, plots, throughput, ledger, 3 users walked through |
"""

from __future__ import annotations

import dataclasses
from typing import Any, cast

import polars as pl
from rich.markup import escape
from rich.progress import Progress

from recgpt.intent.context import UserContext, contexts_from_tables
from recgpt.pipeline import steps
from recgpt.pipeline.config import RunConfig
from recgpt.pipeline.core import Pipeline, Stage, StageContext
from recgpt.pipeline.explain import run_explanations
from recgpt.pipeline.resources import GuardedEngine, Resources
from recgpt.pipeline.runner import StageFailed, check_llm_stage, fallback_stats
from recgpt.pipeline.tables import StoredCandidates
from recgpt.pipeline.tune import run_tune
from recgpt.progress import LineProgress, make_progress


def _bar(ctx: StageContext) -> Progress | LineProgress:
    """A bar on a terminal, a plain line every 30 s when the output goes to a file."""
    return make_progress(ctx.console, ctx.progress)


def _res(ctx: StageContext) -> Resources:
    return cast(Resources, ctx.resources)


# ---------------------------------------------------------------- 00 split


def run_split(ctx: StageContext) -> dict[str, Any]:
    res, cfg = _res(ctx), ctx.config
    sp, task = res.split, res.task
    df = pl.DataFrame(
        {
            "user_id": task.user_ids,
            "user_idx": task.user_idx.tolist(),
            "point_ts": [task.asof.point(u)[0] for u in task.user_ids],
            "target_item_id": [sp.item_ids[t[0]] if len(t) else None for t in task.targets],
            "n_history": [len(h) for h in task.histories],
        },
        schema_overrides={"target_item_id": pl.String()},
    )
    ctx.write("users", df)
    flagged, report = res.untrusted.flagged, ctx.write("untrusted", res.untrusted.report)
    note = f" (redacted in prompts, output repeating them rejected; {escape(str(report))})" if flagged else ""
    ctx.console.print(
        f"  untrusted text: {flagged} texts look like instructions to a model{note}",
        style="yellow" if flagged else None,
    )
    return {
        "dataset": res.dataset.manifest.name,
        "fingerprint": res.fingerprint,
        "split": cfg.split.kind,
        "untrusted_flagged": flagged,
        "items": int(sp.train.n_items),
        "train_interactions": len(sp.train.item_idx),
        "test_users": len(sp.test),
        "valid_users": len(sp.valid),
        "task": cfg.task,
        "sampled_users": len(task),
        "sampled": len(task) < len(res.base_task),
        "excluded_users": len(cfg.exclude_users),
        "seed": cfg.seed,
    }


# ---------------------------------------------------------------- 01 compress, 02 pool


def run_compress(ctx: StageContext) -> dict[str, Any]:
    from recgpt.behavior.report import compression_report, summarize

    res, cfg = _res(ctx), ctx.config
    comp, view = res.compressor(cfg.compression, cfg.tokenizer), res.task.asof
    with _bar(ctx) as bar:
        t = bar.add_task("compressing histories", total=len(res.users))
        results = comp.compress_many(view, res.users, on_done=lambda n: bar.advance(t, n))
    report = compression_report(view, results, comp)
    columns = (
        "user_id",
        "asof_ts",
        "text",
        "tokens",
        "full_tokens",
        "n_events",
        "n_reliable",
        "dropped_events",
    )
    ctx.write("compressed", pl.DataFrame({c: [getattr(r, c) for r in results] for c in columns}))
    ctx.write("report", report)
    return summarize(report, [cfg.compression.budget])


def run_pool(ctx: StageContext) -> dict[str, Any]:
    res, cfg = _res(ctx), ctx.config
    pool = steps.interest_pool(res, cfg)
    matches = pool.match(res.task.asof, res.users)
    ctx.write("pool", pool.to_frame())
    ctx.write("matches", matches)
    return {"entries": len(pool.entries), "users_matched": matches["user_id"].n_unique()}


# ---------------------------------------------------------------- 03 interests, 04 tags


def user_contexts(ctx: StageContext) -> list[UserContext]:
    """Every sampled user's intent-stage input, from the stored B_u and pool matches (`AsOf` view only)."""
    res = _res(ctx)
    return contexts_from_tables(
        res.task, res.dataset, res.users, ctx.read("compress", "compressed"), ctx.read("pool", "matches")
    )


def guarded_engine(ctx: StageContext) -> GuardedEngine:
    """This stage's LLM engine behind the leakage guard (its requests are keyed by user id)."""
    res = _res(ctx)
    return GuardedEngine(ctx.engine(), res.split, res.task)


def failure_stats(
    table: pl.DataFrame, failures: pl.DataFrame, users: int, fallback: pl.Expr
) -> dict[str, Any]:
    """Rows and failures of a per-user LLM stage; a user counts as on fallback when the LLM gave
    them nothing usable (one `failures` row each: the request failed or post-processing emptied it)."""
    per_user = table.group_by("user_id").len()["len"]
    failed = failures.unique("user_id", keep="first")
    return {
        "users": users,
        "rows": table.height,
        "mean_per_user": float(per_user.mean()) if per_user.len() else 0.0,  # type: ignore[arg-type]
        "failures": failures.group_by("reason").len().sort("reason").rows(),
        "fallback_users": table.filter(fallback)["user_id"].n_unique(),
        **fallback_stats(failed.height, users, dict(failed.group_by("reason").len().sort("reason").rows())),
    }


def run_interests(ctx: StageContext) -> dict[str, Any]:
    from recgpt.intent.context import history_stats
    from recgpt.intent.interests import FALLBACK_TEMPLATE

    res, cfg = _res(ctx), ctx.config
    engine = guarded_engine(ctx)
    interests, failures = steps.mine(res, cfg, engine, user_contexts(ctx))
    ctx.write("interests", interests)
    ctx.write("failures", failures)
    stats = failure_stats(interests, failures, len(res.users), pl.col("template") == FALLBACK_TEMPLATE)
    stats["kinds"] = dict(interests.group_by("kind").len().rows())
    stats.update(history_stats(interests))
    stats["rejected_untrusted"] = res.untrusted.rejected["interests"]
    stats["prompts_guarded"] = engine.checked
    return stats


def run_tags(ctx: StageContext) -> dict[str, Any]:
    from recgpt.intent.context import history_stats
    from recgpt.intent.tags import FALLBACK_RATIONALE

    res, cfg = _res(ctx), ctx.config
    engine = guarded_engine(ctx)
    tags, failures = steps.tag(res, cfg, engine, user_contexts(ctx), ctx.read("interests", "interests"))
    ctx.write("tags", tags)
    ctx.write("failures", failures)
    stats = failure_stats(tags, failures, len(res.users), pl.col("rationale") == FALLBACK_RATIONALE)
    stats["distinct_tags"] = tags["tag"].n_unique()
    stats.update(history_stats(tags))
    stats["rejected_untrusted"] = res.untrusted.rejected["tags"]
    stats["prompts_guarded"] = engine.checked
    return stats


# ---------------------------------------------------------------- 05 φ, 06 tri-tower


def run_phi(ctx: StageContext) -> dict[str, Any]:
    """φ at `category_level`, the LLM tags' tag HR and its reference rows on the same users
    (`recgpt.intent.reference.tag_hr_stats`; `tag_hr_table` turns the stats into printable rows)."""
    from recgpt.data.categories import categories_at_level
    from recgpt.intent.reference import tag_hr_stats

    res, cfg = _res(ctx), ctx.config
    tags = ctx.read("tags", "tags")
    levelled = categories_at_level(res.dataset, cfg.category_level)
    phi = res.phi(cfg.phi, cfg.embedder).at_level(res.dataset, cfg.category_level)
    ctx.write("tag_categories", phi.predict(tags["tag"].to_list()))
    return tag_hr_stats(phi, res.split, levelled, res.users, task=res.task, llm_tags=tags, seed=cfg.seed)


def run_tritower(ctx: StageContext) -> dict[str, Any]:
    from recgpt.retrieval.index import ItemIndex
    from recgpt.retrieval.train import train_on_split

    res, cfg = _res(ctx), ctx.config
    out = train_on_split(
        res.split, cfg.tritower, embed=res.encoder(cfg.embedder).encode, progress=ctx.progress
    )
    out.model.save(ctx.out_dir / "model")
    ItemIndex.build(out.model.item_vectors(), threads=1).save(ctx.out_dir / "index")
    ctx.write("history", pl.DataFrame(out.history))
    best = next((h for h in out.history if int(h["epoch"]) == out.best_epoch), out.history[-1])
    return {
        "epochs_run": len(out.history),
        "best_epoch": out.best_epoch,
        "train_s": round(out.train_s, 2),
        "valid_NDCG@10": best.get("valid_NDCG@10"),
        "trained_on": "split.train (validation for early stopping)",
    }


# ---------------------------------------------------------------- 07 candidates, 08 fusion


def tower_channel(ctx: StageContext, tags: pl.DataFrame | None) -> Any:
    """The RecGPT channel over the trained tri-tower (`tags=None`: the user tower alone)."""
    from recgpt.retrieval.channel import RecGPTChannel

    res, cfg = _res(ctx), ctx.config
    model, index = steps.load_tritower(ctx.folder("tritower"), res, cfg)
    return RecGPTChannel(model, index, tags, context=res.task.asof.events(), **dataclasses.asdict(cfg.fusion))


def run_candidates(ctx: StageContext) -> dict[str, Any]:
    task = _res(ctx).task
    cand = tower_channel(ctx, ctx.read("tags", "tags")).candidates(task.user_idx, task.histories)
    ctx.write("candidates", cand)
    lens = cand.group_by("user_id").len()["len"]
    return {
        "users": cand["user_id"].n_unique(),
        "mean_list": float(lens.mean()) if lens.len() else 0.0,  # type: ignore[arg-type]
        "with_tag": float(cand["tag"].is_not_null().mean()) if cand.height else 0.0,  # type: ignore[arg-type]
        "distinct_items": cand["item_id"].n_unique(),
    }


def run_fusion(ctx: StageContext) -> dict[str, Any]:
    """The classic channel and share chosen by the tune stage (on validation), fitted on train and
    mixed with the stored RecGPT candidates of the test users."""
    from recgpt.retrieval.channel import FusedChannel

    res, cfg = _res(ctx), ctx.config
    tuned = ctx.stats("tune")
    name, params, share = tuned["baseline"], tuned["baseline_params"], float(tuned["share"])
    baseline = steps.classic_channel(ctx.folder("tune"), tuned, res.split.train, cfg.seed)
    stored = StoredCandidates(ctx.read("candidates", "candidates"), res.split)
    task = res.task
    fused = FusedChannel(baseline, cast(Any, stored), share=share, k=cfg.fusion.k)
    table = fused.candidates(task.user_idx, task.histories)
    ctx.write("fused", table)
    return {
        "baseline": name,
        "baseline_params": params,
        "validation": tuned["baselines"][name]["validation"],
        "share": share,
        "share_source": tuned["share_source"],
        "recgpt_slots": float((table["channel"] == "recgpt").mean()) if table.height else 0.0,
    }


# ---------------------------------------------------------------- 09 eval, 11 report


def run_eval(ctx: StageContext) -> dict[str, Any]:
    from recgpt.pipeline.evaluation import evaluate_channels

    return evaluate_channels(ctx, tower_channel(ctx, None))


def run_report(ctx: StageContext) -> dict[str, Any]:
    from recgpt.pipeline.report import report_from_stage

    return {"report": str(report_from_stage(ctx))}


USER_STAGES: tuple[Stage, ...] = (
    Stage(
        "split",
        "00_split",
        run_split,
        config=("split", "users", "seed", "task", "exclude_users"),
        title="split and user sample",
    ),
    Stage(
        "compress",
        "01_compress",
        run_compress,
        reads=("split/users",),
        config=("compression", "tokenizer"),
        title="behaviour compression (B_u)",
    ),
    Stage(
        "pool",
        "02_pool",
        run_pool,
        reads=("split/users",),
        config=("pool", "embedder"),
        title="interest pool (I_m)",
    ),
    Stage(
        "interests",
        "03_interests",
        run_interests,
        reads=("compress/compressed", "pool/matches"),
        config=("interests", "embedder", "llm:interests"),
        llm=True,
        title="LLM_UI interests",
    ),
    Stage(
        "tags",
        "04_tags",
        run_tags,
        reads=("interests/interests", "compress/compressed", "pool/matches"),
        config=("tags", "llm:tags", "embedder"),
        llm=True,
        title="LLM_IT tags",
    ),
    Stage(
        "phi",
        "05_phi",
        run_phi,
        reads=("tags/tags",),
        config=("phi", "embedder", "category_level", "seed"),
        title="φ tag -> category, tag HR",
    ),
    Stage(
        "tritower",
        "06_tritower",
        run_tritower,
        # no user table: the tri-tower depends on the split alone, so the tune stage's sub-run
        # (other users, same split) has the same key and reuses it
        config=("split", "tritower", "embedder"),
        title="tri-tower training (train split)",
    ),
    Stage(
        "candidates",
        "07_candidates",
        run_candidates,
        reads=("tritower/*", "tags/tags"),
        config=("fusion", "embedder"),
        title="RecGPT channel retrieval",
    ),
)
# the tune stage re-runs the user stages on validation users: it declares everything they read
TUNE = Stage(
    "tune",
    "07_tune",
    run_tune,
    reads=("split/users", "tritower/*"),
    config=tuple(
        dict.fromkeys(
            [
                *(p for st in USER_STAGES for p in st.config if p not in ("users", "task", "exclude_users")),
                "baseline",
                "baselines",
                "share",
                "tune",
                "ks",
                "seed",
                "fusion.k",
            ]
        )
    ),
    title="classic channel and share chosen on validation",
)
RECGPT = Pipeline(
    "recgpt",
    RunConfig,
    (
        *USER_STAGES,
        TUNE,
        Stage(
            "fusion",
            "08_fusion",
            run_fusion,
            reads=("candidates/candidates", "tune/*"),
            config=("seed", "fusion.k"),
            title="classic channel + fused list",
        ),
        Stage(
            "eval",
            "09_eval",
            run_eval,
            reads=("fusion/*", "tune/*", "candidates/candidates", "tritower/*", "phi/*"),
            config=(
                "compare",
                "baselines",
                "ks",
                "split",
                "seed",
                "fusion",
                "embedder",
                "tune",
                "llm:",
                "category_level",
            ),
            title="evaluation",
        ),
        Stage(
            "explanations",
            "10_explanations",
            run_explanations,
            reads=("fusion/fused", "interests/interests"),
            config=("explanations", "explain_top", "llm:explanations", "phi", "embedder"),
            llm=True,
            title="LLM_RE explanations",
        ),
        Stage(
            "report",
            "11_report",
            run_report,
            reads=(
                "eval/*",
                "explanations/served",
                "compress/compressed",
                "pool/matches",
                "interests/interests",
                "tags/tags",
                "phi/tag_categories",
                "fusion/fused",
                "split/users",
            ),
            config=("report_users", "seed", "fusion.beta", "ks", "split"),
            title="HTML report",
        ),
    ),
)
STAGES = RECGPT.stages
STAGE_NAMES = RECGPT.names

__all__ = [
    "RECGPT",
    "STAGES",
    "STAGE_NAMES",
    "USER_STAGES",
    "StageFailed",
    "check_llm_stage",
    "failure_stats",
    "guarded_engine",
    "tower_channel",
    "user_contexts",
]
