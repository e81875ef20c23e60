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
Modules: `config` (RunConfig, quickstart preset), `state` (shared lazily built objects, tables),
`stages` (the stage functions and their hashes), `run` (the resumable runner), `evaluation`
(harness rows, results.json), `report` (terminal table, HTML report).
"""

from __future__ import annotations

from recgpt.pipeline.config import LLMSettings, RunConfig, load_config, parse_assignments, quickstart_config
from recgpt.pipeline.run import RunSummary, StageOutcome, run_pipeline
from recgpt.pipeline.stages import STAGE_NAMES, STAGES

__all__ = [
    "STAGES",
    "STAGE_NAMES",
    "LLMSettings",
    "RunConfig",
    "RunSummary",
    "StageOutcome",
    "load_config",
    "parse_assignments",
    "quickstart_config",
    "run_pipeline",
]
