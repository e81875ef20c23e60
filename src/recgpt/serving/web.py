"""The web page of `recgpt serve`: find a user, see their way through the chain, send an event, watch the list refresh.

Server-rendered HTML (Jinja2, autoescape on: titles, histories and LLM texts are untrusted data) over
the same objects the JSON API answers from — the run's `RecommendationService`, the event store and
the live list cache (`app.state.live` of `create_app`), so the page shows the very list and version
the API serves — plus one small script (`static/app.js`) that posts events to
`POST /v1/events` and polls `GET /v1/users/{id}/recommendations` until the list version changes,
then swaps in the list fragment this router renders (`/ui/users/{id}/list`): one template draws the
list, whether the page is loaded or refreshed. Nothing loads from the internet.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from recgpt.data.schema import Behavior
from recgpt.serving.events import MAX_ID_CHARS
from recgpt.serving.models import Item, Recommendation, UserView
from recgpt.serving.service import DEFAULT_K, RecommendationService, UnknownUser

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
EXAMPLE_USERS = 24  # users linked from the index page
RECENT_EVENTS = 10  # store events shown on a user's page, newest first
MAX_K = 100
MAX_SUGGESTIONS = 300  # catalogue items offered by the event form's item field
# behaviours the form offers: every known one that names an item (a search names a query instead)
FORM_BEHAVIORS: tuple[str, ...] = tuple(b.value for b in Behavior if b is not Behavior.SEARCH)

router = APIRouter(include_in_schema=False)


def install(app: FastAPI) -> None:
    """Add the pages and their static files to the server's app (`create_app` calls this)."""
    app.include_router(router)
    mount_static(app)


def mount_static(app: FastAPI) -> None:
    """Serve `static/` (the page's script and stylesheet) under `/static`, as the templates link it."""
    app.mount("/static", StaticFiles(directory=STATIC), name="static")


# ------------------------------------------------------------------ what the page reads


@dataclass(frozen=True)
class Deps:
    """What the pages read from the app: the run's service, the event store and the live list cache of a
    running server (`recgpt.serving.live.LiveLists`, whose lists the JSON API serves) when it has them."""

    service: RecommendationService
    store: Any | None  # recgpt.serving.store.Store; None: a read-only app over the run folder alone
    live: Any | None  # recgpt.serving.live.LiveLists; None: lists come from the store, else the run


def _deps(request: Request) -> Deps:
    state = request.app.state
    live = getattr(state, "live", None)
    if live is not None:
        return Deps(service=live.service, store=live.store, live=live)
    return Deps(service=state.service, store=getattr(state, "store", None), live=None)


@dataclass(frozen=True)
class ListView:
    """The list a user is served now, its version (0: the shared fallback list) and who made it."""

    version: int | None
    created_at: float | None
    source: str
    fallback: bool
    items: list[Recommendation]


def current_list(deps: Deps, user_id: str, k: int) -> ListView:
    """The user's current list cut at `k`: the very list `GET /v1/users/{id}/recommendations` serves."""
    if deps.live is not None:
        entry, fallback = deps.live.current(user_id)
        items = [Recommendation.model_validate(d) for d in entry.items[:k]]
        return ListView(entry.version, entry.created_at, entry.source, fallback, items)
    stored = deps.store.current_list(user_id) if deps.store is not None else None
    if stored is not None:
        items = [Recommendation.model_validate(d) for d in stored.items[:k]]
        return ListView(stored.version, stored.created_at, stored.source, stored.source == "fallback", items)
    try:
        return ListView(None, None, "run", False, deps.service.recommend(user_id, k))
    except UnknownUser:
        return ListView(None, None, "fallback", True, [])


# ------------------------------------------------------------------ template helpers


def _when(t: float | None) -> str:
    if t is None:
        return "–"
    return dt.datetime.fromtimestamp(float(t), tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _user_url(user_id: str) -> str:
    return "/ui/users/" + quote(str(user_id), safe="")


def _channel_class(channel: str | None, fallback: bool = False) -> str:
    """The badge colour of an item's channel: RecGPT's own, a classic recommender, or the fallback list's."""
    if fallback:
        return "fallback"
    return "recgpt" if channel == "recgpt" else "classic"


def explanation_badge(source: str | None) -> str:
    """Who wrote an explanation, as the page's badge says it (the title attribute carries the detail)."""
    if source == "llm":
        return "LLM"
    return "template" if source else "unknown"


def _templates() -> Jinja2Templates:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,  # every value is text, never markup: item titles come from the catalogue
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        when=_when, user_url=_user_url, channel_class=_channel_class, explanation_badge=explanation_badge
    )
    env.globals["max_id"] = MAX_ID_CHARS  # the longest user or item id an event may carry
    return Jinja2Templates(env=env)


