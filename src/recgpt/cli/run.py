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
from typing import Any

import typer
from pydantic import ValidationError
from rich.markup import escape

from recgpt.data.errors import DataError

os.environ.setdefault("OMP_NUM_THREADS", "1")  # torch, faiss and llama.cpp oversubscribe 2 cores otherwise

CONFIG_HELP = "JSON file with RunConfig fields (per-stage sections: interests, tags, tritower, fusion, ...)."
SET_HELP = "Override one config field, e.g. --set tags.count=20 --set fusion.beta=0.7 (repeatable)."


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

    from recgpt.data.split import LeakageError
    from recgpt.folders import FolderBusy, FolderError
    from recgpt.pipeline.preflight import PreflightError
    from recgpt.pipeline.report import print_results
    from recgpt.pipeline.run import default_console, run_pipeline
    from recgpt.pipeline.stages import StageFailed

    console = default_console()
    load = os.getloadavg()
    own = "".join(f", {stage}: {cfg.llm.shown_spec(stage)}" for stage in cfg.llm.stages)  # --stage-llm overrides
    head = f"dataset {cfg.dataset}, LLM {cfg.llm.shown_spec()}{own}"  # no user:pass@ of a URL on the terminal
    console.print(f"[bold]{title}[/bold]: {escape(head)} "
                  f"({cfg.llm.workers} worker(s) x {cfg.llm.threads} thread(s)), load average {load[0]:.2f}")  # fmt: skip
    t0 = time.perf_counter()
    try:
        summary = run_pipeline(cfg, console=console, progress=progress, until=until)
    except FolderBusy as e:
        console.print(f"[red]busy:[/red] {escape(str(e))}")
        raise typer.Exit(4) from e
    except (DataError, FolderError, PreflightError) as e:
        console.print(f"[red]error:[/red] {escape(str(e))}")
        raise typer.Exit(2) from e
    except LeakageError as e:
        console.print(f"[red]leakage:[/red] {e}")
        raise typer.Exit(3) from e
    except StageFailed as e:  # an LLM stage's answers cannot be trusted (backend down, too much fallback)
        console.print(f"[red]stage failed:[/red] {escape(str(e))}", highlight=False)
        raise typer.Exit(5) from e
    wall = time.perf_counter() - t0
    results = summary.run_dir / "results.json"
    if results.exists() and summary.outcomes and summary.outcomes[-1].name in ("eval", "report"):
        print_results(json.loads(results.read_text()), console, summary.throughput())
    summary.ledger.print(console)
    ran = [o.name for o in summary.outcomes if o.status == "ran"]
    console.print(f"stages run now: {', '.join(ran) or 'none (all up to date)'}; model calls now: "
                  f"{summary.model_calls}")  # fmt: skip
    console.print(f"run folder: {summary.run_dir}\nreport:     {summary.run_dir / 'report.html'}")
    load_end = os.getloadavg()
    console.print(f"wall time {wall:.1f} s ({wall / 60:.1f} min); load average now {load_end[0]:.2f} "
                  f"(1 min), {load_end[1]:.2f} (5 min) on {os.cpu_count()} cores")  # fmt: skip


