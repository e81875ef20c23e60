"""The judge prompts carry several worked examples with contrasting verdicts (not one to copy).

A 135M judge copies the verdicts of a single worked example; each template therefore shows one
example that passes every criterion and others that each fail a different criterion. These tests
fail if a template falls back to one example, to examples that agree, or if an example answer
stops validating against the verdict model.
"""

from __future__ import annotations

import polars as pl
import pytest

from recgpt.judge.criteria import TASKS, criteria, verdict_model, verdicts_of
from recgpt.judge.judge import JudgeConfig, judge_request


def _examples(task: str, row: dict, reason_words: int = 0) -> list[dict[str, str]]:
    msgs = judge_request(JudgeConfig(reason_words=reason_words), row).messages
    model = verdict_model(task, JudgeConfig(reason_words=reason_words).reason_chars)
    answers = [m.content for m in msgs if m.role == "assistant"]
    return [verdicts_of(task, model.model_validate_json(a)) for a in answers]


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("reason_words", [0, 12])
def test_examples_contrast(samples: pl.DataFrame, task: str, reason_words: int) -> None:
    row = samples.filter(pl.col("task") == task).row(0, named=True)
    msgs = judge_request(JudgeConfig(reason_words=reason_words), row).messages
    roles = [m.role for m in msgs]
    assert (
        roles[0] == "system"
        and roles[-1] == "user"
        and roles[1:-1] == ["user", "assistant"] * (len(roles) // 2 - 1)
    )
    examples = _examples(task, row, reason_words)
    assert len(examples) >= 3
    assert len({tuple(e.values()) for e in examples}) == len(examples)  # no two examples agree
    crits = criteria(task)
    all_pass = [e for e in examples if all(c.passes(e[c.name]) for c in crits)]
    assert len(all_pass) == 1  # exactly one example passes every criterion
    failed = [
        frozenset(c.name for c in crits if not c.passes(e[c.name])) for e in examples if e not in all_pass
    ]
    assert len(set(failed)) == len(failed)  # each failing example fails a different criterion (set)
    assert row["output"] in msgs[-1].content  # the judged output is in the last user message, not an example
