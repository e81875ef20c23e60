"""The RecGPT chain end to end (RecGPT V1, papers.md §1): one resumable run over ordered stages.

    from recgpt.pipeline import RunConfig, run_pipeline
    summary = run_pipeline(RunConfig(dataset="data/ml-100k", users=200))

Stages (`stages.STAGES`), each writing Parquet tables and a `done.json` marker under
`runs/<name>/<NN_stage>/`: split -> compress (B_u from the test `AsOf` view) -> interest pool ->
LLM_UI interests -> LLM_IT tags -> φ + tag HR -> tri-tower training (train split only) -> RecGPT
channel candidates -> baseline channel + fused list -> evaluation (harness metrics on the sampled
test users, `results.json`) -> LLM_RE explanations of the final lists -> HTML report. (Evaluation
does not read the explanations, so it runs first: the metrics are there before the slowest LLM stage.)

Every user-specific LLM prompt is built from the `AsOf` view of the test task and checked with
`recgpt.intent.guard_requests` before generation: a leak aborts the stage with `LeakageError`.

Modules, bottom up (no module imports one above it): `config` (RunConfig, quickstart preset),
`core` (Stage, Pipeline, StageContext: declarations and derived keys), `runner` (the generic
resumable runner), `resources` (lazily built encoder, engines, split), `tables` (stored lists as
channels), `steps` (the per-user building blocks the stages and the refresher share), `evaluation`
(harness rows, results.json), `report` (terminal table, HTML report), `explain` and `stages` (the
RecGPT stages, `RECGPT`), `preflight`, `run` (`run_pipeline`), `refresh` (the nearline refresh of
one user of a finished run, for serving: `make_refresher`).

The names below load on first use, so `import recgpt.pipeline` stays cheap (no torch).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from recgpt.pipeline.config import (
        LLMSettings,
        RunConfig,
        load_config,
        parse_assignments,
        quickstart_config,
    )
    from recgpt.pipeline.core import Pipeline, Stage, StageContext
    from recgpt.pipeline.refresh import RecGPTRefresher, make_refresher
    from recgpt.pipeline.report import print_results
    from recgpt.pipeline.run import RunSummary, StageOutcome, default_console, run_pipeline
    from recgpt.pipeline.stages import RECGPT, STAGE_NAMES, STAGES

_EXPORTS = {
    "LLMSettings": "config",
    "RunConfig": "config",
    "load_config": "config",
    "parse_assignments": "config",
    "quickstart_config": "config",
    "Pipeline": "core",
    "Stage": "core",
    "StageContext": "core",
    "RunSummary": "run",
    "StageOutcome": "run",
    "default_console": "run",
    "run_pipeline": "run",
    "RECGPT": "stages",
    "STAGES": "stages",
    "STAGE_NAMES": "stages",
    "print_results": "report",
    "RecGPTRefresher": "refresh",
    "make_refresher": "refresh",
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'recgpt.pipeline' has no attribute {name!r}")
    return getattr(importlib.import_module(f"recgpt.pipeline.{_EXPORTS[name]}"), name)


__all__ = [
    "RECGPT",
    "STAGES",
    "STAGE_NAMES",
    "LLMSettings",
    "Pipeline",
    "RecGPTRefresher",
    "RunConfig",
    "RunSummary",
    "Stage",
    "StageContext",
    "StageOutcome",
    "default_console",
    "load_config",
    "make_refresher",
    "parse_assignments",
    "print_results",
    "quickstart_config",
    "run_pipeline",
]
