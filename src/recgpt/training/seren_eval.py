"""SerenGPT evaluation: base zero-shot vs SFT vs SFT+IPO on held-out eval lists, with references.

Every model ranks the same eval LISTS through `recgpt.serendipity.seren.rank_lists` (the task the
SERAL pipeline runs: same prompt, rules, fallback), each served by the transformers backend so the
three differ only in their weights (the base is the same dequantized SmolLM2 folder that training
started from). Answers are cached in `out/llm-cache.sqlite` keyed by model digest, so a stopped
evaluation resumes. Metrics are H3's `ranking_metrics` (Hit@1, NDCG@3, NDCG@10 with bootstrap CIs) and
`compare_rankings` (paired ratios and differences against the base); the non-LLM references
(`reference_rankings`: random = chance, popularity, distance) are scored on the same lists.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from recgpt.behavior.report import write_parquet_atomic
from recgpt.data.atomic import write_json_atomic
from recgpt.eval.serendipity import compare_rankings, ranking_metrics
from recgpt.serendipity.references import reference_rankings
from recgpt.serendipity.seren import SerenConfig, SerenInput, rank_lists, ranking_stats

if TYPE_CHECKING:
    from recgpt.data.split import Split
    from recgpt.llm.types import Backend
    from recgpt.serendipity.candidates import Catalogue


def seren_models(out: str | os.PathLike[str], base: Path) -> dict[str, str]:
    """Backend specs of the base, SFT and SFT+IPO models of a `run_seren_training` folder (those that exist)."""
    out = Path(out)
    specs = {"base": f"transformers:{base}"}
    for name, folder in (("sft", out / "sft" / "merged"), ("sft+ipo", out / "ipo" / "merged")):
        if (folder / "config.json").is_file():
            specs[name] = f"transformers:{folder}"
    return specs


def eval_references(
    lists: pl.DataFrame, split: Split, catalogue: Catalogue, *, seed: int = 0
) -> dict[str, pl.DataFrame]:
    """RANKINGS of the random, popularity (train counts) and distance references on eval `lists`."""
    task = split.test
    pos = {u: i for i, u in enumerate(task.user_ids)}
    histories = {u: task.histories[pos[u]] for u in lists["user_id"].to_list()}
    ids = list(catalogue.item_ids)
    return {
        "random": reference_rankings(lists, "random", seed=seed),
        "popularity": reference_rankings(lists, "popularity", item_ids=ids, popularity=catalogue.popularity),
        "distance": reference_rankings(
            lists, "distance", item_ids=ids, item_vectors=catalogue.vectors, histories=histories
        ),
    }


def evaluate_seren(
    cfg: SerenConfig,
    inputs: Sequence[SerenInput],
    lists: pl.DataFrame,
    models: Mapping[str, str | Backend],
    out: str | os.PathLike[str],
    *,
    references: Mapping[str, pl.DataFrame] | None = None,
    threads: int = 1,
    seed: int = 0,
    console: Any = None,
) -> dict[str, Any]:
    """Rank the eval `lists` with each model (name -> backend spec, or a `Backend`) and score them; writes
    `out/eval/<name>.parquet` (RANKINGS) and `out/eval.json`, and returns what it wrote."""
    from recgpt.llm import LLMCache, LLMEngine, make_backend

    if set(lists["part"].unique().to_list()) != {"eval"}:
        raise ValueError("evaluate_seren scores 'eval' lists only (train lists were trained on)")
    out = Path(out)
    (out / "eval").mkdir(parents=True, exist_ok=True)
    rankings: dict[str, pl.DataFrame] = {}
    result: dict[str, Any] = {"models": {}, "references": {}, "specs": {}}
    for name, spec in models.items():
        t0 = time.perf_counter()
        if isinstance(spec, str):
            backend = (
                make_backend(spec, threads=threads) if spec.startswith("transformers") else make_backend(spec)
            )
        else:
            backend = spec
        result["specs"][name] = spec if isinstance(spec, str) else f"{backend.name}:{backend.model_id}"
        with LLMEngine(backend, cache=LLMCache(out / "llm-cache.sqlite"), max_retries=1) as engine:
            ranked, failures = rank_lists(cfg, engine, inputs)
        rankings[name] = ranked
        write_parquet_atomic(ranked, out / "eval" / f"{name.replace('+', '_')}.parquet")
        stats = ranking_stats(ranked, failures)
        result["models"][name] = {
            **ranking_metrics(ranked, lists, seed=seed),
            **stats,
            "seconds": round(time.perf_counter() - t0, 1),
        }
        if console is not None:
            m = result["models"][name]
            console.print(
                f"{name}: Hit@1 {m['Hit@1']:.3f}, NDCG@3 {m['NDCG@3']:.3f} on {m['n_lists']} lists "
                f"(fallback {m['fallback_share']:.0%}, {m['seconds']:.0f} s)"
            )
    for name, ranked in (references or {}).items():
        result["references"][name] = ranking_metrics(ranked, lists, seed=seed)
    if "base" in rankings:
        result["vs_base"] = {
            name: compare_rankings(r, rankings["base"], lists, seed=seed)
            for name, r in rankings.items()
            if name != "base"
        }
    result["note"] = (
        "Hit@1 / NDCG@3 over eval lists (one serendipitous held-out item among list_size candidates); "
        "CIs: 95% bootstrap over lists; models served by the transformers backend (greedy)"
    )
    write_json_atomic(out / "eval.json", result)
    return result


__all__ = ["eval_references", "evaluate_seren", "seren_models"]
