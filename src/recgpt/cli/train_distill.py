"""`recgpt train distill`: SFT data from a teacher's answers to the chain's own prompts.

`train distill --task tags --teacher openai:MODEL@http://127.0.0.1:8080/v1 --dataset DIR` asks the
teacher (any backend spec) the chain's LLM_IT (or LLM_UI) prompts of training users (evaluation
users excluded), `--samples-per-prompt` times each (reject sampling: sample 0 greedy, the others at
`--temperature`), keeps the answers that pass the chain's post-processing rules and, with `--llm`
and a `--calibration` that clears `--gate`, the judge; writes OUT/samples.parquet (the SFT sample
table) and OUT/distill.json, prints kept and rejected counts with the reasons, and with `--train`
trains a LoRA adapter on the kept samples (OUT/sft). Re-running resumes: the teacher's answers are
cached in OUT/llm-cache.sqlite (`recgpt.training.teacher`).
"""

from __future__ import annotations

import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from recgpt.cli.errors import cli_errors
from recgpt.cli.options import (
    DATASET_HELP,
    LLM_SPECS,
    PROGRESS_HELP,
    SEED_HELP,
    llm_option,
    resolve_threads,
    threads_option,
)
from recgpt.cli.train_common import (
    BAD_INPUT,
    CALIBRATION_HELP,
    EVAL_SEED_HELP,
    EVAL_USERS_HELP,
    GATE_HELP,
    JUDGE_LLM_HELP,
    MAX_MINUTES_HELP,
    MAX_STEPS_HELP,
    curriculum_table,
    wall_time,
)
from recgpt.folders import slug


class DistillTask(StrEnum):
    """The chain tasks a teacher can be distilled on (`recgpt.training.teacher.DISTILL_TASKS`)."""

    tags = "tags"
    interests = "interests"


