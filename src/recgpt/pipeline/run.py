"""`run_pipeline`: the public entry of a RecGPT run (`recgpt run`, `recgpt quickstart`, the tests).

It loads the dataset, checks what can fail early (`preflight`), builds the run's `Resources` and
`RunStore`, and hands the `RECGPT` pipeline to the generic runner (`runner.run_stages`), which
resumes by key, writes the markers and the ledger under the folder lock and prints the per-stage
LLM fallback counts at the end.
"""

from __future__ import annotations

import sys

from rich.console import Console

from recgpt.data.dataset import Dataset
from recgpt.data.runstore import RunStore
from recgpt.datasets import load_dataset
from recgpt.intent.pool import TextEncoder
from recgpt.llm.types import Backend
from recgpt.pipeline.config import RunConfig
from recgpt.pipeline.core import Pipeline, stage_key
from recgpt.pipeline.preflight import check_until, preflight
from recgpt.pipeline.resources import Resources
from recgpt.pipeline.runner import RunSummary, StageOutcome, run_ledger, run_stages
from recgpt.pipeline.stages import RECGPT


def run_pipeline(
    cfg: RunConfig,
    *,
    console: Console | None = None,
    progress: bool = True,
    backend: Backend | None = None,
    encoder: TextEncoder | None = None,
    until: str | None = None,
) -> RunSummary:
    """Run (or resume) the chain for `cfg`; `until` stops after the named stage.

    `backend` / `encoder` replace the configured LLM backend and sentence encoder (tests, notebooks);
    they are runtime choices, so they do not enter any stage key.
    """
    console = console or Console()
    check_until(until)
    dataset = load_dataset(cfg.dataset)
    preflight(cfg, dataset, until=until, check_llm=backend is None)
    return start_run(
        RECGPT,
        cfg,
        dataset,
        console=console,
        progress=progress,
        backend=backend,
        encoder=encoder,
        until=until,
    )


def start_run(
    pipeline: Pipeline,
    cfg: RunConfig,
    dataset: Dataset,
    *,
    console: Console,
    progress: bool,
    backend: Backend | None,
    encoder: TextEncoder | None,
    until: str | None,
) -> RunSummary:
    """Run (or resume) a checked `pipeline` over `dataset` in `cfg`'s run folder (RecGPT, SERAL)."""
    store = RunStore(cfg.run_dir(dataset.manifest.name), pipeline.folders)
    res = Resources(cfg, dataset, store, progress=progress, backend=backend, encoder=encoder)
    return run_stages(
        pipeline,
        cfg,
        store,
        res,
        console=console,
        progress=progress,
        until=until,
        on_start=lambda: _announce_sample(res, console),
    )


def _announce_sample(res: Resources, console: Console) -> None:
    n, total = len(res.users), len(res.split.test)
    if n < total:
        console.print(
            f"[yellow]sampled {n:,} of {total:,} test users (seed {res.cfg.seed}); "
            f"every metric below is on this sample[/yellow]"
        )
    else:
        console.print(f"all {total:,} test users")


def default_console() -> Console:
    """A console that does not squeeze wide tables to 80 columns when writing to a file or log."""
    return Console() if sys.stdout.isatty() else Console(width=200)


__all__ = [
    "RunSummary",
    "StageOutcome",
    "default_console",
    "run_ledger",
    "run_pipeline",
    "stage_key",
    "start_run",
]
