"""`recgpt evaluate` end to end on the bundled dataset: table, results.json, HTML report."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from recgpt.cli.app import app


def test_evaluate_on_bundled_data(tmp_path: Path) -> None:
    out = tmp_path / "res"
    r = CliRunner().invoke(
        app,
        ["evaluate", "--models", "mostpop,markov", "--no-tune", "--out", str(out)],
        catch_exceptions=False,
    )
    assert r.exit_code == 0, r.output
    assert "ml-latest-small" in r.output and "masked" in r.output
    res = json.loads((out / "results.json").read_text())
    names = [m["name"] for m in res["models"]]
    assert names == ["mostpop", "markov"]
    assert res["n_users_test"] == 610 and res["n_items"] == 9742
    for m in res["models"]:
        assert 0.0 <= m["test"]["NDCG@10"] <= m["test"]["HR@10"] <= 1.0
        assert 0.0 < m["test"]["Coverage@10"] <= 1.0
    mp, mk = res["models"]
    assert mk["test"]["NDCG@10"] > mp["test"]["NDCG@10"]  # a sequential signal beats popularity here
    assert mk["test"]["Gini@10"] < mp["test"]["Gini@10"]
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3  # two accuracy/diversity scatters + Lorenz curves
    assert "Exposure Lorenz curves" in html
    assert res["category_level"] == "set" and "level 'set'" in r.output  # CatDiv says which categories
    assert "category level <code>set</code>" in html


def test_evaluate_rejects_unknown_model_and_bad_dataset(tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["evaluate", "--category-level", "deepest", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "--category-level" in r.output
    r = CliRunner().invoke(app, ["evaluate", "--models", "nope", "--out", str(tmp_path)])
    assert r.exit_code != 0 and "unknown recommender" in r.output
    r = CliRunner().invoke(app, ["evaluate", "--dataset", str(tmp_path / "missing"), "--out", str(tmp_path)])
    assert r.exit_code == 2 and "manifest.json" in r.output
