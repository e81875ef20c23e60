"""The judge data buffer (RecGPT §1.8): human-labelled samples across rounds, rebalanced for judge SFT.

`JudgeBuffer(folder)` keeps every labelled sample in `folder/buffer.parquet` (written atomically),
one row per sample with the round it was labelled in (a sample labelled again later keeps only its
latest label). `training_set` rebalances against the majority-class bias of judge data, per task:

- **minority class augmentation**: every minority-class sample of every past round is kept;
- **recency-prioritised downsampling**: the majority class is sampled down to `majority_ratio`
  times the minority, without replacement, with weights that halve every `half_life_rounds`
  rounds before the newest (temporal decay), so recent behaviour and criteria dominate.

`JudgeGate(threshold)` decides whether the judge may filter training data: only for tasks whose
measured agreement with humans (`calibrate`) reaches the threshold on enough samples.
`judge_sft_samples` turns buffer rows into judge SFT examples: the judge request's messages
(rendered by the same `judge_request` the judge uses) and the verdict JSON implied by the human
labels as the completion. Convention for partial labels: a passing overall label means every
criterion passes; a failing overall label needs at least one criterion marked failing, and the
criteria left blank then count as passing ("mark what fails"); otherwise the sample is skipped.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from recgpt.data.atomic import write_parquet_atomic
from recgpt.data.sft import SAMPLE_SCHEMA, sample_row, samples_frame, validate_samples
from recgpt.judge.criteria import criteria
from recgpt.judge.judge import JudgeConfig, judge_request, verdict_json
from recgpt.judge.samples import SAMPLES_SCHEMA, facts_of

BUFFER_SCHEMA: dict[str, pl.DataType] = {
    **SAMPLES_SCHEMA,
    "round": pl.Int64(),
    "label": pl.Boolean(),
    "criteria_labels": pl.String(),  # JSON {criterion: bool}
    "annotator": pl.String(),
    "labelled_at": pl.Int64(),
}
SFT_COLUMNS: tuple[str, ...] = tuple(SAMPLE_SCHEMA)  # judge SFT examples are rows of the SFT sample table


def _fold(sid: str, task: str, rows: list[dict[str, Any]]) -> tuple[bool | None, dict[str, bool]]:
    """(overall label, criterion labels) of one sample's label rows; a contradiction is an error."""
    overall = next((r["label"] for r in rows if r["criterion"] is None), None)
    crit = {r["criterion"]: bool(r["label"]) for r in rows if r["criterion"] is not None}
    names = {c.name for c in criteria(task)}
    if set(crit) - names:
        raise ValueError(f"sample {sid}: task {task!r} has no criterion {sorted(set(crit) - names)}")
    if overall is True and not all(crit.values()):
        raise ValueError(
            f"sample {sid}: labelled acceptable overall but failing {[c for c, v in crit.items() if not v]}"
        )
    if overall is None and crit and (not all(crit.values()) or set(crit) == names):
        overall = all(crit.values())
    return overall, crit


