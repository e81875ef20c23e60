"""A dataset on disk: items / users / events Parquet files plus a JSON manifest.

Writing is atomic: everything goes to a temporary sibling folder that is renamed into place,
so a crash never leaves a half-written dataset behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
from pydantic import BaseModel, Field

from recgpt.data.errors import DataError
from recgpt.data.schema import (
    EVENT_ORDER,
    EVENT_REQUIRED,
    EVENT_SCHEMA,
    ITEM_REQUIRED,
    ITEM_SCHEMA,
    SCHEMA_VERSION,
    USER_REQUIRED,
    USER_SCHEMA,
    conform,
)

TABLES = ("items", "users", "events")


class Manifest(BaseModel):
    """What a dataset is, where it came from, and how big it is."""

    name: str
    source: str
    schema_version: int = SCHEMA_VERSION
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    counts: dict[str, int] = Field(default_factory=dict)
    behaviors: dict[str, int] = Field(default_factory=dict)
    synthetic_timestamps: bool = False
    notes: list[str] = Field(default_factory=list)
    extra: dict[str, Any] = Field(default_factory=dict)


@dataclass
class Dataset:
    """Items, users and events that satisfy the contracts in `recgpt.data.schema`."""

    items: pl.DataFrame
    users: pl.DataFrame
    events: pl.DataFrame
    manifest: Manifest

    @classmethod
    def build(
        cls,
        items: pl.DataFrame,
        users: pl.DataFrame,
        events: pl.DataFrame,
        manifest: Manifest,
        *,
        source_files: dict[str, str] | None = None,
    ) -> Dataset:
        """Conform the tables to the contracts, validate them, sort events, fill in counts."""
        files = source_files or {}
        items = _conform(items, ITEM_SCHEMA, files.get("items", "items"))
        users = _conform(users, USER_SCHEMA, files.get("users", "users"))
        events = _conform(events, EVENT_SCHEMA, files.get("events", "events")).sort(list(EVENT_ORDER))
        ds = cls(items=items, users=users, events=events, manifest=manifest)
        ds.validate(files)
        ds.manifest.counts = {
            "users": users.height,
            "items": items.height,
            "events": events.height,
            "item_events": int(events["item_id"].is_not_null().sum()),
        }
        ds.manifest.behaviors = {
            str(r["behavior"]): int(r["len"])
            for r in events.group_by("behavior").len().sort("behavior").iter_rows(named=True)
        }
        return ds

    def validate(self, source_files: dict[str, str] | None = None) -> None:
        """Raise `DataError` on contract violations: nulls, duplicate ids, dangling references."""
        files = source_files or {}
        _require(self.items, ITEM_REQUIRED, files.get("items", "items.parquet"))
        _require(self.users, USER_REQUIRED, files.get("users", "users.parquet"))
        _require(self.events, EVENT_REQUIRED, files.get("events", "events.parquet"))
        _unique(self.items, "item_id", files.get("items", "items.parquet"))
        _unique(self.users, "user_id", files.get("users", "users.parquet"))
        _unique(self.events, "event_id", files.get("events", "events.parquet"))
        ev_file = files.get("events", "events.parquet")
        for col, table, key in (("item_id", self.items, "item_id"), ("user_id", self.users, "user_id")):
            known = table[key]
            bad = self.events.filter(pl.col(col).is_not_null() & ~pl.col(col).is_in(known.implode()))
            if bad.height:
                row = bad.row(0, named=True)
                raise DataError(
                    f"event refers to unknown {col} {row[col]!r} ({bad.height} such events)",
                    file=ev_file,
                    line=_source_line(row),
                    field=col,
                )
        no_target = self.events.filter(pl.col("item_id").is_null() & pl.col("query").is_null())
        if no_target.height:
            row = no_target.row(0, named=True)
            raise DataError(
                "event has neither an item_id nor a query", file=ev_file, line=_source_line(row), field="item_id"
            )

    # ------------------------------------------------------------------ disk
    def save(self, out: str | Path) -> Path:
        """Write atomically: a temp folder next to `out`, renamed into place."""
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        tmp.chmod(0o755)  # mkdtemp makes it private; a dataset folder is ordinary data
        try:
            for name in TABLES:
                getattr(self, name).drop("_line", strict=False).write_parquet(tmp / f"{name}.parquet")
            (tmp / "manifest.json").write_text(self.manifest.model_dump_json(indent=2) + "\n")
            if out.exists():
                old = out.with_name(f".{out.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(out, old)
                os.replace(tmp, out)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return out

    @classmethod
    def load(cls, path: str | Path) -> Dataset:
        """Read a dataset folder written by `save` (or by `recgpt data import`)."""
        path = Path(path)
        mf = path / "manifest.json"
        if not mf.exists():
            raise DataError("not a recgpt dataset folder (no manifest.json); run `recgpt data import` first",
                            file=path)
        try:
            manifest = Manifest.model_validate(json.loads(mf.read_text()))
        except ValueError as e:
            raise DataError(f"invalid manifest: {e}", file=mf) from e
        if manifest.schema_version != SCHEMA_VERSION:
            raise DataError(
                f"schema version {manifest.schema_version}, this recgpt reads {SCHEMA_VERSION}; re-import",
                file=mf, field="schema_version",
            )
        tables = {}
        for name in TABLES:
            f = path / f"{name}.parquet"
            if not f.exists():
                raise DataError("missing table", file=f)
            tables[name] = pl.read_parquet(f)
        return cls(manifest=manifest, **tables)

    def summary(self) -> dict[str, Any]:
        """Counts and time range, for printing."""
        ts = self.events["timestamp"]
        return {
            **self.manifest.counts,
            "first": datetime.fromtimestamp(int(ts.min()), UTC).date().isoformat() if len(ts) else None,
            "last": datetime.fromtimestamp(int(ts.max()), UTC).date().isoformat() if len(ts) else None,
            "behaviors": self.manifest.behaviors,
            "synthetic_timestamps": self.manifest.synthetic_timestamps,
        }


def _source_line(row: dict[str, Any]) -> int | None:
    line = row.get("_line")
    return int(line) if line is not None else None


def _conform(df: pl.DataFrame, schema: dict[str, pl.DataType], file: str) -> pl.DataFrame:
    try:
        return conform(df, schema)
    except pl.exceptions.PolarsError as e:
        # find the first column / row that fails to cast, to name it
        for name, dtype in schema.items():
            if name not in df.columns:
                continue
            casted = df[name].cast(dtype, strict=False)
            bad = casted.is_null() & df[name].is_not_null()
            if bad.any():
                idx = int(bad.arg_max())
                line = int(df["_line"][idx]) if "_line" in df.columns else None
                raise DataError(
                    f"cannot read {df[name][idx]!r} as {dtype}", file=file, line=line, field=name
                ) from e
        raise DataError(str(e), file=file) from e


def _require(df: pl.DataFrame, cols: tuple[str, ...], file: str) -> None:
    for c in cols:
        if c not in df.columns:
            raise DataError("required column is missing", file=file, field=c)
        nulls = df[c].is_null()
        if nulls.any():
            idx = int(nulls.arg_max())
            line = int(df["_line"][idx]) if "_line" in df.columns else None
            raise DataError("required value is empty", file=file, line=line, field=c)


def _unique(df: pl.DataFrame, col: str, file: str) -> None:
    dup = df[col].is_duplicated()
    if dup.any():
        idx = int(dup.arg_max())
        line = int(df["_line"][idx]) if "_line" in df.columns else None
        raise DataError(f"duplicate id {df[col][idx]!r}", file=file, line=line, field=col)
