"""`recgpt label export|import` on a SERAL run folder: samples for people, verdicts into the run."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from recgpt.cli.app import app as recgpt_app
from recgpt.data.split import make_split
from recgpt.serendipity.candidates import catalogue_arrays
from recgpt.serendipity.labels import LabelConfig, eval_lists
from recgpt.serendipity.verdicts import read_verdicts
from tests.serendipity.test_candidates import HashEncoder
from tests.serendipity.test_labels import toy_dataset


@pytest.fixture()
def seral_run(tmp_path: Path) -> Path:
    """A SERAL run folder as far as `recgpt label` reads it: config, lists and rankings."""
    ds = toy_dataset()
    data = ds.save(tmp_path / "toy")
    split = make_split(ds)
    cat = catalogue_arrays(ds, HashEncoder(), "leaf", events=split.train_events)
    lists, _ = eval_lists(LabelConfig(list_size=4, rule="category"), split, cat)
    run = tmp_path / "runs" / "toy-seral"
    (run / "04_labels").mkdir(parents=True)
    lists.write_parquet(run / "04_labels" / "lists.parquet")
    first = lists.row(0, named=True)
    (run / "05_seren").mkdir()
    pl.DataFrame(
        {
            "list_id": [first["list_id"]] * 4,
            "user_id": [first["user_id"]] * 4,
            "item_id": first["item_ids"],
            "rank": list(range(4)),
            "score": [1.0, 0.5, 0.2, 0.1],
            "relevance": [5, 3, 2, 1],
            "unexpected": [4, 3, 2, 1],
            "reason": ["r0", "r1", "r2", "r3"],
            "source": ["llm"] * 4,
        },
        schema_overrides={"rank": pl.Int32, "score": pl.Float32, "relevance": pl.Int8, "unexpected": pl.Int8},
    ).write_parquet(run / "05_seren" / "rankings.parquet")
    config = {"pipeline": "seral", "dataset": str(data), "seral": {"candidates": {"category_level": "leaf"}}}
    (run / "config.json").write_text(json.dumps(config))
    return run


def test_export_then_import_writes_the_runs_verdicts(seral_run: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "samples.csv"
    r = runner.invoke(recgpt_app, ["label", "export", str(seral_run), "--out", str(out), "-n", "3"])
    assert r.exit_code == 0, r.output
    assert "3 of 15 lists" in r.output and "SerenGPT's rankings" in r.output
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 12 and {r["verdict"] for r in rows} == {""}
    assert all(r["category"] in ("Drills", "Glue", "Saws", "Tape", "Paint", "Gloves") for r in rows)
    for i, row in enumerate(rows[:5]):
        row["verdict"] = "yes" if i % 2 else "no"
    with out.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    r = runner.invoke(
        recgpt_app, ["label", "import", str(out), "--seral-run", str(seral_run), "--annotator", "kim"]
    )
    assert r.exit_code == 0, r.output
    v = read_verdicts(seral_run / "verdicts.parquet")
    assert v.height == 5 and set(v["round"].to_list()) == {0} and set(v["annotator"].to_list()) == {"kim"}
    # a second import extends the file as the next round
    r = runner.invoke(recgpt_app, ["label", "import", str(out), "--seral-run", str(seral_run)])
    assert r.exit_code == 0, r.output
    v = read_verdicts(seral_run / "verdicts.parquet")
    assert v.height == 10 and sorted(set(v["round"].to_list())) == [0, 1]


def test_import_reports_unknown_items_and_bad_input(seral_run: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    f = tmp_path / "v.csv"
    f.write_text("list_id,user_id,item_id,verdict\nx,u0,Gloves-9,yes\n")
    r = runner.invoke(recgpt_app, ["label", "import", str(f), "--seral-run", str(seral_run)])
    assert r.exit_code == 0, r.output
    assert "in none of the run's lists" in r.output and "u0/Gloves-9" in r.output
    f.write_text("list_id,user_id,item_id,verdict\nx,u0,Gloves-9,perhaps\n")
    r = runner.invoke(recgpt_app, ["label", "import", str(f), "--seral-run", str(seral_run)])
    assert r.exit_code != 0 and "field 'verdict'" in r.output and "v.csv" in r.output
    r = runner.invoke(recgpt_app, ["label", "import", str(f)])
    assert r.exit_code != 0 and "--seral-run" in r.output
    r = runner.invoke(recgpt_app, ["label", "import", str(f), "--seral-run", str(tmp_path)])
    assert r.exit_code != 0 and "not a SERAL run folder" in r.output
