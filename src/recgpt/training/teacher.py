"""Teacher distillation of a dataset, as `recgpt train distill` runs it (RecGPT §1.7 stage 2).

`builders.distill.run_distill` turns a teacher's answers to some prompts into kept SFT samples. This
module is the rest of the job for one dataset and one chain task:

1. **Prompts**: the chain's own LLM_IT (`tags`) or LLM_UI (`interests`) prompts of leakage-safe
   (user, as-of) contexts of the train split (`builders.tag_contexts`), the chain's evaluation users
   excluded, exactly as the log builders and self-training build them.
2. **Reject sampling**: each prompt is asked `samples_per_prompt` times. Sample 0 is the prompt as
   the chain serves it (greedy); samples 1.. use `temperature` and their own seed, so a teacher that
   fails a rule once gets more chances. Every answer goes through `run_distill`: it must validate,
   keep the chain's post-processing rules (`chain_rules`) and, where a judge is trusted (the gate of
   `selftrain.judge_filter`: a calibrated judge whose accuracy reaches the threshold), pass the judge.
   Identical answers to one prompt count once; at most `keep_per_prompt` distinct answers per prompt
   are kept (the first passing samples), so a prompt the teacher answers well does not outweigh
   the others.
3. **Resumable**: the teacher's valid answers go to `out/llm-cache.sqlite`; re-running the same
   command asks the backend nothing it has already answered (only answers that failed validation
   are asked again). Prompts are processed in chunks and the run stops
   at `max_samples` kept samples, so a paid teacher is not asked for more than is needed.

The output folder holds `samples.parquet` (the SFT sample table, `recgpt.data.sft` contract, source
"distill", lineage: teacher, template, sample index, verdict) and `distill.json` (what happened: per
sample the failures, rule rejections by reason, judge rejections; the teacher's ledger).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from recgpt.data.atomic import write_json_atomic
from recgpt.llm.engine import LLMEngine
from recgpt.training.builders.distill import DistillStats, JudgeFilter, run_distill
from recgpt.training.data import TrainPrompt, concat_samples, save_samples

DISTILL_TASKS = ("tags", "interests")


class DistillConfig(BaseModel):
    """Settings of one distillation run (module docstring)."""

    model_config = ConfigDict(frozen=True)

    task: Literal["tags", "interests"] = "tags"
    users: int = Field(default=48, ge=1, description="training users whose prompts the teacher answers")
    samples_per_prompt: int = Field(default=1, ge=1, description="answers asked per prompt (reject sampling)")
    temperature: float = Field(default=0.7, ge=0.0, description="sampling temperature of samples 1..")
    keep_per_prompt: int = Field(default=1, ge=1, description="distinct kept answers per prompt")
    max_samples: int | None = Field(default=None, ge=1, description="stop once this many are kept")
    min_pass: float = Field(default=1.0, ge=0.0, le=1.0, description="share of judged parts that must pass")
    chunk_prompts: int = Field(default=16, ge=1, description="prompts asked per chunk")
    eval_users: int = 200
    eval_seed: int = 0
    seed: int = 0


@dataclasses.dataclass
class DistillReport:
    """What a distillation run produced (also written as distill.json)."""

    samples: pl.DataFrame
    stats: DistillStats
    prompts: int  # distinct prompts asked
    prompts_kept: int  # prompts with at least one kept answer
    duplicates: int  # passing answers identical to an earlier passing answer of the same prompt
    over_quota: int  # distinct passing answers beyond keep_per_prompt
    teacher: dict[str, str]
    judge_note: str
    ledger: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {
            "kept": self.samples.height,
            "prompts": self.prompts,
            "prompts_kept": self.prompts_kept,
            "answers": self.stats.as_dict(),
            "duplicates": self.duplicates,
            "over_quota": self.over_quota,
            "teacher": self.teacher,
            "judge": self.judge_note,
            "ledger": self.ledger,
        }


def expand_samples(prompts: Sequence[TrainPrompt], n: int, temperature: float) -> list[TrainPrompt]:
    """Each prompt `n` times: sample 0 as served (greedy), samples k >= 1 at `temperature`, seed k."""
    out = []
    for p in prompts:
        for k in range(n):
            req = p.request
            if k:
                sampling = req.sampling.model_copy(update={"temperature": temperature, "seed": k})
                req = dataclasses.replace(req, sampling=sampling)
            out.append(dataclasses.replace(p, request=req, lineage={**p.lineage, "sample": k}))
    return out


def _merge(total: DistillStats, part: DistillStats) -> None:
    total.prompts += part.prompts
    total.failed.update(part.failed)
    total.rule_rejected.update(part.rule_rejected)
    total.judge_rejected += part.judge_rejected
    total.judged_parts += part.judged_parts
    total.passed_parts += part.passed_parts
    total.kept += part.kept


def keep_per_prompt(samples: pl.DataFrame, k: int) -> pl.DataFrame:
    """At most `k` rows per prompt (same user, as-of and messages), the first ones."""
    rank = pl.int_range(pl.len()).over(["user_id", "as_of", "messages"])
    return samples.filter(rank < k)


def distill_prompts(
    prompts: Sequence[TrainPrompt],
    teacher: LLMEngine,
    config: DistillConfig,
    filter_fn: JudgeFilter | None = None,
    *,
    judge_note: str = "rules only",
    console: Any = None,
) -> DistillReport:
    """Reject-sample the teacher's answers to `prompts`, chunk by chunk, up to `config.max_samples`."""
    stats = DistillStats()
    kept: list[pl.DataFrame] = []
    n_kept = asked = duplicates = over = 0
    step = config.chunk_prompts
    for start in range(0, len(prompts), step):
        chunk = prompts[start : start + step]
        asked += len(chunk)
        many = expand_samples(chunk, config.samples_per_prompt, config.temperature)
        table, part = run_distill(many, teacher, filter_fn, source="distill", min_pass=config.min_pass)
        _merge(stats, part)
        duplicates += part.kept - table.height  # samples_frame collapsed identical answers
        chosen = keep_per_prompt(table, config.keep_per_prompt)
        over += table.height - chosen.height
        if config.max_samples is not None:
            chosen = chosen.head(config.max_samples - n_kept)
        kept.append(chosen)
        n_kept += chosen.height
        if console is not None:
            console.print(f"[progress] distill: {asked}/{len(prompts)} prompts asked, {n_kept} samples kept")
        if config.max_samples is not None and n_kept >= config.max_samples:
            break
    samples = concat_samples(*kept)
    prompts_kept = samples.select("user_id", "as_of", "messages").n_unique() if samples.height else 0
    return DistillReport(
        samples=samples,
        stats=stats,
        prompts=asked,
        prompts_kept=prompts_kept,
        duplicates=duplicates,
        over_quota=over,
        teacher={"backend": teacher.backend.name, "model": teacher.backend.model_id},
        judge_note=judge_note,
        ledger={k: v.to_json() for k, v in teacher.ledger.stages.items()},
    )


