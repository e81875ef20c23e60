"""`recgpt compress`: every test user's as-of history -> compressed behaviour text B_u (RecGPT §1.2).

Histories come from the split's test `AsOf` view (everything strictly before each user's held-out
event), so the texts are exactly what later stages may show the LLM for that user.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from recgpt.behavior import DEFAULT_BUDGET
from recgpt.data.errors import DataError
from recgpt.folders import slug

console = Console()


def compress(
    dataset: str | None = typer.Option(
        None, "--dataset", "-d", help="Dataset folder from `recgpt data import` (default: bundled ml-latest-small)."
    ),
    budget: int = typer.Option(
        DEFAULT_BUDGET, "--budget", "-b", min=1,
        help="Token budget of one user's behaviour text (--budget 128000 is the paper's setting).",
    ),
    report: bool = typer.Option(
        False, "--report", help="Also count raw tokens: print raw vs compressed and the share within budget."
    ),
    users: int | None = typer.Option(None, "--users", "-n", min=1, help="A random sample of N test users."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output folder (default runs/<dataset>/compress)."),
    tokenizer: str = typer.Option(
        "smollm2", "--tokenizer", help="smollm2 (the embedded model), regex (no model), or a .gguf path."
    ),
    budgets: str | None = typer.Option(
        None, "--budgets", help="Comma-separated budgets for the within-budget table (default: --budget)."
    ),
    split: str = typer.Option("loo", "--split", help="loo (temporal leave-one-out) or cutoff (global time)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the user sample."),
) -> None:
    """Compress each test user's history to a budgeted text; with --report, measure the gain."""
    import polars as pl

    from recgpt.behavior import BehaviorCompressor, CompressionConfig, make_counter
    from recgpt.behavior.report import compression_report, print_summary, summarize, write_parquet_atomic
    from recgpt.cli.evaluate import load_dataset_arg
    from recgpt.data.split import SplitConfig, make_split

    try:
        table_budgets = [int(b) for b in budgets.split(",") if b.strip()] if budgets else [budget]
    except ValueError as e:
        raise typer.BadParameter(f"--budgets must be integers: {budgets!r}") from e
    try:
        counter = make_counter(tokenizer)
    except (ValueError, ImportError, FileNotFoundError) as e:
        raise typer.BadParameter(str(e), param_hint="--tokenizer") from e
    try:
        ds = load_dataset_arg(dataset)
    except DataError as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from e
    try:
        sp = make_split(ds, SplitConfig(kind=split))  # type: ignore[arg-type]
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--split") from e
    view = sp.test.asof
    user_ids = view.user_ids
    if not user_ids:
        console.print("[red]error:[/red] the split has no test users (each needs at least 3 item events)")
        raise typer.Exit(2)
    if users is not None and users < len(user_ids):
        user_ids = sorted(random.Random(seed).sample(user_ids, users))
        console.print(f"[dim]sampled {len(user_ids):,} of {len(view.user_ids):,} test users (seed {seed})[/dim]")
    config = CompressionConfig(budget=budget)
    compressor = BehaviorCompressor(ds.items, counter, config)
    out = out or Path("runs") / slug(ds.manifest.name) / "compress"  # the manifest name is untrusted

    with Progress(
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(), console=console,
    ) as progress:  # fmt: skip
        task = progress.add_task("compressing", total=len(user_ids))
        results = compressor.compress_many(view, user_ids, on_done=lambda n: progress.advance(task, n))
    if report:
        with console.status("counting raw tokens"):
            rows = compression_report(view, results, compressor)

    texts = pl.DataFrame({
        "user_id": [r.user_id for r in results],
        "asof_ts": [r.asof_ts for r in results],
        "text": [r.text for r in results],
        "tokens": [r.tokens for r in results],
        "full_tokens": [r.full_tokens for r in results],
        "n_events": [r.n_events for r in results],
        "n_reliable": [r.n_reliable for r in results],
        "dropped_buckets": [r.dropped_buckets for r in results],
        "dropped_events": [r.dropped_events for r in results],
    }, schema_overrides={"dropped_buckets": pl.List(pl.String())})  # fmt: skip
    write_parquet_atomic(texts, out / "compressed.parquet")
    meta = {"dataset": ds.manifest.name, "split": split, "tokenizer": counter.name, "users": len(user_ids),
            "config": config.model_dump(mode="json")}
    (out / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
    console.print(f"compressed texts: {out / 'compressed.parquet'}")
    if report:
        write_parquet_atomic(rows, out / "report.parquet")
        summary = summarize(rows, table_budgets)
        (out / "report.json").write_text(json.dumps(summary, indent=2) + "\n")
        print_summary(summary, console, title=f"{ds.manifest.name}, tokenizer {counter.name}: ")
        console.print(f"per-user report: {out / 'report.parquet'}")
