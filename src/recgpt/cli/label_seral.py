"""`recgpt label export|import` for a SERAL run folder: serendipity samples and human verdicts.

A SERAL run folder holds `04_labels/lists.parquet` (LISTS) and, once SerenGPT ran,
`05_seren/rankings.parquet` (RANKINGS). `export` writes a seeded sample of its lists for people,
with SerenGPT's proposals when there are rankings; `import` validates a filled file and writes or
extends `RUN_DIR/verdicts.parquet` (atomically), which the run's labels stage reads (human verdicts
override log labels: the paper's Collaborative Data Intervention).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

LISTS_FILE = Path("04_labels") / "lists.parquet"
RANKINGS_FILE = Path("05_seren") / "rankings.parquet"
VERDICTS_FILE = "verdicts.parquet"


def is_seral_run(run_dir: Path) -> bool:
    """Whether `run_dir` is a SERAL run folder (it has labelled lists)."""
    return (Path(run_dir) / LISTS_FILE).is_file()


def _find(config: Any, key: str) -> Any:
    """The first value of `key` anywhere in a nested config (depth first), else None."""
    if isinstance(config, Mapping):
        if key in config:
            return config[key]
        for v in config.values():
            found = _find(v, key)
            if found is not None:
                return found
    return None


def _config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {run_dir} is not a run folder")
    return dict(json.loads(path.read_text()))


def export_seral(
    run_dir: Path, out: Path, *, n: int | None, seed: int, category_level: str | None, console: Any
) -> Path:
    """Write serendipity samples of a SERAL run for people (module docstring)."""
    import polars as pl

    from recgpt.judge.samples import run_dataset
    from recgpt.serendipity.verdicts import export_serendipity_samples

    config = _config(run_dir)
    lists = pl.read_parquet(run_dir / LISTS_FILE)
    rankings_path = run_dir / RANKINGS_FILE
    rankings = pl.read_parquet(rankings_path) if rankings_path.is_file() else None
    level = category_level or _find(config, "category_level") or "auto"
    path = export_serendipity_samples(
        lists, run_dataset(config), out, rankings=rankings, n=n, seed=seed, category_level=level
    )
    shown = min(n, lists.height) if n is not None else lists.height
    proposals = "with SerenGPT's rankings" if rankings is not None else "no SerenGPT rankings yet"
    console.print(
        f"wrote {path} ({shown} of {lists.height} lists, {proposals}): fill 'verdict' (yes/no: is the "
        f"item serendipitous for this user?); then `recgpt label import {path} --seral-run {run_dir}`"
    )
    return path


def import_seral(
    file: Path, run_dir: Path, *, round: int | None, annotator: str | None, console: Any
) -> Path:
    """Validate a filled sample file and write/extend `RUN_DIR/verdicts.parquet`."""
    import polars as pl

    from recgpt.serendipity.verdicts import (
        import_serendipity_labels,
        next_round,
        read_verdicts,
        unmatched_verdicts,
        write_verdicts,
    )

    if not is_seral_run(run_dir):
        raise FileNotFoundError(f"{run_dir / LISTS_FILE} is missing: {run_dir} is not a SERAL run folder")
    target = run_dir / VERDICTS_FILE
    k = next_round(target) if round is None else round
    verdicts = import_serendipity_labels(file, annotator=annotator, round=k)
    if verdicts.is_empty():
        raise ValueError(f"{file}: no row has a verdict (fill the 'verdict' column with yes/no)")
    lost = unmatched_verdicts(pl.read_parquet(run_dir / LISTS_FILE), verdicts)
    write_verdicts(verdicts, target, extend=True)
    total = read_verdicts(target)
    yes = int(verdicts["serendipitous"].sum())
    console.print(
        f"{verdicts.height} verdicts ({yes} serendipitous) read from {file}; added to {target} as round {k}; "
        f"it now holds {total.height}"
    )
    if lost.height:
        console.print(
            f"[yellow]{lost.height} verdicts name a (user, item) in none of the run's lists and change no "
            f"label: {', '.join(f'{u}/{i}' for u, i in lost.select('user_id', 'item_id').head(5).iter_rows())}"
            "[/yellow]"
        )
    return target


__all__ = ["LISTS_FILE", "RANKINGS_FILE", "VERDICTS_FILE", "export_seral", "import_seral", "is_seral_run"]
