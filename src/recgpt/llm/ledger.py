"""Accounting of LLM work per stage and per run: what was asked, what it cost, what failed.

The engine records into a `Ledger` as each chunk finishes, so even an interrupted run leaves an
honest account; `recgpt.llm.task.run_task` adds what the rules did with the answers (re-asks, items
left on their fallback). A run saves `ledger.to_json()` next to its results and prints `ledger.print()`.
Ledgers add up: `merge` folds a worker's counts (the object, or its saved JSON via `from_json`) into
the run's, stage by stage.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from recgpt.llm.types import FailureReason

_COUNTERS = ("failures", "winners")  # the Counter fields of `StageStats`


@dataclass
class StageStats:
    """Counters of one stage (a ledger bucket such as "interests" or "judge")."""

    requests: int = 0  # results returned (cached or not)
    cache_hits: int = 0
    calls: int = 0  # backend generations, retries included
    valid_calls: int = 0  # generations whose text validated
    budget_retries: int = 0  # truncated answers asked again with a larger max_tokens
    ok: int = 0  # results holding a valid object
    reasks: int = 0  # valid answers the task's rules emptied, asked again (recgpt.llm.task)
    fallbacks: int = 0  # task items the LLM contributed nothing to (failed or emptied): rule-based output
    samples: int = 0  # best-of-n answers drawn beyond each item's first ask (recgpt.llm.task)
    prompt_tokens: int = 0  # fresh generations only: a cache hit costs no tokens
    completion_tokens: int = 0
    backend_s: float = 0.0  # summed per-request generation latency
    wall_s: float = 0.0
    failures: Counter[str] = field(default_factory=Counter)
    winners: Counter[str] = field(default_factory=Counter)  # attempt index of each item's kept answer
    first_error: str = ""  # the first transport failure's detail (backend error, timeout)

    @property
    def schema_valid_rate(self) -> float:
        """Share of returned results that hold a schema-valid object (1.0 when nothing was asked)."""
        return self.ok / self.requests if self.requests else 1.0

    @property
    def call_valid_rate(self) -> float:
        """Share of backend generations that validated: 1.0 means no retry was ever needed."""
        return self.valid_calls / self.calls if self.calls else 1.0

    def add(self, other: StageStats) -> None:
        for f in fields(self):
            if f.name in _COUNTERS:
                getattr(self, f.name).update(getattr(other, f.name))
            elif f.name == "first_error":
                self.first_error = self.first_error or other.first_error
            else:
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "cache_hits": self.cache_hits,
            "calls": self.calls,
            "valid_calls": self.valid_calls,
            "budget_retries": self.budget_retries,
            "ok": self.ok,
            "reasks": self.reasks,
            "fallbacks": self.fallbacks,
            "samples": self.samples,
            "winners": dict(sorted(self.winners.items(), key=lambda kv: int(kv[0]))),
            "failures": dict(sorted(self.failures.items())),
            "first_error": self.first_error,
            "schema_valid_rate": round(self.schema_valid_rate, 6),
            "call_valid_rate": round(self.call_valid_rate, 6),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "backend_s": round(self.backend_s, 4),
            "wall_s": round(self.wall_s, 4),
        }


class Ledger:
    """Per-stage counters for one run, plus the run's identity and start time."""

    def __init__(self, run_id: str | None = None) -> None:
        self.run_id = run_id or time.strftime("%Y%m%d-%H%M%S")
        self.started_at = time.time()
        self.stages: dict[str, StageStats] = {}

    def stage(self, name: str) -> StageStats:
        """The mutable counters of stage `name` (created on first use)."""
        if name not in self.stages:
            self.stages[name] = StageStats()
        return self.stages[name]

    def record_failure(self, stage: str, reason: FailureReason | str) -> None:
        self.stage(stage).failures[str(reason)] += 1

    def merge(self, other: Ledger) -> Ledger:
        """Add `other`'s counters to this ledger's, stage by stage (a worker's ledger into the run's).

        Counts add up, so merging the same ledger twice counts its work twice; the run keeps its own
        id and the earlier start time. Returns self.
        """
        if other is self:
            raise ValueError("cannot merge a ledger into itself")
        for name, stats in other.stages.items():
            self.stage(name).add(stats)
        self.started_at = min(self.started_at, other.started_at)
        return self

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Ledger:
        """The ledger `to_json` wrote (derived rates and the total are recomputed, not read)."""
        ledger = cls(data.get("run_id"))
        ledger.started_at = float(data.get("started_at", ledger.started_at))
        names = {f.name for f in fields(StageStats)}
        for name, d in (data.get("stages") or {}).items():
            counts = {k: v for k, v in d.items() if k in names and k not in _COUNTERS}
            if "valid_calls" not in counts:  # written before valid_calls was: back from the rate
                counts["valid_calls"] = round(d.get("call_valid_rate", 1.0) * d.get("calls", 0))
            counters = {k: Counter(d.get(k) or {}) for k in _COUNTERS}
            ledger.stages[name] = StageStats(**counts, **counters)
        return ledger

    def total(self) -> StageStats:
        out = StageStats()
        for stats in self.stages.values():
            out.add(stats)
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "started_at": self.started_at,
            "stages": {name: s.to_json() for name, s in sorted(self.stages.items())},
            "total": self.total().to_json(),
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the ledger as JSON (atomically, so a crash never leaves half a file)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # named like recgpt.data.atomic's temps (not imported: the LLM layer stays free of polars), so
        # the next run's clean-up recognises one a killed writer left behind
        tmp = path.with_name(f".tmp-recgpt-{os.getpid()}-{secrets.token_hex(4)}.{path.name}")
        tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        tmp.replace(path)
        return path

    def table(self) -> Any:
        """A `rich.table.Table`: one row per measure, one column per stage plus a total.

        Measures as rows keep it readable in an 80-column terminal however long the stage names.
        """
        from rich.table import Table

        columns = [*sorted(self.stages.items()), ("TOTAL", self.total())]
        table = Table(title=f"LLM ledger - run {self.run_id}", title_justify="left")
        table.add_column("measure", style="bold", no_wrap=True)
        for name, _ in columns:
            table.add_column(name, justify="right", overflow="fold")
        measures: list[tuple[str, Any]] = [
            ("requests", lambda s: s.requests),
            ("cache hits", lambda s: s.cache_hits),
            ("model calls", lambda s: s.calls),
            ("budget retries", lambda s: s.budget_retries),
            ("valid objects", lambda s: s.ok),
            ("re-asks", lambda s: s.reasks),
            ("fallbacks", lambda s: s.fallbacks),
            ("best-of-n samples", lambda s: s.samples),
            ("kept answer #", lambda s: " ".join(f"{k}:{v}" for k, v in sorted(s.winners.items())) or "-"),
            ("schema_valid_rate", lambda s: f"{s.schema_valid_rate:.1%}"),
            ("valid per call", lambda s: f"{s.call_valid_rate:.1%}"),
            ("prompt tokens", lambda s: s.prompt_tokens),
            ("completion tokens", lambda s: s.completion_tokens),
            ("wall s", lambda s: f"{s.wall_s:.2f}"),
            ("failures", lambda s: " ".join(f"{k}={v}" for k, v in sorted(s.failures.items())) or "-"),
        ]
        for label, get in measures:
            table.add_row(label, *(str(get(stats)) for _, stats in columns))
        return table

    def print(self, console: Any = None) -> None:
        from rich.console import Console

        (console or Console()).print(self.table())
