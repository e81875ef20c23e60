"""The HTTP API over a finished scripted run, against SQLite and PostgreSQL (`store_url`): lists with their
provenance and version, the fallback for unknown users, keyed and validated writes, the nearline worker,
health and metrics."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

import recgpt.serving.worker
from recgpt.serving import RecommendationService, UnknownUser
from recgpt.serving.app import create_app
from recgpt.serving.store import Store
from recgpt.serving.worker import MAX_ATTEMPTS, RefreshWorker

KEY = "test-key-1234"
AUTH = {"X-API-Key": KEY}


class NewestFirst:
    """A scripted refresher: the item of the user's newest event on top, then nothing else."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def refresh(self, user_id: str, events: list[dict]) -> list[dict]:
        self.calls.append((user_id, len(events)))
        newest = events[-1]["item_id"]
        return [
            {
                "rank": 1,
                "item_id": newest,
                "title": None,
                "categories": [],
                "score": 1.0,
                "channel": "recgpt",
                "tag": "just seen",
                "interest": "whatever they clicked",
                "explained_interest": "whatever they clicked",
                "explanation": "Because you just looked at it",
                "item_only": False,
                "explanation_source": "llm",
            }
        ]


class Broken:
    def refresh(self, user_id: str, events: list[dict]) -> list[dict]:
        raise RuntimeError("the LLM is down")


class Stranger:
    def refresh(self, user_id: str, events: list[dict]) -> list[dict]:
        raise UnknownUser(f"user {user_id!r} is not in the run's dataset")


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    db = Store.open(store_url)
    try:
        yield db
    finally:
        db.close()


@pytest.fixture
def serve(finished_run: Path, store: Store) -> Iterator[Callable[..., TestClient]]:
    """Start an app over the scripted run and `store` (options as create_app's); stopped after the test."""
    clients: list[TestClient] = []

    def start(**options: Any) -> TestClient:
        options.setdefault("api_key", KEY)
        client = TestClient(create_app(finished_run, store, poll_s=0.05, **options))
        clients.append(client.__enter__())
        return client

    yield start
    for c in clients:
        c.__exit__(None, None, None)


@pytest.fixture(scope="module")
def service(finished_run: Path) -> RecommendationService:
    return RecommendationService.open(finished_run)


def click(event_id: int, user: str, item: str, ts: int = 2_000_000_000) -> dict[str, Any]:
    return {"event_id": event_id, "user_id": user, "item_id": item, "behavior": "click", "timestamp": ts}


def totals(families: dict[str, Any], name: str, label: str) -> dict[str, float]:
    """A counter's totals by one label, from parsed /metrics text."""
    return {s.labels[label]: s.value for s in families[name].samples if s.name.endswith("_total")}


def wait_for(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_known_user_gets_the_runs_list_with_provenance_and_version(serve, service) -> None:
    client = serve()
    user = service.users()[0]
    got = client.get(f"/v1/users/{user}/recommendations", params={"k": 5})
    assert got.status_code == 200
    body = got.json()
    assert (body["user_id"], body["version"], body["source"], body["fallback"]) == (user, 1, "run", False)
    assert body["created_at"] > 0
    want = [r.model_dump(mode="json") for r in service.recommend(user, 5)]
    assert body["items"] == want
    for key in ("channel", "tag", "interest", "explanation", "explanation_source"):
        assert all(key in item for item in body["items"])
    assert all(item["explanation"] for item in body["items"][: service.explain_top])
    assert [i["rank"] for i in client.get(f"/v1/users/{user}/recommendations").json()["items"]] == list(
        range(1, 11)
    )
    bad = client.get(f"/v1/users/{user}/recommendations", params={"k": 0})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "k"]


