"""`recgpt judge run|calibrate` and `recgpt label export|import`: the human-LLM cooperative judge.

`judge run RUN_DIR` judges a finished run's LLM outputs (interests, tags, explanations) with any
backend (default: the run's own LLM) through the run's LLM cache, so a killed run resumes and a
re-run costs no model call; it writes `RUN_DIR/judge/` (samples, verdicts, pass_rates.json,
judge.json), prints the pass rate per task and criterion, and refreshes the run's report.
`label export` writes a stratified sample for annotation; `label import` adds the filled file to a
judge data buffer (for a SERAL run: serendipity samples and the run's human verdicts, `label_seral`); `judge calibrate` compares judge verdicts with the human labels (Table 9 shape).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from recgpt.cli.errors import EXIT_BAD_INPUT, cli_errors, fail
from recgpt.cli.options import PROGRESS_HELP, comma_list, deprecated_option, llm_option, renamed

judge_app = typer.Typer(
    help="LLM judge of a run's outputs, and its agreement with humans.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
label_app = typer.Typer(
    help="Export samples for people to label (judge samples; SERAL serendipity lists); import the labels.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
TASKS_HELP = "Comma list of interests, tags, explanations (default all)."
# a run folder or labels file that is not there, or a label that is not yes/no
BAD_INPUT = (FileNotFoundError, ValueError)


def _console() -> Any:
    from recgpt.pipeline.run import default_console

    return default_console()


def _tasks(text: str | None) -> tuple[str, ...]:
    from recgpt.judge.criteria import TASKS, check_task

    try:
        return tuple(check_task(t) for t in comma_list(text)) or TASKS
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--tasks") from e


def rates_table(rates: dict[str, dict[str, Any]], title: str) -> Any:
    """Pass rate per task and criterion (judge criteria, then rules) as a rich table."""
    from rich.table import Table

    t = Table(title=title)
    for c in ("task", "criterion", "pass rate"):
        t.add_column(c, justify="right" if c == "pass rate" else "left")
    for task, r in rates.items():
        head = f"[bold]overall[/bold] (n={r['n']}, judge errors {r['errors']})"
        t.add_row(f"[bold]{task}[/bold]", head, f"[bold]{r['overall']:.1%}[/bold]")
        for name, v in r.items():
            if name not in ("overall", "n", "errors"):
                t.add_row("", name, f"{v:.1%}")
    return t


@judge_app.command("run")
@cli_errors(*BAD_INPUT)
def run(
    run_dir: Annotated[Path, typer.Argument(help="A finished run folder, e.g. runs/quickstart.")],
    llm: Annotated[str | None, llm_option("Judge backend (default: the run's own LLM).")] = None,
    tasks: Annotated[str | None, typer.Option(help=TASKS_HELP)] = None,
    max_samples: Annotated[
        int | None, typer.Option(min=1, help="At most N samples per task (seeded).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of --max-samples.")] = 0,
    reason_words: Annotated[
        int, typer.Option(min=0, max=40, help="Ask for a short reason (N words) before the verdicts.")
    ] = 0,
    include_fallbacks: Annotated[
        bool,
        typer.Option(
            "--include-fallbacks", help="Also judge rule/pool fallback outputs (not the LLM's own)."
        ),
    ] = False,
    llm_threads: Annotated[
        int | None,
        typer.Option(min=1, help="llama.cpp threads per worker process (default: RECGPT_LLM_THREADS or 1)."),
    ] = None,
    llm_workers: Annotated[int | None, typer.Option(min=1, help="llama.cpp worker processes.")] = None,
    report: Annotated[
        bool, typer.Option("--report/--no-report", help="Refresh the run's report.html with the judge.")
    ] = True,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help=PROGRESS_HELP)] = True,
) -> None:
    """Judge a run's interests, tags and explanations: pass rate per task and criterion."""
    from recgpt.judge.runner import JudgeRun, judge_run

    console = _console()

    def started(found: JudgeRun) -> None:
        console.print(
            f"[bold]recgpt judge[/bold] {run_dir}: judge {found.llm}, samples {found.counts or 'none'}"
        )

    result = judge_run(
        run_dir,
        llm={"spec": llm, "threads": llm_threads, "workers": llm_workers},
        tasks=_tasks(tasks),
        max_samples=max_samples,
        seed=seed,
        reason_words=reason_words,
        include_fallbacks=include_fallbacks,
        progress=progress,
        console=console,
        on_start=started,
    )
    if result.empty:
        message = "nothing to judge: the run has no LLM-written outputs for these tasks"
        raise fail("error", message, EXIT_BAD_INPUT)
    console.print(rates_table(result.rates, f"judge pass rates: {run_dir.name} (judge {result.llm})"))
    if result.failures:
        console.print(f"[yellow]judge calls that failed (counted as not passing): {result.failures}[/yellow]")
    cached = ""
    if result.model_calls is not None:
        cached = f" ({result.cache_hits} from the LLM cache, {result.model_calls} model calls)"
    console.print(
        f"judged {result.samples.height} samples in {result.seconds:.1f} s{cached}; wrote {result.out}/"
    )
    if report and (run_dir / "results.json").exists():
        _refresh_report(run_dir, console)


