"""`recgpt train sft`: curriculum LoRA SFT of one chain task, from the logs (or a judge buffer).

`train sft --task tags --dataset data/ml-100k` builds the task's samples with the training-data
builders (`recgpt.training.builders`: leakage-safe (user, as-of) contexts from the train split, never
one of the chain's evaluation users), optionally puts the catalogue curriculum tasks in front
(foundation: category, key info; intermediate: what to buy; advanced: induction, trained together
with the task), trains one LoRA adapter level by level (`recgpt.training.sft`), writes the report and
prints the `recgpt run` command that serves the result. Re-running the same command resumes.

Defaults fit about 13 minutes on 2 free cores (SmolLM2-135M, fp32): tag prompts are about 1,500
tokens with their answer, and one LoRA step costs about 6-7 ms per token with 2 threads (runtime.md
§2), so 56 tag samples plus 64 short catalogue samples make about 800 s of training. `--max-minutes`
(default 18) stops training cleanly on a busier machine; the adapter trained so far is still merged
and served, and the same command later continues from the checkpoint.

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
from typing import Any

import typer

from recgpt.folders import slug

os.environ.setdefault("OMP_NUM_THREADS", "1")  # torch oversubscribes 2 shared cores otherwise (runtime.md)

train_app = typer.Typer(help="Align the chain's LLMs: curriculum LoRA SFT (and self-training, incremental).",
                        no_args_is_help=True)  # fmt: skip
TASKS = ("interests", "tags", "explanations", "judge")
LOG_TASKS = ("interests", "tags", "explanations")


def auto_threads() -> int:
    """Cores left free by the 1-minute load average (at least 1): oversubscribed torch is 10x slower."""
    import math

    cores = os.cpu_count() or 1  # a core counts as free unless the load average holds 3/4 of it
    return max(1, min(cores, math.ceil(cores - os.getloadavg()[0] - 0.25)))


def task_samples(
    task: str,
    dataset: str | None,
    *,
    users: int,
    buffer: Path | None = None,
    foundation: bool = True,
    catalogue_per_task: int = 16,
    eval_users_n: int = 200,
    eval_seed: int = 0,
    seed: int = 0,
    cache_dir: Path | None = None,
    progress: bool = True,
) -> tuple[Any, dict[str, Any]]:
    """The SFT sample table of one task (+ the catalogue curriculum) and what went into it.

    Users of the chain's evaluation sample (`sample_users(split.test, eval_users_n, eval_seed)`, the
    `recgpt run` defaults) are excluded, so training never sees the users the chain is measured on.
    """
    from recgpt.training.data import concat_samples

    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if task == "judge" and buffer is None:
        raise ValueError("--task judge trains on a judge data buffer: pass --buffer DIR (recgpt label import)")
    if dataset is None and (task in LOG_TASKS or foundation):
        raise ValueError(f"--dataset is needed for task {task!r}" + (" and the foundation tasks" if foundation else ""))
    info: dict[str, Any] = {"task": task, "dataset": dataset}
    parts = []
    if dataset is not None:
        from recgpt.training.builders import CatalogueConfig, build_catalogue_samples, eval_users

        ds, split = _dataset_split(dataset)
        excluded = eval_users(split, eval_users_n, eval_seed)
        info.update(dataset_name=ds.manifest.name, excluded_eval_users=len(excluded))
        if foundation:
            cat = CatalogueConfig(per_task=catalogue_per_task, seed=seed)
            parts.append(build_catalogue_samples(ds, cat, events=split.train_events))
        if task in LOG_TASKS:
            parts.append(_log_samples(task, ds, split, excluded, users, seed, cache_dir, progress))
    if task == "judge":
        from recgpt.judge.buffer import JudgeBuffer, judge_sft_samples

        if not (Path(buffer) / "buffer.parquet").is_file():  # type: ignore[arg-type]
            raise FileNotFoundError(f"no judge buffer at {buffer} (buffer.parquet): fill it with `recgpt label import`")
        parts.append(judge_sft_samples(JudgeBuffer(buffer).training_set(max_size=users, seed=seed)))  # type: ignore[arg-type]
    samples = concat_samples(*parts)
    info["task_samples"] = int(samples.filter(samples["task"] == task).height)
    if info["task_samples"] == 0:
        raise ValueError(f"the builders made no {task} sample (too few eligible users or labels?)")
    return samples, info


def _log_samples(task: str, ds: Any, split: Any, excluded: list[str], users: int, seed: int,
                 cache_dir: Path | None, progress: bool) -> Any:  # fmt: skip
    from recgpt.retrieval.embeddings import Embedder
    from recgpt.training import builders

    build = {"tags": builders.build_tag_samples, "interests": builders.build_interest_samples,
             "explanations": builders.build_explanation_samples}[task]  # fmt: skip
    import transformers

    transformers.utils.logging.disable_progress_bar()  # MiniLM's "Loading weights" bar
    encoder = Embedder(cache_dir=cache_dir)
    return build(ds, split, builders.LogsConfig(users=users, seed=seed), encoder=encoder, exclude_users=excluded,
                 progress=progress)  # fmt: skip


def _summary(result: Any) -> Any:
    from rich.table import Table

    t = Table(title="curriculum phases")
    for c in ("level", "samples", "too long", "mean tokens", "steps", "first loss", "last loss", "seconds"):
        t.add_column(c, justify="left" if c == "level" else "right")
    for r in result.levels:
        loss = ("" if r.first_loss is None else f"{r.first_loss:.3f}", "" if r.last_loss is None else f"{r.last_loss:.3f}")
        t.add_row(r.level, str(r.samples), str(r.dropped_too_long), f"{r.tokens_mean:.0f}",
                  f"{r.steps}/{r.max_steps}", *loss, f"{r.runtime_s:.0f}")  # fmt: skip
    return t


@train_app.command("sft")
def sft(
    task: str = typer.Option(..., "--task", "-t", help="interests, tags, explanations or judge."),
    dataset: str | None = typer.Option(None, "--dataset", "-d", help="Dataset folder (recgpt data import) or bundled:ml-latest-small."),
    users: int = typer.Option(56, "--users", "-n", min=1, help="Training users sampled from the logs (judge: buffer samples)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output folder (default runs/train/<dataset>-<task>)."),
    max_steps: int | None = typer.Option(None, "--max-steps", min=1, help="Cap on optimizer steps per curriculum level (default: one epoch)."),
    base: str | None = typer.Option(None, "--base", help="Base model: HF folder or .gguf (default: the shipped SmolLM2)."),
    foundation: bool = typer.Option(True, "--with-foundation/--no-foundation", help="Catalogue curriculum tasks first."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Continue from the latest checkpoint in --out."),
    buffer: Path | None = typer.Option(None, "--buffer", help="Judge data buffer folder (for --task judge)."),
    catalogue_per_task: int = typer.Option(16, "--catalogue-per-task", min=1, help="Samples per catalogue task."),
    lr: float = typer.Option(5e-4, "--lr", min=0.0, help="Peak learning rate (high: a CPU run has few steps)."),
    epochs: float = typer.Option(1.0, "--epochs", min=0.01, help="Epochs per level when --max-steps is not set."),
    batch_size: int = typer.Option(1, "--batch-size", min=1),
    grad_accum: int = typer.Option(4, "--grad-accum", min=1),
    max_seq_len: int = typer.Option(2048, "--max-seq-len", min=64, help="Longer samples are dropped (tag prompts: ~1,500)."),
    lora_r: int = typer.Option(8, "--lora-r", min=1),
    threads: int = typer.Option(0, "--threads", min=0, help="torch threads (0: the cores the load average leaves free)."),
    max_minutes: float | None = typer.Option(18.0, "--max-minutes", min=0.1, help="Stop training cleanly after this long (resumable)."),
    eval_users_n: int = typer.Option(200, "--eval-users", min=1, help="The chain's evaluation sample to exclude (recgpt run --users)."),
    eval_seed: int = typer.Option(0, "--eval-seed", help="Its seed (recgpt run --seed)."),
    seed: int = typer.Option(0, "--seed"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:  # fmt: skip
    """Curriculum LoRA SFT of one chain task; prints the `recgpt run` command that uses the result."""
    from recgpt.data.errors import DataError
    from recgpt.pipeline.run import default_console
    from recgpt.training.data import SampleError
    from recgpt.training.sft import SFTConfig, run_sft

    console = default_console()
    t0 = time.perf_counter()
    n_threads = threads or auto_threads()
    console.print(f"[bold]recgpt train sft[/bold] --task {task}: dataset {dataset}, load average "
                  f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} cores, {n_threads} torch thread(s)")  # fmt: skip
    try:
        samples, info = task_samples(task, dataset, users=users, buffer=buffer, foundation=foundation,
                                     catalogue_per_task=catalogue_per_task, eval_users_n=eval_users_n,
                                     eval_seed=eval_seed, seed=seed, progress=progress)  # fmt: skip
    except (ValueError, FileNotFoundError, DataError) as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from e
    name = info.get("dataset_name") or (buffer.name if buffer else "judge")
    out = out or Path("runs") / "train" / slug(f"{name}-{task}")  # the manifest name is untrusted
    counts = ", ".join(f"{lv} {n}" for lv, n in samples.group_by("level").len().sort("level").iter_rows())
    console.print(f"samples: {samples.height} ({counts}); {info['task_samples']} {task}; "
                  f"{info.get('excluded_eval_users', 0)} evaluation users excluded "
                  f"({time.perf_counter() - t0:.0f} s)")  # fmt: skip
    try:
        cfg = SFTConfig(base=base, learning_rate=lr, epochs=epochs, max_steps=max_steps, batch_size=batch_size,
                        grad_accum=grad_accum, max_seq_len=max_seq_len, lora_r=lora_r, lora_alpha=2 * lora_r,
                        threads=n_threads, seed=seed, max_minutes=max_minutes)  # fmt: skip
        result = run_sft(cfg, samples, out, resume=resume, progress=progress, console=console)
    except (ValueError, FileNotFoundError) as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from e
    except SampleError as e:  # pragma: no cover - builders validate; kept for hand-made tables
        console.print(f"[red]bad samples:[/red] {e}")
        raise typer.Exit(2) from e
    console.print(_summary(result))
    if not result.complete:
        console.print(f"[yellow]stopped at the --max-minutes budget ({max_minutes} min)[/yellow]: the adapter "
                      "so far is saved and merged; run the same command again to continue")  # fmt: skip
    merged = result.merged_dir or result.adapter_dir
    console.print(f"adapter:  {result.adapter_dir}\nmerged:   {merged}\nreport:   {out / 'report.html'}")
    if task in LOG_TASKS and dataset is not None:
        console.print("use it in the chain:\n  "
                      f"recgpt run --dataset {dataset} --llm transformers:{merged} --name {name}-sft-{task}")  # fmt: skip
    else:
        console.print(f"use it as the judge:\n  recgpt judge run RUN_DIR --llm transformers:{merged}")
    load = os.getloadavg()
    wall = time.perf_counter() - t0
    console.print(f"wall time {wall:.1f} s ({wall / 60:.1f} min); load average now {load[0]:.2f} (1 min), "
                  f"{load[1]:.2f} (5 min)")  # fmt: skip


@train_app.command("export-gguf")
def export_gguf(
    folder: Path = typer.Argument(..., help="A `recgpt train sft` output folder, or a merged HF model folder."),
    outtype: str = typer.Option("q8_0", "--outtype", help="GGUF weight type: q8_0, f16, bf16 or f32."),
    file: Path | None = typer.Option(None, "--file", help="Output file (default FOLDER/model-<outtype>.gguf)."),
) -> None:
    """The merged model as a GGUF for llama.cpp, with llama.cpp's own converter (fetched once by pip)."""
    from recgpt.training.sft import export_gguf as export

    merged = folder / "merged" if (folder / "merged" / "config.json").is_file() else folder
    if not (merged / "config.json").is_file():
        raise typer.BadParameter(f"no merged HF model in {folder} (config.json)", param_hint="FOLDER")
    if outtype not in ("q8_0", "f16", "bf16", "f32"):
        raise typer.BadParameter(f"unsupported --outtype {outtype!r}", param_hint="--outtype")
    t0 = time.perf_counter()
    try:
        path = export(merged, file or folder / f"model-{outtype}.gguf", outtype)
    except RuntimeError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from e
    typer.echo(f"wrote {path} ({path.stat().st_size / 1e6:.0f} MB, {time.perf_counter() - t0:.0f} s)\n"
               f"use it in the chain:\n  recgpt run --llm llamacpp:{path}")  # fmt: skip


