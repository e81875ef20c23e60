"""The stages of the RecGPT chain, in order. Each reads tables, writes tables, returns small stats.

A `Stage` names the config it depends on (`config`) and the stages whose output it reads
(`needs`); its hash covers both, so a change re-runs exactly that stage and what reads from it
(e.g. a new `tags.count` re-runs LLM_IT, φ, retrieval, fusion, explanations, evaluation and the
report, but not compression, interests or the tri-tower).

| folder | tables | what |
| --- | --- | --- |
| 00_split | users | seeded sample of test users, their split points and held-out items |
| 01_compress | compressed, report | B_u from the test `AsOf` view; raw vs compressed tokens |
| 02_pool | pool, matches | catalogue interest pool, I_m per user |
| 03_interests | interests, failures | LLM_UI (prompts guarded against held-out items) |
| 04_tags | tags, failures | LLM_IT (guarded likewise) |
| 05_phi | tag_categories | φ(tag); tag HR@10/@30 of LLM tags and of a history baseline |
| 06_tritower | history (+ model/, index/) | tri-tower trained on the train split only |
| 07_candidates | candidates | RecGPT channel: per-tag β-fused retrieval, interest-quota merge |
| 08_fusion | fused | baseline channel (tuned on validation) mixed with RecGPT at `share` |
| 09_eval | lists (+ results.json) | harness metrics of every channel on the sampled users |
| 10_explanations | pairs, explanations, served | LLM_RE for matched (interest, item) pairs of the final lists |
| 11_report | (report.html) | metrics table, plots, throughput, ledger, 3 users walked through |
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import polars as pl
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from recgpt.pipeline.config import RunConfig
from recgpt.pipeline.state import RunState

STAGE_VERSION = 1  # bump when a stage's code changes what it writes, so old markers stop matching


@dataclass(frozen=True)
class Stage:
    """One step of the chain: its folder, inputs, hashed config and the function that runs it."""

    name: str
    folder: str
    needs: tuple[str, ...]
    config: Callable[[RunConfig], dict[str, Any]]
    run: Callable[[RunState], dict[str, Any]]
    llm: bool = False  # whether it calls the LLM (its ledger bucket has the stage's name)
    title: str = ""


def _bar(state: RunState) -> Progress:
    return Progress(TextColumn("  {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=state.console, disable=not state.progress, transient=False)  # fmt: skip


def _dump(x: Any) -> Any:
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return dataclasses.asdict(x)
    return x.model_dump(mode="json") if hasattr(x, "model_dump") else x


# ---------------------------------------------------------------- 00 split


def run_split(state: RunState) -> dict[str, Any]:
    sp, task = state.split, state.task
    df = pl.DataFrame({
        "user_id": task.user_ids,
        "user_idx": task.user_idx.tolist(),
        "point_ts": [task.asof.point(u)[0] for u in task.user_ids],
        "target_item_id": [sp.item_ids[t[0]] if len(t) else None for t in task.targets],
        "n_history": [len(h) for h in task.histories],
    }, schema_overrides={"target_item_id": pl.String()})  # fmt: skip
    state.write("split", "users", df)
    flagged, report = state.untrusted.flagged, state.write("split", "untrusted", state.untrusted.report)
    state.console.print(f"  untrusted text: {flagged} texts look like instructions to a model" + (
        f" (redacted in prompts, output repeating them rejected; {escape(str(report))})" if flagged else ""),
        style="yellow" if flagged else None)  # fmt: skip
    return {"dataset": state.dataset.manifest.name, "fingerprint": state.fingerprint, "split": sp.config.kind,
            "untrusted_flagged": flagged,
            "items": int(sp.train.n_items), "train_interactions": len(sp.train.item_idx),
            "test_users": len(sp.test), "valid_users": len(sp.valid), "sampled_users": len(task),
            "sampled": len(task) < len(sp.test), "seed": state.cfg.seed}  # fmt: skip


# ---------------------------------------------------------------- 01 compress


def run_compress(state: RunState) -> dict[str, Any]:
    from recgpt.behavior.report import compression_report, summarize

    comp, view = state.compressor, state.task.asof
    with _bar(state) as bar:
        t = bar.add_task("compressing histories", total=len(state.users))
        results = comp.compress_many(view, state.users, on_done=lambda n: bar.advance(t, n))
    report = compression_report(view, results, comp)
    texts = pl.DataFrame({
        "user_id": [r.user_id for r in results], "asof_ts": [r.asof_ts for r in results],
        "text": [r.text for r in results], "tokens": [r.tokens for r in results],
        "full_tokens": [r.full_tokens for r in results], "n_events": [r.n_events for r in results],
        "n_reliable": [r.n_reliable for r in results], "dropped_events": [r.dropped_events for r in results],
    })  # fmt: skip
    state.write("compress", "compressed", texts)
    state.write("compress", "report", report)
    return summarize(report, [state.cfg.compression.budget])


# ---------------------------------------------------------------- 02 pool


def run_pool(state: RunState) -> dict[str, Any]:
    from recgpt.intent.pool import InterestPool

    pool = InterestPool.build(state.dataset.items, state.encoder, state.cfg.pool)
    matches = pool.match(state.task.asof, state.users)
    state.write("pool", "pool", pool.to_frame())
    state.write("pool", "matches", matches)
    return {"entries": len(pool.entries), "users_matched": matches["user_id"].n_unique()}


# ---------------------------------------------------------------- 03 interests, 04 tags


def _failure_stats(table: pl.DataFrame, failures: pl.DataFrame, users: int, fallback: pl.Expr) -> dict[str, Any]:
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
        **_fallback(failed.height, users, dict(failed.group_by("reason").len().sort("reason").rows())),
    }


def _fallback(n: int, asked: int, reasons: dict[str, int]) -> dict[str, Any]:
    return {"fallback": n, "asked": asked, "fallback_share": round(n / asked, 4) if asked else 0.0,
            "fallback_reasons": reasons}  # fmt: skip


class StageFailed(RuntimeError):
    """An LLM stage whose output cannot be trusted: the run stops and the stage is not marked done."""


def check_llm_stage(name: str, stats: dict[str, Any], llm: dict[str, Any] | None, limit: float) -> str:
    """Raise `StageFailed` on any transport failure or a fallback share above `limit`; else the line to print.

    Answers already generated stay in the LLM cache, so the rerun after a fix asks only what failed.
    """
    from recgpt.llm.types import TRANSPORT_FAILURES

    failures = (llm or {}).get("failures") or {}
    lost = {r: n for r, n in sorted(failures.items()) if r in TRANSPORT_FAILURES and n}
    keep = "the stage is not marked done; answers already generated are cached"
    if lost:
        first = (llm or {}).get("first_error") or "-"
        raise StageFailed(
            f"stage '{name}': {sum(lost.values())} of {(llm or {}).get('requests', '?')} LLM requests got no "
            f"answer from the backend ({_counts(lost)}; first: {first}); {keep}. Once the backend is back, run "
            f"the same command again: only the failed requests are sent."
        )
    if "fallback_share" not in stats:
        return ""
    share, unit = stats["fallback_share"], "pairs" if name == "explanations" else "users"
    line = (f"{stats['fallback']} of {stats['asked']} {unit} ({share:.0%}) on fallback, limit {limit:.0%}"
            + (f" ({_counts(stats['fallback_reasons'])})" if stats["fallback_reasons"] else ""))  # fmt: skip
    if share > limit:
        raise StageFailed(
            f"stage '{name}': {line}; {keep}. If the model cannot do better, raise the limit: "
            f"--set llm.max_fallback_share={min(1.0, round(share + 0.05, 2))} (all LLM stages) or "
            f"--set 'llm.max_fallback_share={{\"{name}\": {min(1.0, round(share + 0.05, 2))}}}' (this stage only)."
        )
    return line


def _counts(d: dict[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in d.items())


def fallback_summary(state: RunState) -> dict[str, dict[str, Any]]:
    """Fallback share of every finished LLM stage (for results.json, the report and the printed summary)."""
    out: dict[str, dict[str, Any]] = {}
    for st in STAGES:
        stats = ((state.marker(st.name) or {}).get("stats") or {}) if st.llm else {}
        if "fallback_share" in stats:
            out[st.name] = {k: stats[k] for k in ("fallback", "asked", "fallback_share", "fallback_reasons")}
            out[st.name]["limit"] = state.cfg.llm.fallback_limit(st.name)
    return out


def run_interests(state: RunState) -> dict[str, Any]:
    from recgpt.intent.interests import FALLBACK_TEMPLATE, mine_interests

    engine = state.guarded_engine("interests")
    interests, failures = mine_interests(state.cfg.interests, engine, state.contexts,  # type: ignore[arg-type]
                                         encoder=state.encoder, untrusted=state.untrusted)  # fmt: skip
    state.write("interests", "interests", interests)
    state.write("interests", "failures", failures)
    stats = _failure_stats(interests, failures, len(state.users), pl.col("template") == FALLBACK_TEMPLATE)
    stats["kinds"] = dict(interests.group_by("kind").len().rows())
    stats["rejected_untrusted"] = state.untrusted.rejected["interests"]
    stats["prompts_guarded"] = engine.checked
    return stats


def run_tags(state: RunState) -> dict[str, Any]:
    from recgpt.intent.tags import FALLBACK_RATIONALE, predict_tags

    engine = state.guarded_engine("tags")
    tags, failures = predict_tags(state.cfg.tags, engine, state.contexts,  # type: ignore[arg-type]
                                  state.read("interests", "interests"), state.untrusted)  # fmt: skip
    state.write("tags", "tags", tags)
    state.write("tags", "failures", failures)
    stats = _failure_stats(tags, failures, len(state.users), pl.col("rationale") == FALLBACK_RATIONALE)
    stats["distinct_tags"] = tags["tag"].n_unique()
    stats["rejected_untrusted"] = state.untrusted.rejected["tags"]
    stats["prompts_guarded"] = engine.checked
    return stats


# ---------------------------------------------------------------- 05 φ


def run_phi(state: RunState) -> dict[str, Any]:
    from recgpt.intent.phi import tag_hr
    from recgpt.intent.tags import history_baseline_tags

    tags = state.read("tags", "tags")
    phi = state.phi
    state.write("phi", "tag_categories", phi.predict(tags["tag"].to_list()))
    hr = tag_hr(tags, phi, state.split, task=state.task, user_ids=state.users)
    base = history_baseline_tags(state.task, state.dataset.items, state.users)
    hr_base = tag_hr(base, phi, state.split, task=state.task, user_ids=state.users)
    return {"llm_tags": hr, "history_tags": hr_base, "categories": len(phi.categories)}


# ---------------------------------------------------------------- 06 tri-tower


def run_tritower(state: RunState) -> dict[str, Any]:
    from recgpt.retrieval.index import ItemIndex
    from recgpt.retrieval.train import train_on_split

    res = train_on_split(state.split, state.cfg.tritower, embed=state.encoder.encode, progress=state.progress)
    res.model.save(state.dir("tritower") / "model")
    ItemIndex.build(res.model.item_vectors(), threads=1).save(state.dir("tritower") / "index")
    state.write("tritower", "history", pl.DataFrame(res.history))
    best = next((h for h in res.history if int(h["epoch"]) == res.best_epoch), res.history[-1])
    return {"epochs_run": len(res.history), "best_epoch": res.best_epoch, "train_s": round(res.train_s, 2),
            "valid_NDCG@10": best.get("valid_NDCG@10"), "trained_on": "split.train (validation for early stopping)"}


# ---------------------------------------------------------------- 07 candidates, 08 fusion


def run_candidates(state: RunState) -> dict[str, Any]:
    task = state.task
    cand = state.recgpt_channel.candidates(task.user_idx, task.histories)
    state.write("candidates", "candidates", cand)
    lens = cand.group_by("user_id").len()["len"]
    return {"users": cand["user_id"].n_unique(), "mean_list": float(lens.mean()) if lens.len() else 0.0,  # type: ignore[arg-type]
            "with_tag": float(cand["tag"].is_not_null().mean()) if cand.height else 0.0,  # type: ignore[arg-type]
            "distinct_items": cand["item_id"].n_unique()}  # fmt: skip


def tuned_baseline(state: RunState) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The baseline's validation-chosen params (from the fusion stage's stats)."""
    stats = state.read_stats("fusion")
    return stats["baseline_params"], stats["validation"]