def _refresh_report(run_dir: Path, console: Any) -> None:
    from recgpt.pipeline.report import write_run_report

    try:
        path = write_run_report(run_dir)
    except (OSError, KeyError, ValueError) as e:  # a report from an older chain version may not re-render
        console.print(f"[yellow]report not refreshed: {e}[/yellow]")
        return
    console.print(f"report: {path}")


@judge_app.command("calibrate")
@cli_errors()
def calibrate_cmd(
    labels: Annotated[
        Path, typer.Option(help="Filled annotation file (.csv / .jsonl) from `recgpt label export`.")
    ],
    verdicts: Annotated[
        Path | None,
        typer.Option(
            help="verdicts.parquet of `recgpt judge run` (default: judge the labelled samples now, --llm)."
        ),
    ] = None,
    llm: Annotated[
        str | None, llm_option("Judge backend to run on the labelled samples (no --verdicts).")
    ] = None,
    cache: Annotated[
        Path | None, typer.Option(help="LLM cache for --llm (default beside the labels file).")
    ] = None,
    judge_name: Annotated[
        str | None, typer.Option("--judge-name", help="Judge name in the table (default: the backend).")
    ] = None,
    rules: Annotated[
        bool,
        typer.Option("--rules/--no-rules", help="Count the deterministic rules in the judge's decision."),
    ] = True,
    out: Annotated[Path | None, typer.Option(help="Write the metrics as JSON here.")] = None,
    judge_old: Annotated[str | None, deprecated_option("--judge", "--judge-name")] = None,
) -> None:
    """Judge vs human: ACC / precision / recall / F1 per task and criterion (positive = passes)."""
    import polars as pl

    from recgpt.data.atomic import write_json_atomic
    from recgpt.judge.calibrate import calibrate, calibration_table
    from recgpt.judge.labels import LabelError, read_labelled
    from recgpt.judge.runner import judge_name as recorded_name
    from recgpt.judge.runner import judge_now

    shown = renamed(judge_name, judge_old, old="--judge", new="--judge-name")
    console = _console()
    try:
        samples, human = read_labelled(labels)
    except (LabelError, FileNotFoundError) as e:
        raise typer.BadParameter(str(e), param_hint="--labels") from e
    if verdicts is not None:
        table = pl.read_parquet(verdicts)
        name = shown or recorded_name(verdicts)
    elif llm is not None:
        labelled = samples.filter(pl.col("sample_id").is_in(human["sample_id"].implode()))
        table = judge_now(labelled, llm, cache or labels.with_name("judge-cache.sqlite"))
        name = shown or llm
    else:
        raise typer.BadParameter(
            "give --verdicts (from `recgpt judge run`) or --llm to judge the samples now"
        )
    result, metrics = calibrate(table, human, judge=name, rules=rules)
    if result.is_empty():
        raise fail(
            "error", "no labelled sample has a judge verdict: are the labels from this run?", EXIT_BAD_INPUT
        )
    console.print(calibration_table(result))
    if out is not None:
        write_json_atomic(out, {"judge": name, "labels": str(labels), "rules": rules, "metrics": metrics})
        console.print(f"wrote {out}")


