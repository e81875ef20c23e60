"""The tune stage: the classic channel and the share are chosen on validation users only.

Scripted LLM on the bundled slice: the classic channel is the validation-best baseline, the share
sub-run samples validation users disjoint from the test sample, its prompts are guarded against every
later item (a test target injected into a tune prompt aborts the stage), a finished tune stage is
skipped on resume, and the frontier's endpoints are the classic and the RecGPT rows.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from rich.console import Console

from recgpt.data.split import EvalTask, LeakageError
from recgpt.intent.context import UserContext
from recgpt.pipeline import RunConfig, RunSummary, run_pipeline
from tests.conftest import HashEncoder, fake_backend, fast_config


def _run(cfg: RunConfig, backend: Any, until: str | None = None) -> RunSummary:
    return run_pipeline(
        cfg, backend=backend, encoder=HashEncoder(), console=Console(quiet=True), progress=False, until=until
    )


def _stats(run: Path, folder: str) -> dict[str, Any]:
    return dict(json.loads((run / folder / "done.json").read_text())["stats"])


@pytest.fixture(scope="module")
def tuned(slice_path: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[RunConfig, RunSummary]:
    cfg = fast_config(slice_path, tmp_path_factory.mktemp("tune-runs"))
    return cfg, _run(cfg, fake_backend(), until="tune")


def test_the_classic_channel_is_the_validation_best(tuned: tuple[RunConfig, RunSummary]) -> None:
    cfg, summary = tuned
    stats = _stats(summary.run_dir, "07_tune")
    scores = {n: t["valid_NDCG@10"] for n, t in stats["baselines"].items()}
    assert set(scores) == set(cfg.baselines) and stats["baseline"] == max(scores, key=scores.__getitem__)
    assert stats["baseline_params"] == stats["baselines"][stats["baseline"]]["params"]


def test_the_sub_run_uses_validation_users_disjoint_from_the_test_sample(
    tuned: tuple[RunConfig, RunSummary],
) -> None:
    cfg, summary = tuned
    run = summary.run_dir
    test_users = set(pl.read_parquet(run / "00_split/users.parquet")["user_id"])
    sub = run / "07_tune" / "valid"
    users = pl.read_parquet(sub / "00_split/users.parquet")
    assert users.height == cfg.tune.users and not test_users & set(users["user_id"])
    assert _stats(sub, "00_split")["task"] == "valid"
    # the split points are the validation ones: before each user's test point
    from recgpt.data.split import make_split
    from recgpt.datasets import load_dataset

    split = make_split(load_dataset(cfg.dataset), cfg.split)
    for u, ts in users.select("user_id", "point_ts").iter_rows():
        assert ts == split.valid.asof.point(u)[0] <= split.test.asof.point(u)[0]
    tags = pl.read_parquet(sub / "04_tags/tags.parquet")
    assert set(tags["user_id"]) == set(users["user_id"])
    # the tri-tower is the parent's, never trained again for the sub-run
    assert not (sub / "06_tritower").exists()
    stats = _stats(run, "07_tune")
    assert [p["share"] for p in stats["curve"]] == list(cfg.tune.grid)
    assert stats["tune_users"] == cfg.tune.users and 0.0 <= stats["share"] <= 1.0


def test_a_test_target_in_a_tune_prompt_aborts_the_stage(
    slice_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import recgpt.pipeline.stages as stages_mod

    real = stages_mod.contexts_from_tables

    def leaky(task: EvalTask, dataset: Any, users: Sequence[str], *args: Any) -> list[UserContext]:
        ctxs = real(task, dataset, users, *args)
        if task.name != "valid":
            return ctxs
        titles = dict(dataset.items.select("item_id", "title").iter_rows())
        for i, u in enumerate(users):  # each tune user's TEST target: their last rated item
            last = dataset.events.filter(
                (pl.col("user_id") == u) & pl.col("item_id").is_not_null() & (pl.col("behavior") != "tag")
            ).sort("timestamp", "event_id")["item_id"][-1]
            if len(titles[last]) >= 8:
                ctxs[i] = dataclasses.replace(ctxs[i], history=f"{ctxs[i].history}\n{titles[last]}")
                return ctxs
        raise AssertionError("no tune user with a nameable test target")

    monkeypatch.setattr(stages_mod, "contexts_from_tables", leaky)
    cfg = fast_config(slice_path, tmp_path)
    with pytest.raises(LeakageError, match="held-out item"):
        _run(cfg, fake_backend(), until="tune")
    run = tmp_path / cfg.name  # type: ignore[operator]
    assert (run / "07_candidates" / "done.json").exists()  # the test users' own stages were clean
    assert not (run / "07_tune" / "done.json").exists()


def test_a_finished_tune_stage_is_skipped_on_resume(
    tuned: tuple[RunConfig, RunSummary], tmp_path: Path
) -> None:
    import shutil

    cfg, summary = tuned
    shutil.copytree(summary.run_dir, tmp_path / cfg.name)  # type: ignore[operator]
    cfg = cfg.model_copy(update={"runs_dir": tmp_path})
    again = fake_backend()
    resumed = _run(cfg, again, until="fusion")  # as if killed after the tune stage
    status = resumed.status()
    assert status["tune"] == "skipped" and status["fusion"] == "ran" and again.generate_calls == 0
    assert _stats(resumed.run_dir, "08_fusion")["share"] == _stats(resumed.run_dir, "07_tune")["share"]


def test_a_fixed_share_or_no_tune_users_skip_the_sub_run(slice_path: Path, tmp_path: Path) -> None:
    off = _run(fast_config(slice_path, tmp_path / "off", tune={"users": 0}), fake_backend(), until="tune")
    stats = _stats(off.run_dir, "07_tune")
    assert stats["share"] == RunConfig().tune.fixed_share and "tune.users = 0" in stats["share_source"]
    assert not (off.run_dir / "07_tune" / "valid").exists()
    fixed = _run(
        fast_config(slice_path, tmp_path / "fixed", share=0.6, baseline="markov"), fake_backend(), "tune"
    )
    stats = _stats(fixed.run_dir, "07_tune")
    assert stats["share"] == 0.6 and stats["baseline"] == "markov" and list(stats["baselines"]) == ["markov"]


def test_the_frontier_runs_from_the_classic_channel_to_the_recgpt_channel(finished_run: Path) -> None:
    results = json.loads((finished_run / "results.json").read_text())
    rows = {r["model"]: r for r in results["table"]}
    frontier = {p["share"]: p for p in results["frontier"]}
    classic = results["fusion"]["baseline"]
    for metric in ("NDCG@10", "CatDiv@10", "Coverage@10", "Gini@10"):
        assert frontier[0.0][metric] == pytest.approx(rows[classic][metric]), metric
        assert frontier[1.0][metric] == pytest.approx(rows["recgpt"][metric]), metric
        assert frontier[results["fusion"]["share"]][metric] == pytest.approx(rows["fused"][metric]), metric
    assert [p["share"] for p in results["frontier"] if p["chosen"]] == [results["fusion"]["share"]]
    table = pl.read_parquet(finished_run / "09_eval/frontier.parquet")
    assert table.height == len(results["frontier"])
    ci = results["ci"]
    assert {"fused/best NDCG@10", "recgpt/user-tower NDCG@10", "fused-best CatDiv@10"} <= set(ci)
    assert all(c["n"] == results["users"]["sampled"] for k, c in ci.items() if "NDCG" in k)
    assert results["bar"]["verdict"] in ("met", "missed", "inconclusive")
    assert "Accuracy-diversity frontier" in (finished_run / "report.html").read_text()


def test_no_validation_user_outside_the_test_sample_falls_back_to_the_fixed_share(
    slice_path: Path, tmp_path: Path
) -> None:
    summary = _run(fast_config(slice_path, tmp_path, users=None), fake_backend(), until="tune")  # all users
    stats = _stats(summary.run_dir, "07_tune")
    assert stats["share"] == RunConfig().tune.fixed_share and "test sample" in stats["share_source"]


def test_the_run_summary_prints_the_choices_the_intervals_and_tag_hr(finished_run: Path) -> None:
    from recgpt.pipeline.report import print_results

    payload = json.loads((finished_run / "results.json").read_text())
    console = Console(record=True, width=250)
    print_results(payload, console)
    text = console.export_text()
    assert f"classic channel: {payload['fusion']['baseline']} (validation NDCG@10: " in text
    assert "RecGPT share of the fused list:" in text and "95% interval" in text
    assert "fused/best NDCG@10" in text and f"{payload['users']['sampled']}" in text
    assert "LLM tags" in text and "history baseline" in text and "constant tag" in text


def test_the_tune_stage_fits_each_classic_channel_once(
    slice_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fusion and evaluation test the models the tune stage kept (07_tune/models) instead of fitting
    them again; a fresh fit with the same parameters ranks the same lists."""
    import numpy as np

    from recgpt.baselines.registry import get_recommender, load_recommender_class
    from recgpt.data.split import make_split
    from recgpt.datasets import load_dataset
    from recgpt.eval.experiment import recommend
    from recgpt.pipeline.fitted import load_fitted

    cfg = fast_config(slice_path, tmp_path, share=0.5)  # no sub-run: only the fits are counted
    fits: dict[str, int] = {}
    for name in cfg.baselines:
        cls = load_recommender_class(name)
        original = cls.fit

        def counted(self: Any, *a: Any, _orig: Any = original, **kw: Any) -> Any:
            fits[self.name] = fits.get(self.name, 0) + 1
            return _orig(self, *a, **kw)

        monkeypatch.setattr(cls, "fit", counted)
    run = _run(cfg, fake_backend(), until="eval").run_dir
    tune = _stats(run, "07_tune")
    grid = {n: len(t["validation"]) for n, t in tune["baselines"].items()}
    assert fits == grid  # the validation search only: no refit in fusion or evaluation
    kept = load_fitted(run / "07_tune", tune["baseline"], tune["baseline_params"])
    assert kept is not None
    split = make_split(load_dataset(str(slice_path)), cfg.split)
    fresh = get_recommender(tune["baseline"], **tune["baseline_params"]).fit(split.train, seed=cfg.seed)
    assert np.array_equal(
        recommend(kept, split.test, 10, mask=True), recommend(fresh, split.test, 10, mask=True)
    )
    assert load_fitted(run / "07_tune", tune["baseline"], {"other": 1}) is None
