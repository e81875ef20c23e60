"""A dataset on disk: items / users / events Parquet files plus a JSON manifest.

Writing is atomic: everything goes to a temporary sibling folder that is renamed into place,
so a crash never leaves a half-written dataset behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
from pydantic import BaseModel, Field

from recgpt.data.atomic import atomic_dir, clean_stale_temps, is_temp
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
MANIFEST = "manifest.json"
SCHEMAS: dict[str, dict[str, pl.DataType]] = {
    "items": ITEM_SCHEMA,
    "users": USER_SCHEMA,
    "events": EVENT_SCHEMA,
}
DATASET_FILES = frozenset({MANIFEST, *(f"{t}.parquet" for t in TABLES)})


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
        if events.height == 0:  # a header without rows: refuse now rather than crash in a later stage
            raise DataError(
                "no events (the file has no data rows); a dataset needs at least one event",
                file=files.get("events", "events"),
            )
        for name, df in (("items", items), ("users", users), ("events", events)):
            _no_nul(df, files.get(name, name))
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
                "event has neither an item_id nor a query",
                file=ev_file,
                line=_source_line(row),
                field="item_id",
            )

    # ------------------------------------------------------------------ disk
    def save(self, out: str | Path, *, force: bool = False, protect: Iterable[str | Path] = ()) -> Path:
        """Write atomically: a temp folder next to `out`, renamed into place.

        `out` is replaced only when it is a recgpt dataset folder, an empty folder or missing (see
        `check_target`); `protect` are the paths the data was read from, never replaced even with `force`.
        """
        out = Path(out)
        check_target(out, force=force, protect=protect)
        clean_stale_temps(out.parent)
        with atomic_dir(out) as tmp:
            for name in TABLES:
                getattr(self, name).drop("_line", strict=False).write_parquet(tmp / f"{name}.parquet")
            (tmp / MANIFEST).write_text(self.manifest.model_dump_json(indent=2) + "\n")
        return out

    @classmethod
    def load(cls, path: str | Path) -> Dataset:
        """Read a dataset folder written by `save`; unreadable tables or tables that no longer match
        the manifest (a dropped column, other row counts) are a `DataError` naming the file."""
        path = Path(path)
        manifest = read_manifest(path)
        tables = {}
        for name in TABLES:
            f = path / f"{name}.parquet"
            if not f.is_file():
                raise DataError("missing table; re-import the dataset", file=f)
            try:
                tables[name] = pl.read_parquet(f)
            except Exception as e:  # polars / arrow raise many types for a truncated or garbage file
                raise DataError(f"cannot read the table ({_short(e)}); re-import the dataset", file=f) from e
            _check_table(f, name, dict(tables[name].schema), tables[name].height, manifest)
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


def read_manifest(path: str | Path, *, any_version: bool = False) -> Manifest:
    """The manifest of dataset folder `path`, or a `DataError` saying why it is not a dataset
    (`any_version`: a dataset of another schema version is still a dataset, e.g. to be replaced)."""
    path = Path(path)
    mf = path / MANIFEST
    if not mf.is_file():
        raise DataError(
            f"not a recgpt dataset folder (no {MANIFEST}); run `recgpt data import` first", file=path
        )
    try:
        manifest = Manifest.model_validate(json.loads(mf.read_text(encoding="utf-8")))
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(f"invalid manifest: {_short(e)}", file=mf) from e
    if manifest.schema_version != SCHEMA_VERSION and not any_version:
        raise DataError(
            f"schema version {manifest.schema_version}, this recgpt reads {SCHEMA_VERSION}; re-import",
            file=mf,
            field="schema_version",
        )
    return manifest


def verify_tables(path: str | Path, manifest: Manifest) -> None:
    """Check every table's columns, types and row count against the contract and the manifest
    from the Parquet footers alone (no table is read); all differences go into one `DataError`."""
    path = Path(path)
    problems: list[str] = []
    for name in TABLES:
        f = path / f"{name}.parquet"
        if not f.is_file():
            problems.append(f"{f.name}: missing")
            continue
        try:
            schema = dict(pl.read_parquet_schema(f))
            height = int(pl.scan_parquet(f).select(pl.len()).collect().item())
        except Exception as e:  # truncated / garbage file
            problems.append(f"{f.name}: cannot read the table ({_short(e)})")
            continue
        problems += [f"{f.name}: {p}" for p in _table_problems(name, schema, height, manifest)]
    if problems:
        raise DataError(
            f"tables do not match {MANIFEST}: {'; '.join(problems)}; re-import the dataset", file=path
        )


def check_target(out: str | Path, *, force: bool = False, protect: Iterable[str | Path] = ()) -> None:
    """Refuse to replace `out` unless it is missing, empty or a recgpt dataset folder (`force`: anything).

    Never, even with `force`: a `protect`ed path (what the data is read from), a folder that holds one,
    the working directory, the home folder, or a folder above them.
    """
    out = Path(out)
    resolved = out.resolve()
    guarded = [(Path(p), "the import source") for p in protect]
    guarded.append((Path.cwd(), "the working directory"))
    with contextlib.suppress(RuntimeError, KeyError):  # no HOME and no passwd entry: nothing to guard
        guarded.append((Path.home(), "your home folder"))
    for p, what in guarded:
        src = p.resolve()
        if src == resolved or src.is_relative_to(resolved):
            reason = f"it is {what}" if src == resolved else f"it holds {what}"
            raise DataError(
                f"refusing to replace this folder: {reason} ({p}); choose another --out", file=out
            )
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir():
        if not force:
            raise DataError(
                "exists and is not a folder; refusing to replace it by a dataset "
                "(choose another --out, or pass --force to replace it)",
                file=out,
            )
        return
    entries = sorted(e.name for e in out.iterdir() if not is_temp(e))
    if not entries or force:
        return
    problem = ""
    if MANIFEST not in entries:
        problem = f"no {MANIFEST}; it holds {_listing(entries)}"
    else:
        try:
            read_manifest(out, any_version=True)
        except DataError as e:
            problem = str(e).removeprefix(f"{out / MANIFEST}: ")
    extra = [e for e in entries if e not in DATASET_FILES]
    if not problem and extra:
        problem = f"besides the dataset it holds {_listing(extra)}"
    if problem:
        raise DataError(
            f"not a recgpt dataset, refusing to replace it ({problem}); "
            "choose another --out, or pass --force to replace it",
            file=out,
        )


def _listing(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _short(e: BaseException) -> str:
    return " ".join(str(e).split())[:200] or type(e).__name__


def _table_problems(name: str, schema: dict[str, pl.DataType], height: int, manifest: Manifest) -> list[str]:
    """What differs between one stored table and its contract / the manifest's count."""
    problems = []
    for col, dtype in SCHEMAS[name].items():
        if col not in schema:
            problems.append(f"column '{col}' is missing")
        elif schema[col] != dtype:
            problems.append(f"column '{col}' is {schema[col]}, expected {dtype}")
    expected = manifest.counts.get(name)
    if expected is not None and height != expected:
        problems.append(f"{height:,} rows, the manifest says {expected:,}")
    return problems


