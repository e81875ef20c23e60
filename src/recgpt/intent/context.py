"""What the intent stages know about a user: one `UserContext`, built from the `AsOf` view only.

LLM_UI and LLM_IT both read a user's as-of date, attributes, compressed history (B_u), matched
interest pool (I_m) and recent items. `build_contexts` assembles them from an evaluation task's
`AsOf` view (the one door to a user's past), the behaviour compressor and the interest pool, so no
stage can reach past the split point by building its own input. `guard_requests` runs
`Split.guard_text` over rendered prompts: the leakage check a pipeline (and the tests) can apply
to every user-specific LLM input.

The history budget is the serving model's (`fit_request`): the compressor fits B_u to its own
token budget, and LLM_UI / LLM_IT then show as much of it as the model's context holds once the rest
of the prompt and the answer are reserved, counted with the serving model's tokenizer
(`recgpt.llm.types.TokenWindow`), cutting the oldest lines first (an over-long newest line keeps its
newest events). An optional user cap (`history_tokens`) bounds it further. Each request records how
many history tokens the model saw and how many were cut (`HistoryFit`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import polars as pl
from pydantic import BaseModel, Field

from recgpt.behavior import BehaviorCompressor
from recgpt.behavior.items import clean_title
from recgpt.data.dataset import Dataset
from recgpt.data.leakage import guard_user_texts
from recgpt.data.split import EvalTask, Split
from recgpt.intent.pool import InterestPool
from recgpt.llm.prompts import Fitted
from recgpt.llm.types import APPROX_WINDOW, LLMRequest, TokenWindow

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


class Resampling(BaseModel):
    """How an LLM stage asks again (shared by LLM_UI and LLM_IT): re-asks of an answer the rules emptied,
    and best-of-n sampling (`recgpt.llm.task.run_task`)."""

    reasks: int = Field(
        default=2, ge=0, description="an answer the rules empty is asked again, up to this often"
    )
    reask_temperature: float = Field(
        default=0.7, gt=0.0, description="... sampled at this temperature, a new seed each"
    )
    n_samples: int = Field(
        default=1,
        ge=1,
        le=16,
        description="best-of-n: answers drawn per user (the first as configured, the rest at "
        "reask_temperature, seed + j); the best-scoring non-empty one is kept",
    )


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


def user_attributes(users: pl.DataFrame, user_ids: Sequence[str]) -> dict[str, dict[str, str]]:
    """user_id -> the non-empty `ATTRIBUTE_FIELDS` of the users table (static attributes A_u)."""
    return _attributes(users, user_ids)


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


HISTORY_PLACEHOLDER = "(no reliable behaviour)"  # what a prompt shows for an empty history
BUDGET_MARGIN = 16  # tokens kept free besides prompt and answer: a sanitised block may count a little more


@dataclass(frozen=True)
class HistoryFit:
    """The part of B_u a request shows: its text, its tokens, and the tokens cut (oldest) to fit."""

    text: str
    tokens: int  # of `text`, by the window's counter: what the model saw
    cut: int = 0  # tokens of the full history minus `tokens` (0: nothing cut)


class FittedPrompts:
    """A per-user task's first requests, each fitted to the window once (`fit(ctx)`): re-asks and
    best-of-n samples reuse it, and every answer row records the history the request showed."""

    def __init__(self, fit: Callable[[UserContext], tuple[LLMRequest[Any], HistoryFit]]) -> None:
        self.fit = fit
        self.fits: dict[str, tuple[LLMRequest[Any], HistoryFit]] = {}  # by user id

    def get(self, item: UserContext) -> tuple[LLMRequest[Any], HistoryFit]:
        """The user's fitted request and history fit, built on first use."""
        if item.user_id not in self.fits:
            self.fits[item.user_id] = self.fit(item)
        return self.fits[item.user_id]

    def request(self, item: UserContext) -> LLMRequest[Any]:
        """The user's fitted first request."""
        return self.get(item)[0]

    def seen(self, item: UserContext) -> dict[str, int]:
        """The row columns of what the model saw: `history_tokens` and `history_cut`."""
        fit = self.get(item)[1]
        return {"history_tokens": fit.tokens, "history_cut": fit.cut}


