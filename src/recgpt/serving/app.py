"""The HTTP server: a finished run's lists, event ingestion into the store, health and metrics.

    app = create_app("runs/quickstart", Store.open(None, run_dir=Path("runs/quickstart")), api_key="...")

Routes (JSON shapes in `recgpt.serving.models`):

- `GET /v1/users/{user_id}/recommendations?k=10` -> `RecommendationList`, from the in-memory cache
  (never the database, never an LLM); a user the run does not know gets the popularity fallback,
  flagged `"fallback": true`.
- `GET /v1/users/{user_id}` -> `UserDetail`; `GET /v1/items/{item_id}` -> `Item` (404 if unknown).
- `POST /v1/events` `{"events": [...]}` -> 202 `EventAck` once the events are committed; needs the API
  key (`X-API-Key: KEY` or `Authorization: Bearer KEY`); 413 over `max_body_bytes`; 422 names the field.
- `GET /healthz`, `GET /metrics` (Prometheus text).

The web pages (`recgpt.serving.web`) are mounted on the same app when that module is present.
"""

from __future__ import annotations

import hmac
import importlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractContextManager, asynccontextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.middleware.trustedhost import TrustedHostMiddleware
from fastapi.responses import JSONResponse, Response

from recgpt.serving.events import EventBatch
from recgpt.serving.live import LiveLists
from recgpt.serving.metrics import RequestMetrics, ServingMetrics
from recgpt.serving.models import EventAck, Item, Recommendation, RecommendationList, UserDetail
from recgpt.serving.service import DEFAULT_K, RecommendationService
from recgpt.serving.store_db import StoreUnavailable
from recgpt.serving.worker import Refresher
from recgpt.settings import SERVE_API_KEY_ENV as API_KEY_ENV

if TYPE_CHECKING:
    from recgpt.serving.store import Store

log = logging.getLogger("recgpt.serving")

MAX_K = 1000
MAX_USER_ID = 128  # = EventIn.user_id's limit
DEFAULT_MAX_BODY = 1_000_000
DEFAULT_MAX_STALENESS_S = 60.0
NO_KEY = (
    f"writes are disabled: this server has no API key; restart it with --api-key KEY or set {API_KEY_ENV}"
)
BAD_KEY = "missing or wrong API key: send it as 'X-API-Key: KEY' or 'Authorization: Bearer KEY'"
_BODYLESS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})

UserId = Annotated[str, PathParam(min_length=1, max_length=MAX_USER_ID)]
K = Annotated[int, Query(ge=1, le=MAX_K, description="how many items of the list")]


