"""Judge a finished run and write what the judge found: `recgpt judge run` without the printing.

`judge_run` opens a run folder (optionally with another LLM), samples its LLM-written outputs, judges
them through the run's LLM cache (a killed judge resumes, a re-run costs no model call) and writes
`RUN_DIR/judge/`: samples, verdicts, overall, pass_rates.json and judge.json. The CLI only parses the
options and prints the returned `JudgeRun`; benches and tests call the same function.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from recgpt.data.atomic import write_json_atomic, write_parquet_atomic


@dataclass
class JudgeRun:
    """What one `judge_run` judged and found (everything it wrote is under `out`)."""

    run_dir: Path
    out: Path
    llm: str  # the judge's backend spec, credentials redacted
    samples: pl.DataFrame
    counts: dict[str, int]  # samples per task
    rates: dict[str, dict[str, Any]] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)  # judge calls that failed, by reason
    seconds: float = 0.0
    cache_hits: int | None = None
    model_calls: int | None = None

    @property
    def empty(self) -> bool:
        """True when the run had nothing LLM-written to judge for these tasks (nothing was written)."""
        return self.samples.is_empty()


def judge_run(
    run_dir: Path,
    *,
    llm: Mapping[str, Any] | None = None,
    tasks: Sequence[str] | None = None,
    max_samples: int | None = None,
    seed: int = 0,
    reason_words: int = 0,
    include_fallbacks: bool = False,
    progress: bool = False,
    console: Any = None,
    on_start: Callable[[JudgeRun], None] | None = None,
) -> JudgeRun:
    """Judge `run_dir`'s interests / tags / explanations; `llm` overrides the run's LLM settings.

    `on_start` sees the sampled run before the (long) judging starts. A run folder without
    `config.json` raises FileNotFoundError naming it.
    """
    from recgpt.judge.criteria import TASKS
    from recgpt.judge.judge import Judge, JudgeConfig, overall, pass_rates
    from recgpt.judge.samples import open_run, sample_per_task, samples_from_state

    overrides = {k: v for k, v in (llm or {}).items() if v is not None}
    state = open_run(run_dir, llm=overrides, progress=progress, console=console)
    try:
        found = samples_from_state(state, tuple(tasks or TASKS), llm_only=not include_fallbacks)
        samples = sample_per_task(found, max_samples, seed)
        counts = dict(samples.group_by("task", maintain_order=True).len().rows())
        result = JudgeRun(run_dir, run_dir / "judge", state.llm_spec, samples, counts)
        if on_start is not None:
            on_start(result)
        if samples.is_empty():
            return result
        config = JudgeConfig(reason_words=reason_words)
        t0 = time.perf_counter()
        judge = Judge(state.engine, config)
        verdicts = judge.run(samples)
        result.seconds = time.perf_counter() - t0
        model_id = state.engine.backend.model_id
        stats = state.engine.ledger.stages.get("judge")
    finally:
        state.close()
    result.rates = pass_rates(verdicts)
    result.failures = dict(Counter(f["reason"] for f in judge.failures))
    if stats is not None:
        result.cache_hits, result.model_calls = stats.cache_hits, stats.calls
    out = result.out
    write_parquet_atomic(samples, out / "samples.parquet")
    write_parquet_atomic(verdicts, out / "verdicts.parquet")
    write_parquet_atomic(overall(verdicts), out / "overall.parquet")
    write_json_atomic(out / "pass_rates.json", result.rates)
    meta = {
        "llm": result.llm,
        "model_id": model_id,
        "config": config.model_dump(mode="json"),
        "samples": counts,
        "llm_only": not include_fallbacks,
        "max_samples": max_samples,
        "seed": seed,
        "seconds": round(result.seconds, 2),
        "failures": result.failures,
        "finished_at": time.time(),
        "ledger": None if stats is None else stats.to_json(),
    }
    write_json_atomic(out / "judge.json", meta)
    return result


def judge_now(samples: pl.DataFrame, spec: str, cache: Path) -> pl.DataFrame:
    """Verdicts for `samples` from the backend `spec` through the LLM cache at `cache`."""
    from recgpt.judge.judge import Judge
    from recgpt.llm import LLMCache, LLMEngine, make_backend

    engine = LLMEngine(make_backend(spec), cache=LLMCache(cache), max_retries=1, progress=True)
    try:
        return Judge(engine).run(samples)
    finally:
        engine.close()


def judge_name(verdicts: Path) -> str:
    """The judge's backend spec recorded beside a verdicts.parquet (`judge.json`), else 'judge'."""
    import json

    try:
        return str(json.loads((verdicts.parent / "judge.json").read_text())["llm"])
    except (OSError, ValueError, KeyError):
        return "judge"


__all__ = ["JudgeRun", "judge_name", "judge_now", "judge_run"]
