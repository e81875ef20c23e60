"""Parity: the scripted chain writes the very same tables for the same seed.

`parity_golden.json` holds the table digests (`parity.table_digests`) of the scripted-LLM run of
`test_pipeline.py` (`fast_config` on the bundled slice, `fake_backend`, `HashEncoder`) for the stages
whose output does not depend on the CPU's floating-point kernels: split, compression, pool, the two LLM
stages and φ. The tri-tower (torch training) and everything downstream of it differ in the last bits
between CPU generations, so those tables are checked for determinism instead: two runs on one machine
write identical tables. A deliberate change of the chain's output regenerates the golden file
(`python -m tests.pipeline.parity` style: `table_digests` of a fresh run, filtered by `GOLDEN_FOLDERS`)
and says why in its commit. Last regenerated for issue 12 (best-of-n, history-budget and tag-HR
columns in the interests / tags / φ tables; the φ table at one category level).
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from recgpt.pipeline import run_pipeline
from tests.conftest import HashEncoder, fake_backend, fast_config
from tests.pipeline.parity import table_digests

GOLDEN = Path(__file__).with_name("parity_golden.json")
GOLDEN_FOLDERS = ("00_split", "01_compress", "02_pool", "03_interests", "04_tags", "05_phi")


def _digests(slice_path: Path, runs: Path) -> dict[str, object]:
    cfg = fast_config(slice_path, runs)
    summary = run_pipeline(
        cfg, backend=fake_backend(), encoder=HashEncoder(), console=Console(quiet=True), progress=False
    )
    return table_digests(summary.run_dir)


def golden_part(digests: dict[str, object]) -> dict[str, object]:
    """The machine-independent tables (`GOLDEN_FOLDERS`)."""
    return {k: v for k, v in digests.items() if k.split("/")[0] in GOLDEN_FOLDERS}


def test_tables_match_the_golden_run_and_repeat_exactly(slice_path: Path, tmp_path: Path) -> None:
    first = _digests(slice_path, tmp_path / "a")
    want = json.loads(GOLDEN.read_text())
    got = golden_part(first)
    assert sorted(got) == sorted(want)
    differ = [name for name in want if got[name] != want[name]]
    assert not differ, f"tables differ from the golden run: {differ}"
    second = _digests(slice_path, tmp_path / "b")
    assert sorted(second) == sorted(first)
    changed = [name for name in first if first[name] != second[name]]
    assert not changed, f"two runs of the same config wrote different tables: {changed}"
