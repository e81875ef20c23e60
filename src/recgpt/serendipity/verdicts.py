"""Human serendipity verdicts: the paper's Collaborative Data Intervention (LLM proposals + people).

`export_serendipity_samples` writes a seeded sample of LISTS for people: one row per (list, item) with
the item's title and category, the user's newest history titles before the list's point, the log
label, SerenGPT's proposal (rank and reason) when a RANKINGS table is given, and empty `verdict`,
`annotator`, `notes` columns. `import_serendipity_labels` reads a filled file back into VERDICTS
(a verdict is yes/no, y/n, true/false, 1/0; blank = not judged; anything else, a missing column or a
(user, item) judged twice is a `LabelError` naming the file, row and field).

VERDICTS (`VERDICTS_SCHEMA`): user_id, item_id, serendipitous, annotator, round. `apply_verdicts`
overrides the log label of that (user, item) in every list that holds it and marks the label
'human'. When several verdicts cover one (user, item), the newest round decides by majority; a tie
leaves the log label. Verdicts for items in no list are returned by `unmatched_verdicts` (and
`apply_verdicts` warns about them): they are never silently dropped.
"""

from __future__ import annotations

import csv
import io
import json
import random
import warnings
from pathlib import Path
from typing import Any

import polars as pl

from recgpt.data.atomic import write_parquet_atomic, write_text_atomic
from recgpt.data.categories import CategoryLevel, categories_at_level
from recgpt.data.dataset import Dataset
from recgpt.judge.labels import LabelError, parse_label, read_rows
from recgpt.serendipity.labels import LISTS_SCHEMA

VERDICTS_SCHEMA: dict[str, pl.DataType] = {
    "user_id": pl.String(),
    "item_id": pl.String(),
    "serendipitous": pl.Boolean(),
    "annotator": pl.String(),
    "round": pl.Int32(),
}
EXPORT_COLUMNS = (
    "list_id",
    "part",
    "user_id",
    "item_id",
    "title",
    "category",
    "history",
    "log_label",
    "seren_rank",
    "seren_reason",
    "verdict",
    "annotator",
    "notes",
)


def check_verdicts(verdicts: pl.DataFrame, where: str = "verdicts") -> pl.DataFrame:
    """`verdicts` cast to `VERDICTS_SCHEMA`; a missing column or an empty cell is a `LabelError`."""
    missing = [c for c in VERDICTS_SCHEMA if c not in verdicts.columns]
    if missing:
        raise LabelError(
            f"{where}: missing column(s) {missing}; a verdicts table has {list(VERDICTS_SCHEMA)}"
        )
    out = verdicts.select(list(VERDICTS_SCHEMA))
    for name, dtype in VERDICTS_SCHEMA.items():
        try:
            out = out.with_columns(pl.col(name).cast(dtype, strict=True))
        except pl.exceptions.PolarsError:
            raise LabelError(f"{where}: field {name!r} is not {dtype} in every row") from None
        nulls = out[name].is_null()
        if nulls.any():
            row = int(nulls.arg_true()[0]) + 1
            raise LabelError(f"{where}: row {row}, field {name!r}: empty")
    return out


def read_verdicts(path: str | Path) -> pl.DataFrame:
    """A verdicts parquet file (as `write_verdicts` writes it), validated."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"verdicts file {path} does not exist")
    try:
        df = pl.read_parquet(path)
    except Exception as e:  # polars raises several kinds for a damaged file
        raise LabelError(f"{path}: not a readable parquet file ({type(e).__name__})") from None
    return check_verdicts(df, str(path))


def write_verdicts(verdicts: pl.DataFrame, path: str | Path, *, extend: bool = False) -> Path:
    """Write `verdicts` atomically; `extend` appends them to the file's existing verdicts."""
    path = Path(path)
    new = check_verdicts(verdicts)
    if extend and path.exists():
        new = pl.concat([read_verdicts(path), new])
    return write_parquet_atomic(new, path)


