"""Deterministic checks that sit beside the LLM judge, as extra criteria `rule:<name>`.

They reuse the chain's own rules, so "judge and rules reject-sample" is one filter and a training
target can never break a rule the chain enforces at inference time:

- interests: `rule:words` (1 to `interest_max_words` words), `rule:example` (a copy of the
  prompt's worked example that the context does not support);
- tags: `rule:words` (2 to 6 words, the prompt's bound), `rule:vague` (a vague word such as
  "smart", "modular", "set"), `rule:fresh` (names an item engaged in the freshness window:
  `intent.tags.names_item` against the sample's `recent` titles), `rule:example`;
- explanations: `intent.explanations.check_explanation` with `on_too_long="fallback"` (a text the
  chain would have to cut is not a good target). That check stops at the first broken rule, so
  rows are written in its order up to and including the first failure: `rule:empty`,
  `rule:prohibited`, `rule:example`, `rule:label`, `rule:title`, `rule:length`.

Verdicts are "Yes" (rule kept) / "No" (rule broken).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from recgpt.intent.context import phrase_key
from recgpt.intent.explanations import ExplanationsConfig, check_explanation
from recgpt.intent.interests import EXAMPLE_INTERESTS
from recgpt.intent.tags import EXAMPLE_TAGS, names_item
from recgpt.judge.criteria import RULE_PREFIX
from recgpt.judge.samples import facts_of

VERDICTS_SCHEMA: dict[str, pl.DataType] = {
    "sample_id": pl.String(),
    "task": pl.String(),
    "criterion": pl.String(),
    "verdict": pl.String(),
    "passed": pl.Boolean(),
}
VAGUE_WORDS: tuple[str, ...] = (
    "smart",
    "modular",
    "set",
    "stuff",
    "things",
    "various",
    "miscellaneous",
    "misc",
)
EXPLANATION_RULES: tuple[str, ...] = ("empty", "prohibited", "example", "label", "title", "length")
_EXPLANATION_REASONS = (
    ("empty", "empty"),
    ("prohibited word", "prohibited"),
    ("copies the example", "example"),
    ("copies the item label", "label"),
    ("repeats the item title", "title"),
    ("too long", "length"),
)


class RulesConfig(BaseModel):
    """Bounds and word lists of the deterministic checks."""

    model_config = ConfigDict(frozen=True)

    interest_max_words: int = Field(default=6, ge=1)
    tag_min_words: int = Field(default=2, ge=1)
    tag_max_words: int = Field(default=6, ge=1)
    vague_words: tuple[str, ...] = VAGUE_WORDS
    min_title_chars: int = Field(default=6, ge=1)
    explanations: ExplanationsConfig = Field(
        default_factory=lambda: ExplanationsConfig(on_too_long="fallback")
    )


def _has_word(text: str, words: tuple[str, ...]) -> bool:
    low = text.lower()
    return any(w and re.search(rf"(?<!\w){re.escape(w.lower())}(?!\w)", low) for w in words)


def _interest_rules(cfg: RulesConfig, s: Mapping[str, Any]) -> list[tuple[str, bool]]:
    out, key = s["output"], phrase_key(s["output"])
    copied = key in {phrase_key(e) for e in EXAMPLE_INTERESTS} and key not in (s.get("context") or "").lower()
    return [("words", 1 <= len(out.split()) <= cfg.interest_max_words), ("example", not copied)]


def _tag_rules(cfg: RulesConfig, s: Mapping[str, Any]) -> list[tuple[str, bool]]:
    out = s["output"]
    rules = [
        ("words", cfg.tag_min_words <= len(out.split()) <= cfg.tag_max_words),
        ("vague", not _has_word(out, cfg.vague_words)),
    ]
    facts = facts_of(s)
    if "recent" in facts:
        rules.append(
            ("fresh", not any(names_item(out, t, cfg.min_title_chars) for t in facts["recent"] if t))
        )
    rules.append(("example", phrase_key(out) not in {phrase_key(e) for e in EXAMPLE_TAGS}))
    return rules


def explanation_rule(reason: str) -> str:
    """The rule name of a `check_explanation` failure message."""
    return next((name for prefix, name in _EXPLANATION_REASONS if reason.startswith(prefix)), "other")


def _explanation_rules(cfg: RulesConfig, s: Mapping[str, Any]) -> list[tuple[str, bool]]:
    title = facts_of(s).get("item_title") or ""
    _, broken = check_explanation(cfg.explanations, s["output"], title)
    if broken is None:
        return [(r, True) for r in EXPLANATION_RULES]
    name = explanation_rule(broken)
    before = EXPLANATION_RULES[: EXPLANATION_RULES.index(name)] if name in EXPLANATION_RULES else ()
    return [*((r, True) for r in before), (name, False)]


_BY_TASK = {"interests": _interest_rules, "tags": _tag_rules, "explanations": _explanation_rules}


def rule_results(sample: Mapping[str, Any], cfg: RulesConfig | None = None) -> list[tuple[str, bool]]:
    """(rule name, kept) of one sample row, in rule order."""
    return _BY_TASK[sample["task"]](cfg or RulesConfig(), sample)


def apply_rules(samples: pl.DataFrame, cfg: RulesConfig | None = None) -> pl.DataFrame:
    """Verdict rows (`VERDICTS_SCHEMA`) of every rule for every sample."""
    cfg = cfg or RulesConfig()
    rows = []
    for s in samples.iter_rows(named=True):
        for name, kept in rule_results(s, cfg):
            rows.append(
                {
                    "sample_id": s["sample_id"],
                    "task": s["task"],
                    "criterion": f"{RULE_PREFIX}{name}",
                    "verdict": "Yes" if kept else "No",
                    "passed": kept,
                }
            )
    return pl.DataFrame(rows, schema=VERDICTS_SCHEMA)


__all__ = [
    "EXPLANATION_RULES",
    "VAGUE_WORDS",
    "VERDICTS_SCHEMA",
    "RulesConfig",
    "apply_rules",
    "explanation_rule",
    "rule_results",
]
