"""`recgpt train distill` with a real teacher: llama.cpp's OpenAI-compatible server on loopback
serving the shipped SmolLM2 (the `llama_server` fixture). The kept samples must come from the
server (the ledger counts backend calls, the lineage names the served model) and every answer that
was not kept must be counted as failed, rule- or judge-rejected."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from recgpt.cli.train import train_app
from recgpt.llm.server import LlamaServer
from recgpt.training.data import load_samples
from tests.conftest import HashEncoder

pytestmark = [pytest.mark.slow, pytest.mark.llm]


def test_distill_from_a_llamacpp_server_on_loopback(
    llama_server: LlamaServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("recgpt.retrieval.embeddings.Embedder", lambda **_: HashEncoder())
    root = typer.Typer()
    root.add_typer(train_app, name="train")
    out = tmp_path / "distill"
    spec = f"openai:{llama_server.model}@{llama_server.base_url}"
    args = [
        "train",
        "distill",
        "--task",
        "interests",
        "--teacher",
        spec,
        "--dataset",
        "bundled:ml-latest-small",
    ]
    args += ["--users", "3", "--samples-per-prompt", "2", "--out", str(out), "--no-progress"]
    r = CliRunner().invoke(root, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    report = json.loads((out / "distill.json").read_text())
    answers = report["answers"]
    assert answers["prompts"] == 2 * report["prompts"] >= 2
    assert report["ledger"]["interests"]["calls"] >= answers["prompts"]  # the server answered them
    not_kept = sum(answers["failed"].values()) + sum(answers["rule_rejected"].values())
    assert not_kept + answers["judge_rejected"] + answers["kept"] == answers["prompts"]
    assert report["kept"] == answers["kept"] - report["duplicates"] - report["over_quota"]
    samples = load_samples(out / "samples.parquet")
    assert samples.height == report["kept"] >= 1, r.output
    lineage = [json.loads(x) for x in samples["lineage"]]
    assert {ln["teacher"]["backend"] for ln in lineage} == {"openai"}
    assert all(llama_server.model in ln["teacher"]["model"] for ln in lineage)  # the served model