@cli_errors(*BAD_INPUT)
def distill(
    teacher: Annotated[
        str, typer.Option("--teacher", help=f"The teacher backend. Spec: {LLM_SPECS}.", show_default=False)
    ],
    dataset: Annotated[str, typer.Option("--dataset", "-d", help=DATASET_HELP)],
    task: Annotated[DistillTask, typer.Option("--task", "-t", help="The chain task to distil.")] = (
        DistillTask.tags
    ),
    users: Annotated[
        int, typer.Option("--users", "-n", min=1, help="Training users whose prompts the teacher answers.")
    ] = 48,
    max_samples: Annotated[
        int | None, typer.Option(min=1, help="Stop asking once this many samples are kept.")
    ] = None,
    samples_per_prompt: Annotated[
        int, typer.Option(min=1, help="Answers asked per prompt (reject sampling; the first greedy).")
    ] = 2,
    temperature: Annotated[
        float, typer.Option(min=0.0, help="Sampling temperature of the answers after the first.")
    ] = 0.7,
    keep_per_prompt: Annotated[int, typer.Option(min=1, help="Distinct answers kept per prompt.")] = 1,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Output folder (default runs/train/<data>-distill-<task>)."),
    ] = None,
    llm: Annotated[str | None, llm_option(JUDGE_LLM_HELP)] = None,
    calibration: Annotated[Path | None, typer.Option(help=CALIBRATION_HELP)] = None,
    gate: Annotated[float, typer.Option(min=0.0, max=1.0, help=GATE_HELP)] = 0.8,
    train: Annotated[
        bool, typer.Option("--train/--no-train", help="Then train a LoRA adapter on the kept samples.")
    ] = False,
    max_steps: Annotated[int | None, typer.Option(min=1, help=MAX_STEPS_HELP)] = None,
    max_minutes: Annotated[float | None, typer.Option(min=0.1, help=MAX_MINUTES_HELP)] = 18.0,
    threads: Annotated[int, threads_option()] = 0,
    eval_users_n: Annotated[int, typer.Option("--eval-users", min=1, help=EVAL_USERS_HELP)] = 200,
    eval_seed: Annotated[int, typer.Option(help=EVAL_SEED_HELP)] = 0,
    seed: Annotated[int, typer.Option(help=SEED_HELP)] = 0,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help=PROGRESS_HELP)] = True,
) -> None:
    """SFT data from a teacher's answers, reject-sampled by the rules and a calibrated judge."""
    from rich.table import Table

    from recgpt.llm.backends import check_spec
    from recgpt.pipeline.run import default_console
    from recgpt.training.teacher import DistillConfig, reject_reasons, run_teacher_distill

    check_spec(teacher)
    console = default_console()
    t0 = time.perf_counter()
    cfg = DistillConfig(
        task=task.value,
        users=users,
        samples_per_prompt=samples_per_prompt,
        temperature=temperature,
        keep_per_prompt=keep_per_prompt,
        max_samples=max_samples,
        eval_users=eval_users_n,
        eval_seed=eval_seed,
        seed=seed,
    )
    name = Path(dataset.removeprefix("bundled:")).name
    out = out or Path("runs") / "train" / slug(f"{name}-distill-{task.value}")
    rep = run_teacher_distill(
        dataset,
        teacher,
        out,
        cfg,
        judge=llm,
        calibration=calibration,
        gate=gate,
        progress=progress,
        console=console,
    )
    s = rep.stats
    t = Table(title=f"distillation: {rep.teacher['backend']} {rep.teacher['model']}")
    for c in ("prompts", "answers", "failed", "rule-rejected", "judge-rejected", "duplicates", "kept"):
        t.add_column(c, justify="right")
    t.add_row(
        str(rep.prompts),
        str(s.prompts),
        str(sum(s.failed.values())),
        str(sum(s.rule_rejected.values())),
        str(s.judge_rejected),
        str(rep.duplicates + rep.over_quota),
        str(rep.samples.height),
    )
    console.print(t)
    console.print(f"filter: chain rules; {rep.judge_note}")
    for why, n in reject_reasons(s):
        console.print(f"  rejected {n}: {why}")
    asked = sum(v.get("calls", 0) for v in rep.ledger.values())
    hits = sum(v.get("cache_hits", 0) for v in rep.ledger.values())
    console.print(
        f"teacher: {asked} backend calls, {hits} answers from the cache ({out / 'llm-cache.sqlite'})\n"
        f"samples:  {out / 'samples.parquet'} ({rep.samples.height} kept of {s.prompts} answers to "
        f"{rep.prompts} prompts; {rep.prompts_kept} prompts have one)"
    )
    if train:
        _train(rep.samples, out / "sft", dataset, task.value, max_steps, max_minutes, threads, seed, progress)
    wall_time(console, t0)


def _train(
    samples: object,
    out: Path,
    dataset: str,
    task: str,
    max_steps: int | None,
    max_minutes: float | None,
    threads: int,
    seed: int,
    progress: bool,
) -> None:
    """LoRA SFT on the kept samples (the `train sft` defaults), and the command that serves it."""
    from recgpt.pipeline.run import default_console
    from recgpt.training.sft import SFTConfig, run_sft

    console = default_console()
    if not getattr(samples, "height", 0):
        raise ValueError("--train: the teacher left no kept sample to train on")
    cfg = SFTConfig(
        learning_rate=5e-4,  # `train sft`'s default: a CPU run has few steps
        max_steps=max_steps,
        threads=resolve_threads(threads),
        seed=seed,
        max_minutes=max_minutes,
        max_seq_len=2048,
    )
    result = run_sft(cfg, samples, out, progress=progress, console=console)  # type: ignore[arg-type]
    console.print(curriculum_table(result))
    if not result.complete:
        console.print(
            f"[yellow]stopped at the --max-minutes budget ({max_minutes} min)[/yellow]: re-run to continue"
        )
    merged = result.merged_dir or result.adapter_dir
    console.print(
        f"use it in the chain:\n  recgpt run --dataset {dataset} --llm transformers:{merged} "
        f"--name distill-{task}"
    )


__all__ = ["DistillTask", "distill"]
