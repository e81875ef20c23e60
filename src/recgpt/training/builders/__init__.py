"""Training-data builders: each returns an SFT sample table (`recgpt.data.sft.SAMPLE_SCHEMA`)
whose rows carry their lineage.

- `logs`: self-supervised from interaction logs: tags, interests and explanations targets taken from
  the items users engaged with next, prompts built strictly from history before each as-of point
  (`contexts`: the leakage-safe (user, as-of) contexts; `source`: their config, shared resources and
  rules; `guard`: `guard_samples`, the leakage re-check of every built table);
- `catalogue`: curriculum tasks from the catalogue alone (category, key info, what to buy, induction);
- `distill`: a teacher answers the chain's prompts; rules and the judge reject-sample its answers;
- `items`: what the catalogue says about an item, as short texts (tag phrases, specific category).
"""

from recgpt.training.builders.catalogue import CATALOGUE_TASKS, CatalogueConfig, build_catalogue_samples
from recgpt.training.builders.contexts import tag_contexts
from recgpt.training.builders.distill import chain_rules, distill, run_distill
from recgpt.training.builders.guard import guard_samples
from recgpt.training.builders.logs import (
    build_explanation_samples,
    build_interest_samples,
    build_tag_samples,
    interest_prompts,
    tag_prompts,
)
from recgpt.training.builders.source import LogContext, LogsConfig, eval_users

__all__ = [
    "CATALOGUE_TASKS",
    "CatalogueConfig",
    "LogContext",
    "LogsConfig",
    "build_catalogue_samples",
    "build_explanation_samples",
    "build_interest_samples",
    "build_tag_samples",
    "chain_rules",
    "distill",
    "eval_users",
    "guard_samples",
    "interest_prompts",
    "run_distill",
    "tag_contexts",
    "tag_prompts",
]
