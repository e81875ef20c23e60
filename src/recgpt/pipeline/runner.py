"""The one runner of every pipeline: order, resume by key, markers, lock, ledger, the LLM fallback check.

`run_stages` walks a `Pipeline`'s stages in order. A stage whose `done.json` holds its current key
is skipped; any other stage gets its folder emptied (old marker first, so a crash never leaves a
marker beside half-written tables), runs, passes the LLM check and gets its marker, written last
and atomically. LLM answers live in the run's SQLite cache, so a killed LLM stage resumes where it
stopped. Nothing here is specific to one pipeline: what a run needs comes from the `resources`
object (`RunResources`), and the config model only needs `llm.fallback_limit(stage)` when a stage
asks an LLM.
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from rich.console import Console
from rich.table import Table

from recgpt.data.atomic import clean_stale_temps, write_json_atomic
from recgpt.data.runstore import MARKER, RunStore
from recgpt.folders import FolderLock, PathEscape, inside
from recgpt.llm.ledger import Ledger, StageStats
from recgpt.pipeline.core import Pipeline, Stage, StageContext, config_values


class RunResources(Protocol):
    """What the runner asks of a run's resources (the stages ask them for more)."""

    @property
    def fingerprint(self) -> str: ...  # of the dataset: part of the first stages' keys

    def units(self) -> int: ...  # users this run covers (throughput lines, markers)

    def llm_stats(self, stage: str) -> StageStats | None: ...  # the stage's ledger bucket, if it asked

    def model_calls(self) -> int: ...  # backend generations made in this invocation

    def close(self) -> None: ...


@dataclass
class StageOutcome:
    """What happened to one stage in this invocation."""

    name: str
    folder: str
    status: str  # "ran" | "skipped"
    seconds: float  # of the computation (for a skipped stage: when it last ran)
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunSummary:
    """The outcome of a run: per-stage status, the run folder, and LLM accounting."""

    run_dir: Any
    outcomes: list[StageOutcome]
    ledger: Ledger
    model_calls: int  # backend generations made in this invocation (0 on a fully resumed run)
    wall_s: float
    users: int  # sampled test users
    fallback: dict[str, dict[str, Any]] = field(default_factory=dict)  # `fallback_summary` at the end

    def status(self) -> dict[str, str]:
        return {o.name: o.status for o in self.outcomes}

    def throughput(self) -> list[dict[str, Any]]:
        """Seconds and sampled users per minute of every stage (a skipped stage: its last run)."""
        return [stage_rate(o.name, o.seconds, self.users) for o in self.outcomes]


def stage_rate(stage: str, seconds: float, users: int) -> dict[str, Any]:
    """One throughput row: a stage's seconds and the users it served per minute."""
    return {
        "stage": stage,
        "seconds": round(seconds, 2),
        "users": users,
        "users_per_min": round(users / seconds * 60, 1) if seconds > 0 else None,
    }


class StageFailed(RuntimeError):
    """An LLM stage whose output cannot be trusted: the run stops and the stage is not marked done."""


def check_llm_stage(name: str, stats: dict[str, Any], llm: dict[str, Any] | None, limit: float) -> str:
    """Raise `StageFailed` on any transport failure or a fallback share above `limit`; else the line to print.

    Answers already generated stay in the LLM cache, so the rerun after a fix asks only what failed.
    """
    from recgpt.llm.types import TRANSPORT_FAILURES

    failures = (llm or {}).get("failures") or {}
    lost = {r: n for r, n in sorted(failures.items()) if r in TRANSPORT_FAILURES and n}
    keep = "the stage is not marked done; answers already generated are cached"
    if lost:
        first = (llm or {}).get("first_error") or "-"
        raise StageFailed(
            f"stage '{name}': {sum(lost.values())} of {(llm or {}).get('requests', '?')} LLM requests got no "
            f"answer from the backend ({_counts(lost)}; first: {first}); {keep}. Once the backend is back, run "
            f"the same command again: only the failed requests are sent."
        )
    if "fallback_share" not in stats:
        return ""
    share, unit = stats["fallback_share"], stats.get("fallback_unit", "users")
    line = f"{stats['fallback']} of {stats['asked']} {unit} ({share:.0%}) on fallback, limit {limit:.0%}" + (
        f" ({_counts(stats['fallback_reasons'])})" if stats["fallback_reasons"] else ""
    )
    if share > limit:
        raise StageFailed(
            f"stage '{name}': {line}; {keep}. If the model cannot do better, raise the limit: "
            f"--set llm.max_fallback_share={min(1.0, round(share + 0.05, 2))} (all LLM stages) or "
            f"--set 'llm.max_fallback_share={{\"{name}\": {min(1.0, round(share + 0.05, 2))}}}' (this stage only)."
        )
    return line


