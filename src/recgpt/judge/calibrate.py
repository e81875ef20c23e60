"""Judge vs human agreement, in the shape of the paper's Table 9 (task | judge | ACC | P | R | F1).

Positive = "passes". For each task the judge's overall decision (every criterion and, by default,
every rule passes; a failed judge call counts as "does not pass") is compared with the human's
overall label, then each criterion's verdict with the human's label for that criterion where one
was given. Precision / recall / F1 are 0.0 when undefined (no predicted / no actual positives), as
scikit-learn's `zero_division=0`; the counts (tp, fp, fn, tn) travel with every row so nothing is
hidden behind a rate.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
from rich.table import Table

from recgpt.judge.criteria import TASKS, criteria, is_rule
from recgpt.judge.judge import overall

CALIBRATION_SCHEMA: dict[str, pl.DataType] = {
    "task": pl.String(),
    "judge": pl.String(),
    "criterion": pl.String(),
    "n": pl.Int64(),
    "ACC": pl.Float64(),
    "P": pl.Float64(),
    "R": pl.Float64(),
    "F1": pl.Float64(),
    "tp": pl.Int64(),
    "fp": pl.Int64(),
    "fn": pl.Int64(),
    "tn": pl.Int64(),
}


def binary_metrics(pred: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """ACC, precision, recall, F1 of boolean predictions against boolean truth (positive = True)."""
    pred, truth = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    if pred.shape != truth.shape:
        raise ValueError(f"pred and truth differ in shape: {pred.shape} vs {truth.shape}")
    tp, fp = int((pred & truth).sum()), int((pred & ~truth).sum())
    fn, tn = int((~pred & truth).sum()), int((~pred & ~truth).sum())
    n = len(pred)
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    return {
        "n": n,
        "ACC": (tp + tn) / n if n else 0.0,
        "P": p,
        "R": r,
        "F1": f1,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
    }


def _pairs(pred: pl.DataFrame, truth: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    joined = pred.select("sample_id", "pred").join(
        truth.select("sample_id", "label"), on="sample_id", how="inner"
    )
    return joined["pred"].to_numpy(), joined["label"].to_numpy()


def calibrate(
    verdicts: pl.DataFrame, labels: pl.DataFrame, *, judge: str = "judge", rules: bool = True
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """(table `CALIBRATION_SCHEMA`, {task: {"overall": metrics, criterion: metrics}}) over the samples
    both the judge and a human decided; `rules=False` compares the LLM verdicts alone."""
    missing = {"sample_id", "task", "label", "criterion"} - set(labels.columns)
    if missing:
        raise ValueError(f"labels lack column(s) {sorted(missing)}")
    if not rules:
        verdicts = verdicts.filter(~pl.col("criterion").map_elements(is_rule, return_dtype=pl.Boolean))
    per_sample = overall(verdicts).rename({"passed": "pred"})
    rows: list[dict[str, Any]] = []
    out: dict[str, Any] = {}
    for task in TASKS:
        mine = labels.filter(pl.col("task") == task)
        if mine.is_empty():
            continue
        checks = [
            ("overall", per_sample.filter(pl.col("task") == task), mine.filter(pl.col("criterion").is_null()))
        ]
        for c in criteria(task):
            pred = verdicts.filter((pl.col("task") == task) & (pl.col("criterion") == c.name))
            checks.append(
                (c.name, pred.rename({"passed": "pred"}), mine.filter(pl.col("criterion") == c.name))
            )
        for name, pred, truth in checks:
            p, t = _pairs(pred, truth)
            if len(p) == 0:
                continue
            m = binary_metrics(p, t)
            out.setdefault(task, {})[name] = m
            rows.append({"task": task, "judge": judge, "criterion": name, **m})
    return pl.DataFrame(rows, schema=CALIBRATION_SCHEMA), out


def calibration_table(table: pl.DataFrame, title: str = "judge vs human (positive = passes)") -> Table:
    """A rich table of `calibrate`'s rows."""
    t = Table(title=title)
    for c in ("task", "judge", "criterion", "n", "ACC", "P", "R", "F1"):
        t.add_column(c, justify="left" if c in ("task", "judge", "criterion") else "right")
    for r in table.iter_rows(named=True):
        t.add_row(
            r["task"],
            r["judge"],
            r["criterion"],
            str(r["n"]),
            *(f"{r[k]:.4f}" for k in ("ACC", "P", "R", "F1")),
        )
    return t


__all__ = ["CALIBRATION_SCHEMA", "binary_metrics", "calibrate", "calibration_table"]
