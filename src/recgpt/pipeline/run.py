"""`run_pipeline`: run the stages in order, skipping those whose `done.json` matches, and account.

A stage's hash covers its own config section, `STAGE_VERSION` and the hashes of the stages it reads
(`Stage.needs`), so a changed setting invalidates that stage and everything downstream of it, and
nothing else. Before a stage runs, its folder is emptied (its old marker first), so a crash never
leaves a marker beside half-written tables; `done.json` is written last, atomically. LLM answers
live in the run's SQLite cache, so a killed LLM stage resumes where it stopped and a re-run of an
unchanged batch costs no model call.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from rich.console import Console

from recgpt.data.atomic import clean_stale_temps
from recgpt.eval.experiment import write_json_atomic
from recgpt.folders import FolderLock, PathEscape, inside
from recgpt.intent.pool import TextEncoder
from recgpt.llm.ledger import Ledger, StageStats
from recgpt.llm.types import Backend
from recgpt.pipeline.config import RunConfig
from recgpt.pipeline.preflight import check_until, preflight
from recgpt.pipeline.stages import STAGE_VERSION, STAGES, Stage, check_llm_stage
from recgpt.pipeline.state import MARKER, RunState, load_dataset


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
    """The outcome of `run_pipeline`: per-stage status, the run folder, and LLM accounting."""

    run_dir: Any
    outcomes: list[StageOutcome]
    ledger: Ledger
    model_calls: int  # backend generations made in this invocation (0 on a fully resumed run)
    wall_s: float
    users: int  # sampled test users

    def status(self) -> dict[str, str]:
        return {o.name: o.status for o in self.outcomes}

    def throughput(self) -> list[dict[str, Any]]:
        """Seconds and sampled users per minute of every stage (a skipped stage: its last run)."""
        return [{"stage": o.name, "seconds": round(o.seconds, 2), "users": self.users,
                 "users_per_min": round(self.users / o.seconds * 60, 1) if o.seconds > 0 else None}
                for o in self.outcomes]  # fmt: skip


def stage_hash(stage: Stage, cfg: RunConfig, upstream: dict[str, str], fingerprint: str) -> str:
    """Identity of a stage's output: its config section, version and its inputs' identities."""
    payload = {"stage": stage.name, "version": STAGE_VERSION, "config": stage.config(cfg),
               "needs": {n: upstream[n] for n in stage.needs}}  # fmt: skip
    if not stage.needs:
        payload["dataset"] = fingerprint
    text = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _reset(state: RunState, stage: Stage) -> None:
    """Empty the stage's folder; it must resolve inside the run folder (never rmtree elsewhere)."""
    folder = inside(state.run_dir, state.dir(stage.name))
    if folder.resolve() == state.run_dir.resolve():
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
    return d


def run_ledger(state: RunState, run_id: str) -> Ledger:
    """The run's LLM ledger: each LLM stage's counters from the invocation that computed it."""
    ledger = Ledger(run_id)
    for st in STAGES:
        m = state.marker(st.name) if st.llm else None
        if m and m.get("llm"):
            d = dict(m["llm"])
            d["failures"] = Counter(d.get("failures") or {})
            ledger.stages[st.name] = StageStats(**d)
    return ledger


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
    they are runtime choices, so they do not enter any stage hash.
    """
    console = console or Console()
    check_until(until)
    started = time.perf_counter()
    dataset = load_dataset(cfg.dataset)
    preflight(cfg, dataset, until=until, check_llm=backend is None)
    state = RunState(cfg, dataset, console=console, progress=progress, backend=backend, encoder=encoder,
                     folders={s.name: s.folder for s in STAGES})  # fmt: skip
    lock = FolderLock(state.run_dir).acquire()  # fails fast (FolderBusy) while another run holds the folder
    hashes: dict[str, str] = {}
    outcomes: list[StageOutcome] = []
    try:
        clean_stale_temps(state.run_dir, recursive=True)  # temps a killed writer left behind (under the lock)
        write_json_atomic(state.run_dir / "config.json", cfg.model_dump(mode="json"))
        _announce_sample(state, console)
        for stage in STAGES:
            h = hashes[stage.name] = stage_hash(stage, cfg, hashes, state.fingerprint)
            head = f"[bold]{stage.folder}[/bold] {stage.title}"
            marker = state.marker(stage.name)
            if marker is not None and marker.get("hash") == h:
                console.print(f"{head}: [green]up to date[/green] (ran in {marker['seconds']:.1f} s), skipped")
                outcomes.append(StageOutcome(stage.name, stage.folder, "skipped", marker["seconds"], marker["stats"]))
            else:
                console.print(f"{head} ...")
                _reset(state, stage)
                t0 = time.perf_counter()
                stats = stage.run(state)
                seconds = time.perf_counter() - t0
                engine = state.__dict__.get("engine")  # built only if the stage had anything to ask
                llm = _stats_of(engine.ledger.stages.get(stage.name)) if stage.llm and engine else None
                if stage.llm and (line := check_llm_stage(stage.name, stats, llm, cfg.llm.fallback_limit(stage.name))):
                    console.print(f"  {line}")  # StageFailed above (no marker) on transport failures or too much fallback
                write_json_atomic(state.dir(stage.name) / MARKER, {
                    "stage": stage.name, "hash": h, "config": stage.config(cfg), "needs": list(stage.needs),
                    "seconds": seconds, "users": len(state.users), "finished_at": time.time(),
                    "stats": stats, "llm": llm,
                })  # fmt: skip
                n = len(state.users)
                console.print(f"  done in {seconds:.1f} s ({n / seconds * 60:,.0f} users/min)" if seconds > 0
                              else "  done")  # fmt: skip
                outcomes.append(StageOutcome(stage.name, stage.folder, "ran", seconds, stats))
            if stage.name == until:
                break
        calls = state.engine.ledger.total().calls if "engine" in state.__dict__ else 0
        ledger = run_ledger(state, state.run_dir.name)
        ledger.save(state.run_dir / "ledger.json")
    finally:
        state.close()
        lock.release()
    return RunSummary(state.run_dir, outcomes, ledger, calls, time.perf_counter() - started, len(state.users))


def _announce_sample(state: RunState, console: Console) -> None:
    n, total = len(state.users), len(state.split.test)
    if n < total:
        console.print(f"[yellow]sampled {n:,} of {total:,} test users (seed {state.cfg.seed}); "
                      f"every metric below is on this sample[/yellow]")  # fmt: skip
    else:
        console.print(f"all {total:,} test users")


def default_console() -> Console:
    """A console that does not squeeze wide tables to 80 columns when writing to a file or log."""
    return Console() if sys.stdout.isatty() else Console(width=200)


__all__ = ["RunSummary", "StageOutcome", "default_console", "run_ledger", "run_pipeline", "stage_hash"]
