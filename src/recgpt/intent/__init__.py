"""The intent stages of RecGPT (§1.3, §1.4, §1.6): interests, tags, tag-to-category φ, explanations.

Order of use (each step is a function over tables, usable alone):

1. `InterestPool.build(items, encoder)` then `pool.match(task.asof, users)` -> matched pools I_m;
2. `build_contexts(task, dataset, users, compressor=..., pool=...)` -> one `UserContext` per user,
   from the `AsOf` view only (`guard_requests` checks rendered prompts against held-out titles);
3. `mine_interests(InterestsConfig(), engine, contexts)` -> (interests, failures) tables (LLM_UI);
4. `predict_tags(TagsConfig(), engine, contexts, interests)` -> (tags, failures) tables (LLM_IT);
5. `TagToCategory(encoder).fit(dataset)` -> φ; `phi.predict(tags)` -> tag_categories table;
   `tag_hr(tags, phi, split)` -> the paper's HR@K;
6. `match_pairs(cfg, interests, phi, candidate_items)` then `generate_explanations(cfg, engine, pairs,
   items)` -> the interest-item-explanation table (LLM_RE); `ExplanationTable` serves lookups with an
   item-only fallback.

Table columns are the chain's shared contracts (`INTERESTS_SCHEMA`, `TAGS_SCHEMA`,
`TAG_CATEGORY_SCHEMA`, `EXPLANATIONS_SCHEMA`, `FAILURES_SCHEMA`).
"""

from __future__ import annotations

from recgpt.intent.context import UserContext, build_contexts, describe_date, guard_requests, prompt_text
from recgpt.intent.explanation_table import ExplanationTable, lookup
from recgpt.intent.explanations import (
    EXPLANATIONS_SCHEMA,
    PAIRS_SCHEMA,
    ExplanationsConfig,
    check_explanation,
    generate_explanations,
    match_pairs,
)
from recgpt.intent.interests import (
    FAILURES_SCHEMA,
    INTERESTS_SCHEMA,
    InterestsConfig,
    interest_request,
    mine_interests,
)
from recgpt.intent.phi import TAG_CATEGORY_SCHEMA, PhiConfig, TagToCategory, tag_hr
from recgpt.intent.pool import InterestPool, PoolConfig, TextEncoder
from recgpt.intent.reference import history_baseline_tags
from recgpt.intent.tags import TAGS_SCHEMA, TagsConfig, predict_tags, tag_request

__all__ = [
    "EXPLANATIONS_SCHEMA",
    "FAILURES_SCHEMA",
    "INTERESTS_SCHEMA",
    "PAIRS_SCHEMA",
    "TAGS_SCHEMA",
    "TAG_CATEGORY_SCHEMA",
    "ExplanationTable",
    "ExplanationsConfig",
    "InterestPool",
    "InterestsConfig",
    "PhiConfig",
    "PoolConfig",
    "TagToCategory",
    "TagsConfig",
    "TextEncoder",
    "UserContext",
    "build_contexts",
    "check_explanation",
    "describe_date",
    "generate_explanations",
    "guard_requests",
    "history_baseline_tags",
    "interest_request",
    "lookup",
    "match_pairs",
    "mine_interests",
    "predict_tags",
    "prompt_text",
    "tag_hr",
    "tag_request",
]