def _check_table(f: Path, name: str, schema: dict[str, pl.DataType], height: int, manifest: Manifest) -> None:
    problems = _table_problems(name, schema, height, manifest)
    if problems:
        raise DataError(
            f"the table does not match {MANIFEST}: {'; '.join(problems)}; re-import the dataset", file=f
        )


def _no_nul(df: pl.DataFrame, file: str) -> None:
    """No NUL byte in any text column (importers check their own columns; this catches the rest)."""
    for col, dtype in df.schema.items():
        if dtype == pl.String:
            bad = df[col].str.contains("\x00", literal=True).fill_null(False)
        elif dtype == pl.List(pl.String):
            bad = df[col].list.join("|").str.contains("\x00", literal=True).fill_null(False)
        else:
            continue
        if bad.any():
            idx = int(bad.arg_max())  # type: ignore[arg-type]
            line = int(df["_line"][idx]) if "_line" in df.columns else None
            raise DataError("text contains a NUL byte (\\x00)", file=file, line=line, field=col)


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


def fingerprint(dataset: Dataset) -> str:
    """Content hash of a dataset's tables (not its import time): the split stage's identity."""
    h = hashlib.sha256(dataset.manifest.name.encode())
    for name in ("items", "users", "events"):
        table: pl.DataFrame = getattr(dataset, name)
        h.update(f"{name}:{table.height}:{','.join(table.columns)}".encode())
        h.update(table.hash_rows(seed=0).to_numpy().tobytes())
    return h.hexdigest()[:16]
