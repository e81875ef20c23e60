"""SerenGPT alignment: samples from labelled lists (fast), SFT then IPO on the real SmolLM2 (slow).

The slow tests train a handful of real steps on hand-built lists of 5 candidates (one serendipitous
item each, ~500 tokens per sample, 1 thread): the SFT loss must fall, the IPO phase must run with
`loss_type=["ipo", "sft"]` and log its rewards, a stopped IPO phase must resume from its checkpoint,
and the merged SFT+IPO model must answer a `seren_request` through the transformers backend.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from recgpt.data.sft import SampleError
from recgpt.serendipity.seren import (
    SerenCandidate,
    SerenConfig,
    SerenInput,
    candidate_lines,
    seren_request,
)
from recgpt.training.phase import latest_checkpoint
from recgpt.training.seren import SerenTrainConfig, read_rewards, run_seren_training
from recgpt.training.seren_data import check_seren_samples, seren_samples, sft_table, skipped_lists

os.environ.setdefault("OMP_NUM_THREADS", "1")
CFG = SerenConfig(list_size=5, rank_top=2)
CATALOGUE = [
    ("i1", "Digital Caliper 150 mm", "Measuring Tools"),
    ("i2", "Lab Safety Goggles", "Safety Gear"),
    ("i3", "Beginner Telescope 70 mm", "Astronomy"),
    ("i4", "Nitrile Gloves, 100 Pack", "Safety Gear"),
    ("i5", "Pipette Tips 200 uL", "Lab Supplies"),
    ("i6", "Soil pH Test Kit", "Gardening"),
    ("i7", "Star Chart Planisphere", "Astronomy"),
    ("i8", "Glass Beakers Set", "Lab Supplies"),
]
PROFILES = (
    "Static: none\nLong-term: lab supplies, pipettes\nRecent: beakers, gloves",
    "Static: none\nLong-term: measuring tools\nRecent: calipers, micrometers",
    "Static: none\nLong-term: safety gear\nRecent: goggles, face shields",
)


def lists_and_inputs(n: int = 6) -> tuple[pl.DataFrame, list[SerenInput]]:
    """`n` train LISTS of 5 candidates, one positive each (an astronomy or gardening item)."""
    rows, inputs = [], []
    for k in range(n):
        items = [CATALOGUE[(k + j) % len(CATALOGUE)] for j in range(5)]
        pos = next(j for j, it in enumerate(items) if it[2] in ("Astronomy", "Gardening"))
        labels = [int(j == pos) for j in range(5)]
        rows.append(
            {
                "list_id": f"L{k}",
                "user_id": f"u{k % 3}",
                "part": "train",
                "asof_ts": 1_000 + k,
                "item_ids": [it[0] for it in items],
                "labels": labels,
                "label_source": ["log"] * 5,
            }
        )
        cands = tuple(SerenCandidate(i, t, c) for i, t, c in items)
        inputs.append(SerenInput(f"L{k}", f"u{k % 3}", 1_000 + k, PROFILES[k % 3], cands))
    lists = pl.DataFrame(rows, schema_overrides={"labels": pl.List(pl.Int8), "asof_ts": pl.Int64})
    return lists, inputs


def _first_id(msgs: list[dict[str, str]]) -> int:
    return json.loads(msgs[0]["content"])["ranking"][0]["id"]


# ---------------------------------------------------------------------- fast


def test_seren_samples_put_the_positive_first_in_chosen_and_a_negative_first_in_rejected() -> None:
    lists, inputs = lists_and_inputs()
    s = seren_samples(lists, inputs, CFG, pairs=2, seed=3)
    assert s.height == 12 and skipped_lists(lists, s) == 0
    check_seren_samples(s)
    for r in s.iter_rows(named=True):
        inp = next(i for i in inputs if i.list_id == r["list_id"])
        ids = [c.item_id for c in inp.candidates]
        assert r["chosen"] != r["rejected"] and r["completion"] == r["chosen"]
        assert ids[_first_id(r["chosen"]) - 1] == r["positive"]
        assert ids[_first_id(r["rejected"]) - 1] == r["negative"] != r["positive"]
        assert r["prompt"] == [m.model_dump() for m in seren_request(CFG, inp).messages]
        assert ": " not in r["chosen"][0]["content"]  # compact JSON (the backend's grammar)
    pairs = s.group_by("list_id").agg(pl.col("negative").n_unique())
    assert (pairs["negative"] == 2).all()  # two distinct negatives per list
    again = seren_samples(lists, list(reversed(inputs)), CFG, pairs=2, seed=3)
    key = ["list_id", "pair"]
    assert again.sort(key).select("negative").equals(s.sort(key).select("negative"))  # seeded per list
    other = seren_samples(lists, inputs, CFG, pairs=2, seed=4)
    assert not other.sort(key)["negative"].equals(s.sort(key)["negative"])
    sft = sft_table(s)
    assert sft.height == 6 and set(sft["level"]) == {"advanced"} and set(sft["task"]) == {"seren"}


def test_seren_samples_refuse_eval_lists_and_mismatched_inputs_and_skip_unlabelled_lists() -> None:
    lists, inputs = lists_and_inputs(3)
    with pytest.raises(SampleError, match=r"'L0'.*'part' is 'eval'"):
        seren_samples(lists.with_columns(pl.lit("eval").alias("part")), inputs, CFG)
    wrong = SerenInput("L1", "u1", 1001, "p", inputs[0].candidates)
    with pytest.raises(SampleError, match=r"list 'L1'.*not the list's item_ids"):
        seren_samples(lists, [wrong], CFG)
    with pytest.raises(SampleError, match=r"'L9'.*no such list"):
        seren_samples(lists, [SerenInput("L9", "u0", 1, "p", inputs[0].candidates)], CFG)
    none = lists.with_columns(pl.col("labels").list.eval(pl.element() * 0))
    s = seren_samples(none, inputs, CFG)
    assert s.height == 0 and skipped_lists(none, s) == 3
    with pytest.raises(SampleError, match="no SerenGPT samples"):
        check_seren_samples(s)


def test_config_maps_to_one_sft_phase_and_checks_tau() -> None:
    sft = SerenTrainConfig(sft_steps=3, budget_s=120, max_length=512).sft_config()
    assert (
        sft.levels == ("advanced",) and sft.max_steps == 3 and sft.max_minutes == 2 and sft.max_seq_len == 512
    )
    with pytest.raises(ValueError, match="tau"):
        SerenTrainConfig(tau=0)
    with pytest.raises(ValueError, match="extra"):
        SerenTrainConfig(beta=0.1)  # type: ignore[call-arg]


def test_list_inputs_profile_train_lists_before_their_cut_and_guard_eval_lists() -> None:
    from recgpt.data.split import make_split
    from recgpt.serendipity.candidates import catalogue_arrays
    from recgpt.serendipity.labels import LabelConfig, eval_lists, train_lists
    from recgpt.serendipity.profiles import ProfileConfig
    from recgpt.training.seren_data import list_inputs, list_view
    from tests.serendipity.test_candidates import HashEncoder
    from tests.serendipity.test_labels import toy_dataset

    ds = toy_dataset()
    split = make_split(ds)
    cat = catalogue_arrays(ds, HashEncoder(), "leaf", events=split.train_events)
    label_cfg = LabelConfig(list_size=5, rule="category", seed=3)
    ev, _ = eval_lists(label_cfg, split, cat)
    tr, _ = train_lists(label_cfg, split, cat, exclude_users=ev["user_id"].to_list())
    assert tr.height and ev.height and not set(tr["user_id"]) & set(ev["user_id"])
    view = list_view(split, tr)
    titles = dict(zip(ds.items["item_id"], ds.items["title"], strict=True))
    pcfg = ProfileConfig(windows=1, window_events=5, category_level="leaf")
    inputs, profiles = list_inputs(split, tr, pcfg)
    assert [i.list_id for i in inputs] == tr["list_id"].to_list() and set(profiles["source"]) == {"rules"}
    for r, inp in zip(tr.iter_rows(named=True), inputs, strict=True):
        assert (view.history(r["user_id"])["timestamp"] < r["asof_ts"]).all()  # the cut hides the future
        future = r["item_ids"][r["labels"].index(1)]
        assert titles[future] not in inp.profile
    samples = seren_samples(tr, inputs, SerenConfig(list_size=5), pairs=1)
    assert samples.height == tr.height  # every train list has one positive and negatives
    ev_inputs, _ = list_inputs(split, ev, pcfg)  # guard_seren_inputs passes: profiles are pre-test
    assert len(ev_inputs) == ev.height
    with pytest.raises(ValueError, match="apart"):
        list_view(split, pl.concat([tr, ev]))


def test_train_seren_is_a_train_command() -> None:
    from typer.testing import CliRunner

    from recgpt.cli.train import train_app

    res = CliRunner().invoke(train_app, ["seren", "--help"])
    assert res.exit_code == 0 and "--tau" in res.output and "--profiles" in res.output


def test_evaluate_seren_scores_each_model_and_the_references(tmp_path: Path) -> None:
    """Scripted models: an oracle that puts the serendipitous (astronomy / gardening) candidate first,
    and one that keeps the list order; Hit@1 follows, eval.json and the report show both."""
    from recgpt.llm.backends.fake import FakeBackend
    from recgpt.serendipity.references import reference_rankings
    from recgpt.serendipity.seren import seren_completion
    from recgpt.training.seren_eval import evaluate_seren
    from recgpt.training.seren_report import write_seren_report

    lists, inputs = lists_and_inputs(4)
    lists = lists.with_columns(pl.lit("eval").alias("part"))
    by_profile_and_first = {(i.profile, i.candidates[0].title): i for i in inputs}

    def answer(oracle: bool) -> Any:
        def script(gen: Any) -> str:
            text = gen.messages[-1].content
            inp = next(v for (p, t), v in by_profile_and_first.items() if p in text and t in text)
            pos = [j for j, c in enumerate(inp.candidates) if c.category in ("Astronomy", "Gardening")][:1]
            order = pos + [j for j in range(5) if j not in pos] if oracle else list(range(5))
            return seren_completion(inp, order, cfg=CFG)

        return script

    models = {
        "base": FakeBackend(answer(False), model="plain"),
        "sft+ipo": FakeBackend(answer(True), model="oracle"),
    }
    refs = {"random": reference_rankings(lists, "random")}
    ev = evaluate_seren(CFG, inputs, lists, models, tmp_path, references=refs)
    assert ev["models"]["sft+ipo"]["Hit@1"] == 1.0 and ev["models"]["sft+ipo"]["fallback_share"] == 0.0
    assert ev["models"]["base"]["Hit@1"] == float(np.mean([lab[0] for lab in lists["labels"]]))
    assert ev["references"]["random"]["n_lists"] == 4 and "sft+ipo" in ev["vs_base"]
    assert json.loads((tmp_path / "eval.json").read_text())["specs"]["base"] == "fake:plain"
    assert (tmp_path / "eval" / "sft_ipo.parquet").is_file()
    with pytest.raises(ValueError, match="'eval' lists only"):
        evaluate_seren(CFG, inputs, lists.with_columns(pl.lit("train").alias("part")), models, tmp_path)
    write_seren_report(tmp_path)  # a folder evaluated before (or without) training still renders
    assert "sft+ipo (model)" in (tmp_path / "report.html").read_text()


# ---------------------------------------------------------------------- real training


def short_samples(n: int = 6) -> pl.DataFrame:
    """`seren_samples` rows with a short prompt (profile + numbered candidates, ~110 tokens instead of
    the template's ~770): the answers are the real targets, the training cost fits a test."""
    lists, inputs = lists_and_inputs(n)
    s = seren_samples(lists, inputs, CFG, pairs=1)
    by_id = {i.list_id: i for i in inputs}
    prompts = [
        [
            {
                "role": "system",
                "content": "Rank the candidates by serendipity for the user. Answer with JSON.",
            },
            {
                "role": "user",
                "content": f"Profile: {by_id[lid].profile}\nCandidates:\n"
                + "\n".join(candidate_lines(CFG, by_id[lid])),
            },
        ]
        for lid in s["list_id"]
    ]
    return s.with_columns(pl.Series("prompt", prompts, dtype=s.schema["prompt"]))


def _tiny(**kw: Any) -> SerenTrainConfig:
    return SerenTrainConfig(
        **{
            "sft_steps": 4,
            "ipo_steps": 2,
            "batch_size": 2,
            "grad_accum": 1,
            "sft_learning_rate": 2e-3,
            "ipo_learning_rate": 5e-4,
            "max_length": 256,
            "save_steps": 3,
            "threads": 1,
            **kw,
        }
    )


@pytest.fixture(scope="module")
def trained(base_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 SFT + 2 IPO real LoRA steps (bs 2, ~190 tokens) on SmolLM2-135M."""
    out = tmp_path_factory.mktemp("seren")
    result = run_seren_training(_tiny(), short_samples(), out, progress=False)
    assert result.complete and result.sft.levels[0].steps == 4 and result.ipo is not None
    assert result.ipo.steps == 2 and result.ipo_merged is not None and result.ipo.dropped_too_long == 0
    return out


@pytest.mark.slow
@pytest.mark.llm
def test_sft_loss_falls_and_ipo_logs_rewards(trained: Path) -> None:
    sft_log = [json.loads(x) for x in (trained / "sft" / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in sft_log]
    assert len(losses) == 4 and sum(losses[-2:]) < 0.7 * sum(losses[:2]), losses
    rewards = read_rewards(trained / "ipo")
    assert [r["step"] for r in rewards] == [1, 2]
    assert rewards[0]["rewards/margins"] == 0.0  # step 1: policy == reference (the SFT model)
    assert all({"rewards/margins", "rewards/accuracies", "rewards/chosen"} <= set(r) for r in rewards)
    ipo_log = [json.loads(x) for x in (trained / "ipo" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in ipo_log] == [1, 2] and all(r["loss"] > 0 for r in ipo_log)
    report = json.loads((trained / "report.json").read_text())
    assert report["complete"] and report["ipo"]["steps"] == 2 and report["ipo_rewards_last"]
    assert report["config"]["tau"] == 0.1 and report["config"]["alpha"] == 1.0
    assert "data:image/png;base64," in (trained / "report.html").read_text()
    adapter_files = {p.name for p in (trained / "ipo" / "adapter").iterdir()}
    assert "adapter_model.safetensors" in adapter_files and "ref" not in adapter_files  # not the reference


@pytest.mark.slow
@pytest.mark.llm
def test_merged_seren_model_answers_a_seren_request_with_valid_json(trained: Path) -> None:
    """The real template's prompt (~770 tokens), one list: the grammar-constrained answer validates and
    names distinct candidates."""
    from recgpt.llm.backends import make_backend
    from recgpt.llm.engine import LLMEngine

    _, inputs = lists_and_inputs(1)
    backend = make_backend(f"transformers:{trained / 'ipo' / 'merged'}", threads=1)
    with LLMEngine(backend, max_retries=0) as engine:
        (result,) = engine.run([seren_request(CFG, inputs[0])])
    assert result.ok, result.failure
    ids = [j.id for j in result.value.ranking] + list(result.value.rest)
    assert len(result.value.ranking) == 2 and all(1 <= i <= 5 for i in ids)


@pytest.mark.slow
def test_stopped_ipo_phase_resumes_from_its_checkpoint(tiny_base: Path, tmp_path: Path) -> None:
    """On a tiny random model (the mechanics, not the quality): a stop after IPO step 1 leaves
    checkpoint-1 and a usable adapter; the same call resumes there and finishes; another tau refuses."""
    from transformers import TrainerCallback

    class StopAt(TrainerCallback):  # stands in for a killed job: the checkpoint on disk is what survives
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.global_step == 1:
                control.should_training_stop = True

    samples = short_samples(4)
    cfg = _tiny(base=str(tiny_base), sft_steps=2, ipo_steps=3, save_steps=1)
    first = run_seren_training(cfg, samples, tmp_path, progress=False, ipo_callbacks=[StopAt()], merge=False)
    assert first.sft.complete and first.ipo is not None and not first.complete and first.ipo.steps == 1
    assert latest_checkpoint(tmp_path / "ipo" / "checkpoints").name == "checkpoint-1"
    assert (tmp_path / "ipo" / "adapter" / "adapter_config.json").is_file()
    with pytest.raises(ValueError, match="another config"):
        run_seren_training(
            cfg.model_copy(update={"tau": 0.5}), samples, tmp_path, progress=False, merge=False
        )
    second = run_seren_training(cfg, samples, tmp_path, progress=False, merge=False)
    assert second.complete and second.ipo is not None
    assert second.ipo.resumed_from == 1 and second.ipo.steps == 3 and second.sft.levels[0].steps == 2
    assert [r["step"] for r in read_rewards(tmp_path / "ipo")] == [1, 2, 3]
    third = run_seren_training(cfg, samples, tmp_path, progress=False, merge=False)  # finished: no retraining
    assert third.complete and len(read_rewards(tmp_path / "ipo")) == 3
