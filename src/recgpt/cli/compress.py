"""`recgpt compress`: every test user's as-of history -> compressed behaviour text B_u (RecGPT §1.2).

Histories come from the split's test `AsOf` view (everything strictly before each user's held-out
event), so the texts are exactly what later stages may show the LLM for that user.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from recgpt.behavior import DEFAULT_BUDGET
from recgpt.cli.errors import cli_errors
from recgpt.cli.options import DATASET_HELP, PROGRESS_HELP, SplitKind
from recgpt.folders import slug

console = Console()


@cli_errors()
def compress(
    dataset: Annotated[str | None, typer.Option("--dataset", "-d", help=DATASET_HELP)] = None,
    budget: Annotated[
        int,
        typer.Option(
            "--budget",
            "-b",
            min=1,
            help="Token budget of one user's behaviour text (128000: the paper's setting).",
        ),
    ] = DEFAULT_BUDGET,
    report: Annotated[
        bool,
        typer.Option(
            "--report", help="Also count raw tokens: raw vs compressed and the share within budget."
        ),
    ] = False,
    users: Annotated[
        int | None, typer.Option("--users", "-n", min=1, help="A random sample of N test users.")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output folder (default runs/<dataset>/compress).")
    ] = None,
    tokenizer: Annotated[
        str, typer.Option(help="smollm2 (the embedded model), regex (no model), or a .gguf path.")
    ] = "smollm2",
    budgets: Annotated[
        str | None,
        typer.Option(help="Comma-separated budgets for the within-budget table (default: --budget)."),
    ] = None,
    split: Annotated[
        SplitKind, typer.Option(help="loo: temporal leave-one-out; cutoff: one global time.")
    ] = (SplitKind.loo),
    seed: Annotated[int, typer.Option(help="Seed of the user sample.")] = 0,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help=PROGRESS_HELP)] = True,
) -> None:
    """Compress each test user's history to a budgeted text; with --report, measure the gain."""
    import polars as pl

    from recgpt.behavior import BehaviorCompressor, CompressionConfig, make_counter
    from recgpt.behavior.report import compression_report, print_summary, summarize, write_parquet_atomic
    from recgpt.cli.errors import EXIT_BAD_INPUT, fail
    from recgpt.cli.evaluate import load_dataset_arg
    from recgpt.data.atomic import write_json_atomic
    from recgpt.data.split import SplitConfig, make_split
    from recgpt.progress import make_progress

    try:
        table_budgets = [int(b) for b in budgets.split(",") if b.strip()] if budgets else [budget]
    except ValueError as e:
        raise typer.BadParameter(f"--budgets must be integers: {budgets!r}") from e
    try:
        counter = make_counter(tokenizer)
    except (ValueError, ImportError, FileNotFoundError) as e:
        raise typer.BadParameter(str(e), param_hint="--tokenizer") from e
    ds = load_dataset_arg(dataset)
    sp = make_split(ds, SplitConfig(kind=split.value))
    view = sp.test.asof
    user_ids = view.user_ids
    if not user_ids:
        raise fail("error", "the split has no test users (each needs at least 3 item events)", EXIT_BAD_INPUT)
    if users is not None and users < len(user_ids):
        user_ids = sorted(random.Random(seed).sample(user_ids, users))
        console.print(
            f"[dim]sampled {len(user_ids):,} of {len(view.user_ids):,} test users (seed {seed})[/dim]"
        )
    config = CompressionConfig(budget=budget)
    compressor = BehaviorCompressor(ds.items, counter, config)
    out = out or Path("runs") / slug(ds.manifest.name) / "compress"  # the manifest name is untrusted

    with make_progress(console, progress) as bar:
        task = bar.add_task("compressing", total=len(user_ids))
        results = compressor.compress_many(view, user_ids, on_done=lambda n: bar.advance(task, n))
    if report:
        with console.status("counting raw tokens"):
            rows = compression_report(view, results, compressor)

    fields = ("user_id", "asof_ts", "text", "tokens", "full_tokens", "n_events", "n_reliable")
    columns = {f: [getattr(r, f) for r in results] for f in (*fields, "dropped_buckets", "dropped_events")}
    texts = pl.DataFrame(columns, schema_overrides={"dropped_buckets": pl.List(pl.String())})
    write_parquet_atomic(texts, out / "compressed.parquet")
    meta = {
        "dataset": ds.manifest.name,
        "split": split.value,
        "tokenizer": counter.name,
        "users": len(user_ids),
        "config": config.model_dump(mode="json"),
    }
    write_json_atomic(out / "config.json", meta)
    console.print(f"compressed texts: {out / 'compressed.parquet'}")
    if report:
        write_parquet_atomic(rows, out / "report.parquet")
        summary = summarize(rows, table_budgets)
        write_json_atomic(out / "report.json", summary)
        print_summary(summary, console, title=f"{ds.manifest.name}, tokenizer {counter.name}: ")
        console.print(f"per-user report: {out / 'report.parquet'}")