class JudgeBuffer:
    """Labelled judge samples across annotation rounds (module docstring)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / "buffer.parquet"

    def rows(self) -> pl.DataFrame:
        """Every buffered sample (`BUFFER_SCHEMA`)."""
        return pl.read_parquet(self.path) if self.path.exists() else pl.DataFrame(schema=BUFFER_SCHEMA)

    def next_round(self) -> int:
        rows = self.rows()
        return 0 if rows.is_empty() else int(rows["round"].max()) + 1  # type: ignore[arg-type]

    def add(self, samples: pl.DataFrame, labels: pl.DataFrame, round: int | None = None) -> int:
        """Add the labelled ones of `samples` as round `round` (default: the next); returns how many."""
        round = self.next_round() if round is None else int(round)
        if round < 0:
            raise ValueError(f"round must be >= 0, got {round}")
        by_id = {s["sample_id"]: s for s in samples.iter_rows(named=True)}
        grouped: dict[str, list[dict[str, Any]]] = {}
        for r in labels.iter_rows(named=True):
            grouped.setdefault(r["sample_id"], []).append(r)
        unknown = [sid for sid in grouped if sid not in by_id]
        if unknown:
            raise ValueError(
                f"{len(unknown)} labelled sample(s) are not among the samples given, e.g. {unknown[:3]}"
            )
        new = []
        for sid, rows in grouped.items():
            s = by_id[sid]
            if not s.get("context") or not s.get("output"):
                raise ValueError(
                    f"sample {sid}: no context/output to train the judge on (export it with context)"
                )
            overall, crit = _fold(sid, s["task"], rows)
            new.append(
                {
                    **{k: s.get(k) for k in SAMPLES_SCHEMA},
                    "round": round,
                    "label": overall,
                    "criteria_labels": json.dumps(crit, sort_keys=True),
                    "annotator": rows[-1]["annotator"],
                    "labelled_at": rows[-1]["labelled_at"],
                }
            )
        added = pl.DataFrame(new, schema=BUFFER_SCHEMA)
        old = self.rows().filter(~pl.col("sample_id").is_in(added["sample_id"].implode()))
        write_parquet_atomic(pl.concat([old, added]).sort("round", maintain_order=True), self.path)
        return added.height

    def training_set(
        self,
        max_size: int | None = None,
        seed: int = 0,
        half_life_rounds: float = 2.0,
        majority_ratio: float = 1.0,
    ) -> pl.DataFrame:
        """Rebalanced buffer rows with an overall label (module docstring); `max_size` caps the total,
        shared evenly across tasks."""
        if half_life_rounds <= 0 or majority_ratio <= 0:
            raise ValueError("half_life_rounds and majority_ratio must be > 0")
        rows = self.rows().filter(pl.col("label").is_not_null())
        if rows.is_empty():
            return rows
        latest = int(rows["round"].max())  # type: ignore[arg-type]
        rng = np.random.default_rng(seed)
        tasks = rows["task"].unique(maintain_order=True).to_list()
        cap = None if max_size is None else max(1, max_size // len(tasks))
        parts = []
        for task in tasks:
            g = rows.filter(pl.col("task") == task)
            pos, neg = g.filter(pl.col("label")), g.filter(~pl.col("label"))
            minor, major = (pos, neg) if pos.height <= neg.height else (neg, pos)
            n_min = minor.height if cap is None else min(minor.height, math.ceil(cap / (1 + majority_ratio)))
            n_maj = min(major.height, math.ceil(majority_ratio * max(n_min, 1)))
            if cap is not None:
                n_maj = min(n_maj, cap - n_min)
            parts += [
                _recent_sample(minor, n_min, latest, half_life_rounds, rng),
                _recent_sample(major, n_maj, latest, half_life_rounds, rng),
            ]
        out = pl.concat(parts)
        return rows.filter(pl.col("sample_id").is_in(out["sample_id"].implode()))


def _recent_sample(
    df: pl.DataFrame, k: int, latest: int, half_life: float, rng: np.random.Generator
) -> pl.DataFrame:
    """`k` rows without replacement, weight 0.5 ** ((latest - round) / half_life) (Efraimidis-Spirakis keys)."""
    if k >= df.height:
        return df
    if k <= 0:
        return df.clear()
    w = 0.5 ** ((latest - df["round"].to_numpy()) / half_life)
    keys = np.log(rng.random(df.height)) / w
    return df[np.sort(np.argsort(-keys, kind="stable")[:k])]


class JudgeGate(BaseModel):
    """The judge may filter a task's training data only when its measured agreement is high enough."""

    model_config = ConfigDict(frozen=True)

    threshold: float = Field(default=0.8, ge=0.0, le=1.0)
    metric: str = Field(default="ACC", pattern="^(ACC|P|R|F1)$")
    min_samples: int = Field(default=20, ge=1)

    def task_allowed(self, calibration: Mapping[str, Any], task: str) -> bool:
        m = (calibration.get(task) or {}).get("overall")
        return bool(m) and m["n"] >= self.min_samples and m[self.metric] >= self.threshold

    def allows(self, calibration: Mapping[str, Any], task: str | None = None) -> bool:
        """For one task, or (task None) for every calibrated task (False when nothing was calibrated)."""
        if task is not None:
            return self.task_allowed(calibration, task)
        return bool(calibration) and all(self.task_allowed(calibration, t) for t in calibration)

    def allowed_tasks(self, calibration: Mapping[str, Any]) -> list[str]:
        return [t for t in calibration if self.task_allowed(calibration, t)]


def label_verdicts(task: str, label: bool | None, crit: Mapping[str, bool]) -> dict[str, str] | None:
    """criterion -> verdict implied by human labels (module docstring), or None when undecidable."""
    cs = criteria(task)
    if label is True:
        return {c.name: c.passing_label for c in cs}
    if label is False and any(v is False for v in crit.values()):
        return {c.name: c.passing_label if crit.get(c.name, True) else c.failing for c in cs}
    if label is None and crit and set(crit) == {c.name for c in cs}:
        return {c.name: c.passing_label if crit[c.name] else c.failing for c in cs}
    return None


def judge_sft_samples(buffer_rows: pl.DataFrame, config: JudgeConfig | None = None) -> pl.DataFrame:
    """Judge SFT examples (`recgpt.data.sft`'s sample table, task "judge") from buffer rows."""
    cfg = config or JudgeConfig()
    out = []
    for r in buffer_rows.iter_rows(named=True):
        verdicts = label_verdicts(r["task"], r["label"], json.loads(r["criteria_labels"] or "{}"))
        if verdicts is None:
            continue
        req = judge_request(cfg, r)
        lineage = {
            "judged_task": r["task"],
            "judged_sample": r["sample_id"],
            "round": r["round"],
            "annotator": r["annotator"],
            "labelled_at": r["labelled_at"],
            "template": req.template,
            "sample_source": r["source"],
        }
        as_of = facts_of(r).get("as_of")
        completion = verdict_json(r["task"], verdicts, cfg.reason_chars)
        out.append(
            sample_row(
                "judge",
                "advanced",
                req.messages,
                completion,
                "labels",
                user_id=r["user_id"],
                as_of=None if as_of is None else int(as_of),
                lineage=lineage,
            )
        )
    return validate_samples(samples_frame(out))


__all__ = [
    "BUFFER_SCHEMA",
    "SFT_COLUMNS",
    "JudgeBuffer",
    "JudgeGate",
    "judge_sft_samples",
    "label_verdicts",
]
