"""Shared reading and type-checking helpers for the importers.

Every frame these helpers return carries an int column `_line`: the 1-based line of the row in its
source file, as an editor shows it (header counted; for Parquet the 1-based row number). Every
problem is raised as `DataError` naming the file, that line and the offending field, so a user can
jump straight to the bad byte instead of guessing from a polars traceback.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from recgpt.data.dataset import Dataset
from recgpt.data.errors import DataError

LINE = "_line"
ATTR_DTYPE = pl.List(pl.Struct({"key": pl.String(), "value": pl.String()}))
FORMATS_BY_SUFFIX = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".txt": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
}
TIMESTAMP_FORMATS = {"epoch_s": 1, "s": 1, "seconds": 1, "epoch_ms": 1000, "ms": 1000, "milliseconds": 1000}
ISO_FORMATS = ("iso8601", "iso", "iso-8601")
TS_MIN, TS_MAX = (
    0,
    4_102_444_800,
)  # 1970-01-01 .. 2100-01-01 UTC in epoch seconds: anything else is a unit mix-up


# ---------------------------------------------------------------------------------------- reading
def require_file(path: Path) -> Path:
    """The path itself, or a DataError that says which expected file is missing."""
    if not path.is_file():
        raise DataError("file not found", file=path)
    return path


def decode(path: Path, encoding: str) -> str:
    """Read a whole text file; decode errors name the line and byte so the user can pick an encoding."""
    require_file(path)
    try:
        codecs.lookup(encoding)
    except LookupError as e:
        raise DataError(f"unknown encoding {encoding!r}", file=path, field="encoding") from e
    raw = path.read_bytes()
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        col = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise DataError(
            f"cannot decode byte 0x{raw[e.start]:02x} at column {col} as {encoding}; "
            "pass the file's encoding, e.g. latin-1 (--encoding; for generic: encoding in the mapping)",
            file=path,
            line=line,
            field="encoding",
        ) from e
    return text.removeprefix("\ufeff")


def read_delimited(
    path: Path,
    *,
    sep: str,
    encoding: str = "utf-8",
    names: Sequence[str] | None = None,
    quoting: bool = True,
    required: Iterable[str] = (),
) -> pl.DataFrame:
    """Delimited text -> all-String frame plus `_line`.

    With `names` the file has no header and every row must have exactly that many fields;
    otherwise the first row is the header and must contain every `required` column.
    """
    text = decode(path, encoding)
    opts: dict[str, Any] = {"delimiter": sep, "strict": True}
    if not quoting:
        opts["quoting"] = csv.QUOTE_NONE
    # StringIO(newline="") splits only on \n / \r\n / \r, never on \x85 or \u2028 inside a field
    reader = csv.reader(io.StringIO(text, newline=""), **opts)
    header = list(names) if names is not None else None
    rows: list[list[str]] = []
    lines: list[int] = []
    start = 1
    try:
        for rec in reader:
            line, start = start, reader.line_num + 1
            if not rec or (len(rec) == 1 and not rec[0].strip()):
                continue
            if header is None:
                header = [h.strip() for h in rec]
                _check_header(header, required, path, line)
                continue
            if len(rec) != len(header):
                field = header[len(rec)] if len(rec) < len(header) else None
                raise DataError(
                    f"expected {len(header)} fields separated by {sep!r}, found {len(rec)}",
                    file=path,
                    line=line,
                    field=field,
                )
            rows.append(rec)
            lines.append(line)
    except csv.Error as e:
        raise DataError(f"malformed delimited text: {e}", file=path, line=reader.line_num) from e
    if header is None:
        raise DataError("file is empty (no header)", file=path, line=1)
    data = {h: [r[i] for r in rows] for i, h in enumerate(header)}
    df = pl.DataFrame(data, schema=dict.fromkeys(header, pl.String()))
    return df.with_columns(pl.Series(LINE, lines, dtype=pl.Int64()))


def _check_header(header: list[str], required: Iterable[str], path: Path, line: int) -> None:
    dup = {h for h in header if header.count(h) > 1}
    if dup:
        raise DataError("duplicate column name in header", file=path, line=line, field=sorted(dup)[0])
    for col in required:
        if col not in header:
            raise DataError(
                f"required column is missing (header has {header})", file=path, line=line, field=col
            )


def _json_cell(v: Any) -> Any:
    """Scalars become strings (the converters parse them), lists of scalars become lists of strings."""
    if v is None:
        return None
    if isinstance(v, list):
        return [None if x is None else x if isinstance(x, str) else json.dumps(x) for x in v]
    if isinstance(v, str):
        return v
    return json.dumps(v)


def read_jsonl(path: Path, *, encoding: str = "utf-8", required: Iterable[str] = ()) -> pl.DataFrame:
    """JSON Lines (one object per line) -> frame of String / List(String) columns plus `_line`."""
    text = decode(path, encoding)
    records: list[dict[str, Any]] = []
    lines: list[int] = []
    for i, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            raise DataError(f"invalid JSON: {e.msg} (column {e.colno})", file=path, line=i) from e
        if not isinstance(obj, dict):
            raise DataError("expected a JSON object per line", file=path, line=i)
        records.append(obj)
        lines.append(i)
    cols: dict[str, list[Any]] = {}
    for n, obj in enumerate(records):
        for k in obj:
            cols.setdefault(k, [None] * n)
        for k, vals in cols.items():
            vals.append(_json_cell(obj.get(k)))
    series = []
    for k, vals in cols.items():
        kinds = {type(v) for v in vals if v is not None}
        if len(kinds) > 1:
            first = next(type(v) for v in vals if v is not None)
            idx = next(j for j, v in enumerate(vals) if v is not None and type(v) is not first)
            raise DataError("mixes lists and scalars", file=path, line=lines[idx], field=k)
        dtype = pl.List(pl.String()) if kinds == {list} else pl.String()
        series.append(pl.Series(k, vals, dtype=dtype))
    df = pl.DataFrame(series).with_columns(pl.Series(LINE, lines, dtype=pl.Int64()))
    require_columns(df, required, path)
    return df


def read_parquet(path: Path, *, required: Iterable[str] = ()) -> pl.DataFrame:
    """Parquet keeps its native types; `_line` is the 1-based row number."""
    require_file(path)
    try:
        df = pl.read_parquet(path)
    except Exception as e:  # polars / arrow raise many types for a corrupt file
        raise DataError(f"cannot read Parquet: {e}", file=path) from e
    df = df.with_columns(pl.int_range(1, df.height + 1, dtype=pl.Int64()).alias(LINE))
    require_columns(df, required, path)
    return df


def read_table(
    path: Path,
    *,
    fmt: str | None = None,
    sep: str | None = None,
    encoding: str = "utf-8",
    required: Iterable[str] = (),
) -> pl.DataFrame:
    """Any of CSV / TSV / Parquet / JSONL, the format taken from `fmt` or the file suffix."""
    fmt = fmt or FORMATS_BY_SUFFIX.get(path.suffix.lower())
    if fmt is None:
        raise DataError(
            f"cannot tell the format from the suffix {path.suffix!r}; set format to one of "
            "csv, tsv, parquet, jsonl",
            file=path,
            field="format",
        )
    if fmt in ("csv", "tsv"):
        return read_delimited(
            path, sep=sep or ("," if fmt == "csv" else "\t"), encoding=encoding, required=required
        )
    if fmt == "parquet":
        return read_parquet(path, required=required)
    if fmt == "jsonl":
        return read_jsonl(path, encoding=encoding, required=required)
    raise DataError(f"unknown format {fmt!r}; use csv, tsv, parquet or jsonl", file=path, field="format")


def require_columns(df: pl.DataFrame, cols: Iterable[str], file: str | Path) -> None:
    """DataError naming the first expected column the frame lacks."""
    for c in cols:
        if c not in df.columns:
            have = [x for x in df.columns if x != LINE]
            raise DataError(f"required column is missing (found {have})", file=file, line=1, field=c)


# ------------------------------------------------------------------------------------- converters
def line_at(df: pl.DataFrame, mask: pl.Series) -> int | None:
    """Source line of the first row where `mask` is true."""
    idx = int(mask.arg_max())  # type: ignore[arg-type]
    return int(df[LINE][idx]) if LINE in df.columns else None


def _fail_where(df: pl.DataFrame, col: str, mask: pl.Series, file: str | Path, what: str) -> None:
    if mask.any():
        idx = int(mask.arg_max())  # type: ignore[arg-type]
        value = df[col][idx]
        raise DataError(
            f"cannot read {value!r} as {what} ({int(mask.sum())} such rows)",
            file=file,
            line=line_at(df, mask),
            field=col,
        )


def _required(df: pl.DataFrame, col: str, out: pl.Series, file: str | Path) -> None:
    if out.is_null().any():
        raise DataError("required value is empty", file=file, line=line_at(df, out.is_null()), field=col)


def _blank_to_null(s: pl.Series) -> pl.Series:
    if s.dtype == pl.String:
        s = s.str.strip_chars()
        return s.set(s == "", None)  # type: ignore[arg-type]
    return s


def as_str(df: pl.DataFrame, col: str, file: str | Path, *, required: bool = False) -> pl.Series:
    """Text column; ids stored as whole-number floats (a Parquet quirk) print without '.0'."""
    s = df[col]
    if s.dtype.is_float() and bool((s.drop_nulls() % 1 == 0).all()):
        s = s.cast(pl.Int64())
    if isinstance(s.dtype, pl.List | pl.Struct | pl.Array):
        raise DataError(
            f"expected text, found {s.dtype}", file=file, line=line_at(df, s.is_not_null()), field=col
        )
    out = _blank_to_null(s.cast(pl.String()))
    _no_nul(df, col, out, file)
    if required:
        _required(df, col, out, file)
    return out


def _no_nul(df: pl.DataFrame, col: str, out: pl.Series, file: str | Path) -> None:
    """A NUL byte in text is corruption (and C strings, e.g. the LLM's tokenizer, cut it): refuse it."""
    bad = out.str.contains("\x00", literal=True).fill_null(False)
    if bad.any():
        raise DataError(
            f"text contains a NUL byte (\\x00) ({int(bad.sum())} such rows)",
            file=file,
            line=line_at(df, bad),
            field=col,
        )


def as_number(
    df: pl.DataFrame, col: str, file: str | Path, dtype: pl.DataType, *, required: bool = False
) -> pl.Series:
    """Int or float column with a DataError naming the first value that is not a number."""
    src = _blank_to_null(df[col])
    if src.dtype == pl.String and dtype.is_integer():
        # accept "4.0" for ints only when it is whole
        as_float = src.cast(pl.Float64(), strict=False)
        whole = as_float.is_not_null() & (as_float % 1 == 0)
        out = src.cast(dtype, strict=False)
        out = pl.select(
            pl.when(out.is_null() & whole).then(as_float.cast(dtype, strict=False)).otherwise(out)
        ).to_series()
    else:
        out = src.cast(dtype, strict=False)
    _fail_where(
        df, col, out.is_null() & src.is_not_null(), file, "an integer" if dtype.is_integer() else "a number"
    )
    if required:
        _required(df, col, out, file)
    return out.alias(col)


def as_timestamp(df: pl.DataFrame, col: str, file: str | Path, fmt: str = "epoch_s") -> pl.Series:
    """Seconds since the epoch (UTC) from epoch seconds / ms, ISO-8601, a strptime pattern or a datetime."""
    s = df[col]
    if s.dtype == pl.Date:
        s = s.cast(pl.Datetime("ms"))
    if isinstance(s.dtype, pl.Datetime):
        out = s.dt.epoch("s")
    elif fmt.lower() in TIMESTAMP_FORMATS:
        scale = TIMESTAMP_FORMATS[fmt.lower()]
        num = as_number(df, col, file, pl.Float64())
        _fail_where(df, col, num.is_nan() | num.is_infinite(), file, f"a timestamp ({fmt})")
        _check_range(df, col, file, num / scale, hint_units=scale == 1)
        out = (num / scale).floor().cast(pl.Int64())
    elif fmt.lower() in ISO_FORMATS or "%" in fmt:
        src = _blank_to_null(s.cast(pl.String()))
        parsed = {v: _parse_time(v, fmt) for v in src.drop_nulls().unique().to_list()}
        out = src.replace_strict(parsed, default=None, return_dtype=pl.Int64())
        _fail_where(df, col, out.is_null() & src.is_not_null(), file, f"a timestamp ({fmt})")
    else:
        raise DataError(
            f"unknown timestamp format {fmt!r}; use epoch_s, epoch_ms, iso8601 or a strptime pattern",
            file=file,
            field="timestamp_format",
        )
    out = out.alias(col)
    _check_range(df, col, file, out.cast(pl.Float64()), hint_units=False)
    _required(df, col, out, file)
    return out


def _check_range(
    df: pl.DataFrame, col: str, file: str | Path, seconds: pl.Series, *, hint_units: bool
) -> None:
    """Timestamps must fall in 1970-01-01 .. 2100-01-01 (UTC); larger epoch values are named by their likely unit."""
    bad = (seconds < TS_MIN) | (seconds >= TS_MAX)
    if not bad.any():
        return
    idx = int(bad.arg_max())  # type: ignore[arg-type]
    value, sec = df[col][idx], float(seconds[idx])
    hint = ""
    for scale, unit, fix in (
        (
            1e3,
            "milliseconds",
            'convert them to seconds (a generic mapping can say timestamp_format = "epoch_ms")',
        ),
        (1e6, "microseconds", "convert them to epoch seconds"),
        (1e9, "nanoseconds", "convert them to epoch seconds"),
    ):
        if hint_units and TS_MIN <= sec / scale < TS_MAX:
            hint = f"; it looks like {unit}: {fix}"
            break
    raise DataError(
        f"timestamp {value!r} is out of range: recgpt accepts 1970-01-01 .. 2100-01-01 UTC "
        f"({TS_MIN} .. {TS_MAX - 1} epoch seconds){hint} ({int(bad.sum())} such rows)",
        file=file,
        line=line_at(df, bad),
        field=col,
    )


def _parse_time(value: str, fmt: str) -> int | None:
    try:
        dt = datetime.strptime(value, fmt) if "%" in fmt else datetime.fromisoformat(value)
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp())


