"""The server with the RecGPT refresher of the pipeline (scripted LLM): an event posted through the API
lands as a new list version made by the per-user chain, and the request path never waited for it."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from recgpt.pipeline.refresh import RecGPTRefresher
from recgpt.serving import Recommendation
from recgpt.serving.app import create_app
from recgpt.serving.store import Store
from tests.conftest import HashEncoder, fake_backend
from tests.serving.test_api import AUTH, KEY, click, wait_for


def test_posted_event_lands_as_a_recgpt_refresh(finished_run: Path, store_url: str) -> None:
    refresher = RecGPTRefresher(finished_run, backend=fake_backend(), encoder=HashEncoder())
    with Store.open(store_url) as store:
        app = create_app(finished_run, store, api_key=KEY, refresher=refresher, workers=True, poll_s=0.05)
        with TestClient(app) as client:
            users = app.state.live.service.users()
            user = users[0]
            before = client.get(f"/v1/users/{user}/recommendations").json()
            item = client.get(f"/v1/users/{users[1]}/recommendations").json()["items"][0]["item_id"]
            assert (
                client.post("/v1/events", json={"events": [click(1, user, item)]}, headers=AUTH).status_code
                == 202
            )
            after = wait_for(
                lambda: (b := client.get(f"/v1/users/{user}/recommendations").json())["version"] > 1 and b,
                timeout=60,
            )
            assert (before["version"], after["version"], after["source"]) == (1, 2, "nearline")
            recs = [Recommendation.model_validate(i) for i in after["items"]]
            assert [r.rank for r in recs] == list(range(1, len(recs) + 1)) and len(recs) >= 10
            assert recs[0].explanation and recs[0].explanation_source is not None
            assert {r.channel for r in recs} <= {i["channel"] for i in before["items"]} | {"recgpt"}
            assert client.get("/healthz").json()["queue"]["pending"] == 0
