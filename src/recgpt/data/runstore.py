"""`RunStore`: the storage half of a run — its stage folders, atomic table reads and writes, markers.

A run folder holds one sub-folder per stage (`<NN>_<stage>/`), each with Parquet tables and a
`done.json` marker written last. Everything that reads a finished run (the report, the judge, the
recommendation service, `recgpt recommend`) opens it through this class, without importing the
pipeline that wrote it: `RunStore.open(run_dir)` finds the stage folders by their names.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import polars as pl

from recgpt.data.atomic import write_json_atomic, write_parquet_atomic

MARKER = "done.json"
_STAGE_DIR = re.compile(r"^(\d\d)_(.+)$")


class RunNotFinished(FileNotFoundError):
    """A table or marker a reader needs is missing: the stage that writes it has not finished."""


class RunStore:
    """Tables and markers of one run folder; `folders` maps stage name -> sub-folder name."""

    def __init__(self, run_dir: str | Path, folders: Mapping[str, str] | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.folders: dict[str, str] = dict(folders or {})

    @classmethod
    def open(cls, run_dir: str | Path) -> RunStore:
        """An existing run folder, its stage folders found by name (`03_interests` -> `interests`)."""
        root = Path(run_dir)
        if not root.is_dir():
            raise RunNotFinished(f"{root}: no such run folder")
        found = sorted(p.name for p in root.iterdir() if p.is_dir() and _STAGE_DIR.match(p.name))
        return cls(root, {_STAGE_DIR.match(n)[2]: n for n in found})  # type: ignore[index]

    def dir(self, stage: str) -> Path:
        return self.run_dir / self.folders.get(stage, stage)

    def path(self, stage: str, table: str) -> Path:
        return self.dir(stage) / f"{table}.parquet"

    def write(self, stage: str, table: str, df: pl.DataFrame) -> Path:
        """Write one table atomically (temp file, then rename)."""
        return write_parquet_atomic(df, self.path(stage, table))

    def read(self, stage: str, table: str) -> pl.DataFrame:
        p = self.path(stage, table)
        if not p.exists():
            raise RunNotFinished(f"{p} is missing: re-run the {stage!r} stage (delete its done.json)")
        return pl.read_parquet(p)

    def has(self, stage: str, table: str) -> bool:
        return self.path(stage, table).exists()

    def marker(self, stage: str) -> dict[str, Any] | None:
        """The stage's `done.json` (None when the stage has not finished)."""
        try:
            return dict(json.loads((self.dir(stage) / MARKER).read_text()))
        except (OSError, ValueError):
            return None

    def markers(self) -> dict[str, dict[str, Any]]:
        """The markers of every finished stage, by stage name, in folder order."""
        return {name: m for name in self.folders if (m := self.marker(name)) is not None}

    def read_stats(self, stage: str) -> dict[str, Any]:
        m = self.marker(stage)
        if m is None:
            raise RunNotFinished(f"stage {stage!r} has not finished in {self.run_dir}")
        return dict(m["stats"])

    def write_marker(self, stage: str, payload: dict[str, Any]) -> Path:
        return write_json_atomic(self.dir(stage) / MARKER, payload)

    def read_json(self, name: str) -> dict[str, Any]:
        p = self.run_dir / name
        try:
            return dict(json.loads(p.read_text()))
        except OSError as e:
            raise RunNotFinished(f"{p} is missing: the run has not written it yet") from e

    def write_json(self, name: str, payload: Any) -> Path:
        return write_json_atomic(self.run_dir / name, payload)


__all__ = ["MARKER", "RunNotFinished", "RunStore"]
