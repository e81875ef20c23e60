"""Parity: the RecGPT chain writes the very tables the code before the pipeline house wrote.

`parity_golden.json` holds `parity.table_digests` of a run of the pre-change code on `first_run`'s
config (`fast_config`, the fake backend, `HashEncoder`); every table (and the metric table of
`results.json`) of a fresh run must match it, except the wall-clock columns in `VOLATILE_TABLES`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from recgpt.pipeline import run_pipeline
from tests.intent.conftest import HashEncoder
from tests.pipeline.conftest import fake_backend, fast_config
from tests.pipeline.parity import same_tables, table_digests

GOLDEN = Path(__file__).with_name("parity_golden.json")


def test_a_fresh_run_writes_the_golden_tables(slice_path: Path, tmp_path: Path) -> None:
    if not GOLDEN.exists():
        pytest.skip(f"{GOLDEN.name} is not stored yet (the digests of the pre-change code)")
    cfg = fast_config(slice_path, tmp_path)
    summary = run_pipeline(
        cfg, backend=fake_backend(), encoder=HashEncoder(), console=Console(quiet=True), progress=False
    )
    golden = json.loads(GOLDEN.read_text())
    got = table_digests(summary.run_dir)
    assert same_tables(golden, got) == []
    assert len(got) >= 19  # 18 Parquet tables and results.json
