"""The SERAL pipeline with a scripted LLM on the bundled-data slice: tables, resume, declarations, CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from pydantic import ValidationError
from rich.console import Console

from recgpt.pipeline.core import config_values
from recgpt.pipeline.runner import RunSummary
from recgpt.pipeline.seral import SERAL, SERAL_STAGE_NAMES, run_seral
from recgpt.pipeline.seral_config import SeralConfig
from recgpt.serendipity.cache import CACHE_SCHEMA
from recgpt.serendipity.candidates import CANDIDATES_SCHEMA
from recgpt.serendipity.labels import LISTS_SCHEMA
from recgpt.serendipity.profiles import PROFILES_SCHEMA
from recgpt.serendipity.seren import RANKINGS_SCHEMA
from tests.conftest import HashEncoder
from tests.pipeline.seral_fixtures import seral_backend, seral_config

QUIET = Console(quiet=True)
FOLDERS = (
    "00_split",
    "01_compress",
    "02_profiles",
    "03_candidates",
    "04_labels",
    "05_seren",
    "06_cache",
    "07_base",
    "08_slot",
    "09_eval",
    "10_report",
)


def _run(cfg: SeralConfig, backend: Any, **kw: Any) -> RunSummary:
    return run_seral(cfg, backend=backend, encoder=HashEncoder(), console=QUIET, progress=False, **kw)


@pytest.fixture(scope="module")
def first_run(
    slice_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[SeralConfig, RunSummary, Any]:
    cfg = seral_config(slice_path, tmp_path_factory.mktemp("seral-runs"))
    backend = seral_backend()
    return cfg, _run(cfg, backend), backend


def test_folders_and_run_dir() -> None:
    assert tuple(SERAL.folders.values()) == FOLDERS
    cfg = SeralConfig(name="x", runs_dir=Path("r"))
    assert cfg.run_dir("ignored") == Path("r/x-seral")
    assert SeralConfig(runs_dir=Path("r")).run_dir("amazon") == Path("r/amazon-seral")


def test_every_stage_writes_its_contract_tables(first_run: tuple[SeralConfig, RunSummary, Any]) -> None:
    cfg, summary, backend = first_run
    assert [o.name for o in summary.outcomes] == list(SERAL_STAGE_NAMES)
    assert all(o.status == "ran" for o in summary.outcomes) and backend.generate_calls > 0
    run = summary.run_dir
    assert run.name == "t-seral"
    contracts = {
        "02_profiles/profiles": PROFILES_SCHEMA,
        "03_candidates/candidates": CANDIDATES_SCHEMA,
        "04_labels/lists": LISTS_SCHEMA,
        "05_seren/serving": RANKINGS_SCHEMA,
        "05_seren/eval": RANKINGS_SCHEMA,
        "06_cache/cache": CACHE_SCHEMA,
    }
    for name, schema in contracts.items():
        assert pl.read_parquet(run / f"{name}.parquet").schema == pl.Schema(schema), name
    users = sorted(pl.read_parquet(run / "00_split/users.parquet")["user_id"].to_list())
    assert len(users) == cfg.users
    for name in ("02_profiles/profiles", "03_candidates/candidates", "06_cache/cache"):
        assert sorted(pl.read_parquet(run / f"{name}.parquet")["user_id"].unique()) == users, name
    profiles = pl.read_parquet(run / "02_profiles/profiles.parquet")
    assert set(profiles["level"]) == {"static", "short", "long"} and (profiles["source"] == "llm").any()
    # the cache follows SerenGPT's order (the scripted model reverses each list) and names the profile version
    cand = pl.read_parquet(run / "03_candidates/candidates.parquet")
    cache = pl.read_parquet(run / "06_cache/cache.parquet")
    u = users[0]
    listed = cand.filter(pl.col("user_id") == u).sort("rank")["item_id"].to_list()
    assert (
        cache.filter(pl.col("user_id") == u).sort("rank")["item_id"].to_list()
        == listed[::-1][: cfg.slot.cache_size]
    )
    assert cache["profile_version"].str.len_chars().min() == 12 and set(cache["model"]) == {"fake"}
    # the slot: at most `quota` cache items, at the slot positions, no duplicates, the rest the classic list
    lists = pl.read_parquet(run / "08_slot/lists.parquet")
    with_slot = lists.filter(pl.col("list") == "with-slot")
    top = with_slot.filter(pl.col("rank") < cfg.slot.k)
    per_user = top.filter(pl.col("channel") == "seren").group_by("user_id").len()["len"]
    assert per_user.max() <= cfg.slot.quota and per_user.sum() > 0  # type: ignore[operator]
    assert set(top.filter(pl.col("channel") == "seren")["rank"]) <= set(cfg.slot.slots())
    assert with_slot.group_by("user_id").agg(pl.col("item_id").n_unique() == pl.len())["item_id"].all()
    results = json.loads((run / "results.json").read_text())
    assert [r["model"] for r in results["table"]] == ["with-slot", "without-slot", "cache-only"]
    assert {"NDCG@10", "Serendipity@10", "Unexp@10", "PVR@10"} <= set(results["table"][0])
    assert list(results["seren"]) == ["SerenGPT (fake)", "random", "popularity", "distance"]
    assert set(results["ci"]) == {
        "with/without NDCG@10",
        "with-without Serendipity@10",
        "with-without Unexp@10",
    }
    assert results["profiles"]["raw_tokens"] > results["profiles"]["profile_tokens"] > 0
    html = (run / "report.html").read_text()
    assert html.count("<h3>User ") == cfg.report_users and "serendipity slot</b>" in html
    ledger = json.loads((run / "ledger.json").read_text())
    assert {"profiles", "seren"} <= set(ledger["stages"])


def test_resume_reruns_nothing_and_a_slot_change_reruns_only_downstream(
    first_run: tuple[SeralConfig, RunSummary, Any], tmp_path: Path
) -> None:
    cfg, summary, _ = first_run
    shutil.copytree(summary.run_dir, tmp_path / summary.run_dir.name)
    cfg = cfg.model_copy(update={"runs_dir": tmp_path})
    again = seral_backend()
    resumed = _run(cfg, again)
    assert set(resumed.status().values()) == {"skipped"}
    assert again.generate_calls == 0 and resumed.model_calls == 0
    changed = _run(cfg.model_copy(update={"slot": cfg.slot.model_copy(update={"quota": 3})}), seral_backend())
    assert {n for n, s in changed.status().items() if s == "ran"} == {"slot", "eval", "report"}


def _keys(cfg: SeralConfig) -> dict[str, str]:
    return SERAL.keys(cfg, "fingerprint")


def _changed(a: SeralConfig, b: SeralConfig) -> set[str]:
    ka, kb = _keys(a), _keys(b)
    return {n for n in ka if ka[n] != kb[n]}


def test_declarations_decide_what_reruns() -> None:
    """Every stage's key covers exactly its declared config and the stages it reads."""
    cfg = SeralConfig()
    every = set(SERAL_STAGE_NAMES)
    for stage in SERAL.stages:
        values = config_values(cfg, stage.config)  # every declared path resolves on SeralConfig
        assert set(values) == set(stage.config), stage.name
        for need in stage.needs:
            assert need in every, (stage.name, need)
    after_profiles = {"profiles", "seren", "cache", "slot", "eval", "report"}
    windows = cfg.model_copy(update={"profiles": cfg.profiles.model_copy(update={"windows": 2})})
    assert _changed(cfg, windows) == after_profiles
    rule = cfg.model_copy(update={"labels": cfg.labels.model_copy(update={"rule": "either"})})
    assert _changed(cfg, rule) == {"labels", "seren", "cache", "slot", "eval", "report"}
    verdicts = cfg.model_copy(update={"verdicts": "0123456789abcdef"})
    assert _changed(cfg, verdicts) == {"labels", "seren", "cache", "slot", "eval", "report"}
    seren_llm = cfg.model_copy(update={"llm": cfg.llm.model_copy(update={"stages": {"seren": "fake"}})})
    assert _changed(cfg, seren_llm) == {"seren", "cache", "slot", "eval", "report"}
    base = cfg.model_copy(update={"baselines": ("markov",)})
    assert _changed(cfg, base) == {"base", "slot", "eval", "report"}


