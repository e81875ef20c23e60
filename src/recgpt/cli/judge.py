"""`recgpt judge run|calibrate` and `recgpt label export|import`: the human-LLM cooperative judge.

`judge run RUN_DIR` judges a finished run's LLM outputs (interests, tags, explanations) with any
backend (default: the run's own LLM) through the run's LLM cache, so a killed run resumes and a
re-run costs no model call; it writes `RUN_DIR/judge/` (samples, verdicts, pass_rates.json,
judge.json), prints the pass rate per task and criterion, and refreshes the run's report.
`label export` writes a stratified sample for annotation; `label import` adds the filled file to a
judge data buffer; `judge calibrate` compares judge verdicts with the human labels (Table 9 shape).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import typer

os.environ.setdefault("OMP_NUM_THREADS", "1")  # llama.cpp / torch oversubscribe small machines otherwise

judge_app = typer.Typer(help="LLM judge of a run's outputs, and its agreement with humans.", no_args_is_help=True)
label_app = typer.Typer(help="Export judge samples for people to label; import the labels.", no_args_is_help=True)


def _console() -> Any:
    from recgpt.pipeline.run import default_console

    return default_console()


def _tasks(text: str | None) -> tuple[str, ...]:
    from recgpt.judge.criteria import TASKS, check_task

    if not text:
        return TASKS
    try:
        return tuple(check_task(t.strip()) for t in text.split(",") if t.strip())
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--tasks") from e


def _open(run_dir: Path, llm: dict[str, Any], progress: bool) -> Any:
    from recgpt.judge.samples import open_run

    try:
        return open_run(run_dir, llm={k: v for k, v in llm.items() if v is not None}, progress=progress,
                        console=_console())  # fmt: skip
    except FileNotFoundError as e:
        raise typer.BadParameter(str(e), param_hint="RUN_DIR") from e


def rates_table(rates: dict[str, dict[str, Any]], title: str) -> Any:
    """Pass rate per task and criterion (judge criteria, then rules) as a rich table."""
    from rich.table import Table

    t = Table(title=title)
    for c in ("task", "criterion", "pass rate"):
        t.add_column(c, justify="right" if c == "pass rate" else "left")
    for task, r in rates.items():
        t.add_row(f"[bold]{task}[/bold]", f"[bold]overall[/bold] (n={r['n']}, judge errors {r['errors']})",
                  f"[bold]{r['overall']:.1%}[/bold]")  # fmt: skip
        for name, v in r.items():
            if name not in ("overall", "n", "errors"):
                t.add_row("", name, f"{v:.1%}")
    return t


@judge_app.command("run")
def run(
    run_dir: Path = typer.Argument(..., help="A finished run folder, e.g. runs/quickstart."),
    llm: str | None = typer.Option(None, "--llm", help="Judge backend spec (default: the run's own LLM), e.g. "
                                   "llamacpp, openai:MODEL@URL, transformers:PATH."),
    tasks: str | None = typer.Option(None, "--tasks", help="Comma list of interests,tags,explanations (default all)."),
    max_samples: int | None = typer.Option(None, "--max-samples", min=1, help="At most N samples per task (seeded)."),
    seed: int = typer.Option(0, "--seed", help="Seed of --max-samples."),
    reason_words: int = typer.Option(0, "--reason-words", min=0, max=40,
                                     help="Ask for a short reason (N words) before the verdicts."),
    include_fallbacks: bool = typer.Option(False, "--include-fallbacks",
                                           help="Also judge rule/pool fallback outputs (not the LLM's own)."),
    llm_threads: int | None = typer.Option(None, "--llm-threads", min=1, help="llama.cpp threads per worker."),
    llm_workers: int | None = typer.Option(None, "--llm-workers", min=1, help="llama.cpp worker processes."),
    report: bool = typer.Option(True, "--report/--no-report", help="Refresh the run's report.html with the judge."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Judge a run's interests, tags and explanations: pass rate per task and criterion."""
    from recgpt.behavior.report import write_parquet_atomic
    from recgpt.eval.experiment import write_json_atomic
    from recgpt.judge.judge import Judge, JudgeConfig, overall, pass_rates
    from recgpt.judge.samples import sample_per_task, samples_from_state

    console = _console()
    state = _open(run_dir, {"spec": llm, "threads": llm_threads, "workers": llm_workers}, progress)
    samples = sample_per_task(samples_from_state(state, _tasks(tasks), llm_only=not include_fallbacks),
                              max_samples, seed)  # fmt: skip
    counts = dict(samples.group_by("task", maintain_order=True).len().rows())
    console.print(f"[bold]recgpt judge[/bold] {run_dir}: judge {state.cfg.llm.shown_spec()}, samples {counts or 'none'}")
    if samples.is_empty():
        console.print("[yellow]nothing to judge: the run has no LLM-written outputs for these tasks[/yellow]")
        raise typer.Exit(1)
    config = JudgeConfig(reason_words=reason_words)
    t0 = time.perf_counter()
    try:
        judge = Judge(state.engine, config)
        verdicts = judge.run(samples)
        model_id = state.engine.backend.model_id
        stats = state.engine.ledger.stages.get("judge")
    finally:
        state.close()
    seconds = time.perf_counter() - t0
    out = run_dir / "judge"
    rates = pass_rates(verdicts)
    write_parquet_atomic(samples, out / "samples.parquet")
    write_parquet_atomic(verdicts, out / "verdicts.parquet")
    write_parquet_atomic(overall(verdicts), out / "overall.parquet")
    write_json_atomic(out / "pass_rates.json", rates)
    failures: dict[str, int] = {}
    for f in judge.failures:
        failures[f["reason"]] = failures.get(f["reason"], 0) + 1
    write_json_atomic(out / "judge.json", {
        "llm": state.cfg.llm.shown_spec(), "model_id": model_id, "config": config.model_dump(mode="json"),
        "samples": counts, "llm_only": not include_fallbacks, "max_samples": max_samples, "seed": seed,
        "seconds": round(seconds, 2), "failures": failures, "finished_at": time.time(),
        "ledger": None if stats is None else stats.to_json(),
    })  # fmt: skip
    console.print(rates_table(rates, f"judge pass rates: {run_dir.name} (judge {state.cfg.llm.shown_spec()})"))
    if failures:
        console.print(f"[yellow]judge calls that failed (counted as not passing): {failures}[/yellow]")
    cached = f" ({stats.cache_hits} from the LLM cache, {stats.calls} model calls)" if stats is not None else ""
    console.print(f"judged {samples.height} samples in {seconds:.1f} s{cached}; wrote {out}/")
    if report and (run_dir / "results.json").exists():
        _refresh_report(run_dir, console)