def run_fusion(state: RunState) -> dict[str, Any]:
    from recgpt.eval.experiment import ExperimentConfig, run_experiment

    cfg = state.cfg
    exp_cfg = ExperimentConfig(models=[cfg.baseline], split=cfg.split, ks=cfg.ks, seed=cfg.seed, tune=True)
    with _bar(state) as bar:
        run = run_experiment(state.dataset, exp_cfg, split=state.eval_split, progress=bar).runs[0]
    task = state.task
    fused = state.fused_channel(run.params).candidates(task.user_idx, task.histories)
    state.write("fusion", "fused", fused)
    return {"baseline": cfg.baseline, "baseline_params": run.params, "validation": run.validation,
            "share": cfg.share, "recgpt_slots": float((fused["channel"] == "recgpt").mean()) if fused.height else 0.0}  # fmt: skip


# ---------------------------------------------------------------- 10 explanations


def explanation_pairs(state: RunState, top: pl.DataFrame, interests: pl.DataFrame) -> pl.DataFrame:
    """One (interest, item) pair per explained slot: the producing interest when φ matches it to the
    item, else the user's best-matching interest; slots with no matched interest get none."""
    from recgpt.intent.explanations import match_pairs

    cfg = state.cfg.explanations
    names = {u: g.sort("interest_id")["interest"].to_list() for (u,), g in interests.group_by("user_id")}
    rows: list[dict[str, Any]] = []
    for (u,), g in top.group_by("user_id", maintain_order=True):
        mine = names.get(u, [])
        pairs = match_pairs(cfg, mine, state.phi, g["item_id"].to_list()) if mine else None
        by_item: dict[str, list[tuple[str, str, float]]] = {}
        for interest, iid, cat, score in (pairs.iter_rows() if pairs is not None else ()):
            by_item.setdefault(iid, []).append((interest, cat, score))
        for rank, iid, producer in g.select("rank", "item_id", "interest").iter_rows():
            options = by_item.get(iid, [])
            own = [o for o in options if producer is not None and o[0] == producer]
            best = own[0] if own else max(options, key=lambda o: o[2], default=None)
            rows.append({"user_id": u, "rank": rank, "item_id": iid,
                         "interest": best[0] if best else None, "category": best[1] if best else None,
                         "score": best[2] if best else None})  # fmt: skip
    return pl.DataFrame(rows, schema={"user_id": pl.String(), "rank": pl.Int64(), "item_id": pl.String(),
                                      "interest": pl.String(), "category": pl.String(), "score": pl.Float64()})


