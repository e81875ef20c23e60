"""The judge on the real SmolLM2-135M (llama.cpp, 1 thread): one sample per task, schema-valid verdicts.

The small model's judgement is weak (its calibration against humans is what `recgpt judge calibrate`
measures); what must hold whatever it writes is that the grammar yields one allowed verdict per
criterion, so no answer becomes an "error" and every row follows the verdict contract.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

from recgpt.judge.criteria import criteria
from recgpt.judge.judge import Judge, overall, pass_rates
from recgpt.judge.samples import make_samples
from recgpt.llm.engine import LLMEngine
from tests.judge.conftest import PROFILE

pytestmark = pytest.mark.llm


@pytest.fixture(scope="module")
def engine(smollm2_gguf: Path) -> Iterator[LLMEngine]:
    from recgpt.llm.backends import make_backend

    eng = LLMEngine(make_backend(f"llamacpp:{smollm2_gguf}", n_threads=1, n_ctx=2048), max_retries=1)
    yield eng
    eng.close()


def test_schema_valid_verdicts_for_each_task(engine: LLMEngine) -> None:
    samples = pl.concat(
        [
            make_samples(
                "interests", [{**PROFILE, "user_id": "u1", "output": "Science fiction films"}], source="t"
            ),
            make_samples(
                "tags",
                [
                    {
                        **PROFILE,
                        "user_id": "u1",
                        "output": "classic space opera films",
                        "interest": "Science fiction films",
                        "recent": ["Alien (1979)"],
                    }
                ],
                source="t",
            ),
            make_samples(
                "explanations",
                [
                    {
                        "output": "Starships for your weekend sci-fi fix",
                        "interest": "Space adventure",
                        "item": "Star Wars (1977) [Action/Adventure/Sci-Fi]",
                        "item_title": "Star Wars (1977)",
                    }
                ],
                source="t",
            ),
        ]
    )
    judge = Judge(engine)
    v = judge.run(samples)
    assert judge.failures == [] and engine.ledger.stage("judge").ok == 3
    for task in ("interests", "tags", "explanations"):
        rows = v.filter((pl.col("task") == task) & ~pl.col("criterion").str.starts_with("rule:"))
        assert rows["criterion"].to_list() == [c.name for c in criteria(task)]
        for c, verdict, passed in rows.select("criterion", "verdict", "passed").iter_rows():
            crit = next(x for x in criteria(task) if x.name == c)
            assert verdict in crit.scale and passed == crit.passes(verdict)
    assert overall(v).height == 3
    rates = pass_rates(v)
    assert all(r["errors"] == 0 and 0.0 <= r["overall"] <= 1.0 for r in rates.values())