def test_config_rejects_recgpt_sections_and_accepts_seral_llm_stages() -> None:
    with pytest.raises(ValidationError, match="tags is a RecGPT setting"):
        SeralConfig.model_validate({"tags": {"count": 5}})
    SeralConfig.model_validate(
        {"tags": SeralConfig().tags.model_dump(mode="json")}
    )  # a dumped default is fine
    cfg = SeralConfig.model_validate(
        {"llm": {"stages": {"seren": "fake", "profiles": "fake"}, "max_fallback_share": {"seren": 0.5}}}
    )
    assert cfg.llm.fallback_limit("seren") == 0.5 and cfg.llm.spec_for("profiles") == "fake"
    with pytest.raises(ValidationError, match="unknown LLM stage"):
        SeralConfig.model_validate({"llm": {"stages": {"serendipity": "fake"}}})
    with pytest.raises(ValidationError, match=r"slot\.quota"):
        SeralConfig.model_validate({"slot": {"quota": 11}})
    roundtrip = SeralConfig.model_validate(json.loads(SeralConfig().model_dump_json()))
    assert roundtrip == SeralConfig()


def test_cli_runs_the_seral_pipeline(first_run: tuple[SeralConfig, RunSummary, Any], tmp_path: Path) -> None:
    """`recgpt run --pipeline seral` on a finished run: everything skipped, the tables printed."""
    from typer.testing import CliRunner

    from recgpt.cli.app import app

    cfg, summary, _ = first_run
    shutil.copytree(summary.run_dir, tmp_path / summary.run_dir.name)
    cfg_file = tmp_path / "seral.json"
    cfg_file.write_text(cfg.model_copy(update={"runs_dir": tmp_path}).model_dump_json())
    out = CliRunner().invoke(
        app,
        ["run", "--pipeline", "seral", "--config", str(cfg_file), "--no-progress"],
        catch_exceptions=False,
    )
    assert out.exit_code == 0, out.output
    assert "with-slot" in out.output and "SerenGPT" in out.output and "none (all up to date)" in out.output
    bad = CliRunner().invoke(app, ["run", "--pipeline", "seral", "--share", "0.5", "--dataset", "x"])
    assert bad.exit_code == 2 and "RecGPT settings" in bad.output


