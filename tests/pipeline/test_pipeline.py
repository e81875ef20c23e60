"""The whole RecGPT chain with a scripted LLM on a slice of the bundled data: tables, resume, leakage."""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from pydantic import ValidationError
from rich.console import Console

from recgpt.data.split import EvalTask, LeakageError
from recgpt.intent.context import UserContext
from recgpt.intent.explanations import EXPLANATIONS_SCHEMA
from recgpt.intent.interests import FAILURES_SCHEMA, INTERESTS_SCHEMA
from recgpt.intent.phi import TAG_CATEGORY_SCHEMA
from recgpt.intent.tags import TAGS_SCHEMA
from recgpt.llm.backends.fake import FakeBackendCrash
from recgpt.pipeline import STAGE_NAMES, RunConfig, RunSummary, parse_assignments, run_pipeline
from recgpt.pipeline.config import quickstart_config
from recgpt.retrieval.fusion import CANDIDATE_SCHEMA
from tests.conftest import HashEncoder, fake_backend, fast_config

QUIET = Console(quiet=True)
DOWNSTREAM_OF_TAGS = {"tags", "phi", "candidates", "tune", "fusion", "explanations", "eval", "report"}


def _run(cfg: RunConfig, backend: Any) -> RunSummary:
    return run_pipeline(cfg, backend=backend, encoder=HashEncoder(), console=QUIET, progress=False)


