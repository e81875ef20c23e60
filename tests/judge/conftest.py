"""Shared fixtures of the judge tests: a scripted judge backend and small hand-made sample tables.

The fake judge answers from the request's own JSON schema (so every answer is schema-valid) and
from the judged output's text: "FAIL" in it -> the failing verdict of every criterion, "BROKEN" ->
text that is not JSON (a typed failure after the engine's retries), anything else -> passing.
"""

from __future__ import annotations

import json
import os
import re

import polars as pl
import pytest

from recgpt.judge.samples import make_samples
from recgpt.llm.backends.fake import FakeBackend
from recgpt.llm.engine import LLMEngine
from recgpt.llm.types import GenerationInput

os.environ.setdefault("OMP_NUM_THREADS", "1")
_JUDGED = re.compile(r'<data name="(?:interest|tag|explanation)">\n(.*?)\n</data>\s*$', re.S)


def judged_output(inp: GenerationInput) -> str:
    """The output under judgement: the data block ending the last user message that has one (a retry
    appends a repair hint after it)."""
    for msg in reversed(inp.messages):
        m = _JUDGED.search(msg.content) if msg.role == "user" else None
        if m is not None:
            return m.group(1)
    raise AssertionError(f"no judged output in {inp.messages}")


def fake_judge(inp: GenerationInput) -> str:
    props = (inp.json_schema or {})["properties"]
    text = judged_output(inp)
    if "BROKEN" in text:
        return "I think it is fine."
    fail = "FAIL" in text
    return json.dumps(
        {
            k: ("x" if k == "reason" else v["enum"][-1] if fail else "Good" if "Good" in v["enum"] else "Yes")
            for k, v in props.items()
        }
    )


@pytest.fixture()
def backend() -> FakeBackend:
    return FakeBackend(fake_judge)


@pytest.fixture()
def engine(backend: FakeBackend) -> LLMEngine:
    return LLMEngine(backend, max_retries=1)


PROFILE = {
    "profile": "age 30, gender F",
    "as_of": 1_700_000_000,
    "history": "2 months ago (rated) | Alien (1979) [Horror/Sci-Fi], Star Wars (1977) [Sci-Fi]",
}


@pytest.fixture()
def samples() -> pl.DataFrame:
    """Two interests, three tags, two explanations; one FAIL and one BROKEN output among them."""
    interests = make_samples(
        "interests",
        [
            {**PROFILE, "user_id": "u1", "output": "Space adventure"},
            {**PROFILE, "user_id": "u1", "output": "FAIL groceries"},
        ],
        source="test",
        created_at=1,
    )
    tags = make_samples(
        "tags",
        [
            {
                **PROFILE,
                "user_id": "u1",
                "output": "retro space opera films",
                "interest": "Space adventure",
                "recent": ["Alien (1979)"],
            },
            {
                **PROFILE,
                "user_id": "u1",
                "output": "BROKEN space horror films",
                "interest": "Space adventure",
                "recent": ["Alien (1979)"],
            },
            {
                **PROFILE,
                "user_id": "u1",
                "output": "smart space films",
                "interest": "Space adventure",
                "recent": ["Alien (1979)"],
            },
        ],
        source="test",
        created_at=1,
    )
    expl = make_samples(
        "explanations",
        [
            {
                "output": "Starships for your weekend sci-fi fix",
                "interest": "Space adventure",
                "item_id": "260",
                "item": "Star Wars (1977) [Sci-Fi]",
                "item_title": "Star Wars (1977)",
            },
            {
                "output": "The perfect film ever",
                "interest": "Space adventure",
                "item_id": "1",
                "item": "Toy Story (1995) [Animation]",
                "item_title": "Toy Story (1995)",
            },
        ],
        source="test",
        created_at=1,
    )
    return pl.concat([interests, tags, expl])
