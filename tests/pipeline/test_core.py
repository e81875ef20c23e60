"""The pipeline house: declared stages, derived keys, enforced declarations, the generic runner, layering."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from rich.console import Console

from recgpt.data.runstore import RunStore
from recgpt.pipeline.config import RunConfig
from recgpt.pipeline.core import Pipeline, Stage, StageContext, UndeclaredConfig, UndeclaredInput
from recgpt.pipeline.runner import RunSummary, run_stages
from recgpt.pipeline.stages import RECGPT
from tests.conftest import HashEncoder, fake_backend, fast_config

QUIET = Console(quiet=True)


class _Res:
    """The least a runner needs of a run's resources."""

    fingerprint = "fp"

    def units(self) -> int:
        return 1

    def llm_stats(self, stage: str) -> None:
        return None

    def model_calls(self) -> int:
        return 0

    def close(self) -> None:
        pass


def _toy(
    first: Any,
    second: Any,
    second_config: tuple[str, ...] = ("ks",),
    second_reads: tuple[str, ...] = ("a/t",),
) -> Pipeline:
    return Pipeline(
        "toy",
        RunConfig,
        (
            Stage("a", "00_a", first, config=("seed",)),
            Stage("b", "01_b", second, reads=second_reads, config=second_config),
        ),
    )


def _write_t(ctx: StageContext) -> dict[str, Any]:
    ctx.write("t", pl.DataFrame({"x": [ctx.config.seed]}))
    return {}


def _run_toy(p: Pipeline, tmp_path: Path, cfg: RunConfig | None = None) -> RunSummary:
    cfg = cfg or RunConfig(runs_dir=tmp_path)
    return run_stages(p, cfg, RunStore(tmp_path / "run", p.folders), _Res(), console=QUIET)  # type: ignore[arg-type]


def test_an_undeclared_config_field_or_input_fails_loudly(tmp_path: Path) -> None:
    def reads_undeclared_field(ctx: StageContext) -> dict[str, Any]:
        ctx.read("a", "t")
        return {"n": ctx.config.share}  # `share` is not declared

    with pytest.raises(UndeclaredConfig, match="'share'"):
        _run_toy(_toy(_write_t, reads_undeclared_field), tmp_path)

    def reads_undeclared_table(ctx: StageContext) -> dict[str, Any]:
        ctx.read("a", "other")
        return {}

    with pytest.raises(UndeclaredInput, match="a/other"):
        _run_toy(_toy(_write_t, reads_undeclared_table), tmp_path)

    def asks_an_undeclared_llm(ctx: StageContext) -> dict[str, Any]:
        ctx.engine()
        return {}

    with pytest.raises(UndeclaredConfig, match="llm:b"):
        _run_toy(_toy(_write_t, asks_an_undeclared_llm), tmp_path)
    assert not (tmp_path / "run" / "01_b" / "done.json").exists()  # no marker for a stage that failed


def test_a_dotted_declaration_opens_that_field_only(tmp_path: Path) -> None:
    def reads_fusion(ctx: StageContext) -> dict[str, Any]:
        k = ctx.config.fusion.k
        with pytest.raises(UndeclaredConfig, match=r"fusion\.beta"):
            ctx.config.fusion.beta  # noqa: B018
        return {"k": k}

    summary = _run_toy(_toy(_write_t, reads_fusion, second_config=("fusion.k",)), tmp_path)
    assert summary.outcomes[1].stats == {"k": RunConfig().fusion.k}


def test_keys_are_derived_from_the_declarations(tmp_path: Path) -> None:
    toy = _toy(_write_t, lambda ctx: {}, second_config=("fusion.k",))
    cfg = RunConfig(runs_dir=tmp_path)
    keys = toy.keys(cfg, "fp")
    # a declared field changes its stage and what reads from it; an undeclared one changes nothing
    assert toy.keys(cfg.model_copy(update={"seed": 1}), "fp").keys() == keys.keys()
    assert all(toy.keys(cfg.model_copy(update={"seed": 1}), "fp")[n] != keys[n] for n in ("a", "b"))
    k2 = cfg.model_copy(update={"fusion": dataclasses.replace(cfg.fusion, k=cfg.fusion.k + 1)})
    assert toy.keys(k2, "fp")["a"] == keys["a"] and toy.keys(k2, "fp")["b"] != keys["b"]
    assert toy.keys(cfg.model_copy(update={"share": 0.9}), "fp") == keys
    assert toy.keys(cfg, "other dataset")["a"] != keys["a"]  # the first stage carries the dataset
    bumped = Pipeline("toy", RunConfig, (toy.stages[0], dataclasses.replace(toy.stages[1], version=2)))
    assert bumped.keys(cfg, "fp")["a"] == keys["a"] and bumped.keys(cfg, "fp")["b"] != keys["b"]
    # in RecGPT: the fused list's length is now part of the fusion stage's key; tri-tower epochs are not tags'
    rec = RECGPT.keys(cfg, "fp")
    assert RECGPT.keys(k2, "fp")["fusion"] != rec["fusion"]
    epochs = cfg.model_copy(update={"tritower": dataclasses.replace(cfg.tritower, epochs=1)})
    assert (
        RECGPT.keys(epochs, "fp")["tags"] == rec["tags"] and RECGPT.keys(epochs, "fp")["eval"] != rec["eval"]
    )