def as_list(df: pl.DataFrame, col: str, file: str | Path, sep: str = "|") -> pl.Series:
    """A list of non-empty strings from a list column or text joined with `sep` (null -> [])."""
    s = df[col]
    if isinstance(s.dtype, pl.List):
        out = s.cast(pl.List(pl.String()))
        _no_nul(df, col, out.list.join("|"), file)
    else:
        out = as_str(df, col, file).str.split(sep)
    out = out.list.eval(pl.element().str.strip_chars().filter(pl.element().str.len_chars() > 0))
    return out.fill_null([]).alias(col)


def attributes(df: pl.DataFrame, cols: dict[str, str]) -> pl.Series:
    """The `attributes` map (list of key/value structs) from `key -> source column`, skipping blanks."""
    if not cols:
        return pl.Series("attributes", [[]] * df.height, dtype=ATTR_DTYPE)
    structs = [
        pl.when(pl.col(src).cast(pl.String()).str.strip_chars().str.len_chars() > 0).then(
            pl.struct(
                pl.lit(key).alias("key"), pl.col(src).cast(pl.String()).str.strip_chars().alias("value")
            )
        )
        for key, src in cols.items()
    ]
    out = df.select(pl.concat_list(structs).list.drop_nulls().alias("attributes")).to_series()
    return out.cast(ATTR_DTYPE)