templates = _templates()


def _page(request: Request, name: str, deps: Deps, **context: Any) -> HTMLResponse:
    base = {"run_name": deps.service.run_dir.name, "dataset": deps.service.dataset}
    return templates.TemplateResponse(request, name, {**base, **context})


# ------------------------------------------------------------------ pages


@router.get("/", response_class=HTMLResponse, name="web_index")
def index(request: Request) -> HTMLResponse:
    """The front page: what this is, a search box, and links to some of the run's users."""
    deps = _deps(request)
    users = deps.service.users()
    return _page(request, "index.html.j2", deps, examples=users[:EXAMPLE_USERS], n_users=len(users))


@router.get("/ui/find", name="web_find_user")
def find_user(user_id: str = "") -> RedirectResponse:
    """The search box's target: on to the user's page (back to the front page when it was empty)."""
    user = user_id.strip()
    return RedirectResponse(_user_url(user) if user else "/", status_code=303)


@router.get("/ui/users/{user_id}", response_class=HTMLResponse, name="web_user")
def user_page(request: Request, user_id: str, k: int = Query(DEFAULT_K, ge=1, le=MAX_K)) -> HTMLResponse:
    """One user's page; a user the run does not know gets the fallback list under a banner, never an error."""
    deps = _deps(request)
    view: UserView | None
    try:
        view = deps.service.view(user_id, k)
    except UnknownUser:
        view = None
    current = current_list(deps, user_id, k)
    return _page(
        request,
        "user.html.j2",
        deps,
        user_id=user_id,
        known=view is not None,
        view=view,
        current=current,
        k=k,
        n_users=len(deps.service.users()),
        **_events(deps, user_id),
        catalogue=_suggestions(deps, current),
        behaviors=FORM_BEHAVIORS,
    )


@router.get("/ui/users/{user_id}/list", response_class=HTMLResponse, name="web_user_list")
def user_list(request: Request, user_id: str, k: int = Query(DEFAULT_K, ge=1, le=MAX_K)) -> Response:
    """The list section alone: what the page's script swaps in when a new list version lands."""
    deps = _deps(request)
    known = deps.service.knows(user_id)
    current = current_list(deps, user_id, k)
    response = templates.TemplateResponse(
        request, "_list.html.j2", {"known": known, "current": current, "user_id": user_id}
    )
    response.headers["X-List-Version"] = "" if current.version is None else str(current.version)
    return response


@router.get("/ui/users/{user_id}/events", response_class=HTMLResponse, name="web_user_events")
def user_events(request: Request, user_id: str) -> HTMLResponse:
    """The user's newest store events alone: the page's script redraws them after a send."""
    return templates.TemplateResponse(request, "_events.html.j2", _events(_deps(request), user_id))


def _events(deps: Deps, user_id: str) -> dict[str, Any]:
    """`n_events` (None without a store) and the newest `RECENT_EVENTS` events, newest first."""
    if deps.store is None:
        return {"n_events": None, "events": []}
    events = deps.store.user_events(user_id)
    return {"n_events": len(events), "events": events[::-1][:RECENT_EVENTS]}


def _suggestions(deps: Deps, current: ListView) -> list[Item]:
    """The items the event form suggests: the user's list first, then popular items (a running server's
    fallback list) or, without a server, the items the run shows — at most `MAX_SUGGESTIONS`."""
    picked: dict[str, Item] = {}
    for r in current.items:
        picked.setdefault(r.item_id, Item(item_id=r.item_id, title=r.title, categories=r.categories))
    if deps.live is not None and deps.live.fallback is not None:
        more = [Item.model_validate(d) for d in deps.live.fallback.items[:MAX_SUGGESTIONS]]
    else:
        more = sorted(deps.service.catalogue(), key=lambda it: (it.title or "", it.item_id))
    for it in more:
        picked.setdefault(it.item_id, it)
    return list(picked.values())[:MAX_SUGGESTIONS]


__all__ = ["Deps", "ListView", "current_list", "explanation_badge", "install", "mount_static", "router"]
