"""The SFT sample contract in `recgpt.data.sft`: usable without the LLM or training packages."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from recgpt.data.sft import SAMPLE_SCHEMA, SampleError, sample_row, samples_frame, validate_samples

MSGS = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "tags?"}]


@dataclass(frozen=True)
class _Turn:
    role: str
    content: str


def test_turn_objects_dicts_and_json_text_make_the_same_row() -> None:
    rows = [
        sample_row("tags", "advanced", m, '{"tags": []}', "logs", user_id="u1", as_of=5)
        for m in (MSGS, [_Turn(**m) for m in MSGS], json.dumps(MSGS))
    ]
    assert rows[0] == rows[1] == rows[2]
    assert list(rows[0]) == list(SAMPLE_SCHEMA)


def test_validate_names_row_and_field() -> None:
    bad = sample_row("tags", "expert", MSGS, '{"tags": []}', "logs")
    with pytest.raises(SampleError, match=r"row 0 .*field 'level'"):
        validate_samples(samples_frame([bad]))


def test_training_data_re_exports_the_contract() -> None:
    import recgpt.data.sft as contract
    import recgpt.training.data as old_home

    for name in set(contract.__all__) - {"Turn"}:  # all but the protocol (training uses ChatMessage)
        assert getattr(old_home, name) is getattr(contract, name), name
