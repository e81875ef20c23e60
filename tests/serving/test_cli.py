"""`recgpt recommend`: the service's list as a table or JSON; exit code 2 on bad input."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from recgpt.cli.app import app
from recgpt.serving import RecommendationService

runner = CliRunner()


def _invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["recommend", *args], env={"COLUMNS": "80"})
    return result.exit_code, result.output


def test_table_shows_item_channel_tag_interest_and_explanation(finished_run: Path) -> None:
    svc = RecommendationService.open(finished_run)
    user = svc.users()[0]
    recs = svc.recommend(user, k=5)
    code, out = _invoke("--run", str(finished_run), "--user", user, "--k", "5")
    assert code == 0, out
    for header in ("rank", "item", "channel", "tag", "interest", "explanation"):
        assert header in out
    assert recs[0].title and recs[0].title[:12] in out
    assert recs[0].explanation and recs[0].explanation[:12] in out
    assert all(r.channel in out for r in recs)
    assert f"{svc.explain_top} of 5 items explained" in out
    assert all(len(line) <= 80 for line in out.splitlines())  # readable at 80 columns


def test_json_is_the_services_answer(finished_run: Path) -> None:
    svc = RecommendationService.open(finished_run)
    user = svc.users()[1]
    code, out = _invoke("--run", str(finished_run), "--user", user, "--k", "4", "--json")
    assert code == 0, out
    payload = json.loads(out)
    assert (payload["user_id"], payload["k"]) == (user, 4)
    assert payload["recommendations"] == [r.model_dump(mode="json") for r in svc.recommend(user, k=4)]


def test_bad_input_exits_2_with_the_reason(finished_run: Path, tmp_path: Path) -> None:
    code, out = _invoke("--run", str(finished_run), "--user", "no-such-user")
    assert code == 2 and "is not in run" in out and "holds 8 users" in out
    code, out = _invoke("--run", str(tmp_path), "--user", "1")
    assert code == 2 and "not a run folder" in out
    code, out = _invoke("--run", str(finished_run), "--user", "1", "--k", "0")
    assert code == 2


def test_help_names_every_option_at_80_columns() -> None:
    result = runner.invoke(app, ["recommend", "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0
    assert all(len(line) <= 80 for line in result.output.splitlines())
    for opt in ("--run", "--user", "--k", "--json"):
        assert opt in result.output


def test_templates_carry_a_badge(finished_run: Path) -> None:
    svc = RecommendationService.open(finished_run)
    user = next(u for u in svc.users() if any(r.item_only for r in svc.recommend(u, k=3)))
    result = runner.invoke(
        app, ["recommend", "--run", str(finished_run), "--user", user, "--k", "3"], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0 and "(template, item only)" in result.output
