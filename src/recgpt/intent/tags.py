"""LLM_IT item tag prediction (RecGPT §1.4): T_u = LLM_IT(A_u, I_u, S_u | P_IT).

`predict_tags(cfg, engine, contexts, interests)` renders the `recgpt_tags` prompt per user (profile,
date with month and season for seasonal relevance, the user's interests with their ids, recent
behaviour, the items engaged in the last `freshness_days` days as a "do not repeat" list), runs the
batch, and post-processes each answer. B_u is fitted to the serving model's context as for LLM_UI
(`recgpt.intent.context.fit_request`; rows record `history_tokens` / `history_cut`). With
`grounding` = "core" / "tag" the answer's core word / whole tag is constrained to the catalogue's
vocabulary (`recgpt.intent.grounding`; off-vocabulary tags of an unconstrained backend are dropped).
Post-processing:

- tags are tidied (`clean_phrase`); empty ones, ones longer than `max_words`, copies of the worked
  example (the tag repeats, exactly or nearly, a phrase of the example's answer or input and the
  user's own history does not hold its words; or the rationale repeats a phrase of the example:
  `recgpt.intent.examples`), and ones whose `interest_id` is not one of the user's interests are
  dropped (the output schema already limits `interest_id` to the user's ids where the backend
  decodes under a grammar);
- **freshness**: a tag that names an item the user engaged with in the last `freshness_days` days
  (as of the split point, from the `AsOf` history titles, years removed) is dropped. "Names" = the
  title's words appear as a contiguous run in the tag's words; a one-word title shorter than
  `min_title_chars` must equal the whole tag (so the movie "Heat" does not ban "heat gun");
- **untrusted**: a tag whose text or rationale repeats a flagged catalogue / user payload
  (`recgpt.data.untrusted`) is dropped (prompt-injection defence; counted per stage);
- duplicates (case/spacing-insensitive) are dropped keeping the first;
- **modifier + core word**: English item phrases are head-final, so the last word is taken as the
  core word and the rest as the modifier ("waterproof hiking boots" -> "waterproof hiking" + "boots");
- **rank**: round-robin over interests in order of first appearance, keeping the model's order within
  an interest, so the first tags cover as many interests as possible (the paper's diversity goal).

A user whose request failed or whose tags were all dropped gets a `failures` row (reason
`example_copy` when copies of the worked example emptied the answer) and, with
`fallback_to_interests`, their interests as tags (rationale "fallback: interest used as tag").
The stage is `TagsTask`, a `recgpt.llm.task.LLMTask` run by `run_task` (asks, re-asks of emptied
answers, failures, fallback).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any, Literal

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from recgpt.data.untrusted import UntrustedText, reject_untrusted
from recgpt.intent.bestofn import AnswerScorer
from recgpt.intent.context import (
    FittedPrompts,
    HistoryFit,
    Resampling,
    UserContext,
    attribute_text,
    clean_phrase,
    describe_date,
    fit_request,
    phrase_key,
)
from recgpt.intent.examples import CopyLog, ExampleFilter, evidence_stems, example_values, relabel_failures
from recgpt.intent.grounding import (
    Grounding,
    Vocabulary,
    build_vocabulary,
    grounded_tags,
    grounded_tags_model,
)
from recgpt.intent.interests import BEST_OF_N_SCHEMA, FAILURES_SCHEMA, reject_history_chars, stamp_choices
from recgpt.intent.pool import phrase_tokens
from recgpt.llm.engine import engine_window
from recgpt.llm.prompts import make_request
from recgpt.llm.task import LLMTask, TaskEngine, run_task
from recgpt.llm.types import LLMRequest, SamplingParams, TokenWindow

TEMPLATE = "recgpt_tags"
STAGE = "tags"
DAY = 86_400
TAGS_SCHEMA = {
    "user_id": pl.String(),
    "tag": pl.String(),
    "modifier": pl.String(),
    "core": pl.String(),
    "interest_id": pl.Int64(),
    "interest": pl.String(),
    "rationale": pl.String(),
    "rank": pl.Int64(),
    "history_tokens": pl.Int64(),  # tokens of B_u the model saw (its own tokenizer); null: not an LLM row
    "history_cut": pl.Int64(),  # tokens of B_u cut (oldest first) to fit the model's context
    **BEST_OF_N_SCHEMA,
}
# The worked example's tags and rationales, read from recgpt_tags.j2 (`recgpt.intent.examples`).
EXAMPLE_TAGS = example_values(TEMPLATE, "tag")
EXAMPLE_RATIONALES = example_values(TEMPLATE, "rationale")
# A tag that repeats any phrase of the example (its tags, its input: interests, titles, recent items)
# is a copy; so is a rationale that repeats any phrase of the example (SmolLM2 wrote "Sourdough
# Starter Kit" as the rationale of a film tag).
TAG_EXAMPLES = ExampleFilter([TEMPLATE], fields=("tag", "input"))
RATIONALE_EXAMPLES = ExampleFilter([TEMPLATE], fields=("rationale", "tag", "input"))
FALLBACK_RATIONALE = "fallback: interest used as tag"


class TagsConfig(Resampling):
    """LLM_IT settings. `count` = tags asked per user (paper: 50; 10 suits the small model)."""

    model_config = ConfigDict(frozen=True)

    count: int = Field(default=10, ge=1, le=60)
    freshness_days: int = Field(default=30, ge=0)
    max_recent_items: int = Field(default=15, ge=0, description="recent items listed as 'do not repeat'")
    history_tokens: int | None = Field(
        default=None,
        ge=1,
        description="cap on B_u tokens shown (None: all the serving model's context leaves, oldest cut first)",
    )
    max_words: int = Field(default=8, ge=1)
    min_title_chars: int = Field(default=6, ge=1)
    fallback_to_interests: bool = True
    hemisphere: Literal["north", "south"] = "north"
    temperature: float = 0.0
    tokens_per_tag: int = Field(default=40, ge=10)
    seed: int = 0

    grounding: Grounding = Field(
        default="free",
        description="free tags; 'core': the core word from the catalogue's vocabulary; 'tag': the whole tag",
    )
    vocabulary_size: int = Field(
        default=300, ge=10, le=2000, description="grounded vocabulary: most frequent catalogue phrases kept"
    )
    score: Literal["rules", "grounded"] = Field(
        default="rules",
        description="best-of-n score (n_samples > 1): rules = tags kept + distinctness; grounded adds one "
        "point per tag whose nearest catalogue title reaches grounding_floor (bestofn.catalogue_grounding)",
    )
    grounding_floor: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="cosine a tag needs to its nearest title to count as grounded",
    )

    @model_validator(mode="before")
    @classmethod
    def _no_history_chars(cls, data: Any) -> Any:
        return reject_history_chars(data, "tags")


class Tag(BaseModel):
    """One predicted tag tied to one interest (the paper's (Tag, Interest, Rationale) triplet)."""

    tag: str = Field(description="modifier + core word, 2 to 6 words")
    interest_id: int
    rationale: str = Field(description="at most 12 words")


@lru_cache(maxsize=256)
def tags_model(count: int, interest_ids: tuple[int, ...] | None = None) -> type[BaseModel]:
    """Output model `{tags: [Tag] * count}`.

    With `interest_ids`, the JSON schema (hence a backend's grammar) only allows those ids, so a
    constrained model cannot link a tag to an interest the user does not have. Validation stays
    lenient (any int): an unconstrained backend's stray id costs one tag in post-processing, not the
    whole answer.
    """
    item: type[BaseModel] = Tag
    if interest_ids is not None:
        if not interest_ids:
            raise ValueError("interest_ids must not be empty")
        suffix = "_".join(str(i) for i in interest_ids)
        item = create_model(
            f"Tag_{suffix}",
            __base__=Tag,
            interest_id=(int, Field(json_schema_extra={"enum": list(interest_ids)})),
        )
        return create_model(
            f"Tags{count}_{suffix}", tags=(list[item], Field(min_length=count, max_length=count))
        )
    return create_model(f"Tags{count}", tags=(list[item], Field(min_length=count, max_length=count)))


def split_tag(tag: str) -> tuple[str, str]:
    """(modifier, core word): the last word is the core (English noun phrases are head-final)."""
    words = tag.split()
    return " ".join(words[:-1]), (words[-1] if words else "")


def recent_titles(ctx: UserContext, days: int) -> list[str]:
    """Titles of items engaged in the `days` days before the split point, most recent first, distinct."""
    since = ctx.asof_ts - days * DAY
    return list(dict.fromkeys(t for t, ts in sorted(ctx.items, key=lambda x: -x[1]) if ts >= since and t))


def names_item(tag: str, title: str, min_title_chars: int = 6) -> bool:
    """Whether `tag` names the item `title` (module docstring, freshness rule)."""
    t_words, i_words = phrase_tokens(tag), phrase_tokens(title)
    if not i_words or not t_words:
        return False
    if len(i_words) == 1 and len(i_words[0]) < min_title_chars:
        return t_words == i_words
    n = len(i_words)
    return any(t_words[i : i + n] == i_words for i in range(len(t_words) - n + 1))


def tag_prompt(
    cfg: TagsConfig,
    ctx: UserContext,
    interests: Sequence[tuple[int, str]],
    window: TokenWindow | None = None,
    vocabulary: Vocabulary | None = None,
) -> tuple[LLMRequest[Any], HistoryFit]:
    """The LLM_IT request of one user (key = user id) with as much of B_u as `window`'s context holds
    (`fit_request`), and what of B_u it shows; `interests` = (interest_id, interest). With grounding
    (`cfg.grounding` != "free") the output schema holds `vocabulary` as an enum."""
    ids = tuple(sorted({i for i, _ in interests}))
    if cfg.grounding == "free":
        model = tags_model(cfg.count, ids)
    else:
        if vocabulary is None:
            raise ValueError(
                f"tags.grounding={cfg.grounding!r} needs the catalogue's vocabulary (build_vocabulary)"
            )
        model = grounded_tags_model(cfg.count, ids, cfg.grounding, vocabulary.terms(cfg.grounding))

    def build(history: str) -> LLMRequest[Any]:
        return make_request(
            TEMPLATE,
            model,
            sampling=SamplingParams(
                temperature=cfg.temperature, max_tokens=cfg.tokens_per_tag * cfg.count + 40, seed=cfg.seed
            ),
            stage=STAGE,
            key=ctx.user_id,
            count=cfg.count,
            freshness_days=cfg.freshness_days,
            profile=attribute_text(ctx.attributes),
            when=describe_date(ctx.asof_ts, cfg.hemisphere),
            interests=[f"{i}: {name}" for i, name in interests],
            history=history,
            recent=recent_titles(ctx, cfg.freshness_days)[: cfg.max_recent_items],
        )

    return fit_request(build, ctx.history, window, cfg.history_tokens)


def tag_request(
    cfg: TagsConfig,
    ctx: UserContext,
    interests: Sequence[tuple[int, str]],
    window: TokenWindow | None = None,
    vocabulary: Vocabulary | None = None,
) -> LLMRequest[Any]:
    """The LLM_IT request of one user (key = user id); `tag_prompt` without the history record."""
    return tag_prompt(cfg, ctx, interests, window, vocabulary)[0]


def _round_robin(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r["interest_id"], []).append(r)
    out: list[dict[str, Any]] = []
    while any(groups.values()):
        for g in groups.values():
            if g:
                out.append(g.pop(0))
    return out


def postprocess_tags(
    cfg: TagsConfig,
    ctx: UserContext,
    tags: Sequence[Tag],
    interests: Sequence[tuple[int, str]],
    untrusted: UntrustedText | None = None,
    copies: CopyLog | None = None,
) -> list[dict[str, Any]]:
    """Tidy, filter (interest, freshness, example copies), dedupe, split and rank one user's tags.

    `copies` (optional) records how many tags of this answer copied the worked example.
    """
    names = dict(interests)
    recent = recent_titles(ctx, cfg.freshness_days)
    evidence = evidence_stems([ctx.history, *ctx.pool, *(t for t, _ in ctx.items)])
    n_copies = 0
    seen: set[str] = set()
    rows = []
    for t in tags:
        tag = clean_phrase(t.tag)
        key = phrase_key(tag)
        if not key or key in seen or len(tag.split()) > cfg.max_words:
            continue
        if TAG_EXAMPLES.copy_of(tag, evidence) or RATIONALE_EXAMPLES.copy_of(t.rationale, evidence):
            n_copies += 1
            continue
        if t.interest_id not in names:
            continue
        if any(names_item(tag, title, cfg.min_title_chars) for title in recent):
            continue
        if reject_untrusted(untrusted, STAGE, (tag, t.rationale)):
            continue
        seen.add(key)
        modifier, core = split_tag(tag)
        rows.append(
            {
                "user_id": ctx.user_id,
                "tag": tag,
                "modifier": modifier,
                "core": core,
                "interest_id": t.interest_id,
                "interest": names[t.interest_id],
                "rationale": clean_phrase(t.rationale),
                "rank": 0,
            }
        )
    if copies is not None:
        copies.record(ctx.user_id, n_copies)
    ranked = _round_robin(rows)
    for rank, r in enumerate(ranked, start=1):
        r["rank"] = rank
    return ranked


def _interest_fallback(
    ctx: UserContext, interests: Sequence[tuple[int, str]], untrusted: UntrustedText | None = None
) -> list[dict[str, Any]]:
    rows = []
    safe = [(i, n) for i, n in interests if untrusted is None or not untrusted.hit(n)]
    for rank, (iid, name) in enumerate(safe, start=1):
        modifier, core = split_tag(name)
        rows.append(
            {
                "user_id": ctx.user_id,
                "tag": name,
                "modifier": modifier,
                "core": core,
                "interest_id": iid,
                "interest": name,
                "rationale": FALLBACK_RATIONALE,
                "rank": rank,
            }
        )
    return rows


def user_interests(interests: pl.DataFrame) -> dict[str, list[tuple[int, str]]]:
    """user_id -> [(interest_id, interest)] in interest_id order, from an interests table."""
    missing = {"user_id", "interest_id", "interest"} - set(interests.columns)
    if missing:
        raise ValueError(f"interests table lacks columns {sorted(missing)}")
    out: dict[str, list[tuple[int, str]]] = {}
    for u, i, name in (
        interests.sort("user_id", "interest_id").select("user_id", "interest_id", "interest").iter_rows()
    ):
        out.setdefault(u, []).append((int(i), name))
    return out


class TagsTask(LLMTask[UserContext]):
    """LLM_IT as an `LLMTask` over user contexts (rows: TAGS_SCHEMA; fallback: the user's interests).

    `interests` = user_id -> [(interest_id, interest)] (`user_interests`); every context run through
    the task must have an entry.
    """

    name = STAGE
    empty_detail = "every tag was empty, duplicate, too long, stale, off-interest or untrusted"

    def __init__(
        self,
        cfg: TagsConfig,
        interests: Mapping[str, Sequence[tuple[int, str]]],
        untrusted: UntrustedText | None = None,
        scorer: AnswerScorer | None = None,
        window: TokenWindow | None = None,
        vocabulary: Vocabulary | None = None,
    ) -> None:
        self.cfg, self.interests, self.untrusted = cfg, interests, untrusted
        self.window, self.vocabulary = window, vocabulary
        self.reasks, self.reask_temperature, self.n_samples = cfg.reasks, cfg.reask_temperature, cfg.n_samples
        self.scorer = scorer or AnswerScorer("tag")
        self.copies = CopyLog()  # example copies per user's last answer (failure reason `example_copy`)
        self.fitted = FittedPrompts(
            lambda item: tag_prompt(
                self.cfg, item, self.interests[item.user_id], self.window, self.vocabulary
            )
        )
        self.ungrounded = 0  # answer tags dropped for a core word / tag outside the vocabulary

    def prompt(self, item: UserContext) -> LLMRequest[Any]:
        return self.fitted.request(item)

    def postprocess(self, item: UserContext, value: Any) -> list[dict[str, Any]]:
        tags = value.tags
        if self.cfg.grounding != "free":
            assert self.vocabulary is not None  # tag_prompt refused to build the request otherwise
            tags, dropped = grounded_tags(tags, self.cfg.grounding, self.vocabulary)
            self.ungrounded += dropped
        rows = postprocess_tags(
            self.cfg, item, tags, self.interests[item.user_id], self.untrusted, self.copies
        )
        return [{**r, **self.fitted.seen(item)} for r in rows]

    def fallback(self, item: UserContext, reason: str) -> list[dict[str, Any]]:
        if not self.cfg.fallback_to_interests:
            return []
        rows = _interest_fallback(item, self.interests[item.user_id], self.untrusted)
        return [{**r, **self.fitted.seen(item)} for r in rows]

    def score(self, item: UserContext, rows: list[dict[str, Any]]) -> float:
        return self.scorer(item, rows)


def predict_tags(
    cfg: TagsConfig,
    engine: TaskEngine,
    contexts: Sequence[UserContext],
    interests: pl.DataFrame,
    untrusted: UntrustedText | None = None,
    catalogue: pl.DataFrame | None = None,
    *,
    scorer: AnswerScorer | None = None,
    copies: CopyLog | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """LLM_IT over users: (tags table TAGS_SCHEMA, failures table FAILURES_SCHEMA).

    `untrusted` (the dataset's flagged payloads) drops tags that repeat one; None filters nothing.
    `catalogue` (the items table) is needed with `cfg.grounding` != "free": its vocabulary
    (`recgpt.intent.grounding.build_vocabulary`) constrains the tags.
    A user without interests is a failure ("no_interests") and is not asked; an answer the rules
    emptied is asked again (`cfg.reasks`). With `cfg.n_samples` > 1 each user gets the best of that
    many answers (`scorer`, default: the rules' `AnswerScorer`; `bestofn.catalogue_grounding` adds
    grounding); every row records the answers drawn, the kept one's index and its score.
    `copies` (optional) counts the tags dropped as copies of the worked example, also from answers
    that kept other tags (`copies.total`: the stage's `example_copies`).
    """
    by_user = user_interests(interests)
    todo = [c for c in contexts if by_user.get(c.user_id)]
    no_interests = [c.user_id for c in contexts if not by_user.get(c.user_id)]
    failures = [
        {"user_id": u, "reason": "no_interests", "detail": "no interests to tag"} for u in no_interests
    ]
    vocabulary = None
    if cfg.grounding != "free":
        if catalogue is None:
            raise ValueError(f"tags.grounding={cfg.grounding!r} needs the catalogue (the items table)")
        vocabulary = build_vocabulary(catalogue, cfg.vocabulary_size)
    task = TagsTask(cfg, by_user, untrusted, scorer, engine_window(engine), vocabulary)
    if copies is not None:
        task.copies = copies
    out = run_task(task, engine, todo)
    failures += relabel_failures(out.failure_rows("user_id"), task.copies, "user_id")
    return pl.DataFrame(stamp_choices(out), schema=TAGS_SCHEMA), pl.DataFrame(
        failures, schema=FAILURES_SCHEMA
    )


__all__ = [
    "EXAMPLE_RATIONALES",
    "EXAMPLE_TAGS",
    "TAGS_SCHEMA",
    "Tag",
    "TagsConfig",
    "TagsTask",
    "names_item",
    "postprocess_tags",
    "predict_tags",
    "recent_titles",
    "split_tag",
    "tag_prompt",
    "tag_request",
    "tags_model",
    "user_interests",
]
