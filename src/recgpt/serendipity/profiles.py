"""SERAL stage 1: multi-level cognition profiles (static, short-term, long-term) of each user.

SERAL (arXiv 2502.13539, §3.1) condenses a long behaviour history into a user profile at three
levels, so the serendipity model reads a few lines instead of hundreds of events:

- **static**: attributes (age, gender, ...) and what the whole visible history says at a glance
  (event count, span, top categories). Rules only: nothing here needs a model.
- **short-term**: the newest `windows * window_events` reliable events, cut into `windows`
  consecutive windows (oldest first); each window is summarised on its own (LLM, else rules).
- **long-term**: the succession of one user's short-term profiles, read by the LLM (else rules:
  the categories that persist across windows): what stays when the bursts are averaged out.

Every input comes from the split's `AsOf` view only (`view.history`, strictly before the user's
point); window texts are written by the behaviour compressor (`recgpt.behavior`), so they look like
B_u ("3 months ago (reviewed) | Gorilla Glue [Tapes, Adhesives & Sealants]"), relative to the point.

`profile_inputs` builds the inputs, `rule_profiles` the no-LLM profiles (the cheap mode and every
fallback row), `build_profiles` the LLM profiles (`recgpt.serendipity.profile_tasks`),
`render_profile` the few lines SerenGPT reads, `profile_version` a digest a cache keys on and
`profile_size` the compression achieved (profile tokens vs raw history tokens).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
from pydantic import ConfigDict, Field

from recgpt.behavior import BehaviorCompressor, CompressionConfig
from recgpt.behavior.filter import filter_reliable
from recgpt.behavior.items import clean_title
from recgpt.behavior.report import raw_lines
from recgpt.behavior.sequence import time_bucket, utc_date
from recgpt.data.categories import categories_at_level
from recgpt.data.dataset import Dataset
from recgpt.data.split import AsOf
from recgpt.intent.context import Resampling, attribute_text, user_attributes
from recgpt.intent.interests import FAILURES_SCHEMA
from recgpt.llm.task import TaskEngine
from recgpt.llm.types import approx_tokens

LEVELS = ("static", "short", "long")
PROFILES_SCHEMA = {
    "user_id": pl.String(),
    "level": pl.String(),  # 'static' | 'short' | 'long'
    "window": pl.Int32(),  # short: 0 = oldest .. n-1 = newest; static and long: -1
    "asof_ts": pl.Int64(),  # the split point
    "start_ts": pl.Int64(),  # span of the events the row summarises
    "end_ts": pl.Int64(),
    "interests": pl.List(pl.String()),
    "text": pl.String(),  # what downstream prompts read for this row
    "reasoning": pl.String(),
    "source": pl.String(),  # 'llm' | 'fallback' | 'rules'
    "tokens": pl.Int32(),  # of `text`, by the counter given to `profile_inputs`
}
PROFILE_FAILURES_SCHEMA = {**FAILURES_SCHEMA, "level": pl.String()}
TITLE_WORDS = 6  # a rule profile names an item by at most this many words of its clean title


class ProfileConfig(Resampling):
    """How profiles are built: windows, answer sizes, sampling, the per-window history budget."""

    model_config = ConfigDict(frozen=True)

    windows: int = Field(default=3, ge=1, le=12, description="short-term windows per user")
    window_events: int = Field(default=20, ge=1, description="newest reliable events per window")
    interests: int = Field(default=5, ge=1, le=10, description="interests per profile row")
    max_words: int = Field(default=6, ge=1, description="longer interests are dropped")
    grounded: bool = Field(
        default=True, description="an LLM interest must share a word with the user's own text"
    )
    temperature: float = Field(default=0.0, ge=0.0)
    max_tokens: int = Field(default=200, ge=32, description="answer tokens of one profile request")
    seed: int = 0
    history_budget: int = Field(default=400, ge=16, description="tokens of one window's history text")
    category_level: str | int = Field(default="auto", description="recgpt.data.categories level")
    top_categories: int = Field(default=3, ge=0, description="categories a rule row names")
    top_titles: int = Field(default=2, ge=0, description="newest titles a rule short row names")


@dataclass(frozen=True)
class ProfileWindow:
    """One short-term window: consecutive reliable events of a user, before the point."""

    index: int  # 0 = oldest
    start_ts: int
    end_ts: int
    text: str  # compressed history lines (relative to the point), newest last
    raw_tokens: int  # tokens of the window's events written raw (one line each)
    n_events: int
    titles: tuple[str, ...] = ()  # clean titles of the window's item events, newest last
    categories: tuple[tuple[str, int], ...] = ()  # (category, events), most frequent first


@dataclass(frozen=True)
class ProfileInput:
    """Everything a profile of one user is built from (the `AsOf` view only)."""

    user_id: str
    asof_ts: int
    attributes: dict[str, str]
    windows: tuple[ProfileWindow, ...]  # oldest first
    raw_tokens: int  # tokens of the user's whole visible history written raw
    n_events: int = 0  # visible events (every behaviour)
    start_ts: int = 0  # first and last visible event (the point when there is none)
    end_ts: int = 0
    categories: tuple[tuple[str, int], ...] = ()  # whole visible history, most frequent first
    count: Callable[[str], int] = field(default=approx_tokens, compare=False, repr=False)


class _Counter:
    """A plain `str -> int` count as the compressor's `TokenCounter`."""

    name = "profile"

    def __init__(self, count: Callable[[str], int]) -> None:
        self.count = count


