"""LLM_UI interest mining (RecGPT §1.3): I_u = LLM_UI(A_u, B_u, I_m | P_UI).

`mine_interests(cfg, engine, contexts)` renders the `recgpt_interests` prompt (role, principles,
requirements, constraints, preset pool, output format, one worked example) for each `UserContext`,
runs the batch through the `LLMEngine` (cache, grammar-constrained JSON, retries) and post-processes.
B_u is shown up to what the serving model's context leaves (`recgpt.intent.context.fit_request`:
context - rest of the prompt - answer, the serving model's tokenizer, oldest lines cut first; an
optional `history_tokens` cap); each row records `history_tokens` (seen) and `history_cut`.
Post-processing:

- interests are tidied (`clean_phrase`), empty ones dropped, duplicates (case/spacing-insensitive)
  dropped keeping the first, over-long ones (`max_words`) dropped, copies of the prompt's worked
  example (exact or near, `recgpt.intent.examples`) dropped unless the user's own history or pool
  holds their words (a small model parrots examples), and interests that merely name one history
  item (its title, year removed) dropped: the paper rules out interests drawn from a single action,
  and a small model likes to copy titles;
- `interest_id` is re-numbered 1..n in answer order (the model's own ids are not trusted);
- `kind` = "listed" when the interest is one of the user's preset pool entries (case-insensitive, or
  embedding cosine >= `listed_similarity` when an encoder is given), else "extended";
- interests whose name or reason repeats a flagged catalogue / user payload (`recgpt.data.untrusted`)
  are dropped like any other invalid item (prompt-injection defence; counted per stage);
- a user whose request failed or whose interests were all dropped gets a row in `failures` (reason
  `example_copy` when copies of the worked example emptied the answer) and, with
  `fallback_to_pool`, their top pool entries as interests (template "pool-fallback"), so later stages
  always have something to work with. The failure stays visible either way.

The stage is `InterestsTask`, a `recgpt.llm.task.LLMTask`: `run_task` does the asking, the re-asks of
answers the rules emptied (`reasks`, sampled at a new seed), the failures and the fallback.

The paper's "Stage" field is undefined [GAP]; here it is the time horizon, "long-term" or
"short-term" (principle 1 of the prompt), constrained by the grammar.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any, Literal

import numpy as np
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
from recgpt.intent.pool import TextEncoder, phrase_tokens
from recgpt.llm.engine import engine_window
from recgpt.llm.prompts import make_request, template_id
from recgpt.llm.task import LLMTask, TaskEngine, TaskOutput, run_task
from recgpt.llm.types import LLMRequest, SamplingParams, TokenWindow

# Best-of-n bookkeeping of every row (`recgpt.llm.task.SampleChoice.columns`): answers drawn for the
# user, the kept one's attempt index (0: the first ask; null: fallback) and its score.
BEST_OF_N_SCHEMA = {"samples": pl.Int64(), "sample": pl.Int64(), "sample_score": pl.Float64()}
TEMPLATE = "recgpt_interests"
STAGE = "interests"
FALLBACK_TEMPLATE = "pool-fallback"
INTERESTS_SCHEMA = {
    "user_id": pl.String(),
    "interest_id": pl.Int64(),
    "interest": pl.String(),
    "stage": pl.String(),
    "reason": pl.String(),
    "kind": pl.String(),
    "template": pl.String(),
    **BEST_OF_N_SCHEMA,
    "history_tokens": pl.Int64(),  # tokens of B_u the model saw (its own tokenizer)
    "history_cut": pl.Int64(),  # tokens of B_u cut (oldest first) to fit the model's context
}
FAILURES_SCHEMA = {"user_id": pl.String(), "reason": pl.String(), "detail": pl.String()}
# The worked example's interests, read from recgpt_interests.j2 (`recgpt.intent.examples`).
EXAMPLE_INTERESTS = example_values(TEMPLATE, "interest")
# Interest names that repeat any phrase of the worked example (its answer or its input) are copies.
EXAMPLES = ExampleFilter([TEMPLATE], fields=("interest", "input"))


class InterestsConfig(Resampling):
    """LLM_UI settings. `count` = interests asked per user (paper: >10; 5 suits the small model)."""

    model_config = ConfigDict(frozen=True)

    count: int = Field(default=5, ge=1, le=30)
    pool_size: int = Field(default=10, ge=0, description="preset pool entries shown in the prompt")
    history_tokens: int | None = Field(
        default=None,
        ge=1,
        description="cap on B_u tokens shown (None: all the serving model's context leaves, oldest cut first)",
    )
    max_words: int = Field(default=6, ge=1)
    listed_similarity: float = Field(default=0.85, ge=0.0, le=1.0)
    fallback_to_pool: bool = True
    hemisphere: Literal["north", "south"] = "north"
    temperature: float = 0.0
    tokens_per_interest: int = Field(default=60, ge=10)
    seed: int = 0

    @model_validator(mode="before")
    @classmethod
    def _no_history_chars(cls, data: Any) -> Any:
        return reject_history_chars(data, "interests")


def reject_history_chars(data: Any, section: str) -> Any:
    """The old `history_chars` key is an error that says what replaced it (it would be ignored silently)."""
    if isinstance(data, dict) and "history_chars" in data:
        raise ValueError(
            f"{section}.history_chars was replaced by {section}.history_tokens: the history budget is the "
            "serving model's context (tokens, its own tokenizer), oldest part cut first; set history_tokens "
            "only to cap it further (null: no cap)"
        )
    return data


class Interest(BaseModel):
    """One mined interest, in the paper's field order (ID, Interest, Stage, Reason)."""

    id: int = Field(description="1, 2, 3, ...")
    interest: str = Field(description="1 to 4 words")
    stage: Literal["long-term", "short-term"]
    reason: str = Field(description="at most 15 words, citing the behaviour")


