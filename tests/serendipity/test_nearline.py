"""Nearline refresh: new events for two users change only their profile and cache rows, fast."""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl
import pytest
from rich.console import Console

from recgpt.data.runstore import RunNotFinished
from recgpt.pipeline.seral import run_seral
from recgpt.serendipity.nearline import EventsError, refresh, serving_table
from tests.conftest import HashEncoder
from tests.pipeline.seral_fixtures import seral_backend, seral_config


@pytest.fixture(scope="module")
def cached_run(slice_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SERAL run finished up to the cache (what nearline serves from); read-only."""
    cfg = seral_config(slice_path, tmp_path_factory.mktemp("nearline-runs"))
    summary = run_seral(
        cfg,
        backend=seral_backend(),
        encoder=HashEncoder(),
        console=Console(quiet=True),
        progress=False,
        until="cache",
    )
    return summary.run_dir


@pytest.fixture()
def run(cached_run: Path, tmp_path: Path) -> Path:
    out = tmp_path / cached_run.name
    shutil.copytree(cached_run, out)
    return out


def _new_events(run: Path, users: list[str], per_user: int = 3) -> pl.DataFrame:
    """Events for `users` on catalogue items they never met, after everything in the log."""
    from recgpt.data.dataset import Dataset

    cfg = pl.read_json(run / "config.json")
    ds = Dataset.load(cfg["dataset"][0])
    last = int(ds.events["timestamp"].max())  # type: ignore[arg-type]
    rows = []
    for u in users:
        seen = set(ds.events.filter(pl.col("user_id") == u)["item_id"].to_list())
        fresh = [i for i in ds.items["item_id"].to_list() if i not in seen][:per_user]
        rows += [(u, i, last + 60 * (n + 1), "rating") for n, i in enumerate(fresh)]
    return pl.DataFrame(rows, schema=["user_id", "item_id", "timestamp", "behavior"], orient="row")


def _others_equal(before: pl.DataFrame, after: pl.DataFrame, changed: list[str]) -> None:
    keep = ~pl.col("user_id").is_in(changed)
    assert before.filter(keep).equals(after.filter(keep))


def test_refresh_changes_only_the_two_users(run: Path, tmp_path: Path) -> None:
    cache0 = pl.read_parquet(run / "06_cache/cache.parquet")
    prof0 = pl.read_parquet(run / "02_profiles/profiles.parquet")
    users = sorted(cache0["user_id"].unique().to_list())[:2]
    events = _new_events(run, users)
    path = tmp_path / "new.csv"
    events.write_csv(path)
    backend = seral_backend()
    report = refresh(run, path, backend=backend)
    assert report.accepted == events.height and report.rejected == []
    assert [u.user_id for u in report.users] == users
    assert all(u.seconds > 0 and u.events == 3 and u.cache_rows > 0 for u in report.users)
    assert all(u.profile_before != u.profile_after for u in report.users)
    assert report.latency()["users"] == 2 and report.latency()["max_s"] > 0
    cache1, prof1 = serving_table(run, "cache"), serving_table(run, "profiles")
    _others_equal(cache0, cache1, users)
    _others_equal(prof0, prof1, users)
    for u in users:  # their rows were rewritten: new profile version, as of after the new events
        mine = cache1.filter(pl.col("user_id") == u)
        assert set(mine["profile_version"]) == {next(r.profile_after for r in report.users if r.user_id == u)}
        assert prof1.filter(pl.col("user_id") == u)["asof_ts"].min() > events["timestamp"].max()  # type: ignore[operator]
    # the run's own stage tables (what its evaluation read) are untouched
    assert pl.read_parquet(run / "06_cache/cache.parquet").equals(cache0)
    assert pl.read_parquet(run / "02_profiles/profiles.parquet").equals(prof0)
    # a second refresh for one user keeps the other refreshed user's new rows exactly
    again = refresh(run, _new_events(run, users[:1], per_user=1), backend=seral_backend())
    assert [u.user_id for u in again.users] == users[:1]
    _others_equal(cache1, serving_table(run, "cache"), users[:1])
    assert pl.read_parquet(run / "nearline/events.parquet").height == events.height + 1


def test_unknown_users_and_items_are_rejected_and_bad_rows_named(run: Path, tmp_path: Path) -> None:
    cache = pl.read_parquet(run / "06_cache/cache.parquet")
    user = cache["user_id"][0]
    events = pl.DataFrame(
        {
            "user_id": [user, "nobody", user],
            "item_id": ["no-such-item", cache["item_id"][0], cache["item_id"][1]],
            "timestamp": [2_000_000_000] * 3,
            "behavior": ["rating"] * 3,
        }
    )
    report = refresh(run, events, backend=seral_backend())
    assert [r["row"] for r in report.rejected] == [1, 2] and report.accepted == 1
    assert "unknown item" in report.rejected[0]["reason"] and "not served" in report.rejected[1]["reason"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"user_id": "1", "item_id": "1", "timestamp": 5, "behavior": "rating"}\n'
        '{"user_id": "1", "item_id": "1", "timestamp": "soon", "behavior": "rating"}\n'
    )
    with pytest.raises(EventsError, match=r"bad.jsonl: row 2, field 'timestamp'"):
        refresh(run, bad, backend=seral_backend())
    missing = tmp_path / "missing.csv"
    missing.write_text("user_id,item_id,timestamp\n1,1,5\n")
    with pytest.raises(EventsError, match="missing column"):
        refresh(run, missing, backend=seral_backend())


def test_refresh_needs_a_finished_cache(tmp_path: Path) -> None:
    (tmp_path / "r" / "00_split").mkdir(parents=True)
    with pytest.raises(RunNotFinished, match="06_cache"):
        refresh(tmp_path / "r", pl.DataFrame(), backend=seral_backend())


def test_cli_nearline(run: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from recgpt.cli.app import app

    users = sorted(pl.read_parquet(run / "06_cache/cache.parquet")["user_id"].unique().to_list())[:1]
    path = tmp_path / "e.parquet"
    _new_events(run, users, per_user=1).write_parquet(path)
    out = CliRunner().invoke(app, ["nearline", "--run", str(run), "--events", str(path), "--llm", "fake"])
    assert out.exit_code == 0, out.output
    assert "1 event(s) applied" in out.output and "latency per user" in out.output
    bad = CliRunner().invoke(app, ["nearline", "--run", str(run), "--events", str(tmp_path / "x.txt")])
    assert bad.exit_code == 2