def dataset_prompts(
    dataset: Any, split: Any, config: DistillConfig, *, encoder: Any, progress: bool = True
) -> list[TrainPrompt]:
    """The chain's prompts of `config.task` for training users of `dataset` (evaluation users excluded)."""
    from recgpt.training.builders import LogsConfig, eval_users, interest_prompts, tag_contexts, tag_prompts

    logs = LogsConfig(users=config.users, seed=config.seed)
    excluded = eval_users(split, config.eval_users, config.eval_seed)
    ctxs = tag_contexts(dataset, split, logs, exclude_users=excluded, encoder=encoder, progress=progress)
    build = tag_prompts if config.task == "tags" else interest_prompts
    return build(ctxs, logs)


def run_teacher_distill(
    dataset: str,
    teacher_spec: str,
    out: str | Path,
    config: DistillConfig,
    *,
    judge: str | None = None,
    calibration: Path | None = None,
    gate: float = 0.8,
    encoder: Any = None,
    progress: bool = True,
    console: Any = None,
) -> DistillReport:
    """Distil `teacher_spec`'s answers on `dataset` into `out` (samples.parquet, distill.json)."""
    from recgpt.llm.backends import make_backend
    from recgpt.llm.cache import LLMCache
    from recgpt.training.selftrain import judge_filter
    from recgpt.training.tables import dataset_split

    if config.task not in DISTILL_TASKS:
        raise ValueError(
            f"--task {config.task!r} cannot be distilled; choose one of {', '.join(DISTILL_TASKS)}"
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ds, split = dataset_split(dataset)
    if encoder is None:
        from recgpt.retrieval.embeddings import Embedder

        encoder = Embedder(cache_dir=out / "embed-cache")
    prompts = dataset_prompts(ds, split, config, encoder=encoder, progress=progress)
    if not prompts:
        raise ValueError(f"{dataset}: no training user has enough history for a {config.task} prompt")
    filter_fn, note = judge_filter(judge, calibration, gate, config.task, cache=out / "judge-cache.sqlite")
    cache = LLMCache(out / "llm-cache.sqlite")
    teacher = LLMEngine(make_backend(teacher_spec), cache=cache, progress=progress)
    try:
        report = distill_prompts(prompts, teacher, config, filter_fn, judge_note=note, console=console)
    finally:
        teacher.close()  # the backend and the cache
    save_samples(report.samples, out / "samples.parquet")
    write_json_atomic(
        out / "distill.json",
        {"dataset": dataset, "config": config.model_dump(mode="json"), **report.as_dict()},
    )
    return report


def reject_reasons(stats: DistillStats, top: int = 5) -> list[tuple[str, int]]:
    """The most frequent reasons an answer was not kept (failures, rules, judge), most first."""
    reasons: Counter[str] = Counter({f"no valid answer: {k}": v for k, v in stats.failed.items()})
    reasons.update(stats.rule_rejected)
    if stats.judge_rejected:
        reasons["judge rejected"] = stats.judge_rejected
    return reasons.most_common(top)


__all__ = [
    "DISTILL_TASKS",
    "DistillConfig",
    "DistillReport",
    "dataset_prompts",
    "distill_prompts",
    "expand_samples",
    "keep_per_prompt",
    "reject_reasons",
    "run_teacher_distill",
]
