"""`recgpt train distill` with a scripted teacher: reject sampling (several answers per prompt, the
ones breaking the chain's rules counted by reason), the SFT sample table written, resumability (a
re-run asks the backend nothing) and the output folder; one slow test uses a real llama.cpp server
on loopback as the teacher."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import typer
from typer.testing import CliRunner

from recgpt.cli.train import train_app
from recgpt.llm.backends.fake import FakeBackend
from recgpt.llm.types import GenerationInput
from recgpt.training.data import load_samples
from recgpt.training.teacher import expand_samples, keep_per_prompt
from tests.conftest import HashEncoder, fake_answer

root = typer.Typer()
root.add_typer(train_app, name="train")


def _vague(inp: GenerationInput) -> str:
    """A schema-valid tags answer whose tags the chain's post-processing drops (vague words)."""
    obj = json.loads(fake_answer(inp))
    for t in obj["tags"]:
        t["tag"] = "great stuff"
    return json.dumps(obj)


def scripted(inp: GenerationInput) -> str:
    """Greedy sample (seed 0): a rule-breaking answer; sampled ones (seed >= 1): a good one."""
    return _vague(inp) if inp.sampling.seed == 0 else fake_answer(inp)


@pytest.fixture()
def teacher(monkeypatch: pytest.MonkeyPatch) -> list[FakeBackend]:
    """`make_backend` returns a scripted teacher (recorded), and the sentence encoder is the hashing one."""
    made: list[FakeBackend] = []

    def make(spec: str, **_: Any) -> FakeBackend:
        made.append(FakeBackend(scripted, model="scripted-teacher"))
        return made[-1]

    monkeypatch.setattr("recgpt.llm.backends.make_backend", make)
    monkeypatch.setattr("recgpt.retrieval.embeddings.Embedder", lambda **_: HashEncoder())
    return made


ARGS = ["train", "distill", "--task", "tags", "--teacher", "fake", "--dataset", "bundled:ml-latest-small"]


def test_distill_reject_samples_counts_and_resumes(tmp_path: Path, teacher: list[FakeBackend]) -> None:
    out = tmp_path / "distill"
    args = [*ARGS, "--users", "4", "--samples-per-prompt", "2", "--out", str(out), "--no-progress"]
    r = CliRunner().invoke(root, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    report = json.loads((out / "distill.json").read_text())
    prompts = report["prompts"]
    assert prompts >= 1 and report["answers"]["prompts"] == 2 * prompts  # two answers per prompt
    rejected = sum(report["answers"]["rule_rejected"].values())
    assert rejected == prompts  # every greedy answer breaks a rule, and is counted with its reason
    assert any("post-processing drops" in why for why in report["answers"]["rule_rejected"])
    samples = load_samples(out / "samples.parquet")
    assert samples.height == report["kept"] >= 1
    assert set(samples["source"]) == {"distill"} and set(samples["task"]) == {"tags"}
    lineage = [json.loads(x) for x in samples["lineage"]]
    assert {ln["sample"] for ln in lineage} == {1}  # only the sampled (good) answers survive
    assert {ln["teacher"]["model"] for ln in lineage} == {"scripted-teacher"}
    assert "rule-rejected" in r.output and "chain post-processing drops" in r.output
    assert report["judge"].startswith("no judge given")
    calls = teacher[0].generate_calls
    assert calls >= 1 and report["ledger"]["tags"]["calls"] >= 2 * prompts

    r2 = CliRunner().invoke(root, args, catch_exceptions=False)  # resume: everything from the cache
    assert r2.exit_code == 0, r2.output
    assert teacher[1].generate_calls == 0
    again = json.loads((out / "distill.json").read_text())
    assert again["ledger"]["tags"]["cache_hits"] == 2 * prompts and again["kept"] == report["kept"]
    assert load_samples(out / "samples.parquet")["sample_id"].to_list() == samples["sample_id"].to_list()


def test_max_samples_stops_asking(tmp_path: Path, teacher: list[FakeBackend]) -> None:
    out = tmp_path / "capped"
    args = [*ARGS, "--users", "40", "--max-samples", "1", "--out", str(out), "--no-progress"]
    r = CliRunner().invoke(root, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    report = json.loads((out / "distill.json").read_text())
    assert report["kept"] == 1
    # the first chunk of prompts was enough: the teacher was not asked the rest
    assert report["prompts"] == 16 and report["answers"]["prompts"] == 2 * 16


def test_bad_teacher_and_task_fail_clearly(tmp_path: Path) -> None:
    r = CliRunner().invoke(root, [*ARGS[:5], "nosuch:x", "--dataset", "bundled:ml-latest-small"])
    assert r.exit_code == 2 and "unknown backend 'nosuch'" in r.output
    r = CliRunner().invoke(root, ["train", "distill", "--task", "judge", "--teacher", "fake", "-d", "x"])
    assert r.exit_code == 2 and "'judge' is not one of" in r.output


def test_samples_per_prompt_and_quota_helpers() -> None:
    from recgpt.llm.types import ChatMessage, LLMRequest
    from recgpt.training.data import TrainPrompt
    from recgpt.training.teacher import DistillConfig

    req = LLMRequest(messages=(ChatMessage(role="user", content="hi"),), output_model=DistillConfig)
    many = expand_samples([TrainPrompt(req, "tags", user_id="u", as_of=1)], 3, 0.9)
    assert [p.request.sampling.seed for p in many] == [0, 1, 2]
    assert [p.request.sampling.temperature for p in many] == [0.0, 0.9, 0.9]
    assert [p.lineage["sample"] for p in many] == [0, 1, 2]
    df = pl.DataFrame({"user_id": ["u", "u", "u", "v"], "as_of": [1, 1, 1, 1], "messages": ["m"] * 4})
    assert keep_per_prompt(df, 2)["user_id"].to_list() == ["u", "u", "v"]
