"""Human labels: export judge samples for annotation, read the labels back (CSV or JSONL by suffix).

`export_labels(samples, path, n, seed)` writes a seeded sample stratified across tasks (as even as
the tasks' sizes allow), grouped by task, with everything a person needs (context, the output, the
questions of the task's criteria) and empty label columns: `label` (overall: is the output
acceptable?) and `label_<criterion>` for every criterion of the exported tasks, plus `annotator`
and `notes`. The judge's own verdicts are not shown (they would anchor the annotator).

`import_labels(path)` reads a filled file back into the labels table (`LABELS_SCHEMA`: one row per
non-blank cell; `criterion` null = the overall label). A label is yes/no, y/n, true/false, 1/0,
pass/fail, or a three-level verdict (excellent/good pass, bad fails); blank = not labelled. Any
other value, an unknown task, a criterion label on a task that has no such criterion, a duplicate
sample: a `LabelError` naming the file, the row and the field. `read_labelled(path)` also returns
the samples, so a labelled file alone can feed the judge data buffer.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl

from recgpt.data.atomic import write_text_atomic
from recgpt.judge.criteria import TASKS, criteria
from recgpt.judge.samples import SAMPLES_SCHEMA, check_samples

LABELS_SCHEMA: dict[str, pl.DataType] = {
    "sample_id": pl.String(),
    "task": pl.String(),
    "label": pl.Boolean(),
    "criterion": pl.String(),
    "annotator": pl.String(),
    "labelled_at": pl.Int64(),
}
LABEL_PREFIX = "label_"
TRUE_WORDS = frozenset({"yes", "y", "true", "1", "pass", "excellent", "good"})
FALSE_WORDS = frozenset({"no", "n", "false", "0", "fail", "bad"})
SUFFIXES = (".csv", ".jsonl")


class LabelError(ValueError):
    """A label file is malformed: the message names the file, row and field."""


def _suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise LabelError(f"{path}: label files are .csv or .jsonl, got {path.suffix or 'no suffix'!r}")
    return suffix


def criterion_names(tasks: Sequence[str]) -> list[str]:
    """Criterion names of `tasks`, in task then criteria order, each once (tags and explanations share
    "relevance": one column serves both)."""
    return list(dict.fromkeys(c.name for t in tasks for c in criteria(t)))


def allocate(n: int, sizes: dict[str, int]) -> dict[str, int]:
    """Split `n` across groups as evenly as their sizes allow (small groups give their spare share on)."""
    out, left = {}, n
    order = sorted(sizes, key=lambda k: (sizes[k], k))
    for i, key in enumerate(order):
        share = left // (len(order) - i)
        out[key] = min(sizes[key], share)
        left -= out[key]
    return out


def stratified(samples: pl.DataFrame, n: int | None, seed: int = 0) -> pl.DataFrame:
    """A seeded sample of `n` rows stratified across tasks, in task order (all rows when n is None)."""
    present = [t for t in TASKS if t in set(samples["task"].to_list())]
    groups = {t: samples.filter(pl.col("task") == t) for t in present}
    quota = (
        allocate(n, {t: g.height for t, g in groups.items()})
        if n is not None
        else {t: g.height for t, g in groups.items()}
    )
    parts = [g.sample(quota[t], seed=seed, shuffle=True) for t, g in groups.items() if quota[t]]
    return pl.concat(parts) if parts else samples.clear()


def _write_atomic(path: Path, text: str) -> Path:
    return write_text_atomic(path, text)


def export_labels(samples: pl.DataFrame, path: str | Path, n: int | None = None, seed: int = 0) -> Path:
    """Write an annotation file (module docstring); returns its path."""
    path = Path(path)
    suffix = _suffix(path)
    chosen = stratified(check_samples(samples), n, seed)
    if chosen.is_empty():
        raise ValueError("no samples to export")
    crit = criterion_names([t for t in TASKS if t in set(chosen["task"].to_list())])
    rows = []
    for s in chosen.iter_rows(named=True):
        row = {
            k: s.get(k)
            for k in ("sample_id", "task", "user_id", "source", "interest", "item_id", "context", "output")
        }
        row["questions"] = "\n".join(c.describe() for c in criteria(s["task"]))
        row["label"] = ""
        mine = {c.name for c in criteria(s["task"])}
        row.update({f"{LABEL_PREFIX}{c}": "" if c in mine else "n/a" for c in crit})
        row.update({"annotator": "", "notes": "", "created_at": s.get("created_at"), "facts": s.get("facts")})
        rows.append(row)
    if suffix == ".jsonl":
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    else:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in r.items()} for r in rows)
        text = buf.getvalue()
    return _write_atomic(path, text)


def parse_label(value: Any) -> bool | None:
    """yes/no-like value -> bool; blank (or "n/a") -> None; anything else -> ValueError."""
    if value is None or isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("", "n/a", "na"):
        return None
    if text in TRUE_WORDS:
        return True
    if text in FALSE_WORDS:
        return False
    raise ValueError(value)


def read_rows(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(where, row) pairs: `where` = "row N (line L)" for CSV, "row N (line N)" for JSONL."""
    suffix = _suffix(path)
    if not path.is_file():
        raise FileNotFoundError(f"label file {path} does not exist")
    text = path.read_text(encoding="utf-8-sig")
    out: list[tuple[str, dict[str, Any]]] = []
    if suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        start = 2
        for i, row in enumerate(reader, start=1):
            if None in row:
                raise LabelError(f"{path}: row {i} (line {start}) has more fields than the header")
            out.append((f"row {i} (line {start})", dict(row)))
            start = reader.line_num + 1
        return out
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise LabelError(f"{path}: row {i} (line {i}) is not valid JSON: {e.msg}") from None
        if not isinstance(row, dict):
            raise LabelError(f"{path}: row {i} (line {i}) is not a JSON object")
        out.append((f"row {i} (line {i})", row))
    return out


