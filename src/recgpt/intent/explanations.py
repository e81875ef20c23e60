"""LLM_RE explanations (RecGPT §1.6): offline interest-item-explanation table, lookup at serving time.

Offline production as in the paper: explanations are not written per user and item but per
**matched (interest, item) pair**. `match_pairs` maps each interest to categories with φ (its
`phi_top_k` best) and pairs it with the items of those categories, restricted to a given item set
(e.g. the candidates a run retrieved) and cut to the `max_items_per_interest` items whose text is
closest to the interest. `generate_explanations` runs the two-step prompt (first an analysis of how
the item relates to the interest, then the explanation; the output `{analysis, explanation}` keeps
only the explanation) and enforces the rules afterwards (`check_explanation`):

- length: at most `max_words` words and `max_chars` characters; longer texts are cut at a word
  boundary (`on_too_long="truncate"`, dangling joining words removed) or replaced (`"fallback"`);
- prohibited words (configurable; default from the paper's list: empty praise, slogans, exaggeration);
- no repeating the item title (its words in order, or a one-word title with its year) or the
  bracketed item label the prompt shows; no copy of the prompt's worked example (its explanation or
  its analysis, exact or near, read from the template: `recgpt.intent.examples`, unless the interest
  and item hold the copied words); not empty.

An explanation (or its analysis) that repeats a flagged catalogue / user payload
(`recgpt.data.untrusted`, prompt-injection defence) is rejected the same way, and a rule-based text
that would repeat one (built from a flagged title) is replaced by `UNTRUSTED_FALLBACK`, so no served
text carries a payload.

A text that breaks a rule is asked again (`reasks`, a new seed each); one that still breaks it is
replaced by a rule-based pair explanation (`pair_fallback`, built from the interest and the matched
category) and flagged `fallback=True`. Serving
(`recgpt.intent.explanation_table.ExplanationTable`) returns the first of the user's interests that
has an entry for the item, else an **item-only** explanation built from item data alone ("Popular in
<category>" when training popularity says so, else `item_fallback`).

Every text says who wrote it (`source`, in the stored table and in what is served): `SOURCE_LLM`
("llm": the model's text passed the rules), `SOURCE_PAIR` ("template:pair": the rule-based pair
text) or `SOURCE_ITEM` ("template:item": the item-only text, or `UNTRUSTED_FALLBACK`).
`recgpt.intent.explanation_table.llm_share` counts them, so a report can say how many of the served
explanations the LLM actually wrote.

Generation is `ExplanationsTask`, a `recgpt.llm.task.LLMTask` over (interest, item, category) pairs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from recgpt.behavior.items import clean_title
from recgpt.data.untrusted import UntrustedText, reject_untrusted
from recgpt.intent.context import clean_phrase, phrase_key
from recgpt.intent.examples import ExampleFilter, evidence_stems, example_values
from recgpt.intent.phi import TagToCategory
from recgpt.intent.pool import STOP_WORDS, phrase_tokens
from recgpt.llm.prompts import make_request, template_id
from recgpt.llm.task import LLMTask, TaskEngine, run_task
from recgpt.llm.types import LLMRequest, SamplingParams

TEMPLATE = "recgpt_explanation"
STAGE = "explanations"
PAIR_RULE = "rule:pair"
SOURCE_LLM = "llm"  # written by the LLM and passed the rules
SOURCE_PAIR = "template:pair"  # the rule-based text of an (interest, item) pair
SOURCE_ITEM = "template:item"  # the rule-based text about the item alone
SOURCES = (SOURCE_LLM, SOURCE_PAIR, SOURCE_ITEM)
EXPLANATIONS_SCHEMA = {
    "interest": pl.String(),
    "item_id": pl.String(),
    "explanation": pl.String(),
    "template": pl.String(),
    "fallback": pl.Boolean(),
    "source": pl.String(),
}
PAIRS_SCHEMA = {
    "interest": pl.String(),
    "item_id": pl.String(),
    "category": pl.String(),
    "score": pl.Float64(),
}
DEFAULT_PROHIBITED: tuple[str, ...] = (
    "practical",
    "versatile",
    "elegant",
    "essential",
    "must-have",
    "must have",
    "must-see",
    "must see",
    "must-watch",
    "must watch",
    "perfect",
    "best ever",
    "ultimate",
    "amazing",
    "game-changer",
    "100%",
    "guaranteed",
    "forever",
    "buy now",
    "limited time",
    "act now",
)
EXAMPLE_EXPLANATION = example_values(TEMPLATE, "explanation")[0]  # read from recgpt_explanation.j2
_EXAMPLES = ExampleFilter([TEMPLATE], fields=("explanation", "analysis"))
UNTRUSTED_FALLBACK = "Something new to explore"  # a rule-based text would have repeated a flagged payload


class ExplanationsConfig(BaseModel):
    """LLM_RE settings: pair matching, the rules enforced after generation, the fallbacks."""

    model_config = ConfigDict(frozen=True)

    phi_top_k: int = Field(default=3, ge=1)
    max_items_per_interest: int = Field(default=20, ge=1)
    max_words: int = Field(default=12, ge=1)
    max_chars: int = Field(default=80, ge=10)
    prohibited_words: tuple[str, ...] = DEFAULT_PROHIBITED
    on_too_long: Literal["truncate", "fallback"] = "truncate"
    pair_fallback: str = "{category} pick for fans of {interest}"
    pair_fallback_same: str = "Another {category} pick for you"  # when the interest is the category
    item_fallback: str = "More {category} to explore"
    popular_fallback: str = "Popular in {category}"
    popular_share: float = Field(default=0.1, gt=0.0, le=1.0)
    # Floor measured with the default embedder (all-MiniLM-L6-v2): an interest and an item it serves
    # score 0.49-0.74 ("Space adventure" / Star Wars 0.53, "Crime thriller" / Heat 0.74), off-genre films
    # 0.32-0.47, an interest from another domain below 0.2 ("Baking" / any film, "Lab glassware" / films).
    attach_similarity: float = Field(
        default=0.4,
        ge=-1.0,
        le=1.0,
        description="an item no interest produced (classic channel) is explained with an interest only "
        "when φ matches them and their embedding cosine reaches this floor; else item-only",
    )
    temperature: float = 0.0
    max_tokens: int = Field(default=160, ge=16)
    seed: int = 0
    reasks: int = Field(
        default=2, ge=0, description="an answer that breaks a rule is asked again, up to this often"
    )
    reask_temperature: float = Field(
        default=0.7, gt=0.0, description="... sampled at this temperature, a new seed each"
    )


class Explanation(BaseModel):
    """The paper's two-step answer: reasoning first, then the explanation (only the latter is kept)."""

    analysis: str = Field(description="at most 25 words: item features and their link to the interest")
    explanation: str = Field(description="at most 12 words")


