"""`recgpt judge run|calibrate` and `recgpt label export|import` on a finished run the test builds itself.

The run is the whole chain on a 20-user generic dataset with the `fake` LLM (about 10 s); its LLM
stages all fall back to rules, so the judge commands judge them with `--include-fallbacks`.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import polars as pl
import pytest
import typer
from typer.testing import CliRunner

from recgpt.cli.app import app as recgpt_app
from recgpt.cli.judge import judge_app, label_app
from recgpt.judge.buffer import JudgeBuffer
from recgpt.llm.backends.fake import FakeBackend
from tests.judge.conftest import fake_judge

SKIP = {"embed-cache", "llm-cache.sqlite", "model", "index"}  # big and unused by the judge
ALL = "--include-fallbacks"  # the fake LLM's chain outputs are all rule fallbacks


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`recgpt run` to the end on 20 users x 12 items with the fake LLM."""
    root = tmp_path_factory.mktemp("run")
    src = root / "src"
    src.mkdir()
    rows = ["user_id,item_id,timestamp,behavior"]
    rows += [
        f"u{u},i{(u + j * 5) % 12},{1_700_000_000 + u * 100 + j},click" for u in range(20) for j in range(6)
    ]
    (src / "events.csv").write_text("\n".join(rows) + "\n")
    genres = ("Drama", "Comedy", "Action")
    items = ["item_id,title,categories", *(f"i{i},Item {i},{genres[i % 3]}" for i in range(12))]
    (src / "items.csv").write_text("\n".join(items) + "\n")
    runner = CliRunner()
    r = runner.invoke(
        recgpt_app, ["data", "import", "generic", str(src), "--out", str(root / "tiny"), "--name", "tiny"]
    )
    assert r.exit_code == 0, r.output
    args = [
        "run",
        "-d",
        str(root / "tiny"),
        "--runs-dir",
        str(root / "runs"),
        "--llm",
        "fake",
        "--no-progress",
        "--set",
        "ks=[5,10]",
        "--set",
        "fusion.k=10",
        "--set",
        "llm.max_fallback_share=1.0",
    ]
    r = runner.invoke(recgpt_app, args)
    assert r.exit_code == 0, r.output
    return root / "runs" / "tiny"


def _app() -> typer.Typer:
    app = typer.Typer()
    app.add_typer(judge_app, name="judge")
    app.add_typer(label_app, name="label")
    return app


@pytest.fixture()
def run_dir(finished_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    dst = tmp_path / "quickstart"
    shutil.copytree(
        finished_run, dst, ignore=lambda _d, names: [n for n in names if n in SKIP or n == "judge"]
    )
    calls: list[int] = []

    def make_backend(spec: str, **_kw: object) -> FakeBackend:
        calls.append(1)
        return FakeBackend(fake_judge)

    monkeypatch.setattr("recgpt.llm.make_backend", make_backend)
    return dst


def test_judge_run_label_round_trip_and_calibrate(run_dir: Path, tmp_path: Path) -> None:
    app, runner = _app(), CliRunner(env={"COLUMNS": "300"})
    r = runner.invoke(
        app, ["judge", "run", str(run_dir), "--llm", "fake", "--no-progress", ALL], catch_exceptions=False
    )
    assert r.exit_code == 0, r.output
    out = run_dir / "judge"
    rates = json.loads((out / "pass_rates.json").read_text())
    verdicts = pl.read_parquet(out / "verdicts.parquet")
    assert set(rates) == {"interests", "tags", "explanations"}
    assert (
        rates["interests"]["willingness"] == 1.0 and rates["tags"]["errors"] == 0
    )  # the fake passes everything
    assert verdicts["sample_id"].n_unique() == sum(v["n"] for v in rates.values())
    assert json.loads((out / "judge.json").read_text())["llm"] == "fake"
    assert "judge pass rates" in r.output and "willingness" in r.output and "rule:words" in r.output
    assert "<h2>Judge</h2>" in (run_dir / "report.html").read_text()
    # export -> a person labels -> import into the buffer -> calibrate against the judge's verdicts
    labels = tmp_path / "labels.csv"
    r = runner.invoke(app, ["label", "export", str(run_dir), "--out", str(labels), "-n", "6", ALL])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(labels.open(newline="")))
    assert [row["task"] for row in rows] == ["interests"] * 2 + ["tags"] * 2 + ["explanations"] * 2
    for i, row in enumerate(rows):
        row["label"] = "yes" if i % 2 else "no"
    with labels.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    r = runner.invoke(
        app, ["label", "import", str(labels), "--buffer", str(tmp_path / "buf"), "--round", "2"]
    )
    assert r.exit_code == 0, r.output
    assert JudgeBuffer(tmp_path / "buf").rows()["round"].to_list() == [2] * 6
    r = runner.invoke(
        app,
        [
            "judge",
            "calibrate",
            "--labels",
            str(labels),
            "--verdicts",
            str(out / "verdicts.parquet"),
            "--out",
            str(tmp_path / "cal.json"),
        ],
    )
    assert r.exit_code == 0, r.output
    cal = json.loads((tmp_path / "cal.json").read_text())
    assert cal["judge"] == "fake" and all(m["overall"]["n"] == 2 for m in cal["metrics"].values())
    assert cal["metrics"]["interests"]["overall"]["ACC"] == 0.5  # the fake passes both, the human 1 of 2
    bad = tmp_path / "bad.csv"
    bad.write_text(labels.read_text().replace(",no,", ",perhaps,", 1))
    r = runner.invoke(app, ["label", "import", str(bad), "--buffer", str(tmp_path / "buf")])
    assert r.exit_code != 0 and "bad.csv" in r.output and "'label'" in r.output
    # a re-run is served from the run's LLM cache; --max-samples caps each task
    again = runner.invoke(
        app,
        [
            "judge",
            "run",
            str(run_dir),
            "--llm",
            "fake",
            "--no-progress",
            "--max-samples",
            "5",
            "--no-report",
            ALL,
        ],
    )
    assert again.exit_code == 0 and "0 model calls" in again.output
    assert all(v["n"] <= 5 for v in json.loads((out / "pass_rates.json").read_text()).values())


def test_judge_run_rejects_bad_input(run_dir: Path, tmp_path: Path) -> None:
    app, runner = _app(), CliRunner(env={"COLUMNS": "300"})  # error boxes unwrapped
    r = runner.invoke(app, ["judge", "run", str(tmp_path / "nowhere"), "--llm", "fake"])
    assert r.exit_code != 0 and "config.json" in r.output
    r = runner.invoke(app, ["judge", "run", str(run_dir), "--llm", "fake", "--tasks", "tags,images"])
    assert r.exit_code != 0 and "unknown judge task" in r.output
