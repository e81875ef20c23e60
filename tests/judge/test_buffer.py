"""The judge data buffer: rounds, minority augmentation, recency-prioritised downsampling, gate, judge SFT rows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from recgpt.judge.buffer import SFT_COLUMNS, JudgeBuffer, JudgeGate, judge_sft_samples
from recgpt.judge.criteria import verdict_model
from recgpt.judge.judge import JudgeConfig, judge_request
from recgpt.judge.labels import LABELS_SCHEMA
from recgpt.judge.samples import make_samples
from tests.judge.conftest import PROFILE


def _tags(prefix: str, n: int) -> pl.DataFrame:
    return make_samples(
        "tags",
        [{**PROFILE, "user_id": "u", "output": f"{prefix} film {i}", "interest": "Sci-fi"} for i in range(n)],
        source="t",
    )


def _labels(
    samples: pl.DataFrame, label: bool | None, criteria: dict[str, bool] | None = None
) -> pl.DataFrame:
    rows: list[dict[str, Any]] = []
    for sid, task in samples.select("sample_id", "task").iter_rows():
        if label is not None:
            rows.append(
                {
                    "sample_id": sid,
                    "task": task,
                    "label": label,
                    "criterion": None,
                    "annotator": "a",
                    "labelled_at": 1,
                }
            )
        for c, v in (criteria or {}).items():
            rows.append(
                {
                    "sample_id": sid,
                    "task": task,
                    "label": v,
                    "criterion": c,
                    "annotator": "a",
                    "labelled_at": 1,
                }
            )
    return pl.DataFrame(rows, schema=LABELS_SCHEMA)


@pytest.fixture()
def buffer(tmp_path: Path) -> JudgeBuffer:
    """3 rounds of tag labels: 10 acceptable and 2 not per round (the majority is "acceptable")."""
    buf = JudgeBuffer(tmp_path / "buf")
    for r in range(3):
        pos, neg = _tags(f"good{r}", 10), _tags(f"bad{r}", 2)
        buf.add(pos, _labels(pos, True), round=r)
        buf.add(neg, _labels(neg, False, {"validity": False}), round=r)
    return buf


def test_rounds_and_relabelling(tmp_path: Path, buffer: JudgeBuffer) -> None:
    rows = buffer.rows()
    assert rows.height == 36 and rows.group_by("round").len().sort("round")["len"].to_list() == [12, 12, 12]
    assert buffer.next_round() == 3
    again = _tags("good0", 1)  # relabelled later: only the latest label is kept
    buffer.add(again, _labels(again, False, {"relevance": False}))
    row = buffer.rows().filter(pl.col("sample_id") == again["sample_id"][0])
    assert row.height == 1 and row["round"][0] == 3 and row["label"][0] is False
    assert list(Path(buffer.folder).iterdir()) == [buffer.path]  # atomic writes leave no temp files
    with pytest.raises(ValueError, match="not among the samples"):
        buffer.add(_tags("x", 1), _labels(_tags("y", 1), True))
    with pytest.raises(ValueError, match="acceptable overall but failing"):
        s = _tags("z", 1)
        buffer.add(s, _labels(s, True, {"validity": False}))


def test_minority_kept_from_all_rounds_majority_prefers_recent(buffer: JudgeBuffer) -> None:
    ts = buffer.training_set(seed=0, half_life_rounds=0.5)
    neg, pos = ts.filter(~pl.col("label")), ts.filter(pl.col("label"))
    assert neg.height == 6 and sorted(neg["round"].to_list()) == [0, 0, 1, 1, 2, 2]  # every minority sample
    assert pos.height == 6  # majority downsampled to the minority's size
    recent = [
        buffer.training_set(seed=s, half_life_rounds=0.5)
        .filter(pl.col("label") & (pl.col("round") == 2))
        .height
        for s in range(20)
    ]
    flat = [
        buffer.training_set(seed=s, half_life_rounds=1e9)
        .filter(pl.col("label") & (pl.col("round") == 2))
        .height
        for s in range(20)
    ]
    assert sum(recent) / 20 > 4.0 > 2.8 > sum(flat) / 20  # decayed weights favour the newest round
    assert buffer.training_set(seed=3).equals(buffer.training_set(seed=3))
    assert buffer.training_set(majority_ratio=2.0).filter(pl.col("label")).height == 12
    capped = buffer.training_set(max_size=6)
    assert capped.height == 6 and capped["label"].sum() == 3


def test_gate_follows_measured_accuracy() -> None:
    cal = {
        "tags": {"overall": {"n": 50, "ACC": 0.9, "F1": 0.7}},
        "explanations": {"overall": {"n": 50, "ACC": 0.6}},
    }
    gate = JudgeGate(threshold=0.8)
    assert gate.allows(cal, "tags") and not gate.allows(cal, "explanations") and not gate.allows(cal)
    assert gate.allowed_tasks(cal) == ["tags"] and not gate.allows({}) and not gate.allows(cal, "interests")
    assert not JudgeGate(threshold=0.8, min_samples=100).allows(cal, "tags")
    assert not JudgeGate(threshold=0.8, metric="F1").allows(cal, "tags")
    with pytest.raises(ValueError):
        JudgeGate(threshold=1.5)


def test_judge_sft_rows_from_labels(tmp_path: Path) -> None:
    buf = JudgeBuffer(tmp_path)
    ok, bad, vague, full = _tags("ok", 1), _tags("bad", 1), _tags("vague", 1), _tags("full", 1)
    buf.add(ok, _labels(ok, True))
    buf.add(bad, _labels(bad, False, {"specificity": False}))
    buf.add(vague, _labels(vague, False))  # which criterion failed is unknown: not a training target
    crit = {"relevance": True, "consistency": True, "specificity": True, "validity": False}
    buf.add(full, _labels(full, None, crit))  # every criterion labelled: the overall label follows
    assert buf.rows().filter(pl.col("sample_id") == full["sample_id"][0])["label"][0] is False
    sft = judge_sft_samples(buf.rows())
    assert tuple(sft.columns) == SFT_COLUMNS and sft.height == 3
    assert (
        set(sft["task"]) == {"judge"}
        and set(sft["source"]) == {"labels"}
        and set(sft["level"]) == {"advanced"}
    )
    got = {json.loads(r["lineage"])["judged_sample"]: r for r in sft.iter_rows(named=True)}
    assert set(got) == {ok["sample_id"][0], bad["sample_id"][0], full["sample_id"][0]}
    model = verdict_model("tags")
    assert model.model_validate_json(got[ok["sample_id"][0]]["completion"]).specificity == "Yes"
    b = model.model_validate_json(got[bad["sample_id"][0]]["completion"])
    assert (b.relevance, b.specificity) == ("Yes", "No")  # blanks pass, the marked criterion fails
    assert model.model_validate_json(got[full["sample_id"][0]]["completion"]).validity == "No"
    req = judge_request(JudgeConfig(), ok.row(0, named=True))
    assert json.loads(got[ok["sample_id"][0]]["messages"]) == [
        {"role": m.role, "content": m.content} for m in req.messages
    ]
    assert got[ok["sample_id"][0]]["as_of"] == PROFILE["as_of"]
    assert json.loads(got[ok["sample_id"][0]]["lineage"])["template"] == "judge_tags@2"