def test_unknown_user_gets_the_popular_fallback_flagged(serve) -> None:
    client = serve()
    got = client.get("/v1/users/never-seen-42/recommendations", params={"k": 4})
    assert got.status_code == 200
    body = got.json()
    assert (body["user_id"], body["fallback"], body["source"]) == ("never-seen-42", True, "fallback")
    items = body["items"]
    assert len(items) == 4 and [i["rank"] for i in items] == [1, 2, 3, 4]
    assert all(i["channel"] == "mostpop" and i["item_only"] is True for i in items)
    assert all(i["explanation_source"] == "template:item" and i["explanation"] for i in items)
    scores = [i["score"] for i in items]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0
    detail = client.get("/v1/users/never-seen-42").json()
    assert (detail["known"], detail["events"], detail["version"]) == (False, 0, None)
    assert [r["item_id"] for r in detail["recommendations"][:4]] == [i["item_id"] for i in items]


def test_user_and_item_details(serve, service) -> None:
    client = serve()
    user = service.users()[1]
    detail = client.get(f"/v1/users/{user}", params={"k": 3}).json()
    view = service.view(user, 3)
    assert detail["known"] is True and detail["version"] == 1 and detail["source"] == "run"
    assert [i["interest"] for i in detail["interests"]] == [i.interest for i in view.interests]
    assert [t["tag"] for t in detail["tags"]] == [t.tag for t in view.tags]
    assert len(detail["recommendations"]) == 3 and detail["serendipity"] is None
    item = detail["recommendations"][0]
    got = client.get(f"/v1/items/{item['item_id']}").json()
    assert (got["item_id"], got["title"], got["categories"]) == (
        item["item_id"],
        item["title"],
        item["categories"],
    )
    missing = client.get("/v1/items/no-such-item")
    assert missing.status_code == 404 and "no-such-item" in missing.json()["detail"]


