"""Parity: the chain writes the very same tables as before the issue-11 restructuring, on the same seed.

`parity_golden.json` holds the table digests (`parity.table_digests`) of the scripted-LLM run of
`test_pipeline.py` (`fast_config` on the bundled slice, `fake_backend`, `HashEncoder`) made by the code
before stages became declared functions (commit 2222e3b). A refactor that changes a row, a column or a
metric fails here; a deliberate change of the chain's output regenerates the file and says why.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from recgpt.pipeline import run_pipeline
from tests.conftest import HashEncoder, fake_backend, fast_config
from tests.pipeline.parity import table_digests

GOLDEN = Path(__file__).with_name("parity_golden.json")


def test_tables_match_the_pre_refactor_run(slice_path: Path, tmp_path: Path) -> None:
    cfg = fast_config(slice_path, tmp_path / "runs")
    summary = run_pipeline(
        cfg, backend=fake_backend(), encoder=HashEncoder(), console=Console(quiet=True), progress=False
    )
    got, want = table_digests(summary.run_dir), json.loads(GOLDEN.read_text())
    assert sorted(got) == sorted(want)
    differ = [name for name in want if got[name] != want[name]]
    assert not differ, f"tables differ from the pre-refactor run: {differ}"
