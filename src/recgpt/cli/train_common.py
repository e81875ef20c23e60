"""What the `recgpt train` commands share: help texts (one wording per concept), error classes, summaries."""

from __future__ import annotations

import os
import time
from typing import Any

JUDGE_LLM_HELP = "Judge backend that filters the generated answers (default none: the rules only)."
CALIBRATION_HELP = "`recgpt judge calibrate --out` JSON: the judge's measured accuracy (the gate)."
GATE_HELP = "Judge accuracy needed before the judge may filter training data."
EVAL_USERS_HELP = "The chain's evaluation sample to exclude from training (recgpt run --users)."
EVAL_SEED_HELP = "Its seed (recgpt run --seed)."
MAX_STEPS_HELP = "Cap on optimizer steps per curriculum level (default: one epoch)."
MAX_MINUTES_HELP = "Stop training cleanly after this long (resumable)."
# what the commands raise for inputs that cannot work (a missing folder, too few users, no labels)
BAD_INPUT = (ValueError, FileNotFoundError)


def curriculum_table(result: Any) -> Any:
    """The per-level rows of an SFT result (`run_sft`), as a rich table: did the loss move, what was cut."""
    from rich.table import Table

    t = Table(title="curriculum phases")
    for c in ("level", "samples", "too long", "mean tokens", "steps", "first loss", "last loss", "seconds"):
        t.add_column(c, justify="left" if c == "level" else "right")
    for r in result.levels:
        first = "" if r.first_loss is None else f"{r.first_loss:.3f}"
        last = "" if r.last_loss is None else f"{r.last_loss:.3f}"
        steps = f"{r.steps}/{r.max_steps}"
        t.add_row(
            r.level,
            str(r.samples),
            str(r.dropped_too_long),
            f"{r.tokens_mean:.0f}",
            steps,
            first,
            last,
            f"{r.runtime_s:.0f}",
        )
    return t


def wall_time(console: Any, t0: float) -> None:
    """Print the wall time since `t0` with the load average: a slow run on a busy machine says so."""
    load = os.getloadavg()
    wall = time.perf_counter() - t0
    console.print(
        f"wall time {wall:.1f} s ({wall / 60:.1f} min); load average now {load[0]:.2f} (1 min), {load[1]:.2f} (5 min)"
    )


__all__ = [
    "BAD_INPUT",
    "CALIBRATION_HELP",
    "EVAL_SEED_HELP",
    "EVAL_USERS_HELP",
    "GATE_HELP",
    "JUDGE_LLM_HELP",
    "MAX_MINUTES_HELP",
    "MAX_STEPS_HELP",
    "curriculum_table",
    "wall_time",
]
