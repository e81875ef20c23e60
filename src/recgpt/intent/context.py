"""What the intent stages know about a user: one `UserContext`, built from the `AsOf` view only.

LLM_UI and LLM_IT both read a user's as-of date, attributes, compressed history (B_u), matched
interest pool (I_m) and recent items. `build_contexts` assembles them from an evaluation task's
`AsOf` view (the one door to a user's past), the behaviour compressor and the interest pool, so no
stage can reach past the split point by building its own input. `guard_requests` runs
`Split.guard_text` over rendered prompts: the leakage check a pipeline (and the tests) can apply
to every user-specific LLM input.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import polars as pl

from recgpt.behavior import BehaviorCompressor
from recgpt.behavior.items import clean_title
from recgpt.data.dataset import Dataset
from recgpt.data.leakage import guard_user_texts
from recgpt.data.split import EvalTask, Split
from recgpt.intent.pool import InterestPool
from recgpt.llm.types import LLMRequest

ATTRIBUTE_FIELDS = ("age", "gender", "occupation", "location")
_SEASONS_NORTH = {
    12: "winter",
    1: "winter",
    2: "winter",
    3: "spring",
    4: "spring",
    5: "spring",
    6: "summer",
    7: "summer",
    8: "summer",
    9: "autumn",
    10: "autumn",
    11: "autumn",
}
_UNCLOSED = re.compile(r"\s*[(\[][^)\]]*$")
_QUOTES = "\"'`“”‘’«»*_#- "
_OPPOSITE = {"winter": "summer", "summer": "winter", "spring": "autumn", "autumn": "spring"}


@dataclass(frozen=True)
class UserContext:
    """One user's input to the intent stages, as of their split point."""

    user_id: str
    asof_ts: int  # seconds since the epoch: the split point (the "current time" of the prompts)
    attributes: dict[str, str] = field(default_factory=dict)
    history: str = ""  # compressed behaviour text B_u
    pool: tuple[str, ...] = ()  # matched interest pool I_m, best first
    items: tuple[tuple[str, int], ...] = ()  # (clean title, timestamp) of every visible item event


def describe_date(ts: int, hemisphere: Literal["north", "south"] = "north") -> dict[str, str]:
    """The as-of date as the prompts show it: ISO date, month name and season."""
    d = datetime.fromtimestamp(int(ts), UTC)
    season = _SEASONS_NORTH[d.month]
    if hemisphere == "south":
        season = _OPPOSITE[season]
    return {"date": d.date().isoformat(), "month": d.strftime("%B"), "season": season}


def attribute_text(attributes: dict[str, str]) -> str:
    """'age 24, gender M, ...' or 'unknown' (the prompt must not invent a profile)."""
    return ", ".join(f"{k} {v}" for k, v in attributes.items()) or "unknown"


def _attributes(users: pl.DataFrame, user_ids: Sequence[str]) -> dict[str, dict[str, str]]:
    cols = [c for c in ATTRIBUTE_FIELDS if c in users.columns]
    rows = users.filter(pl.col("user_id").is_in(list(user_ids))).select("user_id", *cols)
    out: dict[str, dict[str, str]] = {}
    for r in rows.iter_rows(named=True):
        out[r["user_id"]] = {c: str(r[c]).strip() for c in cols if r[c] is not None and str(r[c]).strip()}
    return out


def build_contexts(
    task: EvalTask,
    dataset: Dataset,
    user_ids: Sequence[str],
    *,
    compressor: BehaviorCompressor | None = None,
    histories: Mapping[str, str] | None = None,
    pool: InterestPool | None = None,
    pool_matches: pl.DataFrame | None = None,
) -> list[UserContext]:
    """Contexts of `user_ids` from the task's `AsOf` view.

    B_u comes from `histories` (stored texts by user, e.g. `stored_histories` of a compress table)
    or else from running `compressor`; I_m from `pool_matches`, else `pool.match`.
    """
    missing = [u for u in user_ids if not task.asof.has_point(u)]
    if missing:
        raise ValueError(f"users without a split point in the {task.name} task: {missing[:5]}")
    if histories is not None:
        if lacking := [u for u in user_ids if u not in histories]:
            raise ValueError(f"the stored compressed histories lack users {lacking[:5]}")
        compressed = {u: histories[u] for u in user_ids}
    elif compressor is not None:
        compressed = {c.user_id: c.text for c in compressor.compress_many(task.asof, user_ids)}
    else:
        raise ValueError("build_contexts needs the users' compressed histories or a compressor")
    if pool_matches is None and pool is not None:
        pool_matches = pool.match(task.asof, user_ids)
    matched: dict[str, list[str]] = {}
    if pool_matches is not None:
        for u, interest in pool_matches.sort("user_id", "rank").select("user_id", "interest").iter_rows():
            matched.setdefault(u, []).append(interest)
    titles = dict(zip(dataset.items["item_id"].to_list(), dataset.items["title"].to_list(), strict=True))
    attrs = _attributes(dataset.users, user_ids)
    out = []
    for u in user_ids:
        hist = task.asof.history(u).filter(pl.col("item_id").is_not_null())
        seen = tuple(
            (clean_title(titles[i] or ""), int(t)) for i, t in hist.select("item_id", "timestamp").iter_rows()
        )
        out.append(
            UserContext(
                user_id=u,
                asof_ts=task.asof.point(u)[0],
                attributes=attrs.get(u, {}),
                history=compressed[u],
                pool=tuple(matched.get(u, ())),
                items=seen,
            )
        )
    return out