def item_label(row: Mapping[str, Any]) -> str:
    """'Clean title [cat/cat]': how an item is shown to LLM_RE."""
    cats = [c for c in (row.get("categories") or []) if c]
    title = clean_title(row.get("title") or "", row.get("brand"))
    return f"{title} [{'/'.join(cats)}]" if cats else title


# ---------------------------------------------------------------- matching


def match_pairs(
    cfg: ExplanationsConfig,
    interests: Sequence[str] | pl.DataFrame,
    phi: TagToCategory,
    item_ids: Sequence[str] | None = None,
) -> pl.DataFrame:
    """Matched (interest, item) pairs (PAIRS_SCHEMA): item category in φ(interest)'s top `phi_top_k`."""
    names = interests["interest"].to_list() if isinstance(interests, pl.DataFrame) else list(interests)
    names = list(dict.fromkeys(n for n in names if n and n.strip()))
    pool = list(dict.fromkeys(item_ids)) if item_ids is not None else list(phi.item_ids)
    rows = phi.item_rows(pool)
    keep = rows >= 0
    pool, rows = [p for p, k in zip(pool, keep, strict=True) if k], rows[keep]
    out: dict[str, list[Any]] = {k: [] for k in PAIRS_SCHEMA}
    if not names or not pool:
        return pl.DataFrame(out, schema=PAIRS_SCHEMA)
    assert phi.vectors is not None
    cat_scores = phi.category_scores(names).toarray()
    member = phi.membership[rows].toarray() > 0  # (n_pool, n_categories)
    sims = np.asarray(phi.encoder.encode(names), dtype=np.float32) @ phi.vectors[rows].T
    for i, name in enumerate(names):
        top = [
            c
            for c in np.lexsort((np.arange(cat_scores.shape[1]), -cat_scores[i]))[: cfg.phi_top_k]
            if cat_scores[i, c] > 0
        ]
        if not top:
            continue
        hit = member[:, top].any(axis=1)
        cand = np.nonzero(hit)[0]
        best = cand[np.lexsort((cand, -sims[i, cand]))][: cfg.max_items_per_interest]
        for j in best:
            cat = max((c for c in top if member[j, c]), key=lambda c: cat_scores[i, c])
            for key, v in zip(out, (name, pool[j], phi.categories[cat], float(sims[i, j])), strict=True):
                out[key].append(v)
    return pl.DataFrame(out, schema=PAIRS_SCHEMA)