def run_explanations(state: RunState) -> dict[str, Any]:
    from recgpt.intent.explanations import ExplanationTable, generate_explanations

    cfg = state.cfg.explanations
    fused = state.read("fusion", "fused")
    top = fused.filter(pl.col("rank") <= state.cfg.explain_top).sort("user_id", "rank")
    slots = explanation_pairs(state, top, state.read("interests", "interests"))
    pairs = slots.filter(pl.col("interest").is_not_null()).select("interest", "item_id", "category", "score")
    pairs = pairs.unique(subset=["interest", "item_id"], keep="first", maintain_order=True)
    table = generate_explanations(cfg, state.engine_for("explanations"), pairs, state.dataset.items,
                                  state.untrusted) if pairs.height else pl.DataFrame(
        schema={"interest": pl.String(), "item_id": pl.String(), "explanation": pl.String(),
                "template": pl.String(), "fallback": pl.Boolean()})  # fmt: skip
    serving = ExplanationTable(table, state.dataset.items, cfg, popularity=state.popularity,
                               untrusted=state.untrusted)  # fmt: skip
    got = [serving.get(i, iid) for i, iid in slots.select("interest", "item_id").iter_rows()]
    served = top.select("user_id", "rank", "item_id", "channel", "tag", pl.col("interest").alias("producer")).join(
        slots.select("user_id", "rank", pl.col("interest").alias("explained_interest")), on=["user_id", "rank"],
        how="left", maintain_order="left",
    ).with_columns(pl.Series("explanation", [g[0] for g in got], dtype=pl.String()),
                   pl.Series("item_only", [g[1] for g in got], dtype=pl.Boolean()))  # fmt: skip
    state.write("explanations", "pairs", pairs)
    state.write("explanations", "explanations", table)
    state.write("explanations", "served", served)
    n_fallback = int(table["fallback"].sum())
    ledger = state.engine_for("explanations").ledger.stages.get("explanations") if pairs.height else None
    reasons = dict(sorted(ledger.failures.items())) if ledger else {}
    if n_fallback - sum(reasons.values()) > 0:
        reasons["rule_broken"] = n_fallback - sum(reasons.values())
    return {"slots": top.height, "pairs": pairs.height, "llm_texts": int((~table["fallback"]).sum()),
            "rule_fallbacks": n_fallback, "item_only_slots": int(served["item_only"].sum()),
            "rejected_untrusted": state.untrusted.rejected["explanations"],
            **_fallback(n_fallback, pairs.height, reasons)}  # fmt: skip