def stored_histories(compressed: pl.DataFrame) -> dict[str, str]:
    """user_id -> B_u text of a compress stage table (`user_id`, `text`)."""
    return dict(compressed.select("user_id", "text").iter_rows())


def contexts_from_tables(
    task: EvalTask,
    dataset: Dataset,
    user_ids: Sequence[str],
    compressed: pl.DataFrame,
    pool_matches: pl.DataFrame | None = None,
) -> list[UserContext]:
    """Contexts built from a run's stored tables (compressed histories, pool matches): what the intent
    stages and the judge use, so no one runs the compressor a second time."""
    return build_contexts(
        task, dataset, user_ids, histories=stored_histories(compressed), pool_matches=pool_matches
    )


def history_tail(text: str, max_chars: int | None) -> str:
    """The most recent part of a compressed history (its last lines) within `max_chars`."""
    if max_chars is None or len(text) <= max_chars:
        return text
    kept: list[str] = []
    size = 0
    for line in reversed(text.splitlines()):
        if size + len(line) + 1 > max_chars:
            if not kept:  # one huge line: keep its end, cut at an item separator
                tail = line[-max_chars:]
                kept.append(tail[tail.find(", ") + 2 :] if ", " in tail else tail)
            break
        kept.append(line)
        size += len(line) + 1
    return "\n".join(reversed(kept))


def clean_phrase(text: str) -> str:
    """An LLM-written short phrase, tidied: whitespace collapsed, wrapping quotes / brackets, an
    unclosed trailing bracket ("Heat (1995") and trailing punctuation removed ("  'Sci-fi films.' " ->
    "Sci-fi films"); balanced brackets inside stay ("Heat (1995)")."""
    t = " ".join((text or "").split())
    prev = None
    while t != prev:
        prev = t
        t = _UNCLOSED.sub("", t).strip(_QUOTES).rstrip(".,;:!?").strip()
        inner = t[1:-1]
        if len(t) >= 2 and t[0] + t[-1] in ("()", "[]", "{}") and t[0] not in inner and t[-1] not in inner:
            t = inner
    return t


def phrase_key(text: str) -> str:
    """Case- and spacing-insensitive identity of a phrase, for de-duplication and matching."""
    return " ".join(clean_phrase(text).lower().replace("-", " ").split())


def prompt_text(request: LLMRequest[Any]) -> str:
    """All message contents of a request, joined: what `guard_requests` checks."""
    return "\n".join(m.content for m in request.messages)


def guard_requests(split: Split, task: EvalTask, requests: Sequence[LLMRequest[Any]]) -> int:
    """Raise `LeakageError` if a user's rendered prompt names an item they only meet at/after the point.

    Each request's `key` is its user id (as the intent stages set it). The check is
    `recgpt.data.leakage.guard_user_texts` (with its duplicate-title exemption); besides raw titles it
    looks for the cleaned titles the compressor writes ("American President, The (1995)" is written
    "The American President (1995)"). Returns how many prompts were checked.
    """
    return guard_user_texts(split, task, [(r.key, prompt_text(r)) for r in requests], alias=clean_title)


__all__ = [
    "ATTRIBUTE_FIELDS",
    "UserContext",
    "attribute_text",
    "build_contexts",
    "clean_phrase",
    "contexts_from_tables",
    "describe_date",
    "guard_requests",
    "history_tail",
    "phrase_key",
    "prompt_text",
    "stored_histories",
]