def test_verdicts_in_the_run_folder_rerun_the_labels(
    first_run: tuple[SeralConfig, RunSummary, Any], tmp_path: Path
) -> None:
    """People's verdicts (`RUN_DIR/verdicts.parquet`) override log labels and re-run labels and what follows."""
    from recgpt.serendipity.verdicts import write_verdicts

    cfg, summary, _ = first_run
    run = tmp_path / summary.run_dir.name
    shutil.copytree(summary.run_dir, run)
    lists = pl.read_parquet(run / "04_labels/lists.parquet")
    first = lists.row(0, named=True)
    item = first["item_ids"][first["labels"].index(1)]  # the log-serendipitous item: people say no
    verdicts = pl.DataFrame(
        {
            "user_id": [first["user_id"]],
            "item_id": [item],
            "serendipitous": [False],
            "annotator": ["a"],
            "round": [0],
        }
    )
    write_verdicts(verdicts, run / "verdicts.parquet")
    again = _run(cfg.model_copy(update={"runs_dir": tmp_path}), seral_backend())
    assert {n for n, s in again.status().items() if s == "ran"} == {
        "labels",
        "seren",
        "cache",
        "slot",
        "eval",
        "report",
    }
    after = pl.read_parquet(run / "04_labels/lists.parquet").row(0, named=True)
    at = after["item_ids"].index(item)
    assert after["labels"][at] == 0 and after["label_source"][at] == "human"
    assert json.loads((run / "04_labels/done.json").read_text())["stats"]["verdicts"] == 1


def test_real_model_smoke_run_via_the_cli(smollm2_gguf: Path, tmp_path: Path) -> None:
    """`recgpt run --pipeline seral` with the embedded SmolLM2 on 3 users of the bundled MovieLens:
    every stage runs, and the model's own answers (not fallbacks) carry most profiles and rankings."""
    from typer.testing import CliRunner

    from recgpt.cli.app import app

    args = ["run", "--pipeline", "seral", "--users", "3", "--runs-dir", str(tmp_path), "--name", "smoke"]
    args += ["--no-progress", "--set", "profiles.windows=1", "--set", "candidates.rule=either"]
    args += ["--set", "labels.rule=either", "--set", "baselines=itemknn", "--set", "report_users=1"]
    args += ["--set", 'llm.max_fallback_share={"profiles": 0.5, "seren": 0.67}']
    out = CliRunner().invoke(app, args, catch_exceptions=False)
    assert out.exit_code == 0, out.output
    run = tmp_path / "smoke-seral"
    assert (run / "report.html").exists() and "with-slot" in out.output
    profiles = pl.read_parquet(run / "02_profiles/profiles.parquet")
    asked = profiles.filter(pl.col("source").is_in(["llm", "fallback"]))
    assert (asked["source"] == "llm").mean() >= 0.5  # type: ignore[operator]
    serving = pl.read_parquet(run / "05_seren/serving.parquet").unique("list_id")
    assert (serving["source"] == "llm").sum() >= 1
    assert pl.read_parquet(run / "06_cache/cache.parquet")["reason"].str.len_chars().max() > 0  # type: ignore[operator]