def _line_tail(line: str, budget: int, count: Callable[[str], int]) -> str:
    """The newest events of one over-long line ("when (what) | A, B, C") within `budget` tokens."""
    head, sep, events = line.partition(" | ")
    prefix, parts = (head + sep, events.split(", ")) if sep else ("", line.split(", "))
    kept: list[str] = []
    for part in reversed(parts):
        if count(prefix + ", ".join([part, *kept])) > budget:
            break
        kept.insert(0, part)
    return prefix + ", ".join(kept) if kept else ""


def fit_history(text: str, budget: int | None, count: Callable[[str], int]) -> HistoryFit:
    """The newest lines of a compressed history within `budget` tokens (None: all), oldest cut first.

    Lines are whole events / time buckets (the compressor writes the newest last); the line that
    overflows the budget keeps its newest events in the room left ("when (what) | A, B, C").
    """
    full = count(text)
    if budget is None or full <= budget:
        return HistoryFit(text, full)
    lines = text.splitlines()
    kept: list[str] = []
    used = 0
    for line in reversed(lines):
        cost = count(line) + (1 if kept else 0)
        if used + cost > budget:  # the line that overflows keeps its newest events in what is left
            part = _line_tail(line, budget - used - (1 if kept else 0), count)
            kept = [part, *kept] if part else kept
            break
        kept.insert(0, line)
        used += cost
    out = "\n".join(kept)
    tokens = count(out)
    while kept and tokens > budget:  # per-line sums can miss the joined count by a token or two
        kept.pop(0)
        out = "\n".join(kept)
        tokens = count(out)
    return HistoryFit(out, tokens, max(0, full - tokens))


def fit_request(
    build: Callable[[str], LLMRequest[Any]],
    history: str,
    window: TokenWindow | None = None,
    cap: int | None = None,
    margin: int = BUDGET_MARGIN,
) -> tuple[LLMRequest[Any], HistoryFit]:
    """`build(history_text)` with as much of `history` as the model's context holds, and what it saw.

    Budget = `window.n_ctx` - tokens of the prompt without history - the answer's `max_tokens` -
    `margin`, at most `cap`; unknown `n_ctx` (None): `cap` only (None: the whole history). The
    request is checked after rendering and the history shrunk until prompt + answer fit in `n_ctx`.
    """
    window = window or APPROX_WINDOW
    bare = build(HISTORY_PLACEHOLDER)
    room: int | None = None
    if window.n_ctx is not None:
        rest = window.count_messages(bare.messages) - window.count(HISTORY_PLACEHOLDER)
        room = window.n_ctx - rest - bare.sampling.max_tokens - margin
    limits = [x for x in (room, cap) if x is not None]
    budget = max(0, min(limits)) if limits else None
    fit = fit_history(history, budget, window.count)
    request = build(Fitted(fit.text)) if fit.text else bare
    while window.n_ctx is not None and fit.text:
        if window.count_messages(request.messages) + request.sampling.max_tokens <= window.n_ctx:
            break
        fit = fit_history(history, fit.tokens - max(8, fit.tokens // 10), window.count)
        request = build(Fitted(fit.text)) if fit.text else bare
    if not fit.text:
        fit = HistoryFit("", 0, window.count(history))
    return request, fit


def history_stats(table: Any) -> dict[str, float]:
    """Mean history tokens seen and share of users cut, from a table with `history_tokens` / `history_cut`."""
    per_user = table.unique("user_id", keep="first") if table.height else table
    if not per_user.height or "history_tokens" not in per_user.columns:
        return {"history_tokens_mean": 0.0, "history_cut_share": 0.0}
    return {
        "history_tokens_mean": round(float(per_user["history_tokens"].mean() or 0.0), 1),
        "history_cut_share": round(float((per_user["history_cut"] > 0).mean() or 0.0), 3),
    }


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
    "BUDGET_MARGIN",
    "HISTORY_PLACEHOLDER",
    "FittedPrompts",
    "HistoryFit",
    "Resampling",
    "UserContext",
    "attribute_text",
    "build_contexts",
    "clean_phrase",
    "contexts_from_tables",
    "describe_date",
    "fit_history",
    "fit_request",
    "guard_requests",
    "history_stats",
    "history_tail",
    "phrase_key",
    "prompt_text",
    "stored_histories",
    "user_attributes",
]