def test_writes_need_the_key(serve, service) -> None:
    client = serve()
    batch = {"events": [click(1, service.users()[0], "1")]}
    for headers in ({}, {"X-API-Key": "wrong"}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        got = client.post("/v1/events", json=batch, headers=headers)
        assert got.status_code == 401, headers
        assert "X-API-Key" in got.json()["detail"]
    assert (
        client.post("/v1/events", json=batch, headers={"Authorization": f"Bearer {KEY}"}).status_code == 202
    )
    keyless = serve(api_key=None)
    got = keyless.post("/v1/events", json=batch, headers=AUTH)
    assert got.status_code == 401
    assert "--api-key" in got.json()["detail"] and "RECGPT_API_KEY" in got.json()["detail"]


def test_malformed_events_get_422_naming_the_field(serve, store) -> None:
    client = serve()
    cases = {
        "user_id": {"event_id": 1, "item_id": "1", "behavior": "click", "timestamp": 5},
        "item_id": {"event_id": 2, "user_id": "u", "behavior": "click", "timestamp": 5},
        "event_id": {"event_id": -3, "user_id": "u", "item_id": "1", "behavior": "click", "timestamp": 5},
        "colour": {**click(4, "u", "1"), "colour": "red"},
    }
    for field, event in cases.items():
        got = client.post("/v1/events", json={"events": [click(9, "u", "1"), event]}, headers=AUTH)
        assert got.status_code == 422, field
        assert field in json.dumps(got.json()["detail"]), (field, got.json())
    empty = client.post("/v1/events", json={"events": []}, headers=AUTH)
    assert empty.status_code == 422 and "events" in json.dumps(empty.json())
    not_json = client.post(
        "/v1/events", content=b"{nope", headers={**AUTH, "Content-Type": "application/json"}
    )
    assert not_json.status_code == 422
    assert store.count_events() == 0  # a refused batch writes nothing, not even its valid events


def test_body_limit_413_by_length_and_by_stream(serve, store) -> None:
    client = serve(max_body_bytes=2_000)
    big = {"events": [click(i, "u", str(i)) for i in range(40)]}
    assert client.post("/v1/events", json=big, headers=AUTH).status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is checked on the bytes read
        body = json.dumps(big).encode()
        for i in range(0, len(body), 500):
            yield body[i : i + 500]

    got = client.post("/v1/events", content=chunks(), headers={**AUTH, "Content-Type": "application/json"})
    assert got.status_code == 413 and "2000 bytes" in got.json()["detail"]
    small = {"events": [click(1, "u", "1")]}
    assert client.post("/v1/events", json=small, headers=AUTH).status_code == 202
    assert store.count_events() == 1


def test_events_are_idempotent_and_a_user_keeps_the_runs_list_until_refreshed(serve, service, store) -> None:
    client = serve()
    user = service.users()[0]
    batch = {"events": [click(10, user, "1"), click(11, user, "2"), click(12, "new-user", "3")]}
    first = client.post("/v1/events", json=batch, headers=AUTH)
    assert first.status_code == 202
    assert first.json() == {"accepted": 3, "duplicates": 0, "queued_users": sorted([user, "new-user"])} or (
        first.json()["accepted"] == 3 and set(first.json()["queued_users"]) == {user, "new-user"}
    )
    again = client.post("/v1/events", json=batch, headers=AUTH).json()
    assert (again["accepted"], again["duplicates"]) == (0, 3)
    assert store.count_events() == 3 and len(store.user_events(user)) == 2
    body = client.get(f"/v1/users/{user}/recommendations").json()
    assert (body["version"], body["source"]) == (1, "run")  # no worker: the run's list stays
    assert client.get(f"/v1/users/{user}").json()["events"] == 2


def test_in_process_worker_lands_a_new_version(serve, service, store) -> None:
    refresher = NewestFirst()
    client = serve(refresher=refresher, workers=True)
    user = service.users()[2]
    assert (
        client.post("/v1/events", json={"events": [click(20, user, "50")]}, headers=AUTH).status_code == 202
    )

    def refreshed() -> dict[str, Any] | None:
        body = client.get(f"/v1/users/{user}/recommendations").json()
        return body if body["version"] > 1 else None

    body = wait_for(refreshed)
    assert (body["version"], body["source"], body["fallback"]) == (2, "nearline", False)
    assert [i["item_id"] for i in body["items"]] == ["50"]
    assert refresher.calls == [(user, 1)]
    assert wait_for(lambda: store.queue_stats()["pending"] == 0)
    families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
    lag = {s.name: s.value for s in families["recgpt_refresh_lag_seconds"].samples}
    assert lag["recgpt_refresh_lag_seconds_count"] == 1
    assert totals(families, "recgpt_refreshes", "outcome") == {"ok": 1, "failed": 0, "unknown_user": 0}


def test_a_separate_worker_is_picked_up_and_a_failed_refresh_keeps_the_list(
    serve, service, store, store_url
) -> None:
    client = serve()
    user, other = service.users()[3], service.users()[4]
    events = {"events": [click(30, user, "7"), click(31, other, "8")]}
    assert client.post("/v1/events", json=events, headers=AUTH).status_code == 202
    second = Store.open(store_url)  # as `recgpt nearline --store` would: its own connection
    try:
        assert RefreshWorker(second, NewestFirst()).run_once() == 1
        assert RefreshWorker(second, Broken()).run_once() == 1
    finally:
        second.close()
    lists = wait_for(
        lambda: (
            [client.get(f"/v1/users/{u}/recommendations").json() for u in (user, other)]
            if max(client.get(f"/v1/users/{u}/recommendations").json()["version"] for u in (user, other)) > 1
            else None
        )
    )
    versions = sorted(b["version"] for b in lists)
    assert versions == [1, 2]  # one refreshed, the other (failed) keeps the run's list
    assert store.queue_stats()["pending"] == 1  # the failed user waits for another try


def test_healthz_and_metrics(serve, service, store) -> None:
    client = serve(max_staleness_s=60.0)
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["store"] == store.dialect
    assert health["users"] == len(service.users()) == health["lists_cached"]
    client.get(f"/v1/users/{service.users()[0]}/recommendations")
    client.get("/v1/users/nobody/recommendations")
    client.post("/v1/events", json={"events": [click(1, "nobody", "1")]}, headers=AUTH)
    client.post("/v1/events", json={"events": [click(1, "nobody", "1")]}, headers=AUTH)
    client.get("/no/such/page")
    text = client.get("/metrics")
    assert text.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(text.text)}
    requests = {
        (s.labels["route"], s.labels["status"]): s.value
        for s in families["recgpt_http_requests"].samples
        if s.name.endswith("_total")
    }
    assert requests[("/v1/users/{user_id}/recommendations", "200")] == 2
    assert requests[("/v1/events", "202")] == 2 and requests[("unmatched", "404")] == 1
    buckets = {
        s.labels["le"] for s in families["recgpt_http_request_seconds"].samples if s.name.endswith("_bucket")
    }
    assert "0.001" in buckets
    assert totals(families, "recgpt_list_cache_lookups", "result") == {"hit": 1, "miss": 1}
    assert totals(families, "recgpt_events", "outcome") == {"accepted": 1, "duplicate": 1}
    assert (
        "recgpt_refresh_queue_pending" in families and "recgpt_refresh_queue_oldest_age_seconds" in families
    )
    schema = client.get("/openapi.json").json()  # the JSON shapes are documented for clients
    assert {"RecommendationList", "UserDetail", "EventAck", "EventBatch"} <= set(
        schema["components"]["schemas"]
    )