def _refresh_report(run_dir: Path, console: Any) -> None:
    from recgpt.pipeline.report import write_run_report

    try:
        path = write_run_report(_open(run_dir, {}, progress=False))
    except (OSError, KeyError, ValueError) as e:  # a report from an older chain version may not re-render
        console.print(f"[yellow]report not refreshed: {e}[/yellow]")
        return
    console.print(f"report: {path}")


@judge_app.command("calibrate")
def calibrate_cmd(
    labels: Path = typer.Option(..., "--labels", help="Filled annotation file (.csv / .jsonl) from `recgpt label export`."),
    verdicts: Path | None = typer.Option(None, "--verdicts", help="verdicts.parquet of `recgpt judge run` "
                                         "(default: judge the labelled samples now with --llm)."),
    llm: str | None = typer.Option(None, "--llm", help="Judge backend to run on the labelled samples (no --verdicts)."),
    cache: Path | None = typer.Option(None, "--cache", help="LLM cache for --llm (default beside the labels file)."),
    judge_name: str | None = typer.Option(None, "--judge", help="Judge name in the table (default: the backend)."),
    rules: bool = typer.Option(True, "--rules/--no-rules", help="Count the deterministic rules in the judge's decision."),
    out: Path | None = typer.Option(None, "--out", help="Write the metrics as JSON here."),
) -> None:
    """Judge vs human: ACC / precision / recall / F1 per task and criterion (positive = passes)."""
    import polars as pl

    from recgpt.eval.experiment import write_json_atomic
    from recgpt.judge.calibrate import calibrate, calibration_table
    from recgpt.judge.labels import LabelError, read_labelled

    console = _console()
    try:
        samples, human = read_labelled(labels)
    except (LabelError, FileNotFoundError) as e:
        raise typer.BadParameter(str(e), param_hint="--labels") from e
    if verdicts is not None:
        table = pl.read_parquet(verdicts)
        name = judge_name or _judge_of(verdicts)
    elif llm is not None:
        table, name = _judge_now(samples.filter(pl.col("sample_id").is_in(human["sample_id"].implode())), llm,
                                 cache or labels.with_name("judge-cache.sqlite")), judge_name or llm  # fmt: skip
    else:
        raise typer.BadParameter("give --verdicts (from `recgpt judge run`) or --llm to judge the samples now")
    result, metrics = calibrate(table, human, judge=name, rules=rules)
    if result.is_empty():
        console.print("[red]no labelled sample has a judge verdict: are the labels from this run?[/red]")
        raise typer.Exit(1)
    console.print(calibration_table(result))
    if out is not None:
        write_json_atomic(out, {"judge": name, "labels": str(labels), "rules": rules, "metrics": metrics})
        console.print(f"wrote {out}")


