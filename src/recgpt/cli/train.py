"""`recgpt train sft`: curriculum LoRA SFT of one chain task, from the logs (or a judge buffer).

`train sft --task tags --dataset data/ml-100k` builds the task's sample table
(`recgpt.training.tables.task_samples`, over the builders of `recgpt.training.builders`: leakage-safe (user, as-of) contexts from the train split, never
one of the chain's evaluation users), optionally puts the catalogue curriculum tasks in front
(foundation: category, key info; intermediate: what to buy; advanced: induction, trained together
with the task), trains one LoRA adapter level by level (`recgpt.training.sft`), writes the report and
prints the `recgpt run` command that serves the result. Re-running the same command resumes.

Defaults fit about 13 minutes on 2 free cores (SmolLM2-135M, fp32): tag prompts are about 1,500
tokens with their answer, and one LoRA step costs about 6-7 ms per token with 2 threads (runtime.md
§2), so 56 tag samples plus 64 short catalogue samples make about 800 s of training. `--max-minutes`
(default 18) stops training cleanly on a busier machine; the adapter trained so far is still merged
and served, and the same command later continues from the checkpoint.

`train distill --task tags --teacher SPEC` builds SFT data from a teacher's answers to the chain's
own prompts, reject-sampled by the rules and a calibrated judge (`recgpt.training.teacher`), and with
`--train` trains on it.

`train export-gguf OUT` converts the merged model to GGUF for llama.cpp with llama.cpp's own
converter.

`train self-train START` runs self-training rounds from a `train sft` folder (generate with the current
model, rules + gated judge filter, add, SFT again); `train incremental MODEL` refreshes LLM_IT on a
new time window (interest completion, balancing, purification, then SFT from MODEL). Both reuse the
SFT settings that START / MODEL were trained with (train_config.json), so only the runtime knobs
(threads, budget, steps) are options.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated

import typer

from recgpt.cli.errors import cli_errors
from recgpt.cli.options import (
    DATASET_HELP,
    PROGRESS_HELP,
    SEED_HELP,
    GgufType,
    SftTask,
    auto_threads,
    deprecated_option,
    llm_option,
    renamed,
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
from recgpt.cli.train_distill import distill
from recgpt.cli.train_seren import seren
from recgpt.folders import slug
from recgpt.training.tables import LOG_TASKS, TASKS

train_app = typer.Typer(
    help="Align the chain's LLMs: curriculum LoRA SFT (and self-training, incremental).",
    no_args_is_help=True,
    rich_markup_mode=None,
)


@train_app.command("sft")
@cli_errors(*BAD_INPUT)
def sft(
    task: Annotated[SftTask, typer.Option("--task", "-t", help="The chain task to align.")],
    dataset: Annotated[str | None, typer.Option("--dataset", "-d", help=DATASET_HELP)] = None,
    users: Annotated[
        int,
        typer.Option(
            "--users", "-n", min=1, help="Training users sampled from the logs (judge: buffer samples)."
        ),
    ] = 56,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output folder (default runs/train/<dataset>-<task>).")
    ] = None,
    max_steps: Annotated[int | None, typer.Option(min=1, help=MAX_STEPS_HELP)] = None,
    base: Annotated[
        str | None, typer.Option(help="Base model: HF folder or .gguf (default: the shipped SmolLM2).")
    ] = None,
    foundation: Annotated[
        bool, typer.Option("--with-foundation/--no-foundation", help="Catalogue curriculum tasks first.")
    ] = True,
    resume: Annotated[
        bool, typer.Option("--resume/--no-resume", help="Continue from the latest checkpoint in --out.")
    ] = True,
    buffer: Annotated[Path | None, typer.Option(help="Judge data buffer folder (for --task judge).")] = None,
    catalogue_per_task: Annotated[int, typer.Option(min=1, help="Samples per catalogue task.")] = 16,
    lr: Annotated[
        float, typer.Option(min=0.0, help="Peak learning rate (high: a CPU run has few steps).")
    ] = 5e-4,
    epochs: Annotated[
        float, typer.Option(min=0.01, help="Epochs per level when --max-steps is not set.")
    ] = 1.0,
    batch_size: Annotated[int, typer.Option(min=1, help="Samples per device batch.")] = 1,
    grad_accum: Annotated[int, typer.Option(min=1, help="Batches per optimizer step.")] = 4,
    max_seq_len: Annotated[
        int, typer.Option(min=64, help="Longer samples are dropped (tag prompts: ~1,500 tokens).")
    ] = 2048,
    lora_r: Annotated[int, typer.Option(min=1, help="LoRA rank (alpha = 2 x rank).")] = 8,
    threads: Annotated[int, threads_option()] = 0,
    max_minutes: Annotated[float | None, typer.Option(min=0.1, help=MAX_MINUTES_HELP)] = 18.0,
    eval_users_n: Annotated[int, typer.Option("--eval-users", min=1, help=EVAL_USERS_HELP)] = 200,
    eval_seed: Annotated[int, typer.Option(help=EVAL_SEED_HELP)] = 0,
    seed: Annotated[int, typer.Option(help=SEED_HELP)] = 0,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help=PROGRESS_HELP)] = True,
) -> None:
    """Curriculum LoRA SFT of one chain task; prints the `recgpt run` command that uses the result."""
    from recgpt.pipeline.run import default_console
    from recgpt.training.sft import SFTConfig, run_sft
    from recgpt.training.tables import task_samples

    console = default_console()
    t0 = time.perf_counter()
    n_threads = resolve_threads(threads)
    name_task = task.value
    console.print(
        f"[bold]recgpt train sft[/bold] --task {name_task}: dataset {dataset}, load average "
        f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} cores, {n_threads} torch thread(s)"
    )
    samples, info = task_samples(
        name_task,
        dataset,
        users=users,
        buffer=buffer,
        foundation=foundation,
        catalogue_per_task=catalogue_per_task,
        eval_users_n=eval_users_n,
        eval_seed=eval_seed,
        seed=seed,
        progress=progress,
    )
    name = info.get("dataset_name") or (buffer.name if buffer else "judge")
    out = out or Path("runs") / "train" / slug(f"{name}-{name_task}")  # the manifest name is untrusted
    counts = ", ".join(f"{lv} {n}" for lv, n in samples.group_by("level").len().sort("level").iter_rows())
    console.print(
        f"samples: {samples.height} ({counts}); {info['task_samples']} {name_task}; "
        f"{info.get('excluded_eval_users', 0)} evaluation users excluded ({time.perf_counter() - t0:.0f} s)"
    )
    cfg = SFTConfig(
        base=base,
        learning_rate=lr,
        epochs=epochs,
        max_steps=max_steps,
        batch_size=batch_size,
        grad_accum=grad_accum,
        max_seq_len=max_seq_len,
        lora_r=lora_r,
        lora_alpha=2 * lora_r,
        threads=n_threads,
        seed=seed,
        max_minutes=max_minutes,
    )
    result = run_sft(cfg, samples, out, resume=resume, progress=progress, console=console)
    console.print(curriculum_table(result))
    if not result.complete:
        console.print(
            f"[yellow]stopped at the --max-minutes budget ({max_minutes} min)[/yellow]: the adapter "
            "so far is saved and merged; run the same command again to continue"
        )
    merged = result.merged_dir or result.adapter_dir
    console.print(f"adapter:  {result.adapter_dir}\nmerged:   {merged}\nreport:   {out / 'report.html'}")
    if name_task in LOG_TASKS and dataset is not None:
        console.print(
            "use it in the chain:\n  "
            f"recgpt run --dataset {dataset} --llm transformers:{merged} --name {name}-sft-{name_task}"
        )
    else:
        console.print(f"use it as the judge:\n  recgpt judge run RUN_DIR --llm transformers:{merged}")
    wall_time(console, t0)


train_app.command("distill")(distill)
train_app.command("seren")(seren)


@train_app.command("export-gguf")
@cli_errors()
def export_gguf(
    folder: Annotated[
        Path, typer.Argument(help="A `recgpt train sft` output folder, or a merged HF model folder.")
    ],
    outtype: Annotated[GgufType, typer.Option(help="GGUF weight type.")] = GgufType.q8_0,
    file: Annotated[
        Path | None, typer.Option(help="Output file (default FOLDER/model-<outtype>.gguf).")
    ] = None,
) -> None:
    """The merged model as a GGUF for llama.cpp, with llama.cpp's own converter (fetched once by pip)."""
    from recgpt.cli.errors import EXIT_BAD_INPUT, fail
    from recgpt.training.export import export_gguf as export

    merged = folder / "merged" if (folder / "merged" / "config.json").is_file() else folder
    if not (merged / "config.json").is_file():
        raise typer.BadParameter(f"no merged HF model in {folder} (config.json)", param_hint="FOLDER")
    t0 = time.perf_counter()
    try:
        path = export(merged, file or folder / f"model-{outtype.value}.gguf", outtype.value)
    except RuntimeError as e:  # the converter could not be fetched or failed on this model
        raise fail("error", str(e), EXIT_BAD_INPUT) from e
    typer.echo(
        f"wrote {path} ({path.stat().st_size / 1e6:.0f} MB, {time.perf_counter() - t0:.0f} s)\n"
        f"use it in the chain:\n  recgpt run --llm llamacpp:{path}"
    )