def run(
    dataset: str | None = typer.Option(
        None, "--dataset", "-d", help="Dataset folder from `recgpt data import`, or bundled:ml-latest-small."
    ),
    users: int | None = typer.Option(None, "--users", "-n", min=0,
                                     help="Seeded sample of N test users (default 200; 0 = every test user)."),
    llm: str | None = typer.Option(None, "--llm", help="LLM backend: llamacpp (default), llamacpp:/m.gguf, "
                                   "openai:MODEL@http://127.0.0.1:8080/v1, transformers:PATH, fake."),
    llm_threads: int | None = typer.Option(None, "--llm-threads", min=1, help="llama.cpp threads per worker."),
    llm_workers: int | None = typer.Option(None, "--llm-workers", min=1, help="llama.cpp worker processes."),
    stage_llm: list[str] = typer.Option([], "--stage-llm", help="One LLM stage's own backend, STAGE=SPEC (interests, "
                                        "tags or explanations), e.g. tags=transformers:runs/train/x/merged (repeatable)."),
    llm_cache: Path | None = typer.Option(None, "--llm-cache", help="Shared LLM cache (default runs/<name>/llm-cache.sqlite)."),
    name: str | None = typer.Option(None, "--name", help="Run folder name (default: the dataset's name)."),
    runs_dir: Path | None = typer.Option(None, "--runs-dir", help="Parent folder of runs (default runs/)."),
    baseline: str | None = typer.Option(None, "--baseline", help="Classic channel fused with RecGPT (default itemknn)."),
    share: float | None = typer.Option(None, "--share", min=0.0, max=1.0, help="RecGPT share of the fused list."),
    beta: float | None = typer.Option(None, "--beta", min=0.0, max=1.0, help="β of h = β·h_user + (1−β)·h_tag."),
    seed: int | None = typer.Option(None, "--seed", help="Seed of the user sample and the baselines (the tri-tower has --set tritower.seed)."),
    config: Path | None = typer.Option(None, "--config", help=CONFIG_HELP),
    assignments: list[str] = typer.Option([], "--set", help=SET_HELP),
    until: str | None = typer.Option(None, "--until", help="Stop after this stage (e.g. tags)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bars."),
) -> None:
    """Run (or resume) the whole RecGPT chain on a dataset: tables per stage, one table, an HTML report."""
    from recgpt.pipeline.config import load_config
    from recgpt.pipeline.preflight import PreflightError, check_until

    try:
        check_until(until)
    except PreflightError as e:
        raise typer.BadParameter(str(e)) from e
    over = _overrides({
        "dataset": dataset, "users": users or None, "llm.spec": llm,
        "llm.threads": llm_threads, "llm.workers": llm_workers, "llm.cache": str(llm_cache) if llm_cache else None,
        "name": name, "runs_dir": str(runs_dir) if runs_dir else None, "baseline": baseline, "share": share,
        "fusion.beta": beta, "seed": seed,
    }, assignments)  # fmt: skip
    if users == 0:
        over["users"] = None
    for item in stage_llm:
        stage, sep, spec = item.partition("=")
        if not sep or not spec:
            raise typer.BadParameter(f"expected STAGE=SPEC, got {item!r}", param_hint="--stage-llm")
        over.setdefault("llm", {}).setdefault("stages", {})[stage.strip()] = spec.strip()
    try:
        cfg = load_config(config, over)
    except (ValueError, ValidationError) as e:
        raise typer.BadParameter(config_error(e)) from e
    _execute(cfg, until=until, progress=progress, title="recgpt run")


def quickstart(
    users: int | None = typer.Option(None, "--users", "-n", min=1, help="Test users to sample (default 30)."),
    llm: str | None = typer.Option(None, "--llm", help="LLM backend (default: the embedded SmolLM2)."),
    llm_workers: int | None = typer.Option(None, "--llm-workers", min=1,
                                           help="llama.cpp worker processes (default 2: one per core)."),
    runs_dir: Path | None = typer.Option(None, "--runs-dir", help="Parent folder of runs (default runs/)."),
    seed: int | None = typer.Option(None, "--seed"),
    assignments: list[str] = typer.Option([], "--set", help=SET_HELP),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """The whole RecGPT chain on the bundled MovieLens latest-small with the embedded model (about 20 min on 2 cores)."""
    from recgpt.pipeline.config import quickstart_config

    over = _overrides({"users": users, "llm.spec": llm, "llm.workers": llm_workers,
                       "runs_dir": str(runs_dir) if runs_dir else None, "seed": seed}, assignments)  # fmt: skip
    try:
        cfg = quickstart_config(**over)
    except (ValueError, ValidationError) as e:
        raise typer.BadParameter(config_error(e)) from e
    _execute(cfg, until=None, progress=progress,
             title=f"recgpt quickstart ({cfg.users} sampled test users, {cfg.interests.count} interests, "
                   f"{cfg.tags.count} tags, explanations for the top {cfg.explain_top} items per user)")  # fmt: skip