def test_a_pipeline_checks_its_order() -> None:
    late = Stage("b", "01_b", lambda ctx: {}, reads=("c/t",))
    with pytest.raises(ValueError, match="do not run before it"):
        Pipeline("bad", RunConfig, (Stage("a", "00_a", lambda ctx: {}), late))
    with pytest.raises(ValueError, match="not unique"):
        Pipeline("bad", RunConfig, (Stage("a", "00_a", lambda ctx: {}), Stage("a", "01_a", lambda ctx: {})))
    with pytest.raises(ValueError, match="stage/table"):
        Stage("x", "00_x", lambda ctx: {}, reads=("nodash",))


def test_every_recgpt_stage_fails_without_its_declarations(slice_path: Path, tmp_path: Path) -> None:
    """Drop one declaration of a real stage: its run raises instead of reusing a stale output."""
    from recgpt.pipeline import run as run_mod

    cfg = fast_config(slice_path, tmp_path)
    run_mod.run_pipeline(
        cfg, backend=fake_backend(), encoder=HashEncoder(), console=QUIET, progress=False, until="interests"
    )
    tags = RECGPT.stage("tags")
    for broken in (
        dataclasses.replace(tags, config=("llm:tags",)),
        dataclasses.replace(tags, config=("tags",)),
        dataclasses.replace(tags, reads=("interests/interests", "compress/compressed")),
    ):
        pipe = Pipeline("recgpt", RunConfig, tuple(broken if s.name == "tags" else s for s in RECGPT.stages))
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(run_mod, "RECGPT", pipe)
            with pytest.raises((UndeclaredConfig, UndeclaredInput)):
                run_mod.run_pipeline(
                    cfg,
                    backend=fake_backend(),
                    encoder=HashEncoder(),
                    console=QUIET,
                    progress=False,
                    until="tags",
                )


def test_no_stage_recomputes_an_upstream_output(
    slice_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The compressor runs once (stage 01); eval scores the very lists stages 07 and 08 wrote."""
    from recgpt.behavior import BehaviorCompressor
    from recgpt.pipeline import run_pipeline
    from recgpt.retrieval.channel import RecGPTChannel

    calls = {"compress": 0, "candidates": 0}
    real_compress, real_candidates = BehaviorCompressor.compress_many, RecGPTChannel.candidates

    def compress_many(self: Any, *a: Any, **kw: Any) -> Any:
        calls["compress"] += 1
        return real_compress(self, *a, **kw)

    def candidates(self: Any, *a: Any, **kw: Any) -> Any:
        calls["candidates"] += 1
        return real_candidates(self, *a, **kw)

    monkeypatch.setattr(BehaviorCompressor, "compress_many", compress_many)
    monkeypatch.setattr(RecGPTChannel, "candidates", candidates)
    # no tuning sub-run: it compresses and retrieves once more, for its own (validation) users
    cfg = fast_config(slice_path, tmp_path, tune={"users": 0})
    console = Console(record=True, width=200)
    summary = run_pipeline(
        cfg, backend=fake_backend(), encoder=HashEncoder(), console=console, progress=False
    )
    assert calls == {"compress": 1, "candidates": 1}
    run = summary.run_dir
    lists = pl.read_parquet(run / "09_eval/lists.parquet")
    k = max(cfg.ks)
    for model, table in (("recgpt", "07_candidates/candidates"), ("fused", "08_fusion/fused")):
        stored = pl.read_parquet(run / f"{table}.parquet").filter(pl.col("rank") <= k)
        got = lists.filter(pl.col("model") == model).join(stored, on=["user_id", "rank"], how="inner")
        assert got.height == stored.height and (got["item_id"] == got["item_id_right"]).all(), model
    # the run's printed summary carries the per-stage fallback counts
    text = console.export_text()
    assert "LLM fallback per stage" in text and "interests" in text.split("LLM fallback per stage")[-1]
    assert set(summary.fallback) == {"interests", "tags", "explanations"}


def test_import_recgpt_pipeline_loads_no_heavy_library() -> None:
    code = (
        "import sys, recgpt.pipeline; heavy = ('torch', 'faiss', 'transformers', 'llama_cpp', "
        "'sentence_transformers'); print(json.dumps([m for m in heavy if m in sys.modules]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", "import json; " + code], capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout) == []
