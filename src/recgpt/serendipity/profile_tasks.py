"""The LLM levels of SERAL's profiles: short-term per window, then long-term over the short-term rows.

Two `LLMTask`s (`recgpt.llm.task`: asking, re-asks of emptied answers, fallback in one loop):

- `ShortTask`, one item per (user, window): `seral_short.j2` shows the user's attributes, the date,
  the window's span and its compressed behaviour lines (fitted to the serving model's context,
  `recgpt.intent.context.fit_request`); the answer is `{"reasoning", "interests"}`.
- `LongTask`, one item per user with windows: `seral_long.j2` shows the static line and the user's
  short-term rows, oldest first ("span | interests"), after the short level ran (an LLM row or its
  fallback); the answer is `{"reasoning", "stable_interests"}`.

Post-processing is the intent stages' (`clean_phrase`, case/spacing-insensitive duplicates, over-long
phrases, phrases that merely name one history item, `recgpt.intent.tags.names_item`) plus: vague phrases (nothing left once words like "products", "various" are removed) are
dropped, and so are copies of the templates' worked examples (`recgpt.intent.examples`, unless the
user's own text holds their words); the reasoning is cut to `REASONING_WORDS`. An item the LLM
contributed nothing to gets the rule row (`recgpt.serendipity.profiles`) with source 'fallback' and
a failure row (reason `example_copy` when copies emptied the answer) with its `level`. Every request
is keyed by the user id, so a guarding engine (and `guard_requests`) checks it against held-out items.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated, Any

import polars as pl
from pydantic import BaseModel, Field, create_model

from recgpt.intent.context import attribute_text, clean_phrase, describe_date, fit_request, phrase_key
from recgpt.intent.examples import CopyLog, ExampleFilter, evidence_stems, relabel_failures, stems
from recgpt.intent.grounding import VAGUE
from recgpt.intent.pool import phrase_tokens
from recgpt.intent.tags import names_item
from recgpt.llm.engine import engine_window
from recgpt.llm.prompts import make_request
from recgpt.llm.task import LLMTask, TaskEngine, TaskOutput, run_task
from recgpt.llm.types import LLMRequest, SamplingParams, TokenWindow
from recgpt.serendipity.profiles import (
    ProfileConfig,
    ProfileInput,
    ProfileWindow,
    long_rule_row,
    profile_row,
    short_rule_row,
    span_text,
    static_row,
)

SHORT_TEMPLATE = "seral_short"
LONG_TEMPLATE = "seral_long"
SHORT_STAGE = "profiles_short"
LONG_STAGE = "profiles_long"
REASONING_WORDS = 40
_LIST_SEP = re.compile(r"\s*[,;]\s+")
# Prompt syntax copied into an answer: brackets, "(year)" and "brand:" of item texts, ISO dates of the date line.
_MARKUP = re.compile(r"[\[\](){}<>|]|\bbrand:|\d{4}-\d{2}")
TITLE_RUN = 4  # an interest of this many words or more that is a run of a title's words is a title cut short
# Words that say nothing about what a user likes: a phrase made only of these (and stop words) is vague.
GENERIC = stems(
    " ".join(
        [
            *VAGUE,
            *[
                "product",
                "item",
                "thing",
                "stuff",
                "general",
                "misc",
                "miscellaneous",
                "various",
                "variety",
                "assorted",
                "random",
            ],
            *[
                "interest",
                "shopping",
                "purchase",
                "buy",
                "user",
                "recent",
                "behaviour",
                "behavior",
                "window",
                "category",
            ],
        ]
    )
)
SHORT_EXAMPLES = ExampleFilter([SHORT_TEMPLATE], fields=("interests", "input"))
LONG_EXAMPLES = ExampleFilter(
    [LONG_TEMPLATE, SHORT_TEMPLATE], fields=("stable_interests", "interests", "input")
)

Phrase = Annotated[str, Field(description="2 to 6 words")]


@lru_cache(maxsize=16)
def short_model(count: int) -> type[BaseModel]:
    """Short-term answer `{reasoning, interests: 1..count phrases}`."""
    return create_model(
        f"ShortProfile{count}",
        reasoning=(str, Field(description=f"at most {REASONING_WORDS} words")),
        interests=(list[Phrase], Field(min_length=1, max_length=count)),
    )


@lru_cache(maxsize=16)
def long_model(count: int) -> type[BaseModel]:
    """Long-term answer `{reasoning, stable_interests: 1..count phrases}`."""
    return create_model(
        f"LongProfile{count}",
        reasoning=(str, Field(description=f"at most {REASONING_WORDS} words")),
        stable_interests=(list[Phrase], Field(min_length=1, max_length=count)),
    )


def is_vague(phrase: str) -> bool:
    """True when nothing specific is left of `phrase` once generic and stop words are removed."""
    return not (stems(phrase) - GENERIC)


def clean_interests(
    values: Sequence[str],
    cfg: ProfileConfig,
    examples: ExampleFilter,
    evidence: frozenset[str],
    titles: Sequence[str] = (),
) -> tuple[list[str], int]:
    """The interests an answer keeps, and how many example copies it lost.

    An entry listing several ("a, b; c") is split; each part is tidied and dropped when empty, a
    duplicate, over-long, vague, prompt syntax (brackets, "brand:", a date), a history item's title
    or a run of `TITLE_RUN`+ of its words (an interest is not one item; a small model copies
    titles), a copy of the worked example (`ExampleFilter`, or any example word the user's own
    text lacks), or, with `cfg.grounded`, sharing no word with the user's own text (`evidence`)."""
    kept: list[str] = []
    seen: set[str] = set()
    copies = 0
    parts = [p for v in values for p in _LIST_SEP.split(v)]  # "Drama, War" is two interests
    for v in parts:
        name = clean_phrase(v)
        key = phrase_key(name)
        if not key or key in seen or len(name.split()) > cfg.max_words or is_vague(name):
            continue
        if _MARKUP.search(name) or any(names_item(name, t) or _title_part(name, t) for t in titles):
            continue
        words = stems(name)
        if examples.copy_of(name, evidence) is not None or (words & examples_words(examples)) - evidence:
            copies += 1
            continue
        if cfg.grounded and not words & evidence:
            continue
        seen.add(key)
        kept.append(name)
    return kept[: cfg.interests], copies


