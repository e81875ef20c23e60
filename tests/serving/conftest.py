"""A finished RecGPT run built once for the serving tests: the fake LLM on a slice of the bundled data.

The whole chain (00_split ... 11_report) runs in a few seconds with the schema-aware fake backend and
the hashing encoder, so the service is tested on real stage tables, not hand-made ones.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from rich.console import Console

from tests.intent.conftest import HashEncoder
from tests.pipeline.conftest import fake_backend, fast_config, slice_dataset

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="package")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of a finished run (8 sampled users, top 3 explained); read it, never write it."""
    from recgpt.pipeline import run_pipeline

    data = tmp_path_factory.mktemp("data") / "mls-slice"
    slice_dataset().save(data)
    cfg = fast_config(data, tmp_path_factory.mktemp("runs"))
    summary = run_pipeline(
        cfg, backend=fake_backend(), encoder=HashEncoder(), console=Console(quiet=True), progress=False
    )
    return summary.run_dir