@pytest.fixture(scope="module")
def first_run(
    slice_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[RunConfig, RunSummary, Any]:
    # the default candidates of the classic channel, SASRec included (other scripted runs skip it)
    cfg = fast_config(slice_path, tmp_path_factory.mktemp("runs"), baselines=RunConfig().baselines)
    backend = fake_backend()
    return cfg, _run(cfg, backend), backend


def test_every_stage_writes_its_contract_tables(first_run: tuple[RunConfig, RunSummary, Any]) -> None:
    cfg, summary, backend = first_run
    assert [o.name for o in summary.outcomes] == list(STAGE_NAMES)
    assert all(o.status == "ran" for o in summary.outcomes) and backend.generate_calls > 0
    run = summary.run_dir
    contracts = {
        "03_interests/interests": INTERESTS_SCHEMA,
        "03_interests/failures": FAILURES_SCHEMA,
        "04_tags/tags": TAGS_SCHEMA,
        "05_phi/tag_categories": TAG_CATEGORY_SCHEMA,
        "07_candidates/candidates": CANDIDATE_SCHEMA,
        "08_fusion/fused": CANDIDATE_SCHEMA,
        "10_explanations/explanations": EXPLANATIONS_SCHEMA,
    }
    for name, schema in contracts.items():
        assert pl.read_parquet(run / f"{name}.parquet").columns == list(schema), name
    for stage in STAGE_NAMES:
        assert (next(run.glob(f"*_{stage}")) / "done.json").exists()
    users = pl.read_parquet(run / "00_split/users.parquet")["user_id"].to_list()
    assert len(users) == cfg.users
    # every user-specific table covers exactly the sampled users
    for name in (
        "01_compress/compressed",
        "03_interests/interests",
        "04_tags/tags",
        "07_candidates/candidates",
    ):
        assert sorted(pl.read_parquet(run / f"{name}.parquet")["user_id"].unique()) == users, name
    cand = pl.read_parquet(run / "07_candidates/candidates.parquet")
    assert cand["tag"].is_not_null().all() and cand["interest"].is_not_null().all()  # provenance kept
    fused = pl.read_parquet(run / "08_fusion/fused.parquet")
    tuned = json.loads((run / "07_tune/done.json").read_text())["stats"]
    for stage in ("03_interests", "04_tags"):  # copies of the worked example are counted, kept answers too
        assert json.loads((run / stage / "done.json").read_text())["stats"]["example_copies"] >= 0
    assert set(fused["channel"]) == {"recgpt", tuned["baseline"]}
    served = pl.read_parquet(run / "10_explanations/served.parquet")
    assert served.height == len(users) * cfg.explain_top and served["explanation"].is_not_null().all()
    results = json.loads((run / "results.json").read_text())
    rows = [r["model"] for r in results["table"]]
    assert rows[:4] == ["recgpt", "fused", "user-tower", tuned["baseline"]]  # the classic channel first
    assert sorted(rows[3:]) == ["itemknn", "markov", "mostpop", "sasrec"]  # SASRec is a row
    assert results["users"]["sampled"] == cfg.users and "TagHR@30" in results["table"][0]
    assert {s["stage"] for s in results["throughput"]} >= {"interests", "tags", "tritower"}
    lists = pl.read_parquet(run / "09_eval/lists.parquet")
    assert sorted(lists["user_id"].unique()) == users  # evaluated on the sampled users only
    html = (run / "report.html").read_text()
    assert "Walkthrough" in html and html.count("<h3>User ") == cfg.report_users
    ledger = json.loads((run / "ledger.json").read_text())
    assert set(ledger["stages"]) == {"interests", "tags", "explanations"}
    assert ledger["stages"]["interests"]["requests"] == cfg.users


def test_resume_skips_finished_stages_and_a_config_change_reruns_only_downstream(
    first_run: tuple[RunConfig, RunSummary, Any], tmp_path: Path
) -> None:
    cfg, summary, _ = first_run
    shutil.copytree(summary.run_dir, tmp_path / cfg.name)  # type: ignore[operator]
    cfg = cfg.model_copy(update={"runs_dir": tmp_path})
    again = fake_backend()
    resumed = _run(cfg, again)
    assert set(resumed.status().values()) == {"skipped"}
    assert again.generate_calls == 0 and resumed.model_calls == 0
    # the ledger of the run still accounts for the LLM work done when the stages ran
    assert resumed.ledger.stage("interests").calls == summary.ledger.stage("interests").calls > 0

    changed = fake_backend()
    rerun = _run(cfg.model_copy(update={"tags": cfg.tags.model_copy(update={"count": 2})}), changed)
    ran = {name for name, status in rerun.status().items() if status == "ran"}
    assert ran == DOWNSTREAM_OF_TAGS  # tri-tower, compression, pool and interests kept
    tags = pl.read_parquet(rerun.run_dir / "04_tags/tags.parquet")
    assert tags.group_by("user_id").len()["len"].max() <= 2
    # only the new tag prompts (and explanations of pairs not seen before) reached the model
    assert rerun.ledger.stage("tags").calls == cfg.users and rerun.ledger.stage("interests").calls > 0


def test_a_killed_llm_stage_resumes_from_the_cache(slice_path: Path, tmp_path: Path) -> None:
    cfg = fast_config(slice_path, tmp_path)  # 8 users; the fake backend generates one request per call
    with pytest.raises(FakeBackendCrash):
        _run(cfg, fake_backend(crash_on_call=4))
    interests_dir = tmp_path / "t" / "03_interests"
    assert not (interests_dir / "done.json").exists()
    resumed = _run(cfg, fake_backend())
    stats = resumed.ledger.stage("interests")
    assert stats.cache_hits == 3 and stats.calls == 5  # the 3 answers before the crash were kept
    assert (interests_dir / "done.json").exists()


def test_a_leaky_context_aborts_the_llm_stage(
    slice_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import recgpt.pipeline.stages as stages_mod

    real = stages_mod.contexts_from_tables

    def leaky(task: EvalTask, dataset: Any, users: Sequence[str], *args: Any) -> list[UserContext]:
        ctxs = real(task, dataset, users, *args)
        titles = dataset.items["title"].to_list()
        i = next(i for i, t in enumerate(task.targets) if len(titles[int(t[0])]) >= 8)
        leaked = f"{ctxs[i].history}\ntoday (rated) | {titles[int(task.targets[i][0])]}"
        ctxs[i] = dataclasses.replace(ctxs[i], history=leaked)
        return ctxs

    monkeypatch.setattr(stages_mod, "contexts_from_tables", leaky)
    backend = fake_backend()
    with pytest.raises(LeakageError, match="held-out item"):
        _run(fast_config(slice_path, tmp_path), backend)
    assert backend.generate_calls == 0  # caught before a single generation
    assert not (tmp_path / "t" / "03_interests" / "done.json").exists()
    assert (tmp_path / "t" / "02_pool" / "done.json").exists()


def test_config_is_validated(slice_path: Path, tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="unknown baseline"):
        fast_config(slice_path, tmp_path, baseline="nope")
    with pytest.raises(ValidationError):
        fast_config(slice_path, tmp_path, tags={"countt": 3})
    with pytest.raises(ValidationError, match="beta"):
        fast_config(slice_path, tmp_path, fusion={"beta": 2.0})
    assert parse_assignments(["tags.count=5", "fusion.beta=0.7", "llm.spec=openai:m@http://x/v1"]) == {
        "tags": {"count": 5},
        "fusion": {"beta": 0.7},
        "llm": {"spec": "openai:m@http://x/v1"},
    }
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_assignments(["tags.count"])
    q = quickstart_config(users=10)
    assert q.users == 10 and q.dataset == "bundled:ml-latest-small" and q.interests.count < 5


def test_unknown_dataset_folder_is_a_clear_error(tmp_path: Path) -> None:
    from recgpt.data.errors import DataError

    with pytest.raises(DataError):
        run_pipeline(
            RunConfig(dataset=str(tmp_path / "missing"), runs_dir=tmp_path), console=QUIET, progress=False
        )


def test_the_guard_tolerates_duplicate_titles_but_still_catches_leaks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A held-out item whose title is also the title of an item the user saw (ml-100k lists 18 films
    twice; Amazon variants share their cut titles) cannot be told apart from it: not a leak. Any other
    held-out title still is."""
    import tests.conftest as toy_mod
    from recgpt.behavior.items import clean_title
    from recgpt.data.leakage import shadowed_items
    from recgpt.data.split import make_split
    from recgpt.intent.context import guard_requests, prompt_text
    from recgpt.intent.interests import InterestsConfig, interest_request

    twin = toy_mod.ITEMS["s3"][0]  # u1's held-out test item
    monkeypatch.setitem(toy_mod.ITEMS, "s1", (twin, ["Sci-Fi"]))  # u1 saw a twin listing of it
    sp = make_split(toy_mod.toy_dataset())
    titles = dict(
        zip(sp.dataset.items["item_id"].to_list(), sp.dataset.items["title"].to_list(), strict=True)
    )
    assert shadowed_items(sp, sp.test, "u1", titles, alias=clean_title) == {"s3"}

    def request(user: str, history: str) -> Any:
        ctx = UserContext(user_id=user, asof_ts=sp.test.asof.point(user)[0], history=history)
        return interest_request(InterestsConfig(), ctx)

    twin_mention = request("u1", f"1 year ago (rated) | {twin}")
    with pytest.raises(LeakageError):  # the plain split guard cannot tell the twins apart
        sp.guard_text("u1", prompt_text(twin_mention), sp.test)
    guard_requests(sp, sp.test, [twin_mention])  # the exemption (recgpt.data.leakage) can
    leak = request("u2", f"today (rated) | {toy_mod.ITEMS['r3'][0]}")  # u2's held-out item, no twin
    with pytest.raises(LeakageError, match="r3"):
        guard_requests(sp, sp.test, [twin_mention, leak])


def test_one_llm_stage_can_have_its_own_backend(slice_path: Path, tmp_path: Path) -> None:
    """`llm.stages` (`recgpt run --stage-llm tags=SPEC`): an aligned LLM_IT serves the tags stage only;
    only the stages it serves change identity, and its engine shares the run's ledger."""
    from recgpt.data.dataset import Dataset
    from recgpt.data.runstore import RunStore
    from recgpt.pipeline.resources import Resources
    from recgpt.pipeline.stages import RECGPT

    cfg = RunConfig(dataset=str(slice_path), runs_dir=tmp_path, llm={"spec": "fake"})
    tuned = cfg.model_copy(update={"llm": cfg.llm.model_copy(update={"stages": {"tags": "fake:aligned"}})})
    base_keys, tuned_keys = RECGPT.keys(cfg, "fp"), RECGPT.keys(tuned, "fp")
    changed = {n for n in base_keys if base_keys[n] != tuned_keys[n]}
    assert "tags" in changed and not changed & {"split", "compress", "pool", "interests", "tritower"}
    assert tuned.llm.spec_for("tags") == "fake:aligned" and tuned.llm.spec_for("interests") == "fake"
    with pytest.raises(ValueError, match="unknown LLM stage"):
        RunConfig(llm={"stages": {"tagz": "fake"}})

    res = Resources(tuned, Dataset.load(slice_path), RunStore(tmp_path / "r"))
    made: list[str] = []
    res.make_engine = lambda spec, ledger=None: (
        made.append(spec)
        or type(  # type: ignore[method-assign]
            "E",
            (),
            {"spec": spec, "ledger": ledger if ledger is not None else object(), "close": lambda self: None},
        )()
    )
    interests = res.engine("interests")
    assert res.engine("explanations") is interests and interests.spec == "fake"
    tags_engine = res.engine("tags")
    assert tags_engine.spec == "fake:aligned" and tags_engine.ledger is interests.ledger
    assert res.engine("tags") is tags_engine and made == ["fake", "fake:aligned"]
    res.close()
