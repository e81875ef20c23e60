"""`RecommendationService` over a finished run: the same list as the run's tables, clear errors, cheap and shared."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import polars as pl
import pytest

import recgpt.datasets
from recgpt.data.errors import DataError
from recgpt.serving import NotARun, RecommendationService, ServingError, UnknownUser


@pytest.fixture(scope="module")
def service(finished_run: Path) -> RecommendationService:
    return RecommendationService.open(finished_run)


def _table(run: Path, name: str) -> pl.DataFrame:
    return pl.read_parquet(run / f"{name}.parquet")


def test_users_are_the_runs_sampled_users(service: RecommendationService, finished_run: Path) -> None:
    assert service.users() == _table(finished_run, "00_split/users")["user_id"].to_list()
    assert len(service.users()) == 8 and service.explain_top == 3


def test_list_is_the_fused_list_with_the_served_explanations(
    service: RecommendationService, finished_run: Path
) -> None:
    fused, served = _table(finished_run, "08_fusion/fused"), _table(finished_run, "10_explanations/served")
    for user in service.users():
        rows = fused.filter(pl.col("user_id") == user).sort("rank")
        recs = service.recommend(user, k=rows.height + 5)  # k beyond the list: the whole list
        assert [(r.rank, r.item_id, r.channel, r.tag, r.interest) for r in recs] == rows.select(
            "rank", "item_id", "channel", "tag", "interest"
        ).rows()
        explained = {
            rank: rest
            for rank, *rest in served.filter(pl.col("user_id") == user)
            .select("rank", "item_id", "explained_interest", "explanation", "item_only")
            .iter_rows()
        }
        assert len(explained) == service.explain_top
        for r in recs:
            got = [r.item_id, r.explained_interest, r.explanation, r.item_only]
            assert got == explained.get(r.rank, [r.item_id, None, None, None])
        assert all(r.explanation for r in recs[: service.explain_top])


def test_k_cuts_the_list_and_k_below_one_is_rejected(service: RecommendationService) -> None:
    user = service.users()[0]
    assert [r.rank for r in service.recommend(user, k=4)] == [1, 2, 3, 4]
    assert len(service.recommend(user)) == 10
    for k in (0, -1):
        with pytest.raises(ServingError, match="k must be at least 1"):
            service.recommend(user, k=k)


def test_titles_and_categories_come_from_the_runs_catalogue(
    service: RecommendationService, finished_run: Path
) -> None:
    spec = json.loads((finished_run / "config.json").read_text())["dataset"]
    items = recgpt.datasets.load_dataset(spec).items
    for r in service.recommend(service.users()[1], k=5):
        row = items.filter(pl.col("item_id") == r.item_id).row(0, named=True)
        assert (r.title, r.categories) == (row["title"], row["categories"])


def test_view_holds_what_the_walkthrough_shows(service: RecommendationService, finished_run: Path) -> None:
    user = service.users()[2]
    view = service.view(user, k=5)

    def mine(name: str) -> pl.DataFrame:
        return _table(finished_run, name).filter(pl.col("user_id") == user)

    assert view.user_id == user and view.recommendations == service.recommend(user, k=5)
    assert view.history is not None and view.history.text == mine("01_compress/compressed")["text"][0]
    assert [p.interest for p in view.pool] == mine("02_pool/matches").sort("rank")["interest"].to_list()
    assert [i.interest for i in view.interests] == mine("03_interests/interests").sort("interest_id")[
        "interest"
    ].to_list()
    tags = mine("04_tags/tags").sort("rank")
    assert [(t.tag, t.interest) for t in view.tags] == tags.select("tag", "interest").rows()
    phi = _table(finished_run, "05_phi/tag_categories")
    first = view.tags[0]
    assert (
        first.categories
        == phi.filter((pl.col("tag") == first.tag) & (pl.col("rank") <= 3)).sort("rank")["category"].to_list()
    )
    target = mine("00_split/users")["target_item_id"][0]
    assert view.target is not None and view.target.item_id == target and view.target.title
    json.dumps(view.model_dump(mode="json"))  # JSON-ready for the HTTP server


def test_unknown_user_names_the_runs_size_and_examples(service: RecommendationService) -> None:
    with pytest.raises(UnknownUser) as e:
        service.recommend("no-such-user")
    msg = str(e.value)
    assert "'no-such-user' is not in run" in msg and "holds 8 users" in msg
    assert all(u in msg for u in service.users()[:3])
    assert isinstance(e.value, DataError)  # exit code 2 on the command line, like every DataError


def test_a_folder_that_is_not_a_finished_run_says_what_is_missing(finished_run: Path, tmp_path: Path) -> None:
    with pytest.raises(NotARun, match="no such run folder"):
        RecommendationService.open(tmp_path / "missing")
    with pytest.raises(NotARun, match=re.escape("not a run folder (no config.json)")):
        RecommendationService.open(finished_run.parent)  # runs/, not runs/<name>/
    half = tmp_path / "half"
    shutil.copytree(finished_run, half, ignore=shutil.ignore_patterns("06_tritower", "*.sqlite"))
    (half / "10_explanations" / "done.json").unlink()
    with pytest.raises(NotARun) as e:
        RecommendationService.open(half)
    msg = str(e.value)
    assert "stage 'explanations' is not done (no 10_explanations/done.json)" in msg
    assert f"recgpt run --config {half / 'config.json'} --runs-dir {tmp_path} --name half" in msg  # moved run
    shutil.rmtree(half / "08_fusion")
    with pytest.raises(NotARun, match=re.escape("stage 'fusion' is not done (no <NN>_fusion/ folder)")):
        RecommendationService.open(half)


def test_done_stage_with_a_missing_table_is_named(finished_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run, ignore=shutil.ignore_patterns("06_tritower", "*.sqlite"))
    (run / "04_tags" / "tags.parquet").unlink()
    with pytest.raises(
        NotARun, match=re.escape("04_tags/tags.parquet is missing although stage 'tags' is marked done")
    ):
        RecommendationService.open(run)


def test_shared_across_threads_and_catalogue_loaded_once(
    finished_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    load = recgpt.datasets.load_dataset

    def counting(spec: str) -> Any:
        calls.append(spec)
        return load(spec)

    monkeypatch.setattr(recgpt.datasets, "load_dataset", counting)
    svc = RecommendationService.open(finished_run)
    assert calls == []  # lazily: opening reads only the run's tables
    users = svc.users() * 4
    with ThreadPoolExecutor(max_workers=8) as pool:
        got = list(pool.map(lambda u: svc.recommend(u, k=10), users))
    assert len(calls) == 1
    assert got == [svc.recommend(u, k=10) for u in users]


def test_import_does_not_load_torch_or_the_pipeline() -> None:
    code = (
        "import sys, recgpt.serving; "
        "print(sorted(m for m in ('torch', 'recgpt.pipeline') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_served_explanation_says_who_wrote_it(
    service: RecommendationService, finished_run: Path
) -> None:
    served = _table(finished_run, "10_explanations/served")
    sources = {(u, r): s for u, r, s in served.select("user_id", "rank", "source").iter_rows()}
    for user in service.users():
        for r in service.recommend(user, k=5):
            assert r.explanation_source == sources.get((user, r.rank))
            if r.explanation is not None:
                assert r.explanation_source in ("llm", "template:pair", "template:item")
                assert (r.explanation_source == "template:item") == r.item_only
