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

# columns written per invocation (wall-clock timings), not by the chain's logic: a table holding one is
# compared on its row count and columns only (its digest changes from one run of the same code to the next)
VOLATILE_TABLES = {"06_tritower/history": ("seconds",)}


def same_tables(golden: dict[str, Any], got: dict[str, Any]) -> list[str]:
    """The tables (and `results.json`) where `got` differs from `golden`, volatile columns excepted."""
    diff = sorted(set(golden) ^ set(got))
    for key in sorted(set(golden) & set(got)):
        a, b = golden[key], got[key]
        if key in VOLATILE_TABLES:
            a, b = {k: a[k] for k in ("rows", "columns")}, {k: b[k] for k in ("rows", "columns")}
        if a != b:
            diff.append(key)
    return diff


def table_digests(run_dir: Path) -> dict[str, Any]:
    """{"<folder>/<table>": {"rows", "columns", "sha256"}} for every Parquet table of a run, plus the
    results table (model -> rounded metrics)."""
    out: dict[str, Any] = {}
    for p in sorted(run_dir.glob("*/*.parquet")):
        key = f"{p.parent.name}/{p.stem}"
        df = pl.read_parquet(p)
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
