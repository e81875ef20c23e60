"""`recgpt train seren`: SerenGPT alignment (SERAL §2): SFT, then IPO with an SFT term, then evaluation.

`train seren --dataset DIR` builds labelled candidate lists (`recgpt.serendipity.labels`: train lists
from train users' train-split sequences with an internal cut, eval lists from a seeded sample of test
users whose held-out item is serendipitous; the eval sample's users never give a train list), the
users' cognition profiles as of each list's point (`--profiles rules`: H1's rule profiles, cheap;
`llm`: the LLM writes them, cached in OUT/llm-cache.sqlite), the samples (`training.seren_data`), trains
SFT then `L_IPO + α·L_SFT` (`training.seren`, each phase within `--budget-s`), ranks the eval lists
with the base model, SFT and SFT+IPO (`training.seren_eval`, with the random / popularity / distance
references) and writes OUT/report.html. Re-running the same command resumes every part.
"""

from __future__ import annotations

import os
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from recgpt.cli.errors import cli_errors
from recgpt.cli.options import (
    DATASET_HELP,
    PROGRESS_HELP,
    SEED_HELP,
    llm_option,
    resolve_threads,
    threads_option,
)
from recgpt.cli.train_common import BAD_INPUT, curriculum_table, wall_time
from recgpt.folders import slug


class ProfileMode(StrEnum):
    """Who writes the cognition profiles SerenGPT reads."""

    rules = "rules"
    llm = "llm"


