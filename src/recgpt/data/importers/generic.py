"""Generic importer: CSV / TSV / Parquet / JSONL files described by a column mapping.

The mapping format is `MAPPING_DOC` below: one text shown by `recgpt data import --help` and copied
into the README (a test checks both, and imports its example), so the three cannot drift apart.
Events are numbered (`event_id`) in file order. An event whose item (user) is not in the items
(users) file is a `DataError` naming its line, unless `create_missing_items` (`create_missing_users`;
on the command line `--create-missing-items` / `--create-missing-users`) is set, which adds a bare
row (title = the id) and says so in the manifest.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, Literal

import polars as pl
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from recgpt.data.dataset import Dataset, Manifest
from recgpt.data.errors import DataError
from recgpt.data.importers._io import (
    FORMATS_BY_SUFFIX,
    LINE,
    as_list,
    as_number,
    as_str,
    as_timestamp,
    attributes,
    check_known,
    check_unique,
    read_table,
    with_time_range,
)

MAPPING_DOC = """\
A mapping file (--mapping, .toml or .json) names, per table, the file to
read and which source column feeds each recgpt column. A recgpt column left
out is read from a source column of the same name, so files whose headers
already use the recgpt names need no mapping at all.

Defaults: SRC is the events file, or a folder holding events.*, items.* and
users.* (csv, tsv, parquet or jsonl; the format comes from the suffix).
Without an items table, pass --create-missing-items to add every item the
events name (title = its id). Without a users table, the users are the
events' distinct user ids. Timestamps are epoch seconds. The dataset name
(--name) defaults to the stem of SRC: events.csv is imported as "events".

Required: events need user_id, timestamp, behavior (or a constant
events.behavior) and item_id (or query, for searches); items need item_id
and title (title is required: it is what the LLM reads); users need user_id.

Example: recgpt data import generic shop/ --mapping shop.toml --out data/shop
with shop.toml:

    [events]
    file = "orders.csv"           # relative to SRC (default: SRC itself)
    timestamp_format = "iso8601"  # epoch_s (default), epoch_ms, iso8601,
                                  # or a strptime pattern: "%d/%m/%Y %H:%M"
    behavior = "purchase"         # constant: the file has no behavior column

    [events.columns]              # also: query, value, text
    user_id = "customer"
    item_id = "sku"
    timestamp = "ordered_at"

    [items]                       # optional
    file = "products.csv"
    list_separator = ">"          # splits a text categories column ("|")
    category_structure = "path"   # "path" (most general first, default) or
                                  # "set" (labels, every one a leaf)
    attributes = ["color", "size"]  # extra columns kept as attributes

    [items.columns]               # also: brand, merchant, price, description
    item_id = "sku"
    title = "name"                # required
    categories = "path"           # most general first: "Home>Lighting>Lamps"

    [users]                       # optional; also: age, gender, location,
    file = "customers.csv"        # occupation
    columns = { user_id = "customer" }