@train_app.command("self-train")
@cli_errors(*BAD_INPUT, RuntimeError)
def self_train_cmd(
    start: Annotated[
        Path,
        typer.Argument(help="A `recgpt train sft --task tags` output folder (merged/ + samples.parquet)."),
    ],
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="The dataset START was trained on.")],
    rounds: Annotated[
        int, typer.Option(min=1, help="Self-training rounds (a finished round is not redone).")
    ] = 1,
    users: Annotated[
        int, typer.Option("--users", "-n", min=1, help="Training users the model answers per round.")
    ] = 48,
    samples: Annotated[
        int,
        typer.Option(
            "--samples",
            min=1,
            max=16,
            help="Answers drawn per prompt (best of n: the first greedy, the others sampled); at most "
            "one is kept.",
        ),
    ] = 3,
    llm: Annotated[str | None, llm_option(JUDGE_LLM_HELP)] = None,
    calibration: Annotated[Path | None, typer.Option(help=CALIBRATION_HELP)] = None,
    gate: Annotated[float, typer.Option(min=0.0, max=1.0, help=GATE_HELP)] = 0.8,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output folder (default START/self-train).")
    ] = None,
    max_steps: Annotated[int | None, typer.Option(min=1, help=MAX_STEPS_HELP)] = None,
    threads: Annotated[int, threads_option()] = 0,
    max_minutes: Annotated[float | None, typer.Option(min=0.1, help=MAX_MINUTES_HELP)] = None,
    eval_users_n: Annotated[int, typer.Option("--eval-users", min=1, help=EVAL_USERS_HELP)] = 200,
    eval_seed: Annotated[int, typer.Option(help=EVAL_SEED_HELP)] = 0,
    seed: Annotated[int, typer.Option(help=SEED_HELP)] = 0,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help=PROGRESS_HELP)] = True,
    judge: Annotated[str | None, deprecated_option("--judge", "--llm")] = None,
) -> None:
    """Self-training evolution of LLM_IT: generate -> filter -> add -> SFT again, pass rate per round."""
    from rich.table import Table

    from recgpt.pipeline.run import default_console
    from recgpt.training.builders import LogsConfig
    from recgpt.training.selftrain import SelfTrainConfig, self_train
    from recgpt.training.tables import dataset_split, trained_config

    judge_spec = renamed(llm, judge, old="--judge", new="--llm")
    console = default_console()
    t0 = time.perf_counter()
    ds, split = dataset_split(dataset)
    cfg = SelfTrainConfig(
        rounds=rounds,
        users_per_round=users,
        n_samples=samples,
        judge=judge_spec,
        calibration=calibration,
        gate_threshold=gate,
        eval_users=eval_users_n,
        eval_seed=eval_seed,
        seed=seed,
    )
    sft_cfg = trained_config(
        start, threads=resolve_threads(threads), max_steps=max_steps, max_minutes=max_minutes
    )
    records = self_train(
        cfg,
        sft_cfg,
        ds,
        split,
        LogsConfig(seed=seed),
        start,
        out or start / "self-train",
        progress=progress,
        console=console,
    )
    t = Table(title="self-training rounds")
    for c in (
        "round",
        "prompts",
        "failed",
        "rule-rejected",
        "judge-rejected",
        "kept",
        "pass rate",
        "train set",
        "filter",
    ):
        t.add_column(c, justify="right")
    for r in records:
        t.add_row(
            str(r.round),
            str(r.prompts),
            str(sum(r.failed.values())),
            str(r.rule_rejected),
            str(r.judge_rejected),
            str(r.kept),
            f"{r.pass_rate:.3f}",
            str(r.train_samples),
            r.judge_note,
        )
    console.print(t)
    console.print(
        f"model: {records[-1].model_dir}\nuse it in the chain:\n  recgpt run --dataset {dataset} "
        f"--llm transformers:{records[-1].model_dir}\nwall time {time.perf_counter() - t0:.0f} s"
    )


