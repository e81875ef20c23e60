"""The SERAL pipeline (serendipity recommendation, papers.md §2) as a `Pipeline` value, and `run_seral`.

Same house as the RecGPT chain: the same `Stage` / `Pipeline` / runner (resume by derived keys,
markers, folder lock, ledger, the LLM fallback check) and `Resources`; the split and compression
stages *are* the RecGPT stage objects. The run folder is `<runs_dir>/<name or dataset>-seral`.

| folder | tables | what |
| --- | --- | --- |
| 00_split | users, untrusted | seeded sample of test users (the RecGPT stage) |
| 01_compress | compressed, report | B_u from the test `AsOf` view (the RecGPT stage; the walk-through shows it) |
| 02_profiles | profiles, failures | cognition profiles: static, short-term per window, long-term (LLM, guarded) |
| 03_candidates | candidates (+ item_vectors.npy) | serving candidates outside the user's familiar categories |
| 04_labels | lists | labelled evaluation lists (log labels; `RUN_DIR/verdicts.parquet` overrides) |
| 05_seren | serving, eval, failures | SerenGPT rankings of the serving and the evaluation lists |
| 06_cache | cache | the serendipity CACHE: top items per user, score, reason, profile version, model |
| 07_base | base | the classic channel (validation-best of `baselines`, fitted on train) |
| 08_slot | lists | final list with the serendipity slot merged at the quota, and without it |
| 09_eval | rows, seren (+ results.json) | NDCG@10 etc. with/without the slot, serendipity metrics, Hit@1/NDCG@3 |
| 10_report | (report.html) | metrics tables and a walk-through of `report_users` users |

Nearline (`recgpt.serendipity.nearline.refresh`, `recgpt nearline`) serves from a finished run: it
refreshes only the users new events arrive for, in a copy of the cache under `RUN_DIR/nearline/`.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console

from recgpt.pipeline.core import Pipeline, Stage, StageContext
from recgpt.pipeline.runner import RunSummary
from recgpt.pipeline.seral_config import SeralConfig, verdicts_digest
from recgpt.pipeline.seral_stages import (
    run_base,
    run_cache,
    run_candidates,
    run_labels,
    run_profiles,
    run_seren,
    run_slot,
)
from recgpt.pipeline.stages import USER_STAGES


def run_eval(ctx: StageContext) -> dict[str, Any]:
    from recgpt.pipeline.seral_eval import evaluate_seral

    return evaluate_seral(ctx)


def run_report(ctx: StageContext) -> dict[str, Any]:
    from recgpt.pipeline.seral_report import report_from_stage

    return {"report": str(report_from_stage(ctx))}


SPLIT, COMPRESS = USER_STAGES[0], USER_STAGES[1]
assert (SPLIT.name, COMPRESS.name) == ("split", "compress")

SERAL = Pipeline(
    "seral",
    SeralConfig,
    (
        SPLIT,
        COMPRESS,
        Stage(
            "profiles",
            "02_profiles",
            run_profiles,
            reads=("split/users",),
            config=("profiles", "tokenizer", "llm:profiles"),
            llm=True,
            title="cognition profiles (static, short-term, long-term)",
        ),
        Stage(
            "candidates",
            "03_candidates",
            run_candidates,
            reads=("split/users",),
            config=("candidates", "embedder", "seed"),
            title="serving candidates (unfamiliar categories)",
        ),
        Stage(
            "labels",
            "04_labels",
            run_labels,
            reads=("candidates/*",),
            config=("labels", "candidates", "verdicts"),
            title="labelled evaluation lists",
        ),
        Stage(
            "seren",
            "05_seren",
            run_seren,
            reads=("profiles/profiles", "candidates/candidates", "labels/lists"),
            config=("seren", "candidates.category_level", "llm:seren"),
            llm=True,
            title="SerenGPT rankings",
        ),
        Stage(
            "cache",
            "06_cache",
            run_cache,
            reads=("seren/serving", "profiles/profiles"),
            config=("slot.cache_size", "llm:seren"),
            title="serendipity cache",
        ),
        Stage(
            "base",
            "07_base",
            run_base,
            reads=("split/users",),
            config=("baseline", "baselines", "split", "ks", "seed", "slot.k"),
            title="classic channel",
        ),
        Stage(
            "slot",
            "08_slot",
            run_slot,
            reads=("base/base", "cache/cache"),
            config=("slot", "ks"),
            title="serendipity slot merged into the final list",
        ),
        Stage(
            "eval",
            "09_eval",
            run_eval,
            reads=("slot/lists", "base/*", "labels/lists", "seren/eval", "candidates/*"),
            config=(
                "ks",
                "split",
                "seed",
                "category_level",
                "slot",
                "labels",
                "candidates.category_level",
                "llm:seren",
            ),
            title="evaluation",
        ),
        Stage(
            "report",
            "10_report",
            run_report,
            reads=(
                "eval/*",
                "compress/compressed",
                "profiles/profiles",
                "candidates/candidates",
                "seren/serving",
                "cache/cache",
                "slot/lists",
                "split/users",
            ),
            config=("report_users", "seed", "slot", "ks", "split"),
            title="HTML report",
        ),
    ),
)
SERAL_STAGE_NAMES = SERAL.names


def check_seral_until(until: str | None) -> None:
    """`--until` must name a SERAL stage."""
    from recgpt.pipeline.preflight import check_until

    check_until(until, SERAL)


def run_seral(
    cfg: SeralConfig,
    *,
    console: Console | None = None,
    progress: bool = True,
    backend: Any = None,
    encoder: Any = None,
    until: str | None = None,
) -> RunSummary:
    """Run (or resume) the SERAL pipeline for `cfg`; `until` stops after the named stage.

    `backend` / `encoder` replace the configured LLM backend and sentence encoder (tests); they do
    not enter any key. People's verdicts in `RUN_DIR/verdicts.parquet` enter the labels stage's key
    through `cfg.verdicts` (filled here).
    """
    from recgpt.datasets import load_dataset
    from recgpt.pipeline.preflight import check_catalogue, check_llm_specs
    from recgpt.pipeline.run import start_run

    console = console or Console()
    check_seral_until(until)
    dataset = load_dataset(cfg.dataset)
    if backend is None:
        check_llm_specs(cfg, until, SERAL)
    check_catalogue(cfg, dataset.items.height, (("ks", max(cfg.ks)), ("slot.k", cfg.slot.k)))
    cfg = cfg.model_copy(update={"verdicts": verdicts_digest(cfg.run_dir(dataset.manifest.name))})
    return start_run(
        SERAL, cfg, dataset, console=console, progress=progress, backend=backend, encoder=encoder, until=until
    )


__all__ = ["SERAL", "SERAL_STAGE_NAMES", "check_seral_until", "run_seral"]