Any table also takes format (csv, tsv, parquet, jsonl), delimiter and
encoding (default utf-8)."""

EVENT_TARGETS = ("user_id", "item_id", "query", "behavior", "timestamp", "value", "text")
ITEM_TARGETS = ("item_id", "title", "categories", "brand", "merchant", "price", "description")
USER_TARGETS = ("user_id", "age", "gender", "location", "occupation")


class TableMapping(BaseModel):
    """Where one table comes from and which source column feeds each contract column."""

    model_config = ConfigDict(extra="forbid")
    file: str | None = None  # default: <src> if it is a file, else the one <table>.<suffix> in <src>
    format: str | None = None
    delimiter: str | None = None
    encoding: str = "utf-8"
    columns: dict[str, str] = {}
    attributes: list[str] = []
    list_separator: str = "|"


class ItemMapping(TableMapping):
    """Items add what their categories list is (`recgpt.data.categories`): a path or a set."""

    category_structure: Literal["path", "set"] = "path"


class EventMapping(TableMapping):
    """Events add the timestamp format and an optional constant behaviour."""

    timestamp_format: str = "epoch_s"
    behavior: str | None = None


class Mapping(BaseModel):
    """The whole mapping: events (required), items and users (optional)."""

    model_config = ConfigDict(extra="forbid")
    events: EventMapping = EventMapping()
    items: ItemMapping | None = None
    users: TableMapping | None = None

    @field_validator("events", "items", "users")
    @classmethod
    def _targets_exist(cls, v: TableMapping | None, info: Any) -> TableMapping | None:
        allowed = {"events": EVENT_TARGETS, "items": ITEM_TARGETS, "users": USER_TARGETS}[info.field_name]
        for target in v.columns if v else {}:
            if target not in allowed:
                raise ValueError(
                    f"unknown target column {target!r}; {info.field_name} accepts {list(allowed)}"
                )
        return v


def load_mapping(mapping: dict[str, Any] | str | Path | None) -> Mapping:
    """A mapping from a dict or a .json / .toml file; every problem is a DataError naming the key."""
    file: Path | None = None
    if mapping is None:
        data: dict[str, Any] = {}
    elif isinstance(mapping, dict):
        data = mapping
    else:
        file = Path(mapping)
        if not file.is_file():
            raise DataError("mapping file not found", file=file)
        try:
            data = tomllib.loads(file.read_text()) if file.suffix == ".toml" else json.loads(file.read_text())
        except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"cannot parse mapping: {e}", file=file) from e
    try:
        return Mapping.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        raise DataError(
            f"invalid mapping: {err['msg']}",
            file=file or "mapping",
            field=".".join(str(x) for x in err["loc"]),
        ) from e


def _source_columns(df: pl.DataFrame, m: TableMapping, targets: tuple[str, ...]) -> dict[str, str]:
    """target -> source column actually present (explicit mapping, else a same-named column)."""
    cols = {t: t for t in targets if t in df.columns and t not in m.columns.values()}
    cols.update(m.columns)
    return cols


def _resolve(src: Path, m: TableMapping, table: str, default: Path | None) -> Path:
    if m.file is not None:
        path = Path(m.file)
        return path if path.is_absolute() else (src if src.is_dir() else src.parent) / path
    if default is not None:
        return default
    found = (
        sorted(p for p in src.glob(f"{table}.*") if p.suffix.lower() in FORMATS_BY_SUFFIX)
        if src.is_dir()
        else []
    )
    if len(found) == 1:
        return found[0]
    raise DataError(
        f"no file for the {table} table; set {table}.file in the mapping", file=src, field=f"{table}.file"
    )


def _read(path: Path, m: TableMapping, required: list[str]) -> pl.DataFrame:
    return read_table(path, fmt=m.format, sep=m.delimiter, encoding=m.encoding, required=required)


def _behavior(df: pl.DataFrame, col: str | None, path: Path, constant: str | None) -> pl.Series:
    """The behavior column; the constant fills rows (or the whole column) where it is empty."""
    if col is None:
        return pl.Series([constant] * df.height, dtype=pl.String())
    out = as_str(df, col, path, required=constant is None)
    return out if constant is None else out.fill_null(constant)


def _events(path: Path, m: EventMapping) -> tuple[pl.DataFrame, dict[str, str]]:
    """Events in contract columns plus `_line`, and the target -> source column map used."""
    df = _read(path, m, [])
    cols = _source_columns(df, m, EVENT_TARGETS)
    required = ["user_id", "timestamp"] + ([] if m.behavior else ["behavior"])
    if "item_id" not in cols and "query" not in cols:
        required.append("item_id")
    for t in required:
        if t not in cols:
            hint = " (or set events.behavior to a constant)" if t == "behavior" else ""
            raise DataError(
                f"no column for {t!r}; map it in events.columns{hint}", file=path, line=1, field=t
            )
    for src_col in cols.values():
        if src_col not in df.columns:
            raise DataError(
                f"mapped column is missing (found {[c for c in df.columns if c != LINE]})",
                file=path,
                line=1,
                field=src_col,
            )
    n = df.height
    out = {
        "event_id": pl.int_range(0, n, dtype=pl.Int64(), eager=True),
        "user_id": as_str(df, cols["user_id"], path, required=True),
        "item_id": as_str(df, cols["item_id"], path) if "item_id" in cols else None,
        "query": as_str(df, cols["query"], path) if "query" in cols else None,
        "behavior": _behavior(df, cols.get("behavior"), path, m.behavior),
        "timestamp": as_timestamp(df, cols["timestamp"], path, m.timestamp_format),
        "value": as_number(df, cols["value"], path, pl.Float64()) if "value" in cols else None,
        "text": as_str(df, cols["text"], path) if "text" in cols else None,
        LINE: df[LINE],
    }
    events = pl.DataFrame(out).with_columns(pl.col(c).cast(pl.String()) for c in ("item_id", "query", "text"))
    no_target = events["item_id"].is_null() & events["query"].is_null()
    if no_target.any():
        i = int(no_target.arg_max())  # type: ignore[arg-type]
        raise DataError(
            "event has neither an item nor a query",
            file=path,
            line=int(events[LINE][i]),
            field=cols.get("item_id", cols.get("query")),
        )
    return events.with_columns(pl.col("value").cast(pl.Float64())), cols


def _table(
    path: Path, m: TableMapping, key: str, targets: tuple[str, ...], numeric: dict[str, pl.DataType]
) -> pl.DataFrame:
    """Items or users: contract columns + attributes + `_line`, ids checked unique."""
    df = _read(path, m, [])
    cols = _source_columns(df, m, targets)
    needed = [key, "title"] if key == "item_id" else [key]
    for t in needed:
        if t not in cols:
            raise DataError(f"no column for {t!r}; map it in columns", file=path, line=1, field=t)
    for src_col in [*cols.values(), *m.attributes]:
        if src_col not in df.columns:
            raise DataError(
                f"mapped column is missing (found {[c for c in df.columns if c != LINE]})",
                file=path,
                line=1,
                field=src_col,
            )
    out: dict[str, pl.Series] = {}
    for t, s in cols.items():
        if t in numeric:
            out[t] = as_number(df, s, path, numeric[t])
        elif t == "categories":
            out[t] = as_list(df, s, path, m.list_separator)
        else:
            out[t] = as_str(df, s, path, required=t in needed)
    out["attributes"] = attributes(df, {c: c for c in m.attributes})
    frame = pl.DataFrame({k: v.alias(k) for k, v in out.items()}).with_columns(df[LINE])
    check_unique(frame, key, path, field=cols[key])
    return frame


def _with_missing(table: pl.DataFrame, key: str, wanted: pl.Series, notes: list[str]) -> pl.DataFrame:
    """Append bare rows for ids the events mention but the table lacks (items get title = id)."""
    missing = wanted.drop_nulls().unique(maintain_order=True)
    missing = missing.filter(~missing.is_in(table[key].implode()))
    if missing.len():
        row = {key: missing} | ({"title": missing} if key == "item_id" else {})
        table = pl.concat([table, pl.DataFrame(row)], how="diagonal_relaxed")
        notes.append(
            f"created {missing.len()} {key.removesuffix('_id')}s the events mention but their file lacks"
            + (" (title = id)" if key == "item_id" else "")
            + "."
        )
    return table


def import_generic(
    src: Path,
    *,
    mapping: dict[str, Any] | str | Path | None = None,
    name: str | None = None,
    create_missing_items: bool = False,
    create_missing_users: bool = False,
) -> Dataset:
    """Events (+ optional items / users) described by `mapping` -> a Dataset."""
    src = Path(src)
    m = load_mapping(mapping)
    for table in ("items", "users"):  # an unmapped items.<suffix> / users.<suffix> next to the events is used
        if (
            getattr(m, table) is None
            and src.is_dir()
            and any(p.suffix.lower() in FORMATS_BY_SUFFIX for p in src.glob(f"{table}.*"))
        ):
            setattr(m, table, ItemMapping() if table == "items" else TableMapping())
    ev_path = _resolve(src, m.events, "events", src if src.is_file() else None)
    if src.is_file() and ev_path.resolve() != src.resolve():
        raise DataError(
            f"the events file given ({src}) and the mapping's events.file ({m.events.file}) differ; "
            "pass the folder that holds the mapped file, or drop events.file from the mapping",
            file=mapping if isinstance(mapping, str | Path) else "mapping",
            field="events.file",
        )
    events, ev_cols = _events(ev_path, m.events)
    files = {"events": str(ev_path)}
    notes = [f"events from {ev_path.name}; event_id = file order."]

    if m.items is not None:
        it_path = _resolve(src, m.items, "items", None)
        files["items"] = str(it_path)
        items = _table(it_path, m.items, "item_id", ITEM_TARGETS, {"price": pl.Float64()})
    else:
        it_path = None
        items = pl.DataFrame(schema={"item_id": pl.String(), "title": pl.String()})
    if create_missing_items:
        items = _with_missing(items, "item_id", events["item_id"], notes)
    hint = (
        ""
        if create_missing_items
        else (
            "; add it to the items file or pass --create-missing-items"
            if it_path
            else "; no items file is mapped: set items.file in the mapping or pass --create-missing-items"
        )
    )
    check_known(
        events,
        "item_id",
        items["item_id"],
        ev_path,
        field=ev_cols.get("item_id", "item_id"),
        what="item",
        hint=hint,
    )

    if m.users is not None:
        us_path = _resolve(src, m.users, "users", None)
        files["users"] = str(us_path)
        users = _table(us_path, m.users, "user_id", USER_TARGETS, {"age": pl.Int32()})
        if create_missing_users:
            users = _with_missing(users, "user_id", events["user_id"], notes)
        check_known(
            events,
            "user_id",
            users["user_id"],
            ev_path,
            field=ev_cols.get("user_id", "user_id"),
            what="user",
            hint="" if create_missing_users else "; add it to the users file or pass --create-missing-users",
        )
    else:
        users = pl.DataFrame({"user_id": events["user_id"].unique(maintain_order=True)})
        notes.append("no users file: users = the distinct user ids of the events.")

    manifest = Manifest(
        name=name or src.stem,
        source=f"generic import: {ev_path}",
        notes=notes,
        extra={
            "format": "generic",
            "mapping": m.model_dump(exclude_defaults=True),
            "category_structure": m.items.category_structure if m.items else "path",
        },
    )
    ds = Dataset.build(items, users, events, manifest, source_files=files)
    return with_time_range(ds)