@train_app.command("incremental")
@cli_errors(*BAD_INPUT)
def incremental_cmd(
    model: Annotated[
        Path, typer.Argument(help="The current LLM_IT model: a merged HF folder (e.g. <sft out>/merged).")
    ],
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="The dataset MODEL was trained on.")],
    window_days: Annotated[
        int, typer.Option(min=1, help="The new window: its last N days (paper: 14).")
    ] = 14,
    end: Annotated[
        int | None, typer.Option(help="Window end, epoch seconds (default: after the last training event).")
    ] = None,
    users: Annotated[
        int | None, typer.Option("--users", "-n", min=1, help="Cap on users of the window (default: all).")
    ] = None,
    llm: Annotated[str | None, llm_option(JUDGE_LLM_HELP)] = None,
    calibration: Annotated[Path | None, typer.Option(help=CALIBRATION_HELP)] = None,
    gate: Annotated[float, typer.Option(min=0.0, max=1.0, help=GATE_HELP)] = 0.8,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output folder (default runs/train/incremental-<...>).")
    ] = None,
    max_steps: Annotated[int | None, typer.Option(min=1, help=MAX_STEPS_HELP)] = None,
    threads: Annotated[int, threads_option()] = 0,
    max_minutes: Annotated[float | None, typer.Option(min=0.1, help=MAX_MINUTES_HELP)] = 18.0,
    eval_users_n: Annotated[int, typer.Option("--eval-users", min=1, help=EVAL_USERS_HELP)] = 200,
    eval_seed: Annotated[int, typer.Option(help=EVAL_SEED_HELP)] = 0,
    seed: Annotated[int, typer.Option(help=SEED_HELP)] = 0,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help=PROGRESS_HELP)] = True,
    judge: Annotated[str | None, deprecated_option("--judge", "--llm")] = None,
) -> None:
    """Incremental LLM_IT learning on a new time window: completion, balancing, purification, SFT."""
    import json

    from recgpt.pipeline.run import default_console
    from recgpt.training.builders import LogsConfig
    from recgpt.training.incremental import IncrementalConfig, incremental
    from recgpt.training.tables import dataset_split, trained_config

    judge_spec = renamed(llm, judge, old="--judge", new="--llm")
    console = default_console()
    ds, split = dataset_split(dataset)
    cfg = IncrementalConfig(
        window_days=window_days,
        end=end,
        judge=judge_spec,
        calibration=calibration,
        gate_threshold=gate,
        eval_users=eval_users_n,
        eval_seed=eval_seed,
    )
    sft_cfg = trained_config(
        model.parent, threads=resolve_threads(threads), max_steps=max_steps, max_minutes=max_minutes
    )
    dest = out or Path("runs") / "train" / slug(f"incremental-{ds.manifest.name}-{window_days}d")
    summary = incremental(
        cfg,
        sft_cfg,
        ds,
        split,
        LogsConfig(users=users, seed=seed),
        model,
        dest,
        progress=progress,
        console=console,
    )
    console.print(json.dumps(summary, indent=2))
    console.print(
        f"use it in the chain:\n  recgpt run --dataset {dataset} --llm transformers:{summary['model']}"
    )


__all__ = ["LOG_TASKS", "TASKS", "auto_threads", "train_app"]
