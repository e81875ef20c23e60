"""Best-of-n scoring of LLM_UI / LLM_IT answers: which of several sampled answers to keep.

`recgpt.llm.task.run_task` draws `n_samples` answers per user (the configured first ask, then
variations at `reask_temperature` with seed + j), post-processes each, and keeps the non-empty one
with the highest `LLMTask.score`. This module says what "highest" means for the intent stages,
without importing anything above the intent layer (φ, the retrieval index and the judge come in as
callbacks, so unit tests can run without them):

- **rules**: one point per row the post-processing kept (a tag or interest that survived every
  filter), plus the answer's distinctness in [0, 1) (distinct content words / all words of the kept
  texts), so ten near-copies of one tag lose to ten different ones;
- **grounding** (optional `PartCheck`): one more point per row the catalogue grounds, e.g.
  `catalogue_grounding`: the tag retrieves an item above a cosine floor (and, given `category_of`,
  maps to a category via φ);
- **judge** (optional `PartCheck`): one more point per row a *calibrated* judge passes (the caller
  decides whether the judge is trusted, as `recgpt.training.selftrain.judge_filter` does).

Ties go to the earliest sample, so best-of-n never replaces an equally good greedy answer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from recgpt.intent.context import UserContext
from recgpt.intent.pool import TextEncoder, phrase_tokens

PartCheck = Callable[[UserContext, list[dict[str, Any]]], Sequence[bool]]
"""(user context, an answer's kept rows) -> one verdict per row (True: grounded / passed)."""


def distinctness(texts: Sequence[str]) -> float:
    """Distinct words / all words of `texts`, scaled into [0, 1): 0 for nothing, near 1 for no repeats."""
    words = [w for t in texts for w in phrase_tokens(t)]
    if not words:
        return 0.0
    return 0.999 * len(set(words)) / len(words)


@dataclass(frozen=True)
class AnswerScorer:
    """The score of one answer's kept rows (module docstring); `field` names the row's text."""

    field: str
    grounding: PartCheck | None = None
    judge: PartCheck | None = None

    def __call__(self, ctx: UserContext, rows: list[dict[str, Any]]) -> float:
        score = len(rows) + distinctness([str(r[self.field]) for r in rows])
        for check in (self.grounding, self.judge):
            if check is not None and rows:
                verdicts = list(check(ctx, rows))
                if len(verdicts) != len(rows):
                    raise ValueError(
                        f"a best-of-n check returned {len(verdicts)} verdicts for {len(rows)} rows"
                    )
                score += sum(bool(v) for v in verdicts)
        return score


def catalogue_grounding(
    encoder: TextEncoder,
    item_texts: Sequence[str],
    floor: float = 0.5,
    *,
    field: str = "tag",
    category_of: Callable[[list[str]], Sequence[str | None]] | None = None,
) -> PartCheck:
    """A `PartCheck`: a row is grounded when its text's nearest catalogue item (cosine over `encoder`'s
    vectors of `item_texts`, e.g. the titles) reaches `floor`, and, given `category_of` (φ), it maps
    to a category (not None). The item vectors are encoded once, here."""
    if not item_texts:
        raise ValueError("catalogue_grounding needs at least one item text")
    items = _unit(np.asarray(encoder.encode(list(item_texts)), dtype=np.float32))

    def check(ctx: UserContext, rows: list[dict[str, Any]]) -> list[bool]:
        texts = [str(r[field]) for r in rows]
        sims = _unit(np.asarray(encoder.encode(texts), dtype=np.float32)) @ items.T
        ok = [bool(s.max() >= floor) for s in sims]
        if category_of is not None:
            ok = [a and c is not None for a, c in zip(ok, category_of(texts), strict=True)]
        return ok

    return check


def _unit(m: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    return m / np.where(norms > 0, norms, 1.0)


__all__ = ["AnswerScorer", "PartCheck", "catalogue_grounding", "distinctness"]
