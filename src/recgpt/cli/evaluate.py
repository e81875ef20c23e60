"""`recgpt evaluate`: dataset x split x recommenders x metrics -> table, results.json, report.html."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from recgpt.cli.errors import cli_errors
from recgpt.cli.options import DATASET_HELP, PROGRESS_HELP, SplitKind, comma_list

if TYPE_CHECKING:
    from recgpt.data.dataset import Dataset
    from recgpt.eval.experiment import ExperimentConfig, ExperimentResult

# wide tables must not be squeezed to 80 columns when the output is a file or a CI log
console = Console() if sys.stdout.isatty() else Console(width=200)

DEFAULT_MODELS = "mostpop,markov,itemknn,als,sasrec"
RESULTS_ROOT = Path("results")  # default parent of results/<slugged dataset name>/
LOCK_NAME = ".lock"


def load_dataset_arg(dataset: str | None) -> Dataset:
    """A dataset folder, or `bundled:<name>` / nothing for the dataset shipped in the package."""
    from recgpt.datasets import BUNDLED_DEFAULT, BUNDLED_PREFIX, load_dataset

    spec = dataset or BUNDLED_PREFIX + BUNDLED_DEFAULT
    if spec.startswith(BUNDLED_PREFIX):
        console.print(
            f"[dim]dataset: bundled {escape(spec[len(BUNDLED_PREFIX) :])} (shipped with recgpt)[/dim]"
        )
    return load_dataset(spec)


def experiment_config(
    models: str,
    split: str,
    mask_seen: bool,
    ks: str,
    seed: int,
    tune: bool,
    params: str | None,
    target_behaviors: str | None,
    category_level: str = "auto",
) -> ExperimentConfig:
    """The options as an `ExperimentConfig`; a bad value is a usage error naming its option."""
    from recgpt.baselines.registry import load_recommender_class
    from recgpt.data.categories import parse_level
    from recgpt.data.split import SplitConfig
    from recgpt.eval.experiment import ExperimentConfig, check_model_params

    names = comma_list(models)
    if not names:
        raise typer.BadParameter(f"no model given (e.g. --models {DEFAULT_MODELS})", param_hint="--models")
    for m in names:
        try:
            load_recommender_class(m)
        except (KeyError, ImportError) as e:
            raise typer.BadParameter(str(e.args[0] if e.args else e), param_hint="--models") from e
    try:
        cut_offs = tuple(int(k) for k in comma_list(ks))
    except ValueError:
        raise typer.BadParameter(
            f"{ks!r} is not a comma-separated list of integers", param_hint="--ks"
        ) from None
    behaviors = tuple(comma_list(target_behaviors)) or None
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
        level = parse_level(category_level)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--category-level") from e
    try:
        return ExperimentConfig(
            models=names,
            split=split_cfg,
            mask_seen=mask_seen,
            ks=cut_offs,
            seed=seed,
            tune=tune,
            model_params=model_params,
            category_level=level,
        )
    except ValueError as e:
        raise typer.BadParameter(f"{ks!r}: {e}", param_hint="--ks") from e


@cli_errors()
def evaluate(
    dataset: Annotated[str | None, typer.Option("--dataset", "-d", help=DATASET_HELP)] = None,
    models: Annotated[
        str, typer.Option("--models", "-m", help="Comma-separated recommenders.")
    ] = DEFAULT_MODELS,
    split: Annotated[
        SplitKind, typer.Option(help="loo: temporal leave-one-out; cutoff: one global time.")
    ] = (SplitKind.loo),
    mask_seen: Annotated[
        bool, typer.Option("--mask-seen/--no-mask-seen", help="Remove already-seen items.")
    ] = True,
    ks: Annotated[str, typer.Option(help="Comma-separated metric cut-offs K.")] = "5,10,20,50",
    seed: Annotated[int, typer.Option(help="Seed of the recommenders' training and tuning.")] = 0,
    tune: Annotated[
        bool, typer.Option("--tune/--no-tune", help="Choose hyper-parameters on validation.")
    ] = True,
    params: Annotated[
        str | None,
        typer.Option(help='JSON per-model params, e.g. \'{"sasrec": {"epochs": 20}}\' (skips tuning).'),
    ] = None,
    target_behaviors: Annotated[
        str | None, typer.Option(help="Comma-separated behaviours that can be held out (default: any).")
    ] = None,
    category_level: Annotated[
        str,
        typer.Option(help="Category level of CatDiv and ILD: auto, leaf, all or a depth (0 = root)."),
    ] = "auto",
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output folder (default results/<dataset name>).")
    ] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help=PROGRESS_HELP)] = True,
) -> None:
    """Fit, tune on validation, test: one table, results.json and an HTML report."""
    from recgpt.eval.experiment import check_catalogue, run_experiment, write_json_atomic
    from recgpt.eval.report import write_report
    from recgpt.folders import FolderLock, inside, slug
    from recgpt.progress import make_progress

    cfg = experiment_config(
        models, split.value, mask_seen, ks, seed, tune, params, target_behaviors, category_level
    )
    ds = load_dataset_arg(dataset)
    try:
        check_catalogue(cfg.ks, ds.items.height)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--ks") from e
    out = out or inside(RESULTS_ROOT, RESULTS_ROOT / slug(ds.manifest.name))
    created = not out.exists()
    lock = FolderLock(out, "results folder").acquire()
    try:
        with make_progress(console, progress) as bar:
            result = run_experiment(ds, cfg, progress=bar)
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
    _print_table(ds.manifest.name, cfg, result)
    console.print(f"results: {out / 'results.json'}\nreport:  {report}")


def _print_table(name: str, cfg: ExperimentConfig, result: ExperimentResult) -> None:
    from recgpt.eval.report import table_columns

    cols = table_columns(result)
    seen = "masked" if cfg.mask_seen else "kept"
    table = Table(
        title=f"{escape(name)}: {cfg.split.kind}, full ranking over {result.n_items:,} items, "
        f"{result.n_users_test:,} test users, seen items {seen}, categories at level "
        f"{escape(result.category_level)!r}"
    )
    table.add_column("model")
    for c in cols:
        table.add_column(c, justify="right")
    for r in result.runs:
        table.add_row(r.name, *(f"{r.test[c]:.4f}" for c in cols))
    console.print(table)
    for r in result.runs:
        console.print(f"[dim]{r.name}: {r.params} (fit {r.fit_s:.1f}s)[/dim]")