def next_round(path: str | Path) -> int:
    """The round after the newest in a verdicts file (0 when there is none)."""
    path = Path(path)
    if not path.exists():
        return 0
    rounds = read_verdicts(path)["round"]
    return int(rounds.max()) + 1 if rounds.len() else 0  # type: ignore[operator]


def resolve_verdicts(verdicts: pl.DataFrame) -> pl.DataFrame:
    """One decision per (user, item): the newest round's majority (ties are dropped)."""
    v = check_verdicts(verdicts)
    newest = v.filter(pl.col("round") == pl.col("round").max().over("user_id", "item_id"))
    votes = newest.group_by("user_id", "item_id").agg(
        pl.col("serendipitous").cast(pl.Float64).mean().alias("m")
    )
    return votes.filter(pl.col("m") != 0.5).select(
        "user_id", "item_id", (pl.col("m") > 0.5).alias("serendipitous")
    )


def _exploded(lists: pl.DataFrame) -> pl.DataFrame:
    return (
        lists.select("list_id", "user_id", "item_ids", "labels", "label_source")
        .with_columns(pl.int_ranges(pl.col("item_ids").list.len()).alias("pos"))
        .explode("item_ids", "labels", "label_source", "pos")
        .rename({"item_ids": "item_id", "labels": "label"})
    )


def unmatched_verdicts(lists: pl.DataFrame, verdicts: pl.DataFrame) -> pl.DataFrame:
    """Verdict rows whose (user, item) is in no list (to report, never to drop silently)."""
    pairs = _exploded(lists).select("user_id", "item_id").unique()
    return check_verdicts(verdicts).join(pairs, on=["user_id", "item_id"], how="anti")


def apply_verdicts(lists: pl.DataFrame, verdicts: pl.DataFrame) -> pl.DataFrame:
    """LISTS with human verdicts overriding the log labels they cover (module docstring)."""
    lost = unmatched_verdicts(lists, verdicts)
    if lost.height:
        sample = ", ".join(f"{u}/{i}" for u, i in lost.select("user_id", "item_id").head(5).iter_rows())
        warnings.warn(
            f"{lost.height} verdicts name a (user, item) in no list and change nothing: {sample}",
            stacklevel=2,
        )
    decided = resolve_verdicts(verdicts)
    rows = _exploded(lists).join(decided, on=["user_id", "item_id"], how="left")
    rows = rows.with_columns(
        pl.when(pl.col("serendipitous").is_not_null())
        .then(pl.col("serendipitous").cast(pl.Int8))
        .otherwise(pl.col("label"))
        .alias("label"),
        pl.when(pl.col("serendipitous").is_not_null())
        .then(pl.lit("human"))
        .otherwise(pl.col("label_source"))
        .alias("label_source"),
    )
    merged = (
        rows.sort("list_id", "pos")
        .group_by("list_id", maintain_order=True)
        .agg(pl.col("label").alias("labels"), pl.col("label_source").alias("label_source"))
    )
    out = lists.drop("labels", "label_source").join(merged, on="list_id", how="left", maintain_order="left")
    return out.select(list(LISTS_SCHEMA)).cast(LISTS_SCHEMA)  # type: ignore[arg-type]


def _history_titles(dataset: Dataset, user_id: str, asof_ts: int, k: int) -> str:
    """The user's newest `k` item titles strictly before `asof_ts` (timestamp), oldest first."""
    ev = dataset.events.filter(
        (pl.col("user_id") == user_id) & (pl.col("timestamp") < asof_ts) & pl.col("item_id").is_not_null()
    ).tail(k)
    titles = dict(
        dataset.items.filter(pl.col("item_id").is_in(ev["item_id"].implode()))
        .select("item_id", "title")
        .iter_rows()
    )
    return " | ".join(titles.get(i) or i for i in ev["item_id"].to_list())


