"""The web page in a real browser: headless Debian Chromium (Playwright) against a real server on loopback.

The server is the app of `recgpt serve` (uvicorn, SQLite store, nearline worker thread) over the
scripted finished run, with a stand-in refresher that answers instantly: each refresh rotates the
user's run list by the number of events, so the refreshed list is known in advance. The browser looks
a user up, sends an event with the API key (first a wrong one: 401 on the page), waits for the new
list version, and saves a screenshot under `$RECGPT_ARTIFACTS` (or the test's tmp folder).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from recgpt.serving import RecommendationService
from tests.serving.conftest import require_or_skip

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
API_KEY = "browser-test-key"
WAIT_MS = 20_000


class RotatingRefresher:
    """A refresher with a known answer: the user's run list rotated left by the number of their events."""

    def __init__(self, service: RecommendationService) -> None:
        self.service = service

    def rotated(self, user_id: str, n: int) -> list[dict[str, Any]]:
        base = [r.model_dump(mode="json") for r in self.service.recommend(user_id, 1000)]
        n %= max(len(base), 1)
        return [{**d, "rank": i} for i, d in enumerate(base[n:] + base[:n], start=1)]

    def refresh(self, user_id: str, events: list[dict]) -> list[dict]:
        return self.rotated(user_id, len(events))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(finished_run: Path, tmp_path: Path) -> Iterator[tuple[str, Any, RotatingRefresher]]:
    """`recgpt serve`'s app on a free loopback port: (base URL, its store, its refresher)."""
    import uvicorn

    from recgpt.serving.app import create_app
    from recgpt.serving.store import Store

    refresher = RotatingRefresher(RecommendationService.open(finished_run))
    store = Store.open(f"sqlite:///{tmp_path / 'serving.db'}")
    app = create_app(finished_run, store, api_key=API_KEY, refresher=refresher, workers=True, poll_s=0.1)
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", store, refresher
    finally:
        srv.should_exit = True
        thread.join(30)
        store.close()


def _browser(p: Any) -> Any:
    if not CHROMIUM.is_file():
        require_or_skip("Chromium", f"{CHROMIUM} is missing (Debian package `chromium`)")
    return p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)


def _rows(page: Any) -> list[str]:
    return page.eval_on_selector_all("#list tr[data-item]", "rows => rows.map(r => r.dataset.item)")


def test_find_a_user_send_an_event_and_see_the_list_refresh(
    server: tuple[str, Any, RotatingRefresher], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        require_or_skip("Playwright", "the `playwright` package is not installed (dev extra)")
    base, store, refresher = server
    user = refresher.service.users()[0]
    before = [d["item_id"] for d in refresher.rotated(user, 0)][:10]
    after = [d["item_id"] for d in refresher.rotated(user, 1)][:10]
    with sync_playwright() as p:
        browser = _browser(p)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            requested: list[str] = []
            page.on("request", lambda r: requested.append(r.url))
            page.goto(base + "/")
            page.fill("#user", user)
            page.click("form.find button")
            page.wait_for_url(f"**/ui/users/{user}")
            assert _rows(page) == before
            assert page.get_attribute("#list", "data-version") == "1"

            page.fill("#ev-item", before[3])
            page.select_option("#ev-behavior", "purchase")
            page.fill("#ev-key", "wrong-key")
            page.click("#ev-send")
            page.wait_for_selector("#ev-result.fail", timeout=WAIT_MS)
            assert "401" in page.text_content("#ev-result")
            assert store.count_events() == 0

            page.fill("#ev-key", API_KEY)
            page.fill("#ev-item", "")  # past the form's own check: the API's 422 names the field
            page.evaluate("document.getElementById('ev-item').required = false")
            page.click("#ev-send")
            page.wait_for_selector("#ev-result.fail >> text=422", timeout=WAIT_MS)
            assert "events.0.item_id" in page.text_content("#ev-result")

            page.fill("#ev-item", before[3])
            page.fill("#ev-value", "4.5")
            page.click("#ev-send")
            page.wait_for_selector("#ev-result.ok", timeout=WAIT_MS)
            page.wait_for_function("document.getElementById('list').dataset.version === '2'", timeout=WAIT_MS)
            page.wait_for_selector("#list-status.done", timeout=WAIT_MS)
            assert _rows(page) == after
            assert "new version 2 landed" in page.text_content("#list-status")
            assert page.evaluate("localStorage.getItem('recgpt.apiKey')") == API_KEY
            events = store.user_events(user)
            assert [(e["item_id"], e["behavior"], e["value"]) for e in events] == [
                (before[3], "purchase", 4.5)
            ]
            assert str(events[0]["event_id"]) in page.text_content("#ev-result")
            assert str(events[0]["event_id"]) in page.text_content("#events")

            shots = Path(os.environ.get("RECGPT_ARTIFACTS") or tmp_path)
            shots.mkdir(parents=True, exist_ok=True)
            shot = shots / "serve-user-page.png"
            page.screenshot(path=str(shot), full_page=True)
            with capsys.disabled():  # shown in a quiet run, too: the page as the person saw it
                print(f"\nbrowser test screenshot: {shot}")

            page.set_viewport_size({"width": 400, "height": 800})  # a phone: nothing scrolls sideways
            assert page.evaluate("document.documentElement.scrollWidth") <= 400
            assert requested and all(u.startswith(base + "/") for u in requested), "loaded from elsewhere"
        finally:
            browser.close()
