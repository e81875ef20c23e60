"""The run's category level: configured once, declared by φ and the evaluation, named in results.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from recgpt.intent.reference import tag_hr_table
from recgpt.pipeline.config import RunConfig
from recgpt.pipeline.stages import RECGPT


def test_category_level_config_is_parsed_and_declared() -> None:
    assert RunConfig().category_level == "auto"
    assert RunConfig(category_level="2").category_level == 2
    assert RunConfig(category_level="depth 1").category_level == 1
    with pytest.raises(ValidationError, match="category level"):
        RunConfig(category_level="deepest")
    stages = {s.name: s for s in RECGPT.stages}
    assert "category_level" in stages["phi"].config and "category_level" in stages["eval"].config


def test_results_name_the_level_and_carry_the_reference_rows(finished_run: Path) -> None:
    results = json.loads((finished_run / "results.json").read_text())
    assert results["category_level"] == "set"  # MovieLens genres
    hr = results["tag_hr"]
    assert hr["category_level"] == "set" and hr["categories"] > 0
    rows = {k: hr[f"{k}_tags"] for k in ("llm", "history", "constant", "random")}
    assert {r["users"] for r in rows.values()} == {results["users"]["sampled"]}  # the same users
    assert set(hr["separable"]) == {"TagHR@10", "TagHR@30"} and isinstance(hr["note"], str)
    table = tag_hr_table(hr)
    assert len(table) == 4
    for key, ok in hr["separable"].items():
        assert all((r[key] is None) == (not ok) for r in table)
        # the LLM rows of the metrics table carry a tag HR only where it separates the references
        assert (key in results["table"][0]) and ((results["table"][0][key] is None) == (not ok))
