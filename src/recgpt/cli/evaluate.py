"""`recgpt evaluate`: dataset x split x recommenders x metrics -> table, results.json, report.html."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from recgpt.data.errors import DataError

if TYPE_CHECKING:
    from recgpt.data.dataset import Dataset

# wide tables must not be squeezed to 80 columns when the output is a file or a CI log
console = Console() if sys.stdout.isatty() else Console(width=200)

DEFAULT_MODELS = "mostpop,markov,itemknn,als,sasrec"


def load_dataset_arg(dataset: str | None) -> Dataset:
    """A dataset folder, or `bundled:<name>` / nothing for the dataset shipped in the package."""
    from recgpt.data.dataset import Dataset
    from recgpt.datasets import BUNDLED_DEFAULT, load_bundled

    if dataset is None or dataset.startswith("bundled:"):
        name = BUNDLED_DEFAULT if dataset is None else dataset.split(":", 1)[1]
        console.print(f"[dim]dataset: bundled {name} (shipped with recgpt)[/dim]")
        return load_bundled(name)
    return Dataset.load(dataset)


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
    out: Path | None = typer.Option(None, "--out", "-o", help="Output folder (default results/<dataset>)."),
) -> None:
    """Fit, tune on validation, test: one table, results.json and an HTML report."""
    from recgpt.data.split import SplitConfig
    from recgpt.eval.experiment import ExperimentConfig, run_experiment, write_json_atomic
    from recgpt.eval.report import table_columns, write_report

    try:
        ds = load_dataset_arg(dataset)
    except DataError as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from e
    try:
        model_params = json.loads(params) if params else {}
    except json.JSONDecodeError as e:
        raise typer.BadParameter(f"--params is not valid JSON: {e}") from e
    cfg = ExperimentConfig(
        models=[m.strip() for m in models.split(",") if m.strip()],
        split=SplitConfig(
            kind=split,  # type: ignore[arg-type]
            target_behaviors=tuple(target_behaviors.split(",")) if target_behaviors else None,
        ),
        mask_seen=mask_seen,
        ks=tuple(int(k) for k in ks.split(",")),
        seed=seed,
        tune=tune,
        model_params=model_params,
    )
    from recgpt.baselines.registry import load_recommender_class

    for m in cfg.models:
        try:
            load_recommender_class(m)
        except (KeyError, ImportError) as e:
            raise typer.BadParameter(str(e.args[0] if e.args else e), param_hint="--models") from e
    with Progress(
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(), console=console, transient=False,
    ) as progress:
        result = run_experiment(ds, cfg, progress=progress)
    out = out or Path("results") / ds.manifest.name
    write_json_atomic(out / "results.json", result.to_json())
    report = write_report(result, out / "report.html")

    cols = table_columns(result)
    table = Table(
        title=f"{ds.manifest.name}: {cfg.split.kind}, full ranking over {result.n_items:,} items, "
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
