"""Human verdicts: export for people, import validated, override log labels, report the unmatched."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import polars as pl
import pytest

from recgpt.judge.labels import LabelError
from recgpt.serendipity.labels import LISTS_SCHEMA
from recgpt.serendipity.verdicts import (
    VERDICTS_SCHEMA,
    apply_verdicts,
    export_serendipity_samples,
    import_serendipity_labels,
    next_round,
    read_verdicts,
    unmatched_verdicts,
    write_verdicts,
)
from tests.serendipity.test_labels import toy_dataset


def _lists() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "list_id": ["eval-u0", "train-t1-1", "train-t1-0"],
            "user_id": ["u0", "t1", "t1"],
            "part": ["eval", "train", "train"],
            "asof_ts": [20, 50_011, 50_010],
            "item_ids": [["Saws-1", "Tape-3", "Drills-9"], ["Glue-2", "Paint-1"], ["Paint-1", "Saws-0"]],
            "labels": [[0, 1, 0], [1, 0], [0, 0]],
            "label_source": [["log"] * 3, ["log"] * 2, ["log"] * 2],
        },
        schema=LISTS_SCHEMA,
    )


def _verdicts(rows: list[tuple[str, str, bool, str, int]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=VERDICTS_SCHEMA, orient="row")


def test_a_verdict_overrides_the_log_label_in_every_list_that_holds_the_item() -> None:
    v = _verdicts([("t1", "Paint-1", True, "ann", 0), ("u0", "Tape-3", False, "ann", 0)])
    out = apply_verdicts(_lists(), v)
    assert out.schema == pl.Schema(LISTS_SCHEMA)
    rows = {r["list_id"]: r for r in out.iter_rows(named=True)}
    assert rows["eval-u0"]["labels"] == [0, 0, 0]
    assert rows["eval-u0"]["label_source"] == ["log", "human", "log"]
    assert rows["train-t1-1"]["labels"] == [1, 1] and rows["train-t1-0"]["labels"] == [1, 0]
    assert rows["train-t1-0"]["label_source"] == ["human", "log"]
    assert out["list_id"].to_list() == _lists()["list_id"].to_list()


def test_newest_round_majority_decides_and_a_tie_keeps_the_log_label() -> None:
    v = _verdicts(
        [
            ("u0", "Saws-1", False, "a", 0),
            ("u0", "Saws-1", True, "a", 1),
            ("u0", "Saws-1", True, "b", 1),
            ("u0", "Saws-1", False, "c", 1),
            ("u0", "Drills-9", True, "a", 2),
            ("u0", "Drills-9", False, "b", 2),
        ]
    )
    row = apply_verdicts(_lists(), v).row(0, named=True)
    assert row["labels"] == [1, 1, 0] and row["label_source"] == ["human", "log", "log"]


def test_a_verdict_for_an_item_in_no_list_is_reported() -> None:
    v = _verdicts([("u0", "Gloves-4", True, "a", 0), ("u9", "Saws-1", True, "a", 0)])
    assert unmatched_verdicts(_lists(), v).height == 2
    with pytest.warns(UserWarning, match="2 verdicts name a"):
        out = apply_verdicts(_lists(), v)
    assert out.equals(_lists())


def test_write_read_extend_and_validation(tmp_path: Path) -> None:
    path = tmp_path / "verdicts.parquet"
    assert next_round(path) == 0
    write_verdicts(_verdicts([("u0", "Saws-1", True, "a", 0)]), path)
    write_verdicts(_verdicts([("u0", "Tape-3", False, "a", 1)]), path, extend=True)
    assert read_verdicts(path).height == 2 and next_round(path) == 2
    assert not list(tmp_path.glob(".tmp-*"))
    bad = tmp_path / "bad.parquet"
    pl.DataFrame(
        {"user_id": ["u0"], "item_id": [None], "serendipitous": [True], "annotator": ["a"], "round": [0]}
    ).write_parquet(bad)
    with pytest.raises(LabelError, match=r"bad.parquet: row 1, field 'item_id': empty"):
        read_verdicts(bad)
    pl.DataFrame({"user_id": ["u0"], "item_id": ["x"]}).write_parquet(bad)
    with pytest.raises(LabelError, match="missing column"):
        read_verdicts(bad)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_export_then_import_round_trip(tmp_path: Path, suffix: str) -> None:
    ds = toy_dataset()
    lists = _lists()
    rankings = pl.DataFrame(
        {
            "list_id": ["eval-u0"] * 3,
            "user_id": ["u0"] * 3,
            "item_id": ["Tape-3", "Saws-1", "Drills-9"],
            "rank": [0, 1, 2],
            "score": [0.9, 0.5, 0.1],
            "relevance": [4, 3, 1],
            "unexpected": [4, 2, 1],
            "reason": ["new craft", "close", "far"],
            "source": ["llm"] * 3,
        }
    )
    out = export_serendipity_samples(lists, ds, tmp_path / f"s{suffix}", rankings=rankings, n=None, seed=0)
    if suffix == ".csv":
        rows = list(csv.DictReader(out.open()))
    else:
        rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 7
    first = next(r for r in rows if r["item_id"] == "Tape-3")
    assert first["title"] == "Tape item 3" and first["category"] == "Tape" and str(first["log_label"]) == "1"
    assert str(first["seren_rank"]) == "0" and first["seren_reason"] == "new craft" and first["verdict"] == ""
    assert first["history"].startswith("Drills item 0") and first["history"].endswith(
        "Drills item 5"
    )  # ts < 20
    # a person fills two verdicts; one row stays blank
    for r in rows:
        if r["item_id"] == "Saws-1":
            r["verdict"] = "yes"
        if r["item_id"] == "Tape-3":
            r["verdict"], r["annotator"] = "no", "kim"
    filled = tmp_path / f"filled{suffix}"
    if suffix == ".csv":
        with filled.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    else:
        filled.write_text("".join(json.dumps(r) + "\n" for r in rows))
    v = import_serendipity_labels(filled, annotator="lee", round=3)
    assert sorted(v.rows()) == [("u0", "Saws-1", True, "lee", 3), ("u0", "Tape-3", False, "kim", 3)]
    assert apply_verdicts(lists, v).row(0, named=True)["labels"] == [1, 0, 0]


def test_import_errors_name_file_row_and_field(tmp_path: Path) -> None:
    f = tmp_path / "x.csv"
    f.write_text("list_id,user_id,item_id,verdict\nl,u0,Saws-1,maybe\n")
    with pytest.raises(LabelError, match=r"x.csv: row 1 \(line 2\), field 'verdict': 'maybe'"):
        import_serendipity_labels(f)
    f.write_text("list_id,user_id,item_id,verdict\nl,u0,Saws-1,yes\nl,u0,Saws-1,no\n")
    with pytest.raises(LabelError, match=r"row 2 \(line 3\).*already judged in row 1"):
        import_serendipity_labels(f)
    f.write_text("list_id,user_id,verdict\nl,u0,yes\n")
    with pytest.raises(LabelError, match=r"missing column\(s\) \['item_id'\]"):
        import_serendipity_labels(f)
    with pytest.raises(FileNotFoundError):
        import_serendipity_labels(tmp_path / "none.csv")