@label_app.command("export")
@cli_errors(*BAD_INPUT)
def export(
    run_dir: Annotated[Path, typer.Argument(help="A finished run folder (RecGPT or SERAL).")],
    out: Annotated[Path, typer.Option(help="Annotation file to write: .csv or .jsonl.")],
    n: Annotated[
        int | None,
        typer.Option("-n", "--n", min=1, help="Samples to export, stratified across tasks (SERAL: lists)."),
    ] = 100,
    seed: Annotated[int, typer.Option(help="Seed of the stratified sample.")] = 0,
    tasks: Annotated[str | None, typer.Option(help=TASKS_HELP)] = None,
    include_fallbacks: Annotated[
        bool, typer.Option("--include-fallbacks", help="Also export rule/pool fallbacks.")
    ] = False,
    category_level: Annotated[
        str | None, typer.Option(help="SERAL: category level shown (default: the run's, else auto).")
    ] = None,
) -> None:
    """Write a sample of a run's outputs with empty label columns for people to fill.

    A SERAL run (it has 04_labels/lists.parquet) exports serendipity samples: one row per list item
    with the log label, SerenGPT's proposal when it ran, and an empty 'verdict' column.
    """
    from recgpt.cli.label_seral import export_seral, is_seral_run

    console = _console()
    if is_seral_run(run_dir):
        export_seral(run_dir, out, n=n, seed=seed, category_level=category_level, console=console)
        return

    from recgpt.judge.labels import export_labels, stratified
    from recgpt.judge.samples import open_run, samples_from_state

    state = open_run(run_dir, llm={}, progress=False, console=console)
    try:
        samples = samples_from_state(state, _tasks(tasks), llm_only=not include_fallbacks)
    finally:
        state.close()
    path = export_labels(samples, out, n=n, seed=seed)
    counts = dict(stratified(samples, n, seed).group_by("task", maintain_order=True).len().rows())
    console.print(
        f"wrote {path} ({counts}): fill 'label' (yes/no) and, for a failing output, the "
        "label_<criterion> columns that fail; then `recgpt label import`"
    )


@label_app.command("import")
@cli_errors(*BAD_INPUT)
def import_(
    file: Annotated[Path, typer.Argument(help="Filled annotation file (.csv / .jsonl).")],
    buffer: Annotated[
        Path | None, typer.Option(help="Judge data buffer folder (created if missing).")
    ] = None,
    seral_run: Annotated[
        Path | None,
        typer.Option(help="SERAL run folder: write/extend its verdicts.parquet instead of a judge buffer."),
    ] = None,
    round: Annotated[int | None, typer.Option(min=0, help="Annotation round (default: the next).")] = None,
    annotator: Annotated[str | None, typer.Option(help="Annotator for rows that name none.")] = None,
) -> None:
    """Read labels back (validated): into the judge data buffer, or a SERAL run's human verdicts."""
    if (buffer is None) == (seral_run is None):
        raise fail(
            "error", "give exactly one of --buffer (judge labels) and --seral-run (verdicts)", EXIT_BAD_INPUT
        )
    console = _console()
    if seral_run is not None:
        from recgpt.cli.label_seral import import_seral

        import_seral(file, seral_run, round=round, annotator=annotator, console=console)
        return
    assert buffer is not None
    import polars as pl

    from recgpt.judge.buffer import JudgeBuffer
    from recgpt.judge.labels import read_labelled

    samples, labels = read_labelled(file, annotator)
    buf = JudgeBuffer(buffer)
    k = buf.next_round() if round is None else round
    added = buf.add(samples, labels, round=k)
    rows = buf.rows()
    summary = rows.group_by("task", "label").len().sort("task", "label")
    console.print(
        f"{labels.height} labels for {labels['sample_id'].n_unique()} samples read from {file}; "
        f"{added} samples added to {buffer} as round {k}; the buffer now holds {rows.height}"
    )
    for task, label, count in summary.iter_rows():
        verdict = "acceptable" if label else "not acceptable" if label is False else "undecided"
        console.print(f"  {task}: {verdict} {count}")
    if rows.filter(pl.col("label").is_null()).height:
        console.print(
            "[yellow]undecided samples (no overall label) are kept but not used for training[/yellow]"
        )


__all__ = ["judge_app", "label_app", "rates_table"]
