"""`recgpt evaluate`: dataset x split x recommenders x metrics -> table, results.json, report.html."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, get_args, get_type_hints

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from recgpt.data.errors import DataError

if TYPE_CHECKING:
    from recgpt.data.dataset import Dataset
    from recgpt.eval.experiment import ExperimentConfig

# wide tables must not be squeezed to 80 columns when the output is a file or a CI log
console = Console() if sys.stdout.isatty() else Console(width=200)

DEFAULT_MODELS = "mostpop,markov,itemknn,als,sasrec"
RESULTS_ROOT = Path("results")  # default parent of results/<slugged dataset name>/
LOCK_NAME = ".lock"


def load_dataset_arg(dataset: str | None) -> Dataset:
    """A dataset folder, or `bundled:<name>` / nothing for the dataset shipped in the package."""
    from recgpt.data.dataset import Dataset
    from recgpt.datasets import BUNDLED_DEFAULT, load_bundled

    if dataset is None or dataset.startswith("bundled:"):
        name = BUNDLED_DEFAULT if dataset is None else dataset.split(":", 1)[1]
        console.print(f"[dim]dataset: bundled {name} (shipped with recgpt)[/dim]")
        return load_bundled(name)
    return Dataset.load(dataset)


def experiment_config(models: str, split: str, mask_seen: bool, ks: str, seed: int, tune: bool,
                      params: str | None, target_behaviors: str | None) -> ExperimentConfig:
    """The options as an `ExperimentConfig`; a bad value is a usage error naming its option."""
    from recgpt.baselines.registry import load_recommender_class
    from recgpt.data.split import SplitConfig
    from recgpt.eval.experiment import ExperimentConfig, check_model_params

    names = [m.strip() for m in models.split(",") if m.strip()]
    if not names:
        raise typer.BadParameter(f"no model given (e.g. --models {DEFAULT_MODELS})", param_hint="--models")
    for m in names:
        try:
            load_recommender_class(m)
        except (KeyError, ImportError) as e:
            raise typer.BadParameter(str(e.args[0] if e.args else e), param_hint="--models") from e
    try:
        cut_offs = tuple(int(k) for k in ks.split(",") if k.strip())
    except ValueError:
        raise typer.BadParameter(f"{ks!r} is not a comma-separated list of integers", param_hint="--ks") from None
    kinds = get_args(get_type_hints(SplitConfig)["kind"])
    if split not in kinds:
        raise typer.BadParameter(f"unknown split {split!r}; valid: {', '.join(kinds)}", param_hint="--split")
    behaviors = tuple(b.strip() for b in target_behaviors.split(",") if b.strip()) if target_behaviors else None
    split_cfg = SplitConfig(kind=split, target_behaviors=behaviors)  # type: ignore[arg-type]
    try:
        model_params = json.loads(params) if params else {}
    except json.JSONDecodeError as e:
        raise typer.BadParameter(f"not valid JSON: {e}", param_hint="--params") from e
    try:
        check_model_params(names, model_params)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--params") from e
    try:
        return ExperimentConfig(models=names, split=split_cfg, mask_seen=mask_seen, ks=cut_offs, seed=seed,
                                tune=tune, model_params=model_params)  # fmt: skip
    except ValueError as e:
        raise typer.BadParameter(f"{ks!r}: {e}", param_hint="--ks") from e


def evaluate(
    dataset: str | None = typer.Option(
        None, "--dataset", "-d", help="Dataset folder from `recgpt data import` (default: bundled ml-latest-small)."
    ),
    models: str = typer.Option(DEFAULT_MODELS, "--models", "-m", help="Comma-separated recommenders."),
    split: str = typer.Option("loo", "--split", help="loo (temporal leave-one-out) or cutoff (global time)."),
    mask_seen: bool = typer.Option(True, "--mask-seen/--no-mask-seen", help="Remove already-seen items."),
    ks: str = typer.Option("5,10,20,50", "--ks", help="Metric cut-offs."),
    seed: int = typer.Option(0, "--seed"),
    tune: bool = typer.Option(True, "--tune/--no-tune", help="Choose hyper-parameters on validation."),
    params: str | None = typer.Option(
        None, "--params", help='JSON per-model params, e.g. \'{"sasrec": {"epochs": 20}}\' (skips tuning).'
    ),
    target_behaviors: str | None = typer.Option(
        None, "--target-behaviors", help="Comma-separated behaviours that can be held out (default: any)."
    ),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output folder (default results/<dataset name, slugged>)."),
) -> None:
    """Fit, tune on validation, test: one table, results.json and an HTML report."""
    from recgpt.eval.experiment import check_catalogue, run_experiment, write_json_atomic
    from recgpt.eval.report import table_columns, write_report
    from recgpt.folders import FolderBusy, FolderError, FolderLock, inside, slug

    cfg = experiment_config(models, split, mask_seen, ks, seed, tune, params, target_behaviors)
    try:
        ds = load_dataset_arg(dataset)
    except DataError as e:
        console.print(f"[red]error:[/red] {escape(str(e))}")
        raise typer.Exit(2) from e
    try:
        check_catalogue(cfg.ks, ds.items.height)
        out = out or inside(RESULTS_ROOT, RESULTS_ROOT / slug(ds.manifest.name))
    except (ValueError, FolderError) as e:
        console.print(f"[red]error:[/red] {escape(str(e))}")
        raise typer.Exit(2) from e
    created = not out.exists()
    try:
        lock = FolderLock(out, "results folder").acquire()
    except FolderBusy as e:
        console.print(f"[red]busy:[/red] {escape(str(e))}")
        raise typer.Exit(4) from e
    except FolderError as e:
        console.print(f"[red]error:[/red] {escape(str(e))}")
        raise typer.Exit(2) from e
    try:
        with Progress(
            TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(), console=console, transient=False,
        ) as progress:
            result = run_experiment(ds, cfg, progress=progress)
        write_json_atomic(out / "results.json", result.to_json())
        report = write_report(result, out / "report.html")
    except BaseException:
        lock.release()
        if created:  # a failed first evaluation leaves no empty folder behind
            (out / LOCK_NAME).unlink(missing_ok=True)
            if not any(out.iterdir()):
                out.rmdir()
        raise
    lock.release()

    cols = table_columns(result)
    table = Table(
        title=f"{escape(ds.manifest.name)}: {cfg.split.kind}, full ranking over {result.n_items:,} items, "
        f"{result.n_users_test:,} test users, seen items {'masked' if cfg.mask_seen else 'kept'}"
    )
    table.add_column("model")
    for c in cols:
        table.add_column(c, justify="right")
    for r in result.runs:
        table.add_row(r.name, *(f"{r.test[c]:.4f}" for c in cols))
    console.print(table)
    for r in result.runs:
        console.print(f"[dim]{r.name}: {r.params} (fit {r.fit_s:.1f}s)[/dim]")
    console.print(f"results: {out / 'results.json'}\nreport:  {report}")