def _judge_of(verdicts: Path) -> str:
    meta = verdicts.parent / "judge.json"
    try:
        return str(json.loads(meta.read_text())["llm"])
    except (OSError, ValueError, KeyError):
        return "judge"


def _judge_now(samples: Any, spec: str, cache: Path) -> Any:
    from recgpt.judge.judge import Judge
    from recgpt.llm import LLMCache, LLMEngine, make_backend

    engine = LLMEngine(make_backend(spec), cache=LLMCache(cache), max_retries=1, progress=True)
    try:
        return Judge(engine).run(samples)
    finally:
        engine.close()


@label_app.command("export")
def export(
    run_dir: Path = typer.Argument(..., help="A finished run folder."),
    out: Path = typer.Option(..., "--out", help="Annotation file to write: .csv or .jsonl."),
    n: int | None = typer.Option(100, "-n", "--n", min=1, help="Samples to export, stratified across tasks."),
    seed: int = typer.Option(0, "--seed"),
    tasks: str | None = typer.Option(None, "--tasks", help="Comma list of tasks (default all)."),
    include_fallbacks: bool = typer.Option(False, "--include-fallbacks", help="Also export rule/pool fallbacks."),
) -> None:
    """Write a stratified sample of a run's outputs with empty label columns for people to fill."""
    from recgpt.judge.labels import LabelError, export_labels, stratified
    from recgpt.judge.samples import samples_from_state

    console = _console()
    state = _open(run_dir, {}, progress=False)
    samples = samples_from_state(state, _tasks(tasks), llm_only=not include_fallbacks)
    try:
        path = export_labels(samples, out, n=n, seed=seed)
    except (LabelError, ValueError) as e:
        raise typer.BadParameter(str(e)) from e
    counts = dict(stratified(samples, n, seed).group_by("task", maintain_order=True).len().rows())
    console.print(f"wrote {path} ({counts}): fill 'label' (yes/no) and, for a failing output, the "
                  "label_<criterion> columns that fail; then `recgpt label import`")  # fmt: skip


@label_app.command("import")
def import_(
    file: Path = typer.Argument(..., help="Filled annotation file (.csv / .jsonl)."),
    buffer: Path = typer.Option(..., "--buffer", help="Judge data buffer folder (created if missing)."),
    round: int | None = typer.Option(None, "--round", min=0, help="Annotation round (default: the next)."),
    annotator: str | None = typer.Option(None, "--annotator", help="Annotator for rows that name none."),
) -> None:
    """Read labels back (validated) and add the labelled samples to the judge data buffer."""
    import polars as pl

    from recgpt.judge.buffer import JudgeBuffer
    from recgpt.judge.labels import LabelError, read_labelled

    console = _console()
    try:
        samples, labels = read_labelled(file, annotator)
        buf = JudgeBuffer(buffer)
        k = buf.next_round() if round is None else round
        added = buf.add(samples, labels, round=k)
    except (LabelError, FileNotFoundError, ValueError) as e:
        raise typer.BadParameter(str(e), param_hint="FILE") from e
    rows = buf.rows()
    summary = rows.group_by("task", "label").len().sort("task", "label")
    console.print(f"{labels.height} labels for {labels['sample_id'].n_unique()} samples read from {file}; "
                  f"{added} samples added to {buffer} as round {k}; the buffer now holds {rows.height}")  # fmt: skip
    for task, label, count in summary.iter_rows():
        console.print(f"  {task}: {'acceptable' if label else 'not acceptable' if label is False else 'undecided'} "
                      f"{count}")  # fmt: skip
    if rows.filter(pl.col("label").is_null()).height:
        console.print("[yellow]undecided samples (no overall label) are kept but not used for training[/yellow]")


__all__ = ["judge_app", "label_app", "rates_table"]