class BodyLimit:
    """ASGI middleware: refuse a request body over `max_bytes` with 413, by its Content-Length or, when it
    streams without one, as soon as the bytes read pass the limit (the app then gets the body whole)."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] in _BODYLESS:
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                await _reply(scope, send, 400, "Content-Length is not a number")
                return
            if int(declared) > self.max_bytes:
                await self._too_large(scope, send)
                return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._too_large(scope, send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body, replayed = b"".join(chunks), False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _too_large(self, scope: dict[str, Any], send: Any) -> None:
        await _reply(
            scope, send, 413, f"request body over {self.max_bytes} bytes: send fewer events per request"
        )


async def _reply(scope: dict[str, Any], send: Any, status: int, detail: str) -> None:
    async def nothing() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    await JSONResponse({"detail": detail}, status_code=status)(scope, nothing, send)


def _key_check(api_key: str | None) -> Any:
    """The dependency that guards writes: the configured key, compared in constant time."""
    expected = None if api_key is None else api_key.encode()

    def require_key(request: Request) -> None:
        if expected is None:
            raise HTTPException(401, NO_KEY)
        given = request.headers.get("x-api-key")
        if given is None:
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            given = token.strip() if scheme.lower() == "bearer" else None
        if not given or not hmac.compare_digest(given.encode(), expected):
            raise HTTPException(401, BAD_KEY, headers={"WWW-Authenticate": "Bearer"})

    return require_key


def create_app(
    run_dir: str | Path,
    store: Store,
    *,
    api_key: str | None,
    refresher: Refresher | None = None,
    workers: bool = False,
    max_body_bytes: int = DEFAULT_MAX_BODY,
    max_staleness_s: float = DEFAULT_MAX_STALENESS_S,
    poll_s: float = 0.5,
    service: RecommendationService | None = None,
    allowed_hosts: Sequence[str] | None = None,
) -> FastAPI:
    """The app over a finished run and a store. The run is opened here (so a folder that is no finished run
    fails before a port is bound); seeding, the cache, the poller and the `workers` thread start with the
    app's lifespan and stop with it. The store stays the caller's to close. `service`: the run's service
    when the caller opened it already. `allowed_hosts`: the Host headers to accept (None: any)."""
    service = service or RecommendationService.open(run_dir)
    metrics = ServingMetrics()
    live = LiveLists(
        service,
        store,
        refresher=refresher,
        workers=workers,
        poll_s=poll_s,
        max_staleness_s=max_staleness_s,
        metrics=metrics,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(live.start)
        try:
            yield
        finally:
            await run_in_threadpool(live.stop)

    from recgpt import __version__

    app = FastAPI(
        title="recgpt",
        version=__version__,
        summary=f"Recommendations of run {service.run_dir.name}, event ingestion, nearline refresh.",
        lifespan=lifespan,
        docs_url=None,  # Swagger UI and ReDoc load their scripts from a CDN; /openapi.json stays
        redoc_url=None,
    )
    app.state.live = live
    writes = [Depends(_key_check(api_key))]
    # SQLite has one writer at a time and its busy handler polls with growing sleeps, so concurrent
    # posts starve one another (seconds of p99); queueing them on a lock in this process is fairer
    ingest_lock: AbstractContextManager[Any] = (
        threading.Lock() if store.dialect == "sqlite" else nullcontext()
    )

    @app.get(
        "/v1/users/{user_id}/recommendations",
        response_class=Response,
        responses={200: {"model": RecommendationList, "content": {"application/json": {}}}},
    )
    async def recommendations(user_id: UserId, k: K = DEFAULT_K) -> Response:
        """The user's current list (top k); a user the run does not know gets the popularity fallback."""
        entry, fallback = live.current(user_id)
        body = entry.render(k, user_id=user_id, fallback=True) if fallback else entry.render(k)
        return Response(body, media_type="application/json")

    @app.get("/v1/users/{user_id}", response_model=UserDetail)
    def user(user_id: UserId, k: K = DEFAULT_K) -> UserDetail:
        """The user's walk-through (history, matched pool, interests, tags) with the list served now."""
        entry, fallback = live.current(user_id)
        known = user_id in live.known
        view: dict[str, Any] = (
            dict(service.view(user_id, 1))
            if known
            else {
                "user_id": user_id,
                "target": None,
                "history": None,
                "pool": [],
                "interests": [],
                "tags": [],
            }
        )
        view["recommendations"] = [Recommendation.model_validate(d) for d in entry.items[:k]]
        return UserDetail(
            **view,
            known=known,
            events=live.store.count_events(user_id),
            version=None if fallback else entry.version,
            source=entry.source,
            serendipity=None,
        )

    @app.get("/v1/items/{item_id}", response_model=Item)
    async def item(item_id: Annotated[str, PathParam(min_length=1, max_length=256)]) -> Item:
        """A catalogue item of the run's dataset (title, categories)."""
        found = live.catalogue.items.get(item_id) if live.catalogue is not None else None
        if found is None:
            raise HTTPException(404, f"item {item_id!r} is not in the run's catalogue ({service.dataset})")
        return found

    @app.post("/v1/events", status_code=202, response_model=EventAck, dependencies=writes)
    def events(batch: EventBatch) -> EventAck:
        """Write a batch of events (idempotent by event_id); 202 once committed, the users queued for refresh."""
        with ingest_lock:
            result = live.store.add_events(batch.events)
        live.acknowledged(result.users, time.time())
        metrics.events.labels("accepted").inc(result.accepted)
        metrics.events.labels("duplicate").inc(result.duplicates)
        return EventAck(accepted=result.accepted, duplicates=result.duplicates, queued_users=result.users)

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        """ "ok", "degraded" (an event waited past the maximum staleness) or 503 when the store is unreachable."""
        try:
            return JSONResponse(live.health())
        except Exception as e:
            log.warning("health check: store unreachable: %r", e)
            return JSONResponse(
                {"status": "unavailable", "reason": f"store unreachable: {e}"}, status_code=503
            )

    @app.get("/metrics", response_class=Response)
    async def metrics_text() -> Response:
        """Prometheus text format: requests, latency, cache hits, events, refresh queue and lag."""
        metrics.lists_cached.set(len(live.cache))
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.exception_handler(StoreUnavailable)
    async def store_unavailable(request: Request, exc: StoreUnavailable) -> JSONResponse:
        """The database is down or locked: nothing was acknowledged, so the client may retry the same batch."""
        log.warning("store unavailable: %s", exc)
        return JSONResponse(
            {"detail": f"the store is unavailable, retry later: {exc}"},
            status_code=503,
            headers={"Retry-After": "1"},
        )

    _mount_web(app)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=metrics)
    if allowed_hosts is not None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))
    return app


def _mount_web(app: FastAPI) -> None:
    """Add the HTML pages (`recgpt.serving.web`) when that module is installed."""
    try:
        web = importlib.import_module("recgpt.serving.web")
    except ModuleNotFoundError as e:
        if e.name != "recgpt.serving.web":
            raise
        return
    install = getattr(web, "install", None)
    if install is not None:
        install(app)
    else:
        app.include_router(web.router)


__all__ = ["API_KEY_ENV", "DEFAULT_MAX_BODY", "DEFAULT_MAX_STALENESS_S", "BodyLimit", "create_app"]
