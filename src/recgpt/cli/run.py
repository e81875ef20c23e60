"""`recgpt run` and `recgpt quickstart`: the RecGPT chain end to end, resumable, one folder per run.

`run` takes any dataset folder (or `bundled:ml-latest-small`), `quickstart` is the preset that fits
in about 20 minutes on 2 cores: the bundled MovieLens latest-small, the embedded SmolLM2, a seeded sample
of test users and small counts. Both print the sample, per-stage progress, one metrics table, the
throughput per stage and the LLM ledger, and write `runs/<name>/` (tables, results.json,
report.html, ledger.json). Re-running the same command skips finished stages.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.markup import escape

from recgpt.cli.errors import cli_errors
from recgpt.cli.options import DATASET_HELP, LLM_SPECS, PROGRESS_HELP

CONFIG_HELP = "JSON file with RunConfig fields (per-stage sections: interests, tags, tritower, fusion, ...)."
SET_HELP = "Override one config field, e.g. --set tags.count=20 --set fusion.beta=0.7 (repeatable)."
LLM_HELP = f"LLM backend of every LLM stage (default llamacpp: the embedded SmolLM2). Spec: {LLM_SPECS}."
LLM_THREADS_HELP = "llama.cpp threads per worker process (default: RECGPT_LLM_THREADS or 1)."
LLM_WORKERS_HELP = "llama.cpp worker processes (each loads the model; one per free core is fastest)."
STAGE_LLM_HELP = (
    "One LLM stage's own backend, STAGE=SPEC (interests, tags or explanations; SERAL: profiles or seren), "
    "e.g. tags=transformers:runs/train/x/merged (repeatable)."
)


def _overrides(pairs: dict[str, Any], assignments: list[str]) -> dict[str, Any]:
    from recgpt.pipeline.config import merge, parse_assignments

    flat = {k: v for k, v in pairs.items() if v is not None}
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        node = nested
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    try:
        return merge(nested, parse_assignments(assignments))
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--set") from e


def config_error(e: Exception) -> str:
    """A config error as one line: `ks: Value error, ks must be positive cut-offs, got (0, -1)`."""
    if not isinstance(e, ValidationError):
        return str(e)
    parts = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"])
        got = f" (got {err['input']!r})" if loc and isinstance(err["input"], (str, int, float)) else ""
        parts.append(f"{loc + ': ' if loc else ''}{err['msg']}{got}")
    return "; ".join(parts)


def _execute(cfg: Any, *, until: str | None, progress: bool, title: str) -> None:
    """Run the configured chain and print its summary; errors become exit codes in `cli_errors`."""
    from recgpt.pipeline.report import print_results
    from recgpt.pipeline.run import default_console, run_pipeline

    console = default_console()
    load = os.getloadavg()
    # --stage-llm overrides; shown_spec: no user:pass@ of a URL on the terminal
    own = "".join(f", {stage}: {cfg.llm.shown_spec(stage)}" for stage in cfg.llm.stages)
    head = f"dataset {cfg.dataset}, LLM {cfg.llm.shown_spec()}{own}"
    console.print(
        f"[bold]{title}[/bold]: {escape(head)} "
        f"({cfg.llm.workers} worker(s) x {cfg.llm.threads} thread(s)), load average {load[0]:.2f}"
    )
    t0 = time.perf_counter()
    summary = run_pipeline(cfg, console=console, progress=progress, until=until)
    wall = time.perf_counter() - t0
    results = summary.run_dir / "results.json"
    if results.exists() and summary.outcomes and summary.outcomes[-1].name in ("eval", "report"):
        print_results(json.loads(results.read_text()), console, summary.throughput(), fallback=False)
    summary.ledger.print(console)
    ran = [o.name for o in summary.outcomes if o.status == "ran"]
    console.print(
        f"stages run now: {', '.join(ran) or 'none (all up to date)'}; model calls now: {summary.model_calls}"
    )
    console.print(f"run folder: {summary.run_dir}\nreport:     {summary.run_dir / 'report.html'}")
    load_end = os.getloadavg()
    console.print(
        f"wall time {wall:.1f} s ({wall / 60:.1f} min); load average now {load_end[0]:.2f} "
        f"(1 min), {load_end[1]:.2f} (5 min) on {os.cpu_count()} cores"
    )


@cli_errors()
def run(
    dataset: Annotated[str | None, typer.Option("--dataset", "-d", help=DATASET_HELP)] = None,
    users: Annotated[
        int | None,
        typer.Option(
            "--users", "-n", min=0, help="Seeded sample of N test users (default 200; 0: every test user)."
        ),
    ] = None,
    llm: Annotated[str | None, typer.Option("--llm", help=LLM_HELP, show_default=False)] = None,
    llm_threads: Annotated[int | None, typer.Option("--llm-threads", min=1, help=LLM_THREADS_HELP)] = None,
    llm_workers: Annotated[int | None, typer.Option("--llm-workers", min=1, help=LLM_WORKERS_HELP)] = None,
    stage_llm: Annotated[list[str] | None, typer.Option("--stage-llm", help=STAGE_LLM_HELP)] = None,
    llm_cache: Annotated[
        Path | None,
        typer.Option("--llm-cache", help="Shared LLM cache (default runs/<name>/llm-cache.sqlite)."),
    ] = None,
    name: Annotated[str | None, typer.Option(help="Run folder name (default: the dataset's name).")] = None,
    runs_dir: Annotated[Path | None, typer.Option(help="Parent folder of runs (default runs/).")] = None,
    baseline: Annotated[
        str | None,
        typer.Option(
            help="Classic channel fused with RecGPT (default auto: the validation-best of `baselines`, "
            "itemknn, markov and sasrec)."
        ),
    ] = None,
    share: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Fix RecGPT's share of the fused list (default: chosen on validation users, "
            "see tune.users / tune.tolerance; --set share=auto restores it).",
        ),
    ] = None,
    beta: Annotated[
        float | None, typer.Option(min=0.0, max=1.0, help="β of h = β·h_user + (1−β)·h_tag.")
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(help="Seed of the user sample and the baselines (the tri-tower: --set tritower.seed)."),
    ] = None,
    config: Annotated[Path | None, typer.Option(help=CONFIG_HELP)] = None,
    assignments: Annotated[list[str] | None, typer.Option("--set", help=SET_HELP)] = None,
    until: Annotated[str | None, typer.Option(help="Stop after this stage (e.g. tags).")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help=PROGRESS_HELP)] = True,
    pipeline: Annotated[
        str,
        typer.Option(
            "--pipeline",
            help="recgpt (the RecGPT chain) or seral (serendipity: profiles, SerenGPT, cache, slot; "
            "run folder <name>-seral).",
        ),
    ] = "recgpt",
) -> None:
    """Run (or resume) the whole RecGPT chain (or SERAL) on a dataset: tables per stage, one table, an HTML report."""
    from recgpt.pipeline.config import load_config
    from recgpt.pipeline.preflight import PreflightError, check_until

    if pipeline not in ("recgpt", "seral"):
        raise typer.BadParameter(
            f"unknown pipeline {pipeline!r}; use recgpt or seral", param_hint="--pipeline"
        )
    if pipeline == "seral" and (share is not None or beta is not None):
        raise typer.BadParameter(
            "--share and --beta are RecGPT settings; SERAL does not fuse", param_hint="--pipeline"
        )
    try:
        if pipeline == "seral":
            from recgpt.pipeline.seral import check_seral_until

            check_seral_until(until)
        else:
            check_until(until)
    except PreflightError as e:
        raise typer.BadParameter(str(e)) from e
    over = _overrides(
        {
            "dataset": dataset,
            "users": users or None,
            "llm.spec": llm,
            "llm.threads": llm_threads,
            "llm.workers": llm_workers,
            "llm.cache": str(llm_cache) if llm_cache else None,
            "name": name,
            "runs_dir": str(runs_dir) if runs_dir else None,
            "baseline": baseline,
            "share": share,
            "fusion.beta": beta,
            "seed": seed,
        },
        assignments or [],
    )
    if users == 0:
        over["users"] = None
    for item in stage_llm or []:
        stage, sep, spec = item.partition("=")
        if not sep or not spec:
            raise typer.BadParameter(f"expected STAGE=SPEC, got {item!r}", param_hint="--stage-llm")
        over.setdefault("llm", {}).setdefault("stages", {})[stage.strip()] = spec.strip()
    try:
        if pipeline == "seral":
            from recgpt.pipeline.seral_config import load_seral_config

            cfg = load_seral_config(config, over)
        else:
            cfg = load_config(config, over)
    except (ValueError, ValidationError) as e:
        raise typer.BadParameter(config_error(e)) from e
    if pipeline == "seral":
        _execute_seral(cfg, until=until, progress=progress)
        return
    _execute(cfg, until=until, progress=progress, title="recgpt run")


def _execute_seral(cfg: Any, *, until: str | None, progress: bool) -> None:
    """Run the SERAL pipeline and print its tables (`pipeline.seral_eval.print_seral_results`)."""
    from recgpt.pipeline.run import default_console
    from recgpt.pipeline.seral import run_seral
    from recgpt.pipeline.seral_eval import print_seral_results

    console = default_console()
    console.print(
        f"[bold]recgpt run --pipeline seral[/bold]: {escape(f'dataset {cfg.dataset}, LLM {cfg.llm.shown_spec()}')}"
    )
    t0 = time.perf_counter()
    summary = run_seral(cfg, console=console, progress=progress, until=until)
    wall = time.perf_counter() - t0
    results = summary.run_dir / "results.json"
    if results.exists() and summary.outcomes and summary.outcomes[-1].name in ("eval", "report"):
        print_seral_results(json.loads(results.read_text()), console, fallback=False)
    summary.ledger.print(console)
    ran = [o.name for o in summary.outcomes if o.status == "ran"]
    console.print(
        f"stages run now: {', '.join(ran) or 'none (all up to date)'}; model calls now: {summary.model_calls}"
    )
    console.print(f"run folder: {summary.run_dir}\nreport:     {summary.run_dir / 'report.html'}")
    console.print(f"wall time {wall:.1f} s ({wall / 60:.1f} min)")


@cli_errors()
def quickstart(
    users: Annotated[
        int | None, typer.Option("--users", "-n", min=1, help="Test users to sample (default 30).")
    ] = None,
    llm: Annotated[str | None, typer.Option("--llm", help=LLM_HELP, show_default=False)] = None,
    llm_workers: Annotated[
        int | None, typer.Option("--llm-workers", min=1, help=LLM_WORKERS_HELP + " Default 2.")
    ] = None,
    runs_dir: Annotated[Path | None, typer.Option(help="Parent folder of runs (default runs/).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the user sample and the baselines.")] = None,
    assignments: Annotated[list[str] | None, typer.Option("--set", help=SET_HELP)] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help=PROGRESS_HELP)] = True,
) -> None:
    """The whole RecGPT chain on the bundled MovieLens latest-small with the embedded model (about 20 min on 2 cores)."""
    from recgpt.pipeline.config import quickstart_config

    over = _overrides(
        {
            "users": users,
            "llm.spec": llm,
            "llm.workers": llm_workers,
            "runs_dir": str(runs_dir) if runs_dir else None,
            "seed": seed,
        },
        assignments or [],
    )
    try:
        cfg = quickstart_config(**over)
    except (ValueError, ValidationError) as e:
        raise typer.BadParameter(config_error(e)) from e
    title = (
        f"recgpt quickstart ({cfg.users} sampled test users, {cfg.interests.count} interests, "
        f"{cfg.tags.count} tags, explanations for the top {cfg.explain_top} items per user)"
    )
    _execute(cfg, until=None, progress=progress, title=title)
