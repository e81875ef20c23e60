"""Best-of-n through the chain's interests and tags stages (scripted LLM): the tables record the
samples, the stage markers and the run ledger count them, and a second run reuses every sample."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from rich.console import Console

from recgpt.pipeline import run_pipeline
from tests.conftest import HashEncoder, fake_backend, fast_config


def test_interests_and_tags_stages_draw_and_record_n_samples(slice_path: Path, tmp_path: Path) -> None:
    cfg = fast_config(slice_path, tmp_path / "runs", interests={"n_samples": 2}, tags={"n_samples": 3})
    backend = fake_backend()
    summary = run_pipeline(
        cfg, backend=backend, encoder=HashEncoder(), console=Console(quiet=True), progress=False, until="tags"
    )
    run = summary.run_dir
    tags = pl.read_parquet(run / "04_tags" / "tags.parquet")
    interests = pl.read_parquet(run / "03_interests" / "interests.parquet")
    assert set(tags["samples"]) == {3} and set(interests["samples"]) == {2}
    assert set(tags["sample"]) == {0}  # the scripted answers are identical: ties keep the first ask
    marker = json.loads((run / "04_tags" / "done.json").read_text())
    ledger = json.loads((run / "ledger.json").read_text())["stages"]
    users = tags["user_id"].n_unique()
    assert ledger["tags"]["samples"] == 2 * users and ledger["tags"]["winners"] == {"0": users}
    assert ledger["interests"]["samples"] == users
    assert marker["llm"]["samples"] == 2 * users and marker["llm"]["winners"] == {"0": users}
    calls = backend.generate_calls
    again = fake_backend()
    cfg2 = cfg.model_copy(
        update={"name": "t2", "llm": cfg.llm.model_copy(update={"cache": run / "llm-cache.sqlite"})}
    )
    run_pipeline(
        cfg2, backend=again, encoder=HashEncoder(), console=Console(quiet=True), progress=False, until="tags"
    )
    assert calls > 0 and again.generate_calls == 0  # every sample came from the cache


def test_grounded_best_of_n_scores_tags_against_the_catalogue(slice_path: Path, tmp_path: Path) -> None:
    """tags.score=grounded adds one point per tag whose nearest title reaches the floor (0: every tag)."""
    kept: dict[str, dict[str, tuple[float, int]]] = {}
    for mode in ("rules", "grounded"):
        tags_cfg = {"n_samples": 2, "score": mode, "grounding_floor": 0.0}
        cfg = fast_config(slice_path, tmp_path / mode, tags=tags_cfg)
        summary = run_pipeline(
            cfg,
            backend=fake_backend(),
            encoder=HashEncoder(),
            console=Console(quiet=True),
            progress=False,
            until="tags",
        )
        tags = pl.read_parquet(summary.run_dir / "04_tags" / "tags.parquet")
        llm = tags.filter(pl.col("sample_score").is_not_null())
        per_user = llm.group_by("user_id").agg(pl.col("sample_score").first(), pl.len())
        kept[mode] = {u: (s, n) for u, s, n in per_user.rows()}
    assert kept["rules"] and kept["rules"].keys() == kept["grounded"].keys()
    for user, (rules, n) in kept["rules"].items():
        assert kept["grounded"][user][0] == pytest.approx(rules + n)  # every kept tag is grounded at floor 0