@lru_cache(maxsize=32)
def interests_model(count: int) -> type[BaseModel]:
    """Output model `{interests: [Interest] * count}` (the grammar then asks for exactly `count`)."""
    return create_model(
        f"Interests{count}",
        interests=(list[Interest], Field(min_length=count, max_length=count)),
    )


def interest_prompt(
    cfg: InterestsConfig, ctx: UserContext, window: TokenWindow | None = None
) -> tuple[LLMRequest[Any], HistoryFit]:
    """The LLM_UI request of one user (key = user id) with as much of B_u as `window`'s context holds
    (`fit_request`; None: an approximate count, no context limit), and what of B_u it shows."""

    def build(history: str) -> LLMRequest[Any]:
        return make_request(
            TEMPLATE,
            interests_model(cfg.count),
            sampling=SamplingParams(
                temperature=cfg.temperature,
                max_tokens=cfg.tokens_per_interest * cfg.count + 40,
                seed=cfg.seed,
            ),
            stage=STAGE,
            key=ctx.user_id,
            count=cfg.count,
            profile=attribute_text(ctx.attributes),
            when=describe_date(ctx.asof_ts, cfg.hemisphere),
            history=history,
            pool=list(ctx.pool[: cfg.pool_size]),
        )

    return fit_request(build, ctx.history, window, cfg.history_tokens)


def interest_request(
    cfg: InterestsConfig, ctx: UserContext, window: TokenWindow | None = None
) -> LLMRequest[Any]:
    """The LLM_UI request of one user (key = user id); `interest_prompt` without the history record."""
    return interest_prompt(cfg, ctx, window)[0]


def _matches_pool(
    names: list[str], pool: Sequence[str], encoder: TextEncoder | None, threshold: float
) -> list[bool]:
    keys = {phrase_key(p) for p in pool}
    listed = [phrase_key(n) in keys for n in names]
    if encoder is not None and pool and not all(listed):
        sims = np.asarray(encoder.encode(names)) @ np.asarray(encoder.encode(list(pool))).T
        listed = [a or bool(s.max() >= threshold) for a, s in zip(listed, sims, strict=True)]
    return listed


def postprocess_interests(
    cfg: InterestsConfig,
    ctx: UserContext,
    interests: Sequence[Interest],
    encoder: TextEncoder | None = None,
    untrusted: UntrustedText | None = None,
    copies: CopyLog | None = None,
) -> list[dict[str, Any]]:
    """Tidy, filter, dedupe, number and classify one user's interests (module docstring).

    `copies` (optional) records how many interests of this answer copied the worked example.
    """
    evidence = evidence_stems([ctx.history, *ctx.pool, *(t for t, _ in ctx.items)])
    n_copies = 0
    pool_keys = {phrase_key(p) for p in ctx.pool}
    titles = {phrase_key(t) for t, _ in ctx.items} | {" ".join(phrase_tokens(t)) for t, _ in ctx.items}
    kept: list[Interest] = []
    seen: set[str] = set()
    for it in interests:
        name = clean_phrase(it.interest)
        key = phrase_key(name)
        if not key or key in seen or len(name.split()) > cfg.max_words:
            continue
        if EXAMPLES.copy_of(name, evidence, encoder) is not None:
            n_copies += 1
            continue
        if key not in pool_keys and (key in titles or " ".join(phrase_tokens(name)) in titles):
            continue  # one item's title, not an interest (a pool entry that happens to be a title stays)
        if reject_untrusted(untrusted, STAGE, (name, it.reason)):
            continue
        seen.add(key)
        kept.append(it.model_copy(update={"interest": name, "reason": clean_phrase(it.reason)}))
    if copies is not None:
        copies.record(ctx.user_id, n_copies)
    pool = ctx.pool[: cfg.pool_size]
    listed = _matches_pool([k.interest for k in kept], pool, encoder, cfg.listed_similarity) if kept else []
    return [
        {
            "user_id": ctx.user_id,
            "interest_id": i,
            "interest": k.interest,
            "stage": k.stage,
            "reason": k.reason,
            "kind": "listed" if is_listed else "extended",
            "template": "",
        }
        for i, (k, is_listed) in enumerate(zip(kept, listed, strict=True), start=1)
    ]


