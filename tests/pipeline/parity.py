"""Digests of a run's tables, for the parity test (`test_parity.py`) and `bench/parity.py`.

A digest is the SHA-256 of a table's CSV text (column names, row order and every value), so two runs
agree on a table only when they wrote the very same rows. `results.json` contributes its metric table.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import polars as pl

# wall-clock columns: the only values that differ between two runs of the same code
VOLATILE_COLUMNS = {"seconds", "train_s", "score_s"}


def table_digests(run_dir: Path) -> dict[str, Any]:
    """{"<folder>/<table>": {"rows", "columns", "sha256"}} for every Parquet table of a run, plus the
    results table (model -> rounded metrics)."""
    out: dict[str, Any] = {}
    for p in sorted(run_dir.glob("*/*.parquet")):
        key = f"{p.parent.name}/{p.stem}"
        df = pl.read_parquet(p)
        df = df.drop([c for c in df.columns if c in VOLATILE_COLUMNS])
        out[key] = {
            "rows": df.height,
            "columns": df.columns,
            "sha256": hashlib.sha256(df.write_csv().encode()).hexdigest(),
        }
    results = run_dir / "results.json"
    if results.exists():
        table = json.loads(results.read_text())["table"]
        out["results.json"] = {
            r["model"]: {k: (round(v, 10) if isinstance(v, float) else v) for k, v in r.items()}
            for r in table
        }
    return out
