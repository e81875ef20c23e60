"""The web page over a finished run: index, a user's every section, unknown users, escaping, the list fragment.

These tests mount the page router on a bare FastAPI app whose `app.state` holds what the server's app
holds (the run's `RecommendationService`, no event store), so they need neither the API nor a database.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import polars as pl
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from recgpt.data.runstore import RunStore
from recgpt.serving import TABLES, RecommendationService
from recgpt.serving.web import STATIC, mount_static, router

EVIL = '<script>alert("pwned")</script>'


def page_app(service: RecommendationService) -> FastAPI:
    """The router on an app that keeps the server's state shape (`app.state.service`, `.store`)."""
    app = FastAPI()
    app.state.service = service
    app.state.store = None
    app.include_router(router)
    mount_static(app)
    return app


@pytest.fixture(scope="module")
def service(finished_run: Path) -> RecommendationService:
    return RecommendationService.open(finished_run)


@pytest.fixture(scope="module")
def client(service: RecommendationService) -> TestClient:
    return TestClient(page_app(service))


def test_index_explains_and_links_the_runs_users(client: TestClient, service: RecommendationService) -> None:
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "Recommendations, and why" in r.text and 'action="/ui/find"' in r.text
    for user in service.users():
        assert f'href="/ui/users/{user}"' in r.text
    assert '<link rel="stylesheet" href="/static/style.css">' in r.text


def test_search_box_goes_to_the_users_page(client: TestClient) -> None:
    r = client.get("/ui/find", params={"user_id": " 42 "}, follow_redirects=False)
    assert (r.status_code, r.headers["location"]) == (303, "/ui/users/42")
    r = client.get("/ui/find", params={"user_id": "a b/c?"}, follow_redirects=False)
    assert r.headers["location"] == "/ui/users/a%20b%2Fc%3F"
    assert client.get("/ui/find", follow_redirects=False).headers["location"] == "/"


def test_user_page_shows_every_section(client: TestClient, service: RecommendationService) -> None:
    user = service.users()[0]
    view = service.view(user)
    r = client.get(f"/ui/users/{user}")
    assert r.status_code == 200
    html = r.text
    for section in ("history", "pool", "interests", "tags", "list", "event"):
        assert f'id="{section}"' in html
    assert "unknown-banner" not in html
    assert view.history is not None
    assert f"<b>{view.history.tokens}</b> tokens" in html and f"<b>{view.history.full_tokens}</b>" in html
    assert _text(view.history.text.splitlines()[0]) in html
    assert all(_text(p.interest) in html for p in view.pool)
    assert all(_text(i.interest) in html for i in view.interests)
    assert all(_text(t.tag) in html for t in view.tags)
    assert html.count('<tr data-item="') == len(view.recommendations) == 10
    for rec in view.recommendations:
        assert _text(rec.title or rec.item_id) in html
        assert (
            f'<span class="badge {"recgpt" if rec.channel == "recgpt" else "classic"}">{rec.channel}</span>'
            in html
        )
    explained = [rec for rec in view.recommendations if rec.explanation]
    assert explained and all(_text(rec.explanation) in html for rec in explained)
    assert html.count(">LLM</span>") + html.count(">template</span>") >= len(explained)
    # the event form: item (with the catalogue as suggestions), behaviour, value, API key
    for field in ('id="ev-item"', 'list="catalogue"', 'id="ev-behavior"', 'id="ev-value"', 'id="ev-key"'):
        assert field in html
    assert html.count("<option value=") >= len(service.catalogue())
    assert '<option value="click" selected>' in html and 'value="search"' not in html
    assert 'src="/static/app.js"' in html


def test_k_cuts_the_list(client: TestClient, service: RecommendationService) -> None:
    user = service.users()[1]
    assert client.get(f"/ui/users/{user}", params={"k": 3}).text.count('<tr data-item="') == 3
    assert client.get(f"/ui/users/{user}", params={"k": 0}).status_code == 422


def test_unknown_user_gets_the_banner_and_no_error(client: TestClient) -> None:
    r = client.get("/ui/users/nobody-here")
    assert r.status_code == 200
    assert 'id="unknown-banner"' in r.text and "fallback list" in r.text
    assert 'id="history"' not in r.text and 'id="event"' in r.text
    frag = client.get("/ui/users/nobody-here/list")
    assert frag.status_code == 200 and "fallback list" in frag.text


def test_list_fragment_is_the_pages_list(client: TestClient, service: RecommendationService) -> None:
    user = service.users()[2]
    page = client.get(f"/ui/users/{user}").text
    frag = client.get(f"/ui/users/{user}/list")
    assert frag.status_code == 200 and "<html" not in frag.text
    rows = re.findall(r'<tr data-item="([^"]+)">', frag.text)
    assert rows == re.findall(r'<tr data-item="([^"]+)">', page)
    assert "X-List-Version" in frag.headers