def _title_part(name: str, title: str) -> bool:
    """Whether `name` is a run of `TITLE_RUN`+ consecutive words of `title` (a title cut short)."""
    n, t = phrase_tokens(name), phrase_tokens(title)
    return len(n) >= TITLE_RUN and any(t[i : i + len(n)] == n for i in range(len(t) - len(n) + 1))


@lru_cache(maxsize=8)
def _example_words(examples: ExampleFilter) -> frozenset[str]:
    return frozenset().union(*(p.stems for p in examples.phrases))


def examples_words(examples: ExampleFilter) -> frozenset[str]:
    """Every stem of the worked examples' phrases: an interest word from there, absent from the user's
    own text, came from the example (SmolLM2 wrote "bird photography cameras" for a 3D-printing user)."""
    return _example_words(examples)


def _reasoning(text: str) -> str:
    return " ".join(clean_phrase(text).split()[:REASONING_WORDS])


def _sampling(cfg: ProfileConfig) -> SamplingParams:
    return SamplingParams(temperature=cfg.temperature, max_tokens=cfg.max_tokens, seed=cfg.seed)


@dataclass(frozen=True)
class ShortItem:
    """One short-term request: a user and one of their windows."""

    inp: ProfileInput
    window: ProfileWindow

    @property
    def key(self) -> str:
        return f"{self.inp.user_id}#{self.window.index}"


@dataclass(frozen=True)
class LongItem:
    """One long-term request: a user and their short-term rows, oldest window first."""

    inp: ProfileInput
    shorts: tuple[Mapping[str, Any], ...]