def read_labelled(path: str | Path, annotator: str | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(samples, labels) of a filled annotation file (module docstring for the rules)."""
    path = Path(path)
    rows = read_rows(path)
    if not rows:
        raise LabelError(f"{path}: no rows")
    columns = set().union(*(r.keys() for _, r in rows))
    missing = {"sample_id", "task"} - columns
    if missing:
        raise LabelError(f"{path}: missing column(s) {sorted(missing)}")
    known = set(criterion_names(TASKS))
    crit_cols = sorted(c for c in columns if c.startswith(LABEL_PREFIX))
    for c in crit_cols:
        if c[len(LABEL_PREFIX) :] not in known:
            raise LabelError(f"{path}: column {c!r} names no criterion; criteria: {sorted(known)}")
    now = int(time.time())
    labels: list[dict[str, Any]] = []
    samples: list[dict[str, Any]] = []
    seen: dict[str, str] = {}
    for where, row in rows:
        sid, task = str(row.get("sample_id") or "").strip(), str(row.get("task") or "").strip()
        if not sid:
            raise LabelError(f"{path}: {where}, field 'sample_id': empty")
        if task not in TASKS:
            raise LabelError(f"{path}: {where}, field 'task': {task!r} is not one of {', '.join(TASKS)}")
        if sid in seen:
            raise LabelError(f"{path}: {where}, field 'sample_id': {sid} already labelled in {seen[sid]}")
        seen[sid] = where
        mine = {c.name for c in criteria(task)}
        who = str(row.get("annotator") or "").strip() or annotator or "unknown"
        when = _int_field(path, where, row, "labelled_at", now)
        for field in ("label", *crit_cols):
            try:
                value = parse_label(row.get(field))
            except ValueError:
                raise LabelError(
                    f"{path}: {where}, field {field!r}: {row.get(field)!r} is not a label "
                    "(use yes/no, y/n, true/false, 1/0, pass/fail, excellent/good/bad, or leave blank)"
                ) from None
            if value is None:
                continue
            name = None if field == "label" else field[len(LABEL_PREFIX) :]
            if name is not None and name not in mine:
                raise LabelError(f"{path}: {where}, field {field!r}: task {task!r} has no criterion {name!r}")
            labels.append(
                {
                    "sample_id": sid,
                    "task": task,
                    "label": value,
                    "criterion": name,
                    "annotator": who,
                    "labelled_at": when,
                }
            )
        samples.append(
            {
                k: (None if row.get(k) in ("", None) else str(row[k]))
                for k in SAMPLES_SCHEMA
                if k != "created_at"
            }
            | {"created_at": _int_field(path, where, row, "created_at", now)}
        )
    return pl.DataFrame(samples, schema=SAMPLES_SCHEMA), pl.DataFrame(labels, schema=LABELS_SCHEMA)


def _int_field(path: Path, where: str, row: dict[str, Any], field: str, default: int) -> int:
    raw = row.get(field)
    if raw in (None, ""):
        return default
    try:
        return int(raw)
    except (TypeError, ValueError):
        raise LabelError(
            f"{path}: {where}, field {field!r}: {raw!r} is not an integer (epoch seconds)"
        ) from None


def import_labels(path: str | Path, annotator: str | None = None) -> pl.DataFrame:
    """The labels table (`LABELS_SCHEMA`) of a filled annotation file."""
    return read_labelled(path, annotator)[1]


__all__ = [
    "LABELS_SCHEMA",
    "LabelError",
    "allocate",
    "criterion_names",
    "export_labels",
    "import_labels",
    "parse_label",
    "read_labelled",
    "read_rows",
    "stratified",
]