def _pool_fallback(
    cfg: InterestsConfig, ctx: UserContext, untrusted: UntrustedText | None = None
) -> list[dict[str, Any]]:
    pool = [p for p in ctx.pool if untrusted is None or not untrusted.hit(p)][: cfg.count]
    return [
        {
            "user_id": ctx.user_id,
            "interest_id": i,
            "interest": p,
            "stage": "long-term",
            "reason": "matched from the behaviour history (fallback)",
            "kind": "listed",
            "template": FALLBACK_TEMPLATE,
        }
        for i, p in enumerate(pool, start=1)
    ]


class InterestsTask(LLMTask[UserContext]):
    """LLM_UI as an `LLMTask` over user contexts (rows: INTERESTS_SCHEMA; fallback: the preset pool)."""

    name = STAGE
    empty_detail = "every interest was empty, duplicate, too long, an item title or untrusted"

    def __init__(
        self,
        cfg: InterestsConfig,
        encoder: TextEncoder | None = None,
        untrusted: UntrustedText | None = None,
        scorer: AnswerScorer | None = None,
        window: TokenWindow | None = None,
    ) -> None:
        self.cfg, self.encoder, self.untrusted, self.window = cfg, encoder, untrusted, window
        self.reasks, self.reask_temperature, self.n_samples = cfg.reasks, cfg.reask_temperature, cfg.n_samples
        self.scorer = scorer or AnswerScorer("interest")
        self.copies = CopyLog()  # example copies per user's last answer (failure reason `example_copy`)
        self.template = template_id(TEMPLATE)
        self.fitted = FittedPrompts(lambda item: interest_prompt(self.cfg, item, self.window))

    def prompt(self, item: UserContext) -> LLMRequest[Any]:
        return self.fitted.request(item)

    def postprocess(self, item: UserContext, value: Any) -> list[dict[str, Any]]:
        rows = postprocess_interests(
            self.cfg, item, value.interests, self.encoder, self.untrusted, self.copies
        )
        return [{**r, "template": self.template, **self.fitted.seen(item)} for r in rows]

    def fallback(self, item: UserContext, reason: str) -> list[dict[str, Any]]:
        rows = _pool_fallback(self.cfg, item, self.untrusted) if self.cfg.fallback_to_pool else []
        return [{**r, **self.fitted.seen(item)} for r in rows]

    def score(self, item: UserContext, rows: list[dict[str, Any]]) -> float:
        return self.scorer(item, rows)


def stamp_choices(out: TaskOutput, key_column: str = "user_id") -> list[dict[str, Any]]:
    """The rows of a per-user task output, each with its user's best-of-n columns (BEST_OF_N_SCHEMA):
    a fallback row says how many answers were drawn before it (`sample` null)."""
    choice = out.choice_of()
    return [{**r, **choice[r[key_column]].columns()} for r in out.rows]


def mine_interests(
    cfg: InterestsConfig,
    engine: TaskEngine,
    contexts: Sequence[UserContext],
    *,
    encoder: TextEncoder | None = None,
    untrusted: UntrustedText | None = None,
    scorer: AnswerScorer | None = None,
    copies: CopyLog | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """LLM_UI over users: (interests table INTERESTS_SCHEMA, failures table FAILURES_SCHEMA).

    `untrusted` (the dataset's flagged payloads) drops answer items that repeat one; None filters nothing.
    An answer the rules emptied is asked again (`cfg.reasks`): a user is on fallback only when the
    LLM contributed nothing. With `cfg.n_samples` > 1 each user gets the best of that many answers
    (`scorer`, default: the rules' `AnswerScorer`); every row records the answers drawn, the kept
    one's index and its score. `copies` (optional) counts the interests dropped as copies of the
    worked example, also from answers that kept other interests (`copies.total`: the stage's
    `example_copies`).
    """
    ids = [c.user_id for c in contexts]
    if len(set(ids)) != len(ids):
        raise ValueError("duplicate user ids in contexts")
    task = InterestsTask(cfg, encoder, untrusted, scorer, engine_window(engine))
    if copies is not None:
        task.copies = copies
    out = run_task(task, engine, contexts)
    failures = relabel_failures(out.failure_rows("user_id"), task.copies, "user_id")
    return (
        pl.DataFrame(stamp_choices(out), schema=INTERESTS_SCHEMA),
        pl.DataFrame(failures, schema=FAILURES_SCHEMA),
    )


__all__ = [
    "BEST_OF_N_SCHEMA",
    "EXAMPLE_INTERESTS",
    "FAILURES_SCHEMA",
    "INTERESTS_SCHEMA",
    "Interest",
    "InterestsConfig",
    "InterestsTask",
    "interest_prompt",
    "interest_request",
    "interests_model",
    "mine_interests",
    "postprocess_interests",
    "reject_history_chars",
    "stamp_choices",
]
