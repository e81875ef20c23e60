"""`recgpt serve` and `recgpt nearline --store`: options, clear exits, and the worker as its own process."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

import recgpt.cli.serve
from recgpt.cli.app import app
from recgpt.serving.events import EventIn
from recgpt.serving.store import Store
from tests.serving.test_api import Broken, NewestFirst

runner = CliRunner()


def test_serve_help_names_its_options() -> None:
    out = runner.invoke(app, ["serve", "--help"], env={"COLUMNS": "120"}).output
    for option in (
        "--run",
        "--store",
        "--host",
        "--port",
        "--api-key",
        "RECGPT_API_KEY",
        "--workers",
        "--llm",
    ):
        assert option in out
    assert "--max-staleness" in out


def test_serve_refuses_a_folder_that_is_no_run_and_writes_nothing_there(tmp_path: Path) -> None:
    got = runner.invoke(app, ["serve", "--run", str(tmp_path), "--port", "0"])
    assert got.exit_code == 2 and "not a run folder" in got.output
    assert list(tmp_path.iterdir()) == []


def test_nearline_needs_events_or_store(finished_run: Path) -> None:
    for extra in ([], ["--events", "e.csv", "--store", "default"]):
        got = runner.invoke(app, ["nearline", "--run", str(finished_run), *extra])
        assert got.exit_code == 2 and "--store" in got.output


@pytest.mark.parametrize("refresher", [NewestFirst, Broken])
def test_nearline_store_once_refreshes_the_queue_and_exits(
    refresher: type, finished_run: Path, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(recgpt.cli.serve, "refresher_for", lambda run, llm: refresher())
    with Store.open(store_url) as store:
        event = EventIn(event_id=1, user_id="u1", item_id="9", behavior="click", timestamp=5)
        store.add_events([event])
        got = runner.invoke(app, ["nearline", "--run", str(finished_run), "--store", store_url, "--once"])
        assert got.exit_code == 0, got.output
        current = store.current_list("u1")
        if refresher is NewestFirst:
            assert "1 user(s) refreshed, 0 failed" in got.output and "list version 1" in got.output
            assert current is not None and current.source == "nearline" and current.items[0]["item_id"] == "9"
            assert store.queue_stats()["pending"] == 0
        else:
            assert "0 user(s) refreshed, 1 failed" in got.output and "the LLM is down" in got.output
            assert current is None and store.queue_stats()["pending"] == 1


def test_trusted_hosts_on_loopback_and_elsewhere() -> None:
    assert recgpt.cli.serve.trusted_hosts("127.0.0.1", []) == ["127.0.0.1", "localhost"]
    assert recgpt.cli.serve.trusted_hosts("127.0.0.1", ["box.lan"]) == ["127.0.0.1", "localhost", "box.lan"]
    assert recgpt.cli.serve.trusted_hosts("0.0.0.0", []) is None