def test_untrusted_titles_are_shown_escaped(finished_run: Path, service: RecommendationService) -> None:
    user = service.users()[0]
    first = service.recommend(user, k=1)[0].item_id
    run = RunStore.open(finished_run)
    tables = {stage: run.read(stage, table) for stage, table in TABLES}
    config = json.loads((finished_run / "config.json").read_text())
    items = pl.DataFrame(
        {"item_id": [first], "title": [EVIL], "categories": [["<b>bold</b>"]]},
        schema={"item_id": pl.String, "title": pl.String, "categories": pl.List(pl.String)},
    )
    evil = TestClient(page_app(RecommendationService(finished_run, config, tables, items=items)))
    for path in (f"/ui/users/{user}", f"/ui/users/{user}/list"):
        html = evil.get(path).text
        assert EVIL not in html and "<b>bold</b>" not in html
        assert "&lt;script&gt;alert(&#34;pwned&#34;)&lt;/script&gt;" in html
    odd = evil.get("/ui/users/%3Cscript%3E").text  # the user id is untrusted, too
    assert "<script>" not in odd and "User <code>&lt;script&gt;</code>" in odd


def test_page_reads_the_store_list_and_events(service: RecommendationService, tmp_path: Path) -> None:
    """With an event store, the list is the store's current version and the user's events are listed."""
    from recgpt.serving.events import EventIn
    from recgpt.serving.store import Store

    user = service.users()[3]
    recs = [r.model_dump(mode="json") for r in service.recommend(user, k=5)]
    with Store.open(None, run_dir=tmp_path) as store:
        store.seed_lists({user: recs})
        store.add_events([EventIn(event_id=7, user_id=user, item_id="i1", behavior="click", timestamp=86400)])
        rotated = [{**d, "rank": i} for i, d in enumerate([*recs[1:], {**recs[0], "title": EVIL}], start=1)]
        store.put_list(user, rotated, "nearline")
        app = page_app(service)
        app.state.store = store
        client = TestClient(app)
        html = client.get(f"/ui/users/{user}").text
        events = client.get(f"/ui/users/{user}/events").text
    rows = re.findall(r'<tr data-item="([^"]+)">', html)
    assert rows == [d["item_id"] for d in rotated]
    assert 'data-version="2"' in html and "by <b>nearline</b>" in html
    assert "for this user <small>(1)</small>" in html and "1970-01-02 00:00:00 UTC" in html
    assert "<html" not in events and '<td class="num">7</td>' in events and "click" in events
    assert EVIL not in html and "&lt;script&gt;" in html


def test_server_app_serves_the_pages_from_its_live_lists(finished_run: Path, tmp_path: Path) -> None:
    """In `create_app`'s server the page shows the list the API serves: its version, and for an unknown
    user the popularity fallback under the banner."""
    from recgpt.serving.app import create_app
    from recgpt.serving.store import Store

    with Store.open(f"sqlite:///{tmp_path / 'serving.db'}") as store:
        app = create_app(finished_run, store, api_key="k")
        with TestClient(app) as client:
            user = app.state.live.service.users()[0]
            page = client.get(f"/ui/users/{user}").text
            api = client.get(f"/v1/users/{user}/recommendations").json()
            assert re.findall(r'<tr data-item="([^"]+)">', page) == [r["item_id"] for r in api["items"]]
            assert f'data-version="{api["version"]}"' in page and "unknown-banner" not in page
            odd = client.get("/ui/users/nobody-here").text
            fallback = client.get("/v1/users/nobody-here/recommendations").json()
            assert fallback["fallback"] and 'id="unknown-banner"' in odd and "fallback list" in odd
            assert re.findall(r'<tr data-item="([^"]+)">', odd) == [r["item_id"] for r in fallback["items"]]
            assert odd.count('<span class="badge fallback">') == len(fallback["items"]) + 1  # + the heading
            assert client.get("/static/app.js").status_code == 200


def test_static_files_are_served_and_load_nothing_from_elsewhere(client: TestClient) -> None:
    for name in ("app.js", "style.css"):
        r = client.get(f"/static/{name}")
        assert r.status_code == 200 and r.text == (STATIC / name).read_text()
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", r.text, re.I), name


def _text(s: str) -> str:
    """`s` as the page's HTML holds it (Jinja2's autoescape)."""
    return (
        s.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&#34;")
        .replace("'", "&#39;")
    )
