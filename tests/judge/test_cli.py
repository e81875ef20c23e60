"""`recgpt judge run|calibrate` and `recgpt label export|import` on a copy of runs/quickstart (fake judge)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import polars as pl
import pytest
import typer
from typer.testing import CliRunner

from recgpt.cli.judge import judge_app, label_app
from recgpt.judge.buffer import JudgeBuffer
from recgpt.llm.backends.fake import FakeBackend
from tests.judge.conftest import QUICKSTART, fake_judge

pytestmark = pytest.mark.skipif(not (QUICKSTART / "config.json").exists(),
                                reason="needs the finished runs/quickstart folder (`recgpt quickstart`)")  # fmt: skip
SKIP = {"embed-cache", "llm-cache.sqlite", "model", "index"}  # big and unused by the judge


def _app() -> typer.Typer:
    app = typer.Typer()
    app.add_typer(judge_app, name="judge")
    app.add_typer(label_app, name="label")
    return app


@pytest.fixture()
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    dst = tmp_path / "quickstart"
    shutil.copytree(QUICKSTART, dst, ignore=lambda _d, names: [n for n in names if n in SKIP or n == "judge"])
    calls: list[int] = []

    def make_backend(spec: str, **_kw: object) -> FakeBackend:
        calls.append(1)
        return FakeBackend(fake_judge)

    monkeypatch.setattr("recgpt.llm.make_backend", make_backend)
    return dst


def test_judge_run_label_round_trip_and_calibrate(run_dir: Path, tmp_path: Path) -> None:
    app, runner = _app(), CliRunner(env={"COLUMNS": "300"})
    r = runner.invoke(app, ["judge", "run", str(run_dir), "--llm", "fake", "--no-progress"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    out = run_dir / "judge"
    rates = json.loads((out / "pass_rates.json").read_text())
    verdicts = pl.read_parquet(out / "verdicts.parquet")
    assert set(rates) == {"interests", "tags", "explanations"}
    assert rates["interests"]["willingness"] == 1.0 and rates["tags"]["errors"] == 0  # the fake passes everything
    assert verdicts["sample_id"].n_unique() == sum(v["n"] for v in rates.values())
    assert json.loads((out / "judge.json").read_text())["llm"] == "fake"
    assert "judge pass rates" in r.output and "willingness" in r.output and "rule:words" in r.output
    assert "<h2>Judge</h2>" in (run_dir / "report.html").read_text()
    # export -> a person labels -> import into the buffer -> calibrate against the judge's verdicts
    labels = tmp_path / "labels.csv"
    r = runner.invoke(app, ["label", "export", str(run_dir), "--out", str(labels), "-n", "6"])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(labels.open(newline="")))
    assert [row["task"] for row in rows] == ["interests"] * 2 + ["tags"] * 2 + ["explanations"] * 2
    for i, row in enumerate(rows):
        row["label"] = "yes" if i % 2 else "no"
    with labels.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    r = runner.invoke(app, ["label", "import", str(labels), "--buffer", str(tmp_path / "buf"), "--round", "2"])
    assert r.exit_code == 0, r.output
    assert JudgeBuffer(tmp_path / "buf").rows()["round"].to_list() == [2] * 6
    r = runner.invoke(app, ["judge", "calibrate", "--labels", str(labels), "--verdicts", str(out / "verdicts.parquet"),
                            "--out", str(tmp_path / "cal.json")])  # fmt: skip
    assert r.exit_code == 0, r.output
    cal = json.loads((tmp_path / "cal.json").read_text())
    assert cal["judge"] == "fake" and all(m["overall"]["n"] == 2 for m in cal["metrics"].values())
    assert cal["metrics"]["interests"]["overall"]["ACC"] == 0.5  # the fake passes both, the human 1 of 2
    bad = tmp_path / "bad.csv"
    bad.write_text(labels.read_text().replace(",no,", ",perhaps,", 1))
    r = runner.invoke(app, ["label", "import", str(bad), "--buffer", str(tmp_path / "buf")])
    assert r.exit_code != 0 and "bad.csv" in r.output and "'label'" in r.output
    # a re-run is served from the run's LLM cache; --max-samples caps each task
    again = runner.invoke(app, ["judge", "run", str(run_dir), "--llm", "fake", "--no-progress", "--max-samples", "5",
                                "--no-report"])  # fmt: skip
    assert again.exit_code == 0 and "0 model calls" in again.output
    assert all(v["n"] <= 5 for v in json.loads((out / "pass_rates.json").read_text()).values())


def test_judge_run_rejects_bad_input(run_dir: Path, tmp_path: Path) -> None:
    app, runner = _app(), CliRunner(env={"COLUMNS": "300"})  # error boxes unwrapped
    r = runner.invoke(app, ["judge", "run", str(tmp_path / "nowhere"), "--llm", "fake"])
    assert r.exit_code != 0 and "config.json" in r.output
    r = runner.invoke(app, ["judge", "run", str(run_dir), "--llm", "fake", "--tasks", "tags,images"])
    assert r.exit_code != 0 and "unknown judge task" in r.output