def export_serendipity_samples(
    lists: pl.DataFrame,
    dataset: Dataset,
    out: str | Path,
    *,
    rankings: pl.DataFrame | None = None,
    n: int | None = 20,
    seed: int = 0,
    category_level: CategoryLevel | str = "auto",
    history_items: int = 10,
) -> Path:
    """Write `n` seeded lists (all when None) for people to judge (.csv or .jsonl, by suffix)."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in (".csv", ".jsonl"):
        raise LabelError(f"{out}: sample files are .csv or .jsonl, got {out.suffix or 'no suffix'!r}")
    if lists.is_empty():
        raise ValueError("no lists to export")
    ids = sorted(lists["list_id"].to_list())
    chosen = set(ids if n is None or n >= len(ids) else random.Random(seed).sample(ids, n))
    picked = lists.filter(pl.col("list_id").is_in(list(chosen))).sort("list_id")
    items = dataset.items.select("item_id", "title")
    titles = dict(items.iter_rows())
    cats = categories_at_level(dataset, category_level).by_item()
    seren: dict[tuple[str, str], tuple[Any, Any]] = {}
    if rankings is not None:
        for lid, iid, rank, reason in rankings.select("list_id", "item_id", "rank", "reason").iter_rows():
            seren[(lid, iid)] = (rank, reason)
    rows: list[dict[str, Any]] = []
    for r in picked.iter_rows(named=True):
        history = _history_titles(dataset, r["user_id"], r["asof_ts"], history_items)
        for iid, label in zip(r["item_ids"], r["labels"], strict=True):
            rank, reason = seren.get((r["list_id"], iid), (None, None))
            rows.append(
                {
                    "list_id": r["list_id"],
                    "part": r["part"],
                    "user_id": r["user_id"],
                    "item_id": iid,
                    "title": titles.get(iid, ""),
                    "category": "|".join(cats.get(iid, [])),
                    "history": history,
                    "log_label": int(label),
                    "seren_rank": rank,
                    "seren_reason": reason,
                    "verdict": "",
                    "annotator": "",
                    "notes": "",
                }
            )
    if suffix == ".jsonl":
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    else:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(EXPORT_COLUMNS), lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
        text = buf.getvalue()
    return write_text_atomic(out, text)


def import_serendipity_labels(
    path: str | Path, *, annotator: str | None = None, round: int = 0
) -> pl.DataFrame:
    """VERDICTS from a filled sample file (module docstring for the rules); blank verdicts are skipped."""
    path = Path(path)
    rows = read_rows(path)
    if not rows:
        raise LabelError(f"{path}: no rows")
    columns = set().union(*(r.keys() for _, r in rows))
    missing = sorted({"user_id", "item_id", "verdict"} - columns)
    if missing:
        raise LabelError(f"{path}: missing column(s) {missing}")
    seen: dict[tuple[str, str], str] = {}
    out: list[dict[str, Any]] = []
    for where, row in rows:
        user, item = str(row.get("user_id") or "").strip(), str(row.get("item_id") or "").strip()
        for field, value in (("user_id", user), ("item_id", item)):
            if not value:
                raise LabelError(f"{path}: {where}, field {field!r}: empty")
        try:
            verdict = parse_label(row.get("verdict"))
        except ValueError:
            raise LabelError(
                f"{path}: {where}, field 'verdict': {row.get('verdict')!r} is not a verdict "
                "(use yes/no, y/n, true/false, 1/0, or leave blank)"
            ) from None
        if verdict is None:
            continue
        if (user, item) in seen:
            raise LabelError(
                f"{path}: {where}, field 'item_id': {user}/{item} already judged in {seen[(user, item)]}"
            )
        seen[(user, item)] = where
        who = str(row.get("annotator") or "").strip() or annotator or "unknown"
        out.append(
            {"user_id": user, "item_id": item, "serendipitous": verdict, "annotator": who, "round": round}
        )
    return pl.DataFrame(out, schema=VERDICTS_SCHEMA)


__all__ = [
    "EXPORT_COLUMNS",
    "VERDICTS_SCHEMA",
    "apply_verdicts",
    "check_verdicts",
    "export_serendipity_samples",
    "import_serendipity_labels",
    "next_round",
    "read_verdicts",
    "resolve_verdicts",
    "unmatched_verdicts",
    "write_verdicts",
]