def fallback_stats(n: int, asked: int, reasons: dict[str, int], unit: str = "users") -> dict[str, Any]:
    """The stats an LLM stage returns for `check_llm_stage`: how many of `asked` (users, pairs) fell back."""
    return {
        "fallback": n,
        "asked": asked,
        "fallback_share": round(n / asked, 4) if asked else 0.0,
        "fallback_reasons": reasons,
        "fallback_unit": unit,
    }


def _counts(d: dict[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in d.items())


def fallback_from_markers(markers: dict[str, dict[str, Any]], cfg: Any) -> dict[str, dict[str, Any]]:
    """Fallback share of every finished stage whose stats carry one, with its limit."""
    out: dict[str, dict[str, Any]] = {}
    for name, m in markers.items():
        stats = m.get("stats") or {}
        if "fallback_share" in stats:
            out[name] = {k: stats[k] for k in ("fallback", "asked", "fallback_share", "fallback_reasons")}
            out[name]["limit"] = cfg.llm.fallback_limit(name)
    return out


def finished_markers(
    pipeline: Pipeline, store: RunStore, llm_only: bool = False
) -> dict[str, dict[str, Any]]:
    """The markers of the pipeline's finished stages, in order."""
    stages = [s for s in pipeline.stages if s.llm or not llm_only]
    return {s.name: m for s in stages if (m := store.marker(s.name)) is not None}


def fallback_summary(pipeline: Pipeline, store: RunStore, cfg: Any) -> dict[str, dict[str, Any]]:
    """Fallback share of every finished LLM stage (results.json, the report, the printed summary)."""
    return fallback_from_markers(finished_markers(pipeline, store, llm_only=True), cfg)


def fallback_table(fallback: dict[str, dict[str, Any]]) -> Table:
    """The per-stage fallback counts as a terminal table."""
    t = Table(title="LLM fallback per stage (the LLM gave nothing usable)")
    for c in ("stage", "on fallback", "share", "limit", "reasons"):
        t.add_column(c, justify="left" if c in ("stage", "reasons") else "right")
    for name, f in fallback.items():
        t.add_row(
            name,
            f"{f['fallback']} / {f['asked']}",
            f"{f['fallback_share']:.1%}",
            f"{f['limit']:.0%}",
            _counts(f["fallback_reasons"]) or "-",
        )
    return t


def ledger_from_markers(markers: dict[str, dict[str, Any]], run_id: str) -> Ledger:
    """A ledger of the LLM counters the markers hold (each from the invocation that computed the stage)."""
    ledger = Ledger(run_id)
    for name, m in markers.items():
        if m.get("llm"):
            d = dict(m["llm"])
            d["failures"] = Counter(d.get("failures") or {})
            d["winners"] = Counter(d.get("winners") or {})
            ledger.stages[name] = StageStats(**d)
    return ledger


def run_ledger(pipeline: Pipeline, store: RunStore, run_id: str) -> Ledger:
    """The run's LLM ledger: each LLM stage's counters from the invocation that computed it."""
    return ledger_from_markers(finished_markers(pipeline, store, llm_only=True), run_id)


def _reset(store: RunStore, stage: str) -> None:
    """Empty a stage's folder, its marker first (a crash never leaves a marker beside half-written
    tables); the folder must resolve inside the run folder, and never be the run folder itself."""
    folder = inside(store.run_dir, store.dir(stage))
    if folder.resolve() == store.run_dir.resolve():
        raise PathEscape(f"stage folder {folder} is the run folder itself; refusing to delete it")
    (folder / MARKER).unlink(missing_ok=True)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)


