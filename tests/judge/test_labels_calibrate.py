"""Label files (export, fill, import, bad input) and judge-vs-human calibration numbers."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from recgpt.judge.calibrate import binary_metrics, calibrate
from recgpt.judge.labels import LabelError, allocate, export_labels, import_labels, read_labelled
from recgpt.judge.rules import VERDICTS_SCHEMA


def _fill(path: Path, values: dict[int, dict[str, str]]) -> Path:
    rows = list(csv.DictReader(path.open(newline="")))
    for i, update in values.items():
        rows[i].update(update)
    out = path.with_name("filled.csv")
    with out.open("w", newline="") as f:
        w = csv.DictWriter(
            f,
            fieldnames=list(dict.fromkeys([*rows[0], *(k for u in values.values() for k in u)])),
            restval="",
        )
        w.writeheader()
        w.writerows(rows)
    return out


def test_allocate_is_even_within_group_sizes() -> None:
    assert allocate(10, {"a": 2, "b": 50, "c": 50}) == {"a": 2, "b": 4, "c": 4}
    assert allocate(9, {"a": 3, "b": 3, "c": 3}) == {"a": 3, "b": 3, "c": 3}
    assert allocate(100, {"a": 3, "b": 1}) == {"a": 3, "b": 1}


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_export_import_round_trip(tmp_path: Path, samples: pl.DataFrame, suffix: str) -> None:
    path = export_labels(samples, tmp_path / f"labels{suffix}", n=6, seed=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # atomic: no temp file left behind
    if suffix == ".csv":
        rows = list(csv.DictReader(path.open(newline="")))
    else:
        rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["task"] for r in rows] == ["interests"] * 2 + ["tags"] * 2 + ["explanations"] * 2  # stratified
    assert all(r["label"] == "" and r["context"] and r["questions"] for r in rows)
    assert rows[0]["label_relevance"] == "n/a" and rows[0]["label_willingness"] == ""
    # nothing labelled yet: no labels, and the samples come back as they went out
    back_samples, back_labels = read_labelled(path)
    assert back_labels.is_empty()
    original = samples.filter(pl.col("sample_id").is_in(back_samples["sample_id"].implode()))
    assert back_samples.sort("sample_id").equals(original.sort("sample_id"))
    rows[0].update(label="Yes", annotator="ann")
    rows[2].update(label="no", label_specificity="0", label_relevance="yes")
    rows[4].update(label="", label_factuality="bad")
    if suffix == ".csv":
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    labels = import_labels(path, annotator="default")
    got = [(r["sample_id"], r["label"], r["criterion"], r["annotator"]) for r in labels.iter_rows(named=True)]
    sid = [r["sample_id"] for r in rows]
    assert got == [
        (sid[0], True, None, "ann"),
        (sid[2], False, None, "default"),
        (sid[2], True, "relevance", "default"),
        (sid[2], False, "specificity", "default"),
        (sid[4], False, "factuality", "default"),
    ]
    assert labels["labelled_at"].min() > 0  # type: ignore[operator]


@pytest.mark.parametrize(
    ("update", "message"),
    [
        ({"label": "maybe"}, r"row 2 \(line \d+\), field 'label': 'maybe' is not a label"),
        (
            {"label_relevance": "yes"},
            r"row 2 \(line \d+\), field 'label_relevance': task 'interests' has no criterion",
        ),
        ({"task": "images"}, r"row 2 \(line \d+\), field 'task': 'images' is not one of"),
        ({"sample_id": ""}, r"row 2 \(line \d+\), field 'sample_id': empty"),
        (
            {"labelled_at": "yesterday"},
            r"row 2 \(line \d+\), field 'labelled_at': 'yesterday' is not an integer",
        ),
    ],
)
def test_bad_labels_name_file_row_and_field(
    tmp_path: Path, samples: pl.DataFrame, update: dict[str, str], message: str
) -> None:
    path = export_labels(samples.filter(pl.col("task") == "interests"), tmp_path / "l.csv")
    filled = _fill(path, {1: update})
    with pytest.raises(LabelError, match=rf"filled\.csv: {message}"):
        import_labels(filled)


def test_more_bad_label_files(tmp_path: Path, samples: pl.DataFrame) -> None:
    path = export_labels(samples, tmp_path / "l.csv")
    rows = list(csv.DictReader(path.open(newline="")))
    dup = tmp_path / "dup.csv"
    with dup.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows([rows[0], rows[1], rows[0]])
    with pytest.raises(
        LabelError, match=r"row 3 \(line \d+\), field 'sample_id': .* already labelled in row 1"
    ):
        import_labels(dup)
    odd = tmp_path / "odd.csv"
    odd.write_text("sample_id,task,label,label_colour\nx,tags,yes,no\n")
    with pytest.raises(LabelError, match="column 'label_colour' names no criterion"):
        import_labels(odd)
    bad_json = tmp_path / "l.jsonl"
    bad_json.write_text('{"sample_id": "a", "task": "tags", "label": "yes"}\n{"sample_id": \n')
    with pytest.raises(LabelError, match=r"l\.jsonl: row 2 \(line 2\) is not valid JSON"):
        import_labels(bad_json)
    with pytest.raises(LabelError, match=r"are \.csv or \.jsonl"):
        export_labels(samples, tmp_path / "l.xlsx")
    with pytest.raises(LabelError, match="missing column"):
        (tmp_path / "m.csv").write_text("sample_id,label\nx,yes\n")
        import_labels(tmp_path / "m.csv")


def test_binary_metrics_by_hand() -> None:
    m = binary_metrics(np.array([1, 1, 0, 0, 1], bool), np.array([1, 0, 0, 1, 1], bool))
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (2, 1, 1, 1)
    assert m["ACC"] == pytest.approx(0.6) and m["P"] == pytest.approx(2 / 3)
    assert m["R"] == pytest.approx(2 / 3) and m["F1"] == pytest.approx(2 / 3)
    none = binary_metrics(np.zeros(3, bool), np.array([0, 1, 1], bool))
    assert (none["ACC"], none["P"], none["R"], none["F1"]) == (pytest.approx(1 / 3), 0.0, 0.0, 0.0)


def test_calibration_table_9_shape() -> None:
    # 4 tag samples: judge passes a, b, c (c only on the LLM criteria: a rule fails it), errors on d
    v = []
    for sid, rel, rule in (("a", "Yes", True), ("b", "Yes", True), ("c", "Yes", False), ("d", "error", True)):
        for crit in ("relevance", "consistency", "specificity", "validity"):
            v.append((sid, "tags", crit, rel, rel == "Yes"))
        v.append((sid, "tags", "rule:vague", "Yes" if rule else "No", rule))
    verdicts = pl.DataFrame(v, schema=list(VERDICTS_SCHEMA), orient="row")
    labels = pl.DataFrame(
        {
            "sample_id": ["a", "b", "c", "d", "a", "b"],
            "task": ["tags"] * 6,
            "label": [True, False, False, True, True, False],
            "criterion": [None, None, None, None, "relevance", "relevance"],
            "annotator": ["x"] * 6,
            "labelled_at": [0] * 6,
        }
    )
    table, metrics = calibrate(verdicts, labels, judge="smol")
    assert table.columns[:8] == ["task", "judge", "criterion", "n", "ACC", "P", "R", "F1"]
    assert table.select("task", "judge", "criterion", "n").rows() == [
        ("tags", "smol", "overall", 4),
        ("tags", "smol", "relevance", 2),
    ]
    o = metrics["tags"]["overall"]  # pred a T, b T, c F, d F vs truth T F F T
    assert (o["tp"], o["fp"], o["fn"], o["tn"]) == (1, 1, 1, 1) and o["ACC"] == 0.5 and o["F1"] == 0.5
    r = metrics["tags"]["relevance"]  # pred a T, b T vs truth T F
    assert (r["ACC"], r["P"], r["R"]) == (0.5, 0.5, 1.0)
    _, llm_only = calibrate(verdicts, labels, rules=False)  # c now passes: pred T T T F vs T F F T
    assert llm_only["tags"]["overall"]["ACC"] == 0.25
    with pytest.raises(ValueError, match="labels lack"):
        calibrate(verdicts, labels.drop("criterion"))