# ---------------------------------------------------------------- rules


_DANGLING = STOP_WORDS | {"&", "-", "—", "–"}


def _truncate(text: str, max_words: int, max_chars: int) -> str:
    words = text.split()[:max_words]
    while words and len(" ".join(words)) > max_chars:
        words.pop()
    while words and words[-1].lower().strip(",;:") in _DANGLING:
        words.pop()
    return " ".join(words).rstrip(",;:-")


def check_explanation(
    cfg: ExplanationsConfig, text: str, title: str, context: str = ""
) -> tuple[str, str | None]:
    """(tidied text, None) when it passes the rules, else (text, what rule it broke); see module docstring.

    `context` (the interest and the item label) holds words the text may share with the worked
    example without being a copy of it (`recgpt.intent.examples`).
    """
    t = clean_phrase(text)
    if not t:
        return t, "empty"
    low = t.lower()
    for w in cfg.prohibited_words:
        if w and re.search(rf"(?<!\w){re.escape(w.lower())}(?!\w)", low):
            return t, f"prohibited word {w!r}"
    if _EXAMPLES.copy_of(t, evidence_stems([context])) is not None:
        return t, "copies the example"
    if "[" in t or "]" in t:
        return t, "copies the item label"
    title_words = phrase_tokens(title)
    text_words = f" {' '.join(phrase_tokens(t))} "
    full_title = " ".join(clean_title(title).lower().split())
    if (len(title_words) >= 2 and f" {' '.join(title_words)} " in text_words) or (
        full_title and full_title in low
    ):
        return t, "repeats the item title"
    if len(t.split()) > cfg.max_words or len(t) > cfg.max_chars:
        if cfg.on_too_long == "fallback":
            return t, "too long"
        t = _truncate(t, cfg.max_words, cfg.max_chars)
        if not t:
            return t, "too long"
    return t, None


def _fit(cfg: ExplanationsConfig, text: str) -> str:
    """A rule-based text made to fit the length limits (fallbacks must obey the rules too)."""
    text = " ".join(text.split())
    return (
        text
        if len(text.split()) <= cfg.max_words and len(text) <= cfg.max_chars
        else _truncate(text, cfg.max_words, cfg.max_chars)
    )


def pair_explanation(cfg: ExplanationsConfig, interest: str, category: str) -> str:
    """Rule-based explanation of a matched pair (used when the LLM's text breaks a rule)."""
    fmt = cfg.pair_fallback_same if phrase_key(interest) == phrase_key(category) else cfg.pair_fallback
    return _fit(cfg, fmt.format(interest=interest, category=category))


def item_explanation(cfg: ExplanationsConfig, row: Mapping[str, Any], popular: bool = False) -> str:
    """Item-only explanation from item data alone (no interest matched the item)."""
    cats = [c for c in (row.get("categories") or []) if c]
    if not cats:
        return _fit(cfg, clean_title(row.get("title") or "", row.get("brand")))
    fmt = cfg.popular_fallback if popular else cfg.item_fallback
    return _fit(cfg, fmt.format(category=cats[0]))


# ---------------------------------------------------------------- generation


def explanation_request(cfg: ExplanationsConfig, interest: str, row: Mapping[str, Any]) -> LLMRequest[Any]:
    """The LLM_RE request of one (interest, item) pair (key = "item_id|interest")."""
    return make_request(
        TEMPLATE,
        Explanation,
        sampling=SamplingParams(temperature=cfg.temperature, max_tokens=cfg.max_tokens, seed=cfg.seed),
        stage=STAGE,
        key=f"{row['item_id']}|{interest}",
        interest=interest,
        item=item_label(row),
        max_words=cfg.max_words,
    )


Pair = tuple[str, str, str | None]  # (interest, item_id, matched category or None)