def short_request(
    cfg: ProfileConfig, inp: ProfileInput, window: ProfileWindow, token_window: TokenWindow | None = None
) -> LLMRequest[Any]:
    """The short-term request of one window (key = user id), its history fitted to the model's context."""

    def build(history: str) -> LLMRequest[Any]:
        return make_request(
            SHORT_TEMPLATE,
            short_model(cfg.interests),
            sampling=_sampling(cfg),
            stage=SHORT_STAGE,
            key=inp.user_id,
            count=cfg.interests,
            profile=attribute_text(inp.attributes),
            when=describe_date(inp.asof_ts),
            span=span_text(window.start_ts, window.end_ts, inp.asof_ts),
            history=history,
            categories=[c for c, _ in window.categories[: max(cfg.top_categories, 1)]],
        )

    return fit_request(build, window.text, token_window)[0]


def window_lines(shorts: Sequence[Mapping[str, Any]]) -> list[str]:
    """Short-term rows as the long-term prompt lists them: "span | interests", oldest first."""
    ordered = sorted(shorts, key=lambda r: r["window"])
    return [f"{span_text(r['start_ts'], r['end_ts'], r['asof_ts'])} | {r['text']}" for r in ordered]


def long_request(
    cfg: ProfileConfig, inp: ProfileInput, shorts: Sequence[Mapping[str, Any]]
) -> LLMRequest[Any]:
    """The long-term request of one user (key = user id) over their short-term rows."""
    return make_request(
        LONG_TEMPLATE,
        long_model(cfg.interests),
        sampling=_sampling(cfg),
        stage=LONG_STAGE,
        key=inp.user_id,
        count=cfg.interests,
        profile=static_row(inp, cfg)["text"],
        when=describe_date(inp.asof_ts),
        windows=window_lines(shorts),
    )


def profile_requests(
    cfg: ProfileConfig, inputs: Sequence[ProfileInput], profiles: pl.DataFrame
) -> list[LLMRequest[Any]]:
    """Every request `build_profiles` would send first for `inputs`, the long-term ones over the short
    rows of `profiles` (e.g. `rule_profiles`): what a leakage check runs over before any model call."""
    out = [short_request(cfg, inp, w) for inp in inputs for w in inp.windows]
    shorts = profiles.filter(pl.col("level") == "short")
    for inp in inputs:
        rows = shorts.filter(pl.col("user_id") == inp.user_id).to_dicts()
        if rows:
            out.append(long_request(cfg, inp, rows))
    return out


class ShortTask(LLMTask[ShortItem]):
    """Short-term profiles as an `LLMTask` (rows: PROFILES; fallback: the window's rule row)."""

    name = SHORT_STAGE
    empty_detail = "every interest was empty, duplicate, too long, vague, an item title or an example copy"

    def __init__(self, cfg: ProfileConfig, window: TokenWindow | None = None) -> None:
        self.cfg, self.window = cfg, window
        self.reasks, self.reask_temperature, self.n_samples = cfg.reasks, cfg.reask_temperature, cfg.n_samples
        self.copies = CopyLog()  # keyed by ShortItem.key
        self._prompts: dict[str, LLMRequest[Any]] = {}

    def prompt(self, item: ShortItem) -> LLMRequest[Any]:
        if item.key not in self._prompts:
            self._prompts[item.key] = short_request(self.cfg, item.inp, item.window, self.window)
        return self._prompts[item.key]

    def postprocess(self, item: ShortItem, value: Any) -> list[dict[str, Any]]:
        evidence = evidence_stems(
            [item.window.text, *item.window.titles, *(c for c, _ in item.window.categories)]
        )
        interests, copies = clean_interests(
            value.interests, self.cfg, SHORT_EXAMPLES, evidence, item.window.titles
        )
        self.copies.record(item.key, copies)
        if not interests:
            return []
        w = item.window
        text = ", ".join(interests)
        return [
            profile_row(
                item.inp,
                "short",
                w.index,
                (w.start_ts, w.end_ts),
                interests,
                text,
                _reasoning(value.reasoning),
                "llm",
            )
        ]

    def fallback(self, item: ShortItem, reason: str) -> list[dict[str, Any]]:
        return [short_rule_row(item.inp, item.window, self.cfg, "fallback")]