def _stats_of(stats: StageStats | None) -> dict[str, Any] | None:
    if stats is None:
        return None
    d = asdict(stats)
    d["failures"] = dict(stats.failures)
    d["winners"] = dict(stats.winners)  # asdict would turn a Counter's items into keys
    return d


def run_stages(
    pipeline: Pipeline,
    cfg: Any,
    store: RunStore,
    resources: RunResources,
    *,
    console: Console,
    progress: bool = False,
    until: str | None = None,
    on_start: Callable[[], None] | None = None,
) -> RunSummary:
    """Run (or resume) `pipeline` into `store` under its folder lock; `until` stops after that stage.

    `on_start` runs under the lock before the first stage (e.g. to announce the user sample).
    The resources are closed at the end, whatever happens.
    """
    started = time.perf_counter()
    stages = pipeline.until(until)
    run_dir = Path(store.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = FolderLock(run_dir).acquire()  # fails fast (FolderBusy) while another run holds the folder
    outcomes: list[StageOutcome] = []
    try:
        clean_stale_temps(run_dir, recursive=True)  # temps a killed writer left behind (under the lock)
        write_json_atomic(run_dir / "config.json", cfg.model_dump(mode="json"))
        if on_start is not None:
            on_start()
        keys = pipeline.keys(cfg, resources.fingerprint)
        for stage in stages:
            outcomes.append(_run_one(stage, keys[stage.name], cfg, store, resources, console, progress))
        calls = resources.model_calls()
        ledger = run_ledger(pipeline, store, run_dir.name)
        ledger.save(run_dir / "ledger.json")
        fallback = fallback_summary(pipeline, store, cfg)
        if fallback:
            console.print(fallback_table(fallback))
    finally:
        resources.close()
        lock.release()
    return RunSummary(
        run_dir, outcomes, ledger, calls, time.perf_counter() - started, resources.units(), fallback
    )


def _run_one(
    stage: Stage,
    key: str,
    cfg: Any,
    store: RunStore,
    resources: RunResources,
    console: Console,
    progress: bool,
) -> StageOutcome:
    head = f"[bold]{stage.folder}[/bold] {stage.title}"
    marker = store.marker(stage.name)
    if marker is not None and marker.get("hash") == key:
        console.print(f"{head}: [green]up to date[/green] (ran in {marker['seconds']:.1f} s), skipped")
        return StageOutcome(stage.name, stage.folder, "skipped", marker["seconds"], marker["stats"])
    console.print(f"{head} ...")
    _reset(store, stage.name)
    t0 = time.perf_counter()
    stats = stage.run(StageContext(stage, cfg, store, resources, console=console, progress=progress))
    seconds = time.perf_counter() - t0
    llm = _stats_of(resources.llm_stats(stage.name)) if stage.llm else None
    if stage.llm and (line := check_llm_stage(stage.name, stats, llm, cfg.llm.fallback_limit(stage.name))):
        console.print(f"  {line}")  # StageFailed above (no marker) on transport failures or too much fallback
    n = resources.units()
    store.write_marker(
        stage.name,
        {
            "stage": stage.name,
            "hash": key,
            "version": stage.version,
            "config": config_values(cfg, stage.config),
            "needs": list(stage.needs),
            "reads": list(stage.reads),
            "seconds": seconds,
            "users": n,
            "finished_at": time.time(),
            "stats": stats,
            "llm": llm,
        },
    )
    console.print(
        f"  done in {seconds:.1f} s ({n / seconds * 60:,.0f} users/min)" if seconds > 0 else "  done"
    )
    return StageOutcome(stage.name, stage.folder, "ran", seconds, stats)


__all__ = [
    "RunResources",
    "RunSummary",
    "StageFailed",
    "StageOutcome",
    "check_llm_stage",
    "fallback_from_markers",
    "fallback_stats",
    "fallback_summary",
    "fallback_table",
    "finished_markers",
    "ledger_from_markers",
    "run_ledger",
    "run_stages",
    "stage_rate",
]