class ExplanationsTask(LLMTask[Pair]):
    """LLM_RE as an `LLMTask` over matched pairs (rows: EXPLANATIONS_SCHEMA; fallback: `pair_explanation`).

    `meta` = item_id -> item row (title, brand, categories) for every item of the pairs.
    """

    name = STAGE
    empty_detail = "the explanation broke a rule"

    def __init__(
        self,
        cfg: ExplanationsConfig,
        meta: Mapping[str, Mapping[str, Any]],
        untrusted: UntrustedText | None = None,
    ) -> None:
        self.cfg, self.meta, self.untrusted = cfg, meta, untrusted
        self.reasks, self.reask_temperature = cfg.reasks, cfg.reask_temperature
        self.template = template_id(TEMPLATE)

    def prompt(self, item: Pair) -> LLMRequest[Any]:
        return explanation_request(self.cfg, item[0], self.meta[item[1]])

    def postprocess(self, item: Pair, value: Any) -> list[dict[str, Any]]:
        """The rules (`check_explanation`), then the untrusted-payload filter: one row, or none."""
        interest, iid, _ = item
        row = self.meta[iid]
        text, broken = check_explanation(
            self.cfg, value.explanation, row["title"] or "", f"{interest} {item_label(row)}"
        )
        if broken is None and reject_untrusted(self.untrusted, STAGE, (text, value.analysis)):
            broken = "repeats an untrusted payload"
        if broken is not None or not text:
            return []
        return [
            {
                "interest": interest,
                "item_id": iid,
                "explanation": text,
                "template": self.template,
                "fallback": False,
                "source": SOURCE_LLM,
            }
        ]

    def fallback(self, item: Pair, reason: str) -> list[dict[str, Any]]:
        interest, iid, cat = item
        category = cat or next(iter(self.meta[iid].get("categories") or []), None) or "catalogue"
        text = pair_explanation(self.cfg, interest, category)
        if self.untrusted is not None and self.untrusted.hit(text):
            text = UNTRUSTED_FALLBACK
        return [
            {
                "interest": interest,
                "item_id": iid,
                "explanation": text,
                "template": PAIR_RULE,
                "fallback": True,
                "source": SOURCE_PAIR,
            }
        ]


def generate_explanations(
    cfg: ExplanationsConfig,
    engine: TaskEngine,
    pairs: pl.DataFrame,
    items: pl.DataFrame,
    untrusted: UntrustedText | None = None,
) -> pl.DataFrame:
    """LLM_RE over matched pairs -> the interest-item-explanation table (EXPLANATIONS_SCHEMA).

    `untrusted` (the dataset's flagged payloads) rejects texts that repeat one; None filters nothing.
    An answer that breaks a rule is asked again (`cfg.reasks`) before the rule-based text replaces it.
    """
    missing = {"interest", "item_id"} - set(pairs.columns)
    if missing:
        raise ValueError(f"pairs table lacks columns {sorted(missing)}")
    pairs = pairs.unique(subset=["interest", "item_id"], keep="first", maintain_order=True)
    cols = [c for c in ("item_id", "title", "brand", "categories") if c in items.columns]
    wanted = items.filter(pl.col("item_id").is_in(pairs["item_id"].implode())).select(cols)
    meta = {r["item_id"]: r for r in wanted.iter_rows(named=True)}
    unknown = [i for i in pairs["item_id"].to_list() if i not in meta]
    if unknown:
        raise KeyError(f"pairs name items not in the items table: {unknown[:5]}")
    cats = pairs["category"].to_list() if "category" in pairs.columns else [None] * pairs.height
    todo = list(zip(pairs["interest"].to_list(), pairs["item_id"].to_list(), cats, strict=True))
    out = run_task(ExplanationsTask(cfg, meta, untrusted), engine, todo)
    return pl.DataFrame(out.rows, schema=EXPLANATIONS_SCHEMA)


__all__ = [
    "DEFAULT_PROHIBITED",
    "EXPLANATIONS_SCHEMA",
    "PAIRS_SCHEMA",
    "PAIR_RULE",
    "SOURCES",
    "SOURCE_ITEM",
    "SOURCE_LLM",
    "SOURCE_PAIR",
    "UNTRUSTED_FALLBACK",
    "Explanation",
    "ExplanationsConfig",
    "ExplanationsTask",
    "check_explanation",
    "explanation_request",
    "generate_explanations",
    "item_explanation",
    "item_label",
    "match_pairs",
    "pair_explanation",
]