def test_worker_drops_unknown_users_at_once_and_broken_ones_after_max_attempts(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    from recgpt.serving.events import EventIn

    store.add_events([EventIn(event_id=1, user_id="stranger", item_id="3", behavior="click", timestamp=5)])
    assert RefreshWorker(store, Stranger()).run_once() == 1
    assert store.queue_stats()["pending"] == 0 and store.current_list("stranger") is None

    store.add_events([EventIn(event_id=2, user_id="u", item_id="3", behavior="click", timestamp=5)])
    monkeypatch.setattr(recgpt.serving.worker, "retry_after", lambda attempts: 0.0)  # no back-off wait
    worker = RefreshWorker(store, Broken())
    for attempt in range(1, MAX_ATTEMPTS + 1):
        assert store.queue_stats()["pending"] == 1, attempt
        assert worker.run_once() == 1
    assert store.queue_stats()["pending"] == 0 and worker.failed == MAX_ATTEMPTS
    assert worker.run_once() == 0


def test_a_store_outage_is_a_503_to_retry_not_a_500(serve, store, monkeypatch: pytest.MonkeyPatch) -> None:
    from recgpt.serving.store import StoreUnavailable

    client = serve()

    def down(batch: object) -> None:
        raise StoreUnavailable("database 'serving' is locked")

    monkeypatch.setattr(store, "add_events", down)
    got = client.post("/v1/events", json={"events": [click(1, "u", "1")]}, headers=AUTH)
    assert got.status_code == 503 and got.headers["retry-after"] == "1" and "retry" in got.json()["detail"]
    assert client.get("/v1/users/u/recommendations").status_code == 200  # reads are served from the cache


def test_healthz_reports_degraded_past_the_maximum_staleness(serve, service) -> None:
    client = serve(max_staleness_s=0.2)  # no worker: the posted event waits
    assert client.get("/healthz").json()["status"] == "ok"
    client.post("/v1/events", json={"events": [click(1, service.users()[0], "1")]}, headers=AUTH)
    time.sleep(0.4)
    health = client.get("/healthz").json()
    assert health["status"] == "degraded" and health["queue"]["pending"] == 1
    assert "waited" in health["reason"]


def test_only_allowed_host_headers_are_served(serve) -> None:
    client = serve(allowed_hosts=["testserver", "127.0.0.1"])  # what `recgpt serve` passes on loopback
    assert client.get("/healthz").status_code == 200
    assert client.get("/healthz", headers={"Host": "rebound.example"}).status_code == 400