def _ranked(counts: Counter[str]) -> tuple[tuple[str, int], ...]:
    return tuple(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _chunks(n: int, windows: int, per_window: int) -> list[np.ndarray]:
    """Positions of the newest `windows * per_window` of `n` events, cut into consecutive windows.

    Fewer events than that: they are shared out as evenly as possible over min(windows, n) windows.
    """
    take = min(n, windows * per_window)
    if take == 0:
        return []
    pos = np.arange(n - take, n)
    return [c for c in np.array_split(pos, min(windows, take)) if c.size]


def profile_inputs(
    view: AsOf,
    dataset: Dataset,
    user_ids: Sequence[str],
    cfg: ProfileConfig,
    count_tokens: Callable[[str], int],
) -> list[ProfileInput]:
    """The profile inputs of `user_ids`, built from `view.history` only (events before each point).

    Windows hold reliable events (`recgpt.behavior.filter`, as B_u); their texts are the compressor's
    lines within `cfg.history_budget` tokens. `raw_tokens` counts the whole visible history written
    one raw line per event (`recgpt.behavior.report.raw_lines`): the baseline a profile replaces.
    """
    if missing := [u for u in user_ids if not view.has_point(u)]:
        raise ValueError(f"users without a split point in this view: {missing[:5]}")
    compressor = BehaviorCompressor(
        dataset.items, _Counter(count_tokens), CompressionConfig(budget=cfg.history_budget)
    )
    levelled = categories_at_level(dataset, cfg.category_level)
    cats_of = dict(zip(levelled.item_ids, levelled.categories, strict=True))
    attrs = user_attributes(dataset.users, user_ids)
    out = []
    for u in user_ids:
        asof_ts = view.point(u)[0]
        hist = view.history(u)
        view.guard(u, hist)
        reliable = filter_reliable(hist, compressor.config.filter)
        windows = []
        for k, pos in enumerate(_chunks(reliable.height, cfg.windows, cfg.window_events)):
            frame = reliable[int(pos[0]) : int(pos[-1]) + 1]
            text = compressor.compress_many(view, [u], histories={u: frame})[0].text
            items = frame["item_id"].drop_nulls().to_list()
            windows.append(
                ProfileWindow(
                    index=k,
                    start_ts=int(frame["timestamp"].min()),  # type: ignore[arg-type]
                    end_ts=int(frame["timestamp"].max()),  # type: ignore[arg-type]
                    text=text,
                    raw_tokens=count_tokens("\n".join(raw_lines(frame, compressor.items))),
                    n_events=frame.height,
                    titles=tuple(clean_title(compressor.items.record(i).get("title") or "") for i in items),
                    categories=_ranked(Counter(c for i in items for c in cats_of.get(i, []))),
                )
            )
        seen = hist["item_id"].drop_nulls().to_list()
        out.append(
            ProfileInput(
                user_id=u,
                asof_ts=asof_ts,
                attributes=attrs.get(u, {}),
                windows=tuple(windows),
                raw_tokens=count_tokens("\n".join(raw_lines(hist, compressor.items))),
                n_events=hist.height,
                start_ts=int(hist["timestamp"].min()) if hist.height else asof_ts,  # type: ignore[arg-type]
                end_ts=int(hist["timestamp"].max()) if hist.height else asof_ts,  # type: ignore[arg-type]
                categories=_ranked(Counter(c for i in seen for c in cats_of.get(i, []))),
                count=count_tokens,
            )
        )
    return out


def _short_title(title: str) -> str:
    return " ".join(title.split()[:TITLE_WORDS])


def when(ts: int, asof_ts: int) -> str:
    """An event time as the histories write it, relative to the point ("3 months ago")."""
    return time_bucket(utc_date(min(ts, asof_ts)), utc_date(asof_ts))


def span_text(start_ts: int, end_ts: int, asof_ts: int) -> str:
    """'5 months ago to 2 days ago' (one label when both ends fall in one bucket)."""
    a, b = when(start_ts, asof_ts), when(end_ts, asof_ts)
    return a if a == b else f"{a} to {b}"


def profile_row(
    inp: ProfileInput,
    level: str,
    window: int,
    span: tuple[int, int],
    interests: Sequence[str],
    text: str,
    reasoning: str,
    source: str,
) -> dict[str, Any]:
    """One PROFILES row of `inp` (tokens counted with the input's counter)."""
    return {
        "user_id": inp.user_id,
        "level": level,
        "window": window,
        "asof_ts": inp.asof_ts,
        "start_ts": span[0],
        "end_ts": span[1],
        "interests": list(interests),
        "text": text,
        "reasoning": reasoning,
        "source": source,
        "tokens": inp.count(text),
    }


def static_row(inp: ProfileInput, cfg: ProfileConfig) -> dict[str, Any]:
    """The static level: attributes, event count and span, top categories of the whole history."""
    top = inp.categories[: cfg.interests]
    parts = [attribute_text(inp.attributes)] if inp.attributes else []
    if inp.n_events:
        parts.append(f"{inp.n_events} events, {span_text(inp.start_ts, inp.end_ts, inp.asof_ts)}")
    if top:
        parts.append("top categories: " + ", ".join(f"{c} ({n})" for c, n in top))
    text = "; ".join(parts) or "no attributes, no history"
    return profile_row(inp, "static", -1, (inp.start_ts, inp.end_ts), [c for c, _ in top], text, "", "rules")


def short_rule_row(inp: ProfileInput, w: ProfileWindow, cfg: ProfileConfig, source: str) -> dict[str, Any]:
    """A short-term row by rules: the window's top categories, then its newest titles."""
    cats = [c for c, _ in w.categories[: cfg.top_categories]]
    titles = list(dict.fromkeys(_short_title(t) for t in reversed(w.titles) if t))[: cfg.top_titles]
    interests = list(dict.fromkeys([*cats, *titles]))[: cfg.interests]
    reasoning = f"rules: {w.n_events} events; top categories and newest items of the window"
    return profile_row(
        inp, "short", w.index, (w.start_ts, w.end_ts), interests, ", ".join(interests), reasoning, source
    )


def long_rule_row(inp: ProfileInput, cfg: ProfileConfig, source: str) -> dict[str, Any]:
    """A long-term row by rules: categories present in most windows (at least two when there are
    two or more), by total events; none persist: the whole history's top categories."""
    n = len(inp.windows)
    need = max(1, min(2, n), (n + 1) // 2)
    present = Counter(c for w in inp.windows for c, _ in w.categories)
    events: Counter[str] = Counter()
    for w in inp.windows:
        events.update(dict(w.categories))
    lasting = [c for c, _ in _ranked(events) if present[c] >= need]
    interests = (lasting or [c for c, _ in inp.categories])[: cfg.interests]
    reasoning = f"rules: categories in at least {need} of {n} windows" if lasting else "rules: top categories"
    span = (inp.windows[0].start_ts, inp.windows[-1].end_ts) if inp.windows else (inp.start_ts, inp.end_ts)
    return profile_row(inp, "long", -1, span, interests, ", ".join(interests), reasoning, source)


def rule_profiles(inputs: Sequence[ProfileInput], cfg: ProfileConfig) -> pl.DataFrame:
    """PROFILES without an LLM (source 'rules'): per user a static row, one short row per window and
    a long row (when there is a window). The cheap mode, and the rows `build_profiles` falls back to."""
    rows = []
    for inp in inputs:
        rows.append(static_row(inp, cfg))
        rows.extend(short_rule_row(inp, w, cfg, "rules") for w in inp.windows)
        if inp.windows:
            rows.append(long_rule_row(inp, cfg, "rules"))
    return pl.DataFrame(rows, schema=PROFILES_SCHEMA)


def build_profiles(
    cfg: ProfileConfig, engine: TaskEngine, inputs: Sequence[ProfileInput]
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """PROFILES and FAILURES (+ `level`): short-term rows by the LLM per window, then long-term rows by
    the LLM over each user's short-term rows; static rows by rules. Every request is keyed by its
    user id (a guarding engine checks it); a row the LLM contributed nothing to is the rule row with
    source 'fallback', and its failure is recorded (`recgpt.serendipity.profile_tasks`)."""
    from recgpt.serendipity.profile_tasks import run_profiles

    ids = [i.user_id for i in inputs]
    if len(set(ids)) != len(ids):
        raise ValueError("duplicate user ids in the profile inputs")
    rows, failures = run_profiles(cfg, engine, inputs)
    return pl.DataFrame(rows, schema=PROFILES_SCHEMA), pl.DataFrame(failures, schema=PROFILE_FAILURES_SCHEMA)


def _user_rows(profiles: pl.DataFrame, user_id: str) -> pl.DataFrame:
    rows = profiles.filter(pl.col("user_id") == user_id)
    if not rows.height:
        raise KeyError(f"no profile rows for user {user_id!r}")
    return rows


def render_profile(profiles: pl.DataFrame, user_id: str) -> str:
    """What SerenGPT reads of a user: the static line, the long-term line, the newest short-term line."""
    rows = _user_rows(profiles, user_id)
    lines = []
    static = rows.filter(pl.col("level") == "static")
    if static.height:
        lines.append(f"Profile: {static['text'][0]}")
    long = rows.filter(pl.col("level") == "long")
    if long.height and long["text"][0]:
        lines.append(f"Long-term interests: {long['text'][0]}")
    short = rows.filter(pl.col("level") == "short").sort("window")
    if short.height:
        r = short.row(-1, named=True)
        lines.append(f"Recent interests ({span_text(r['start_ts'], r['end_ts'], r['asof_ts'])}): {r['text']}")
    return "\n".join(lines)


def profile_version(profiles: pl.DataFrame, user_id: str) -> str:
    """sha256[:12] of the user's rows (level, window, point, span, interests, text, source), in a
    fixed order: a cached recommendation made from another profile is stale."""
    rows = _user_rows(profiles, user_id).sort("level", "window")
    cols = ["level", "window", "asof_ts", "start_ts", "end_ts", "interests", "text", "source"]
    payload = json.dumps(rows.select(cols).rows(), ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:12]


def profile_size(profiles: pl.DataFrame, inputs: Sequence[ProfileInput]) -> dict[str, float]:
    """Mean tokens of the rendered profile vs of the raw history, per user, and their ratio: what the
    profile saves a downstream prompt (the paper's motivation for condensing long histories)."""
    users = [i for i in inputs if profiles.filter(pl.col("user_id") == i.user_id).height]
    if not users:
        return {"users": 0, "profile_tokens": 0.0, "raw_tokens": 0.0, "ratio": 0.0}
    prof = [i.count(render_profile(profiles, i.user_id)) for i in users]
    raw = [i.raw_tokens for i in users]
    mean_prof, mean_raw = float(np.mean(prof)), float(np.mean(raw))
    return {
        "users": len(users),
        "profile_tokens": round(mean_prof, 1),
        "raw_tokens": round(mean_raw, 1),
        "ratio": round(mean_prof / mean_raw, 4) if mean_raw else 0.0,
    }


__all__ = [
    "LEVELS",
    "PROFILES_SCHEMA",
    "PROFILE_FAILURES_SCHEMA",
    "ProfileConfig",
    "ProfileInput",
    "ProfileWindow",
    "build_profiles",
    "long_rule_row",
    "profile_inputs",
    "profile_row",
    "profile_size",
    "profile_version",
    "render_profile",
    "rule_profiles",
    "short_rule_row",
    "span_text",
    "static_row",
    "when",
]