def _trained_config(folder: Path, **override: Any) -> Any:
    """The SFTConfig a `train sft` folder was trained with (defaults when it has none), with overrides."""
    import json

    from recgpt.training.sft import SFTConfig

    meta = folder / "train_config.json"
    base = json.loads(meta.read_text())["config"] if meta.is_file() else {}
    return SFTConfig.from_dict({**base, **{k: v for k, v in override.items() if v is not None}})


def _dataset_split(dataset: str) -> tuple[Any, Any]:
    """The dataset and the chain's default split (what `recgpt run` evaluates on)."""
    from recgpt.data.split import make_split
    from recgpt.pipeline.config import RunConfig
    from recgpt.pipeline.state import load_dataset

    ds = load_dataset(dataset)
    return ds, make_split(ds, RunConfig().split)


@train_app.command("self-train")
def self_train_cmd(
    start: Path = typer.Argument(..., help="A `recgpt train sft --task tags` output folder (merged/ + samples.parquet)."),
    dataset: str = typer.Option(..., "--dataset", "-d", help="The dataset START was trained on."),
    rounds: int = typer.Option(1, "--rounds", min=1, help="Self-training rounds (a finished round is not redone)."),
    users: int = typer.Option(48, "--users", "-n", min=1, help="Training users the model answers per round."),
    judge: str | None = typer.Option(None, "--judge", help="Judge backend spec (e.g. llamacpp); none: rules only."),
    calibration: Path | None = typer.Option(None, "--calibration", help="`recgpt judge calibrate --out` JSON (the gate)."),
    gate: float = typer.Option(0.8, "--gate", min=0.0, max=1.0, help="Judge accuracy needed before it may filter."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output folder (default START/self-train)."),
    max_steps: int | None = typer.Option(None, "--max-steps", min=1, help="Cap on SFT steps per level and round."),
    threads: int = typer.Option(0, "--threads", min=0, help="torch threads (0: the cores left free)."),
    max_minutes: float | None = typer.Option(None, "--max-minutes", min=0.1, help="SFT budget per round (resumable)."),
    eval_users_n: int = typer.Option(200, "--eval-users", min=1, help="The chain's evaluation sample to exclude."),
    eval_seed: int = typer.Option(0, "--eval-seed"),
    seed: int = typer.Option(0, "--seed"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:  # fmt: skip
    """Self-training evolution of LLM_IT: generate -> filter -> add -> SFT again, pass rate per round."""
    from recgpt.pipeline.run import default_console
    from recgpt.training.builders import LogsConfig
    from recgpt.training.selftrain import SelfTrainConfig, self_train

    console = default_console()
    t0 = time.perf_counter()
    try:
        ds, split = _dataset_split(dataset)
        cfg = SelfTrainConfig(rounds=rounds, users_per_round=users, judge=judge, calibration=calibration,
                              gate_threshold=gate, eval_users=eval_users_n, eval_seed=eval_seed, seed=seed)  # fmt: skip
        sft_cfg = _trained_config(start, threads=threads or auto_threads(), max_steps=max_steps,
                                  max_minutes=max_minutes)  # fmt: skip
        records = self_train(cfg, sft_cfg, ds, split, LogsConfig(seed=seed), start, out or start / "self-train",
                             progress=progress, console=console)  # fmt: skip
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from e
    from rich.table import Table

    t = Table(title="self-training rounds")
    for c in ("round", "prompts", "failed", "rule-rejected", "judge-rejected", "kept", "pass rate", "train set", "filter"):
        t.add_column(c, justify="right")
    for r in records:
        t.add_row(str(r.round), str(r.prompts), str(sum(r.failed.values())), str(r.rule_rejected),
                  str(r.judge_rejected), str(r.kept), f"{r.pass_rate:.3f}", str(r.train_samples), r.judge_note)  # fmt: skip
    console.print(t)
    console.print(f"model: {records[-1].model_dir}\nuse it in the chain:\n  recgpt run --dataset {dataset} "
                  f"--llm transformers:{records[-1].model_dir}\nwall time {time.perf_counter() - t0:.0f} s")  # fmt: skip


@train_app.command("incremental")
def incremental_cmd(
    model: Path = typer.Argument(..., help="The current LLM_IT model: a merged HF folder (e.g. <sft out>/merged)."),
    dataset: str = typer.Option(..., "--dataset", "-d"),
    window_days: int = typer.Option(14, "--window-days", min=1, help="The new window: its last N days (paper: 14)."),
    end: int | None = typer.Option(None, "--end", help="Window end, epoch seconds (default: after the last training event)."),
    users: int | None = typer.Option(None, "--users", "-n", min=1, help="Cap on users of the window (default: all)."),
    judge: str | None = typer.Option(None, "--judge", help="Judge backend spec for purification; none: rules only."),
    calibration: Path | None = typer.Option(None, "--calibration", help="`recgpt judge calibrate --out` JSON (the gate)."),
    gate: float = typer.Option(0.8, "--gate", min=0.0, max=1.0),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output folder (default runs/train/incremental-<end>)."),
    max_steps: int | None = typer.Option(None, "--max-steps", min=1),
    threads: int = typer.Option(0, "--threads", min=0),
    max_minutes: float | None = typer.Option(18.0, "--max-minutes", min=0.1),
    eval_users_n: int = typer.Option(200, "--eval-users", min=1),
    eval_seed: int = typer.Option(0, "--eval-seed"),
    seed: int = typer.Option(0, "--seed"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:  # fmt: skip
    """Incremental LLM_IT learning on a new time window: completion, balancing, purification, SFT."""
    import json

    from recgpt.pipeline.run import default_console
    from recgpt.training.builders import LogsConfig
    from recgpt.training.incremental import IncrementalConfig, incremental

    console = default_console()
    try:
        ds, split = _dataset_split(dataset)
        cfg = IncrementalConfig(window_days=window_days, end=end, judge=judge, calibration=calibration,
                                gate_threshold=gate, eval_users=eval_users_n, eval_seed=eval_seed)  # fmt: skip
        sft_cfg = _trained_config(model.parent, threads=threads or auto_threads(), max_steps=max_steps,
                                  max_minutes=max_minutes)  # fmt: skip
        dest = out or Path("runs") / "train" / slug(f"incremental-{ds.manifest.name}-{window_days}d")
        summary = incremental(cfg, sft_cfg, ds, split, LogsConfig(users=users, seed=seed), model, dest,
                              progress=progress, console=console)  # fmt: skip
    except (ValueError, FileNotFoundError) as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from e
    console.print(json.dumps(summary, indent=2))
    console.print(f"use it in the chain:\n  recgpt run --dataset {dataset} --llm transformers:{summary['model']}")