# ---------------------------------------------------------------- 09 eval


def run_eval(state: RunState) -> dict[str, Any]:
    from recgpt.pipeline.evaluation import evaluate_channels

    return evaluate_channels(state)


def run_report(state: RunState) -> dict[str, Any]:
    from recgpt.pipeline.report import write_run_report

    path = write_run_report(state)
    return {"report": str(path)}


def _llm(cfg: RunConfig, stage: str) -> dict[str, Any]:
    return cfg.llm.identity(stage)


STAGES: tuple[Stage, ...] = (
    Stage("split", "00_split", (), lambda c: {"split": _dump(c.split), "users": c.users, "seed": c.seed},
          run_split, title="split and user sample"),
    Stage("compress", "01_compress", ("split",),
          lambda c: {"compression": _dump(c.compression), "tokenizer": c.tokenizer}, run_compress,
          title="behaviour compression (B_u)"),
    Stage("pool", "02_pool", ("split",), lambda c: {"pool": _dump(c.pool), "embedder": c.embedder}, run_pool,
          title="interest pool (I_m)"),
    Stage("interests", "03_interests", ("compress", "pool"),
          lambda c: {"interests": _dump(c.interests), "llm": _llm(c, "interests")}, run_interests, llm=True,
          title="LLM_UI interests"),
    Stage("tags", "04_tags", ("interests",), lambda c: {"tags": _dump(c.tags), "llm": _llm(c, "tags")}, run_tags,
          llm=True, title="LLM_IT tags"),
    Stage("phi", "05_phi", ("tags",), lambda c: {"phi": _dump(c.phi), "embedder": c.embedder}, run_phi,
          title="φ tag -> category, tag HR"),
    Stage("tritower", "06_tritower", ("split",),
          lambda c: {"tritower": _dump(c.tritower), "embedder": c.embedder}, run_tritower,
          title="tri-tower training (train split)"),
    Stage("candidates", "07_candidates", ("tritower", "tags"), lambda c: {"fusion": _dump(c.fusion)},
          run_candidates, title="RecGPT channel retrieval"),
    Stage("fusion", "08_fusion", ("candidates",),
          lambda c: {"baseline": c.baseline, "share": c.share, "ks": list(c.ks)}, run_fusion,
          title="baseline channel + fused list"),
    Stage("eval", "09_eval", ("fusion", "phi"), lambda c: {"compare": list(c.compare), "ks": list(c.ks)},
          run_eval, title="evaluation"),
    Stage("explanations", "10_explanations", ("fusion", "phi"),
          lambda c: {"explanations": _dump(c.explanations), "top": c.explain_top, "llm": _llm(c, "explanations")},
          run_explanations, llm=True, title="LLM_RE explanations"),
    Stage("report", "11_report", ("eval", "explanations", "compress"), lambda c: {"users": c.report_users},
          run_report, title="HTML report"),
)
STAGE_NAMES = tuple(s.name for s in STAGES)

__all__ = ["STAGES", "STAGE_NAMES", "STAGE_VERSION", "Stage", "StageFailed", "check_llm_stage", "explanation_pairs",
           "fallback_summary", "tuned_baseline"]