# ------------------------------------------------------------------------------------------ checks
def check_unique(df: pl.DataFrame, col: str, file: str | Path, *, field: str | None = None) -> None:
    """Duplicate ids name the line of the second occurrence and the line of the first."""
    dup = df[col].is_duplicated() & ~df[col].is_first_distinct() & df[col].is_not_null()
    if dup.any():
        idx = int(dup.arg_max())  # type: ignore[arg-type]
        value = df[col][idx]
        first = df.filter(pl.col(col) == value)
        first_line = int(first[LINE][0]) if LINE in df.columns else None
        raise DataError(
            f"duplicate id {value!r} (first seen on line {first_line})",
            file=file,
            line=line_at(df, dup),
            field=field or col,
        )


def check_known(
    df: pl.DataFrame,
    col: str,
    known: pl.Series,
    file: str | Path,
    *,
    field: str | None = None,
    what: str = "item",
    hint: str = "",
) -> None:
    """Every non-null id in `df[col]` must be in `known` (events -> items / users)."""
    bad = df[col].is_not_null() & ~df[col].is_in(known.implode())
    if bad.any():
        idx = int(bad.arg_max())  # type: ignore[arg-type]
        raise DataError(
            f"refers to unknown {what} {df[col][idx]!r} ({int(bad.sum())} such rows){hint}",
            file=file,
            line=line_at(df, bad),
            field=field or col,
        )


def with_time_range(ds: Dataset) -> Dataset:
    """Record the event time range in the manifest so `recgpt data info` needs no table reads."""
    summary = ds.summary()
    ds.manifest.extra["time_range"] = {"first": summary["first"], "last": summary["last"]}
    return ds
