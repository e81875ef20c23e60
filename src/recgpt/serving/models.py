"""What the recommendation service answers: one item of a list, and everything one user's walk-through shows.

Plain pydantic models (frozen, JSON-ready with `model_dump(mode="json")`), so `recgpt recommend --json`,
the HTML report and an HTTP server all hand out the same shapes.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True)


class Item(_Frozen):
    """A catalogue item as a person sees it (title and categories from the run's dataset)."""

    item_id: str
    title: str | None
    categories: list[str]


class Recommendation(_Frozen):
    """One slot of a user's final (fused) list, with its provenance and, in the explained top, its explanation.

    `channel` is `recgpt` or the classic baseline's name; `tag` and `interest` are the LLM tag and the
    interest that produced a RecGPT item (None for baseline items). `explained_interest` is the interest
    the explanation speaks to (a RecGPT item: the interest that produced it; a baseline item: the
    user's interest it matches, if any); `item_only` marks an explanation about the item alone (no
    interest matched). `explanation_source` says who wrote the text: "llm", or a rule template,
    "template:pair" / "template:item" (shown as a "template" badge). The last four are None beyond the
    run's explained top (`explain_top`).
    """

    rank: int
    item_id: str
    title: str | None
    categories: list[str]
    score: float | None
    channel: str
    tag: str | None
    interest: str | None
    explained_interest: str | None
    explanation: str | None
    item_only: bool | None
    explanation_source: str | None = None


class CompressedHistory(_Frozen):
    """B_u: the user's history as the LLM stages saw it, and how much it was compressed."""

    text: str
    tokens: int
    full_tokens: int
    n_events: int


class PoolMatch(_Frozen):
    """One entry of I_m, the catalogue interests matched to the user's history."""

    rank: int
    interest: str
    source: str | None
    score: float | None


class Interest(_Frozen):
    """One interest mined by LLM_UI (`template` names the prompt, or the rule-based fallback)."""

    interest_id: int
    interest: str
    stage: str | None
    kind: str | None
    reason: str | None
    template: str | None


class Tag(_Frozen):
    """One LLM_IT tag, the interest it serves, and φ(tag)'s top catalogue categories."""

    rank: int
    tag: str
    interest_id: int | None
    interest: str | None
    rationale: str | None
    categories: list[str]


class UserView(_Frozen):
    """One user's way through the chain: history -> matched pool -> interests -> tags -> list with explanations.

    `target` is the held-out next item of an evaluation run (never shown to any stage); None when the
    split gave the user none.
    """

    user_id: str
    target: Item | None
    history: CompressedHistory | None
    pool: list[PoolMatch]
    interests: list[Interest]
    tags: list[Tag]
    recommendations: list[Recommendation]


class RecommendationList(_Frozen):
    """`GET /v1/users/{id}/recommendations`: the user's current list and which version of it is served.

    `version` grows by one each time a list lands for the user (1 = the run's list seeded into the store);
    `source` is "run", "nearline" (a refresh after new events) or "fallback"; `fallback` is true for a
    user the run does not know, who gets the run's most popular items with item-only explanations (then
    `version` is 0 and `created_at` the server's start).
    """

    user_id: str
    version: int
    created_at: float
    source: str
    fallback: bool
    items: list[Recommendation]


class UserDetail(UserView):
    """`GET /v1/users/{id}`: the walk-through of `UserView` (its list = the list served now), plus what
    the server knows: whether the run knows the user, how many events the store holds for them, and the
    SERAL profile of a SERAL run (None otherwise)."""

    known: bool
    events: int
    version: int | None
    source: str | None
    serendipity: dict[str, Any] | None = None


class EventAck(_Frozen):
    """`POST /v1/events` (202): events written (committed) to the store, duplicates of earlier event ids
    (not written again), and the users queued for a nearline refresh."""

    accepted: int
    duplicates: int
    queued_users: list[str]


__all__ = [
    "CompressedHistory",
    "EventAck",
    "Interest",
    "Item",
    "PoolMatch",
    "Recommendation",
    "RecommendationList",
    "Tag",
    "UserDetail",
    "UserView",
]