class LongTask(LLMTask[LongItem]):
    """Long-term profiles as an `LLMTask` (rows: PROFILES; fallback: the user's rule long row)."""

    name = LONG_STAGE
    empty_detail = (
        "every stable interest was empty, duplicate, too long, vague, an item title or an example copy"
    )

    def __init__(self, cfg: ProfileConfig) -> None:
        self.cfg = cfg
        self.reasks, self.reask_temperature, self.n_samples = cfg.reasks, cfg.reask_temperature, cfg.n_samples
        self.copies = CopyLog()  # keyed by user id

    def prompt(self, item: LongItem) -> LLMRequest[Any]:
        return long_request(self.cfg, item.inp, item.shorts)

    def postprocess(self, item: LongItem, value: Any) -> list[dict[str, Any]]:
        inp = item.inp
        evidence = evidence_stems(
            [
                *(w.text for w in inp.windows),
                *(t for w in inp.windows for t in w.titles),
                *(c for c, _ in inp.categories),
                *(i for r in item.shorts for i in r["interests"]),
            ]
        )
        titles = [t for w in inp.windows for t in w.titles]
        interests, copies = clean_interests(value.stable_interests, self.cfg, LONG_EXAMPLES, evidence, titles)
        self.copies.record(inp.user_id, copies)
        if not interests:
            return []
        span = (inp.windows[0].start_ts, inp.windows[-1].end_ts)
        text = ", ".join(interests)
        return [profile_row(inp, "long", -1, span, interests, text, _reasoning(value.reasoning), "llm")]

    def fallback(self, item: LongItem, reason: str) -> list[dict[str, Any]]:
        return [long_rule_row(item.inp, self.cfg, "fallback")]


def _failures(
    out: TaskOutput, keys: Sequence[str], copies: CopyLog, level: str, details: Sequence[str]
) -> list[dict[str, Any]]:
    """Failure rows of a task's fallback items, relabelled `example_copy` where copies emptied them.

    `keys` / `details` are per item (the copy-log key, a detail prefix such as "window 2: ")."""
    failed = [i for i, f in enumerate(out.on_fallback) if f]
    rows = [
        {"key": keys[i], "user_id": f.key, "reason": f.reason, "detail": f.detail}
        for i, f in zip(failed, out.failures, strict=True)
    ]
    prefix = {keys[i]: details[i] for i in failed}
    return [
        {
            "user_id": r["user_id"],
            "reason": r["reason"],
            "detail": prefix[r["key"]] + r["detail"],
            "level": level,
        }
        for r in relabel_failures(rows, copies, "key")
    ]


def run_profiles(
    cfg: ProfileConfig, engine: TaskEngine, inputs: Sequence[ProfileInput]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """PROFILES rows and failure rows of `inputs` (`recgpt.serendipity.profiles.build_profiles`)."""
    short_items = [ShortItem(inp, w) for inp in inputs for w in inp.windows]
    short_task = ShortTask(cfg, engine_window(engine))
    short_out = run_task(short_task, engine, short_items)
    failures = _failures(
        short_out,
        [s.key for s in short_items],
        short_task.copies,
        "short",
        [f"window {s.window.index}: " for s in short_items],
    )
    shorts: dict[str, list[dict[str, Any]]] = {}
    for row in short_out.rows:
        shorts.setdefault(row["user_id"], []).append(row)
    long_items = [LongItem(inp, tuple(shorts[inp.user_id])) for inp in inputs if inp.user_id in shorts]
    long_task = LongTask(cfg)
    long_out = run_task(long_task, engine, long_items)
    failures += _failures(
        long_out, [i.inp.user_id for i in long_items], long_task.copies, "long", [""] * len(long_items)
    )
    longs = {row["user_id"]: row for row in long_out.rows}
    rows = []
    for inp in inputs:
        rows.append(static_row(inp, cfg))
        rows.extend(sorted(shorts.get(inp.user_id, []), key=lambda r: r["window"]))
        if inp.user_id in longs:
            rows.append(longs[inp.user_id])
    return rows, failures


__all__ = [
    "GENERIC",
    "LONG_STAGE",
    "LONG_TEMPLATE",
    "SHORT_STAGE",
    "SHORT_TEMPLATE",
    "LongItem",
    "LongTask",
    "ShortItem",
    "ShortTask",
    "clean_interests",
    "is_vague",
    "long_model",
    "long_request",
    "profile_requests",
    "run_profiles",
    "short_model",
    "short_request",
    "window_lines",
]