@cli_errors(*BAD_INPUT)
def seren(
    dataset: Annotated[str, typer.Option("--dataset", "-d", help=DATASET_HELP)],
    users: Annotated[
        int, typer.Option("--users", "-n", min=1, help="Most train lists (one per train user).")
    ] = 200,
    eval_users: Annotated[
        int,
        typer.Option(
            "--eval-users",
            min=1,
            help="Test users sampled for eval lists (those with a serendipitous held-out item get one).",
        ),
    ] = 300,
    eval_lists_n: Annotated[
        int, typer.Option("--eval-lists", min=0, help="Most eval lists ranked (0: no evaluation).")
    ] = 30,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output folder (default runs/train/<dataset>-seren).")
    ] = None,
    budget_s: Annotated[
        float, typer.Option(min=1.0, help="Training time budget per phase, seconds (resumable stop).")
    ] = 600.0,
    tau: Annotated[
        float, typer.Option(min=1e-6, help="IPO τ (TRL's beta): target log-ratio margin 1/(2τ) per token.")
    ] = 0.1,
    alpha: Annotated[float, typer.Option(min=0.0, help="Weight of the SFT term in the IPO phase.")] = 1.0,
    pairs: Annotated[int, typer.Option(min=1, help="IPO pairs (negatives put first) per train list.")] = 2,
    sft_steps: Annotated[
        int | None, typer.Option(min=1, help="SFT optimizer steps (default one epoch).")
    ] = None,
    ipo_steps: Annotated[
        int | None, typer.Option(min=1, help="IPO optimizer steps (default one epoch).")
    ] = None,
    profiles: Annotated[
        ProfileMode, typer.Option("--profiles", help="rules (cheap) or llm (asks --llm).")
    ] = ProfileMode.rules,
    llm: Annotated[str, llm_option("Backend that writes --profiles llm.")] = "llamacpp",
    grad_accum: Annotated[
        int, typer.Option(min=1, help="Samples per optimizer step (1: most steps in a CPU budget).")
    ] = 1,
    sft_lr: Annotated[float, typer.Option(min=0.0, help="SFT peak learning rate.")] = 5e-4,
    ipo_lr: Annotated[float, typer.Option(min=0.0, help="IPO peak learning rate.")] = 1e-4,
    max_length: Annotated[
        int, typer.Option(min=64, help="Longer samples are dropped (prompt + answer tokens).")
    ] = 1536,
    base: Annotated[
        str | None, typer.Option(help="Base model: HF folder or .gguf (default: the shipped SmolLM2).")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume/--no-resume", help="Continue from the checkpoints in --out.")
    ] = True,
    threads: Annotated[int, threads_option()] = 0,
    seed: Annotated[int, typer.Option(help=SEED_HELP)] = 0,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help=PROGRESS_HELP)] = True,
) -> None:
    """SerenGPT: SFT then IPO on labelled serendipity lists; evaluates base vs SFT vs SFT+IPO."""
    from recgpt.behavior.report import write_parquet_atomic
    from recgpt.data.split import make_split, sample_users
    from recgpt.datasets import load_dataset
    from recgpt.pipeline.run import default_console
    from recgpt.retrieval.embeddings import Embedder
    from recgpt.serendipity.candidates import catalogue_arrays
    from recgpt.serendipity.labels import LabelConfig, eval_lists, train_lists
    from recgpt.serendipity.profiles import ProfileConfig
    from recgpt.serendipity.seren import SerenConfig
    from recgpt.training.seren import SerenTrainConfig, run_seren_training
    from recgpt.training.seren_data import list_inputs, seren_samples, skipped_lists
    from recgpt.training.seren_report import write_seren_report

    console = default_console()
    t0 = time.perf_counter()
    n_threads = resolve_threads(threads) or 1
    ds = load_dataset(dataset)
    name = Path(dataset.removeprefix("bundled:")).name
    out = out or Path("runs") / "train" / slug(f"{name}-seren")
    console.print(
        f"[bold]recgpt train seren[/bold]: dataset {dataset}, out {out}, load average "
        f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} cores, {n_threads} torch thread(s)"
    )
    split = make_split(ds)
    catalogue = catalogue_arrays(
        ds, Embedder(cache_dir=out / "embed-cache"), "auto", events=split.train_events
    )
    label_cfg = LabelConfig(train_users=users, seed=seed)
    eval_sample = sample_users(split.test, eval_users, seed)
    ev_lists, ev_stats = eval_lists(label_cfg, split, catalogue, eval_sample)
    ev_lists = ev_lists.head(eval_lists_n)
    tr_lists, tr_stats = train_lists(label_cfg, split, catalogue, exclude_users=eval_sample)
    engine = None
    if profiles is ProfileMode.llm:
        from recgpt.llm import LLMCache, LLMEngine, make_backend

        engine = LLMEngine(make_backend(llm), cache=LLMCache(out / "llm-cache.sqlite"))
    profile_cfg = ProfileConfig(seed=seed)
    tr_inputs, tr_profiles = list_inputs(split, tr_lists, profile_cfg, engine=engine)
    seren_cfg = SerenConfig(list_size=label_cfg.list_size, seed=seed)
    samples = seren_samples(tr_lists, tr_inputs, seren_cfg, pairs=pairs, seed=seed)
    for part, table in (("train_lists", tr_lists), ("eval_lists", ev_lists), ("train_profiles", tr_profiles)):
        write_parquet_atomic(table, out / "data" / f"{part}.parquet")
    console.print(
        f"lists: {tr_lists.height} train ({tr_stats.as_dict()}), {ev_lists.height} eval "
        f"({ev_stats.as_dict()}); samples: {samples['list_id'].n_unique()} SFT, {samples.height} IPO pairs "
        f"({skipped_lists(tr_lists, samples)} lists skipped); profiles: {profiles.value} "
        f"({time.perf_counter() - t0:.0f} s)"
    )
    cfg = SerenTrainConfig(
        base=base,
        tau=tau,
        alpha=alpha,
        pairs=pairs,
        sft_steps=sft_steps,
        ipo_steps=ipo_steps,
        max_length=max_length,
        grad_accum=grad_accum,
        sft_learning_rate=sft_lr,
        ipo_learning_rate=ipo_lr,
        threads=n_threads,
        seed=seed,
        budget_s=budget_s,
    )
    result = run_seren_training(cfg, samples, out, resume=resume, progress=progress, console=console)
    console.print(curriculum_table(result.sft))
    if result.ipo is not None:
        r = result.rewards
        console.print(
            f"IPO: {result.ipo.steps}/{result.ipo.max_steps} steps, loss {result.ipo.first_loss} -> "
            f"{result.ipo.last_loss}; last reward margin {r.get('rewards/margins')}, accuracy "
            f"{r.get('rewards/accuracies')}"
        )
    if not result.complete:
        console.print(
            f"[yellow]stopped at the --budget-s budget ({budget_s:.0f} s per phase)[/yellow]: re-run the same "
            "command to continue; the evaluation runs once both phases are complete"
        )
    elif eval_lists_n and ev_lists.height:
        from recgpt.training.seren_eval import eval_references, evaluate_seren, seren_models

        ev_inputs, _ = list_inputs(split, ev_lists, profile_cfg, engine=engine)
        evaluate_seren(
            seren_cfg,
            ev_inputs,
            ev_lists,
            seren_models(out, result.base_model),
            out,
            references=eval_references(ev_lists, split, catalogue, seed=seed),
            threads=n_threads,
            seed=seed,
            console=console,
        )
    if engine is not None:
        engine.close()
    write_seren_report(out)
    served = result.ipo_merged or result.sft.merged_dir
    console.print(f"report:   {out / 'report.html'}\nSerenGPT: transformers:{served}")
    wall_time(console, t0)


__all__ = ["ProfileMode", "seren"]
