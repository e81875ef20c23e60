"""The SFT sample table contract: stable ids, validation errors naming row and field, files, views."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from pydantic import BaseModel

from recgpt.llm.types import ChatMessage, LLMRequest
from recgpt.training.data import (
    SAMPLE_SCHEMA,
    SampleError,
    TrainPrompt,
    balance,
    cap_per_key,
    completion_json,
    concat_samples,
    load_samples,
    prompt_sample,
    sample_row,
    samples_frame,
    save_samples,
    to_chat,
    validate_samples,
)

MSGS = [{"role": "system", "content": "You tag."}, {"role": "user", "content": "Tag this user."}]


class Answer(BaseModel):
    tags: list[str]


def _rows(n: int = 3) -> list[dict[str, Any]]:
    return [
        sample_row(
            "tags",
            "advanced",
            MSGS,
            json.dumps({"tags": [f"tag {i}"]}),
            "logs",
            user_id=f"u{i}",
            as_of=1000 + i,
            lineage={"target_items": [str(i)]},
        )
        for i in range(n)
    ]


def test_sample_id_is_stable_and_content_addressed() -> None:
    a, b = _rows(1)[0], _rows(1)[0]
    assert a["sample_id"] == b["sample_id"] and len(a["sample_id"]) == 40
    msgs = tuple(ChatMessage(**m) for m in MSGS)  # chat messages and dicts serialise the same
    assert (
        sample_row("tags", "advanced", msgs, a["completion"], "logs", user_id="u0", as_of=1000)["sample_id"]
        == (a["sample_id"])
    )
    other = sample_row(
        "tags", "advanced", MSGS, json.dumps({"tags": ["x"]}), "logs", user_id="u0", as_of=1000
    )
    assert other["sample_id"] != a["sample_id"]
    # lineage and source do not change what the example is
    same = sample_row(
        "tags", "advanced", MSGS, a["completion"], "distill", user_id="u0", as_of=1000, lineage={"x": 1}
    )
    assert same["sample_id"] == a["sample_id"]


def test_valid_table_passes_and_is_conformed() -> None:
    df = validate_samples(samples_frame(_rows()))
    assert df.schema == pl.Schema(SAMPLE_SCHEMA) and df.height == 3


def _break(field: str, value: Any) -> pl.DataFrame:
    rows = _rows()
    rows[1][field] = value
    return pl.DataFrame(rows, schema=SAMPLE_SCHEMA)


@pytest.mark.parametrize(
    ("field", "value", "why"),
    [
        ("level", "expert", "valid: foundation"),
        ("source", "web", "valid: logs"),
        ("task", "", "non-empty"),
        ("messages", "not json", "is not JSON"),
        ("messages", json.dumps([]), "non-empty JSON list"),
        ("messages", json.dumps([*MSGS, {"role": "assistant", "content": "x"}]), "must end with a user turn"),
        ("messages", json.dumps([{"role": "robot", "content": "x"}]), "role 'robot'"),
        ("messages", json.dumps([{"role": "user", "content": "  "}]), "empty or non-string content"),
        ("messages", json.dumps([{"role": "user"}]), "exactly 'role' and 'content'"),
        ("completion", "", "non-empty"),
        ("completion", "plain text", "is not JSON"),
        ("completion", "42", "JSON object or list"),
        ("as_of", None, "when user_id is set"),
        ("lineage", "[1, 2]", "JSON object"),
        ("lineage", "{", "JSON object"),
    ],
)
def test_validation_names_row_and_field(field: str, value: Any, why: str) -> None:
    with pytest.raises(SampleError, match=rf"row 1 .*field '{field}' .*{why}"):
        validate_samples(_break(field, value))


def test_prompt_free_rows_may_lack_user_and_as_of_but_ids_must_be_unique() -> None:
    row = sample_row("category", "foundation", MSGS, '{"categories": ["Drama"]}', "catalogue")
    validate_samples(samples_frame([row]))
    dup = pl.DataFrame([row, row], schema=SAMPLE_SCHEMA)
    with pytest.raises(SampleError, match=r"row 1: field 'sample_id' .* repeats row 0"):
        validate_samples(dup)
    with pytest.raises(SampleError, match="lacks column"):
        validate_samples(dup.drop("lineage"))
    assert samples_frame([row, row]).height == 1  # building de-duplicates
    assert concat_samples(samples_frame([row]), samples_frame([row, *_rows(2)])).height == 3


def test_save_load_roundtrip_and_refusal(tmp_path: Path) -> None:
    df = samples_frame(_rows())
    path = save_samples(df, tmp_path / "s" / "samples.parquet")
    assert load_samples(path).equals(df)
    assert [p.name for p in path.parent.iterdir()] == ["samples.parquet"]  # no temp file left behind
    bad = tmp_path / "bad.parquet"
    with pytest.raises(SampleError):
        save_samples(_break("level", "x"), bad)
    assert not bad.exists()
    _break("level", "x").write_parquet(bad)
    with pytest.raises(SampleError, match="row 1"):
        load_samples(bad)
    with pytest.raises(FileNotFoundError):
        load_samples(tmp_path / "missing.parquet")


def test_to_chat_is_trl_conversational_prompt_completion() -> None:
    chat = to_chat(samples_frame(_rows(2)))
    assert chat[0] == {
        "prompt": MSGS,
        "completion": [{"role": "assistant", "content": '{"tags": ["tag 0"]}'}],
    }
    assert len(chat) == 2


def test_prompt_sample_validates_the_answer_against_the_output_model() -> None:
    req = LLMRequest(
        messages=tuple(ChatMessage(**m) for m in MSGS), output_model=Answer, template="t@1", key="u"
    )
    p = TrainPrompt(req, "tags", "advanced", user_id="u", as_of=5, lineage={"dataset": "d"})
    row = prompt_sample(p, {"tags": ["a b"]}, "logs", target_items=["1"])
    assert json.loads(row["lineage"]) == {"dataset": "d", "target_items": ["1"], "template": "t@1"}
    assert json.loads(row["completion"]) == {"tags": ["a b"]}
    assert completion_json(p, Answer(tags=["x"])) == '{"tags": ["x"]}'
    with pytest.raises(SampleError, match="does not validate against Answer"):
        prompt_sample(p, {"tags": "not a list"}, "logs")


def test_caps_and_balance() -> None:
    assert cap_per_key(["a1", "a2", "b1", "a3", "b2"], lambda s: s[0], 2) == ["a1", "a2", "b1", "b2"]
    with pytest.raises(ValueError):
        cap_per_key([], lambda s: s, 0)
    df = pl.DataFrame({"cat": ["x"] * 6 + ["y"] * 2, "i": list(range(8))})
    out = balance(df, "cat", 3, seed=1)
    assert out.group_by("cat").len().sort("cat").rows() == [("x", 3), ("y", 2)]
    assert out["i"].to_list() == sorted(out["i"].to_list())  # original order kept
    assert balance(df, "cat", 3, seed=1).equals(out)  # deterministic
    with pytest.raises(ValueError, match="missing column"):
        balance(df, "nope", 3)
