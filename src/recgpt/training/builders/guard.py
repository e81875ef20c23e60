"""The leakage guard of log-built samples: a table that breaks the rules of `contexts` is refused.

Every user-specific table the log builders return passes `guard_samples`. It reads only the table,
the split and the catalogue, not how the table was built, so it stands apart from the builders.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import Any

import polars as pl
from pydantic import BaseModel

from recgpt.data.split import LeakageError, Split
from recgpt.llm.types import ChatMessage, LLMRequest
from recgpt.training.builders.items import Catalogue


def guard_samples(
    samples: pl.DataFrame, split: Split, catalogue: Catalogue, *, exclude_users: Collection[str] = ()
) -> None:
    """Raise `LeakageError` if a user sample's prompt names one of its target items or a held-out item
    of the evaluation split, belongs to an excluded user, or has an as-of at/after the user's
    validation point."""
    from recgpt.intent.context import guard_requests as guard_user_prompts

    excluded = set(exclude_users)
    by_task: dict[str, list[LLMRequest[Any]]] = {}
    for r in samples.filter(pl.col("user_id").is_not_null()).iter_rows(named=True):
        u = r["user_id"]
        if u in excluded:
            raise LeakageError(f"sample {r['sample_id']} belongs to excluded (evaluation) user {u!r}")
        msgs = json.loads(r["messages"])
        text = "\n".join(m["content"] for m in msgs).lower()
        for item in json.loads(r["lineage"]).get("target_items", []):
            if any(n in text for n in catalogue.names(item)):
                raise LeakageError(f"sample {r['sample_id']}: target item {item!r} is named in its prompt")
        task = (
            split.valid
            if split.valid.asof.has_point(u)
            else split.test
            if split.test.asof.has_point(u)
            else None
        )
        if task is None:
            continue  # a user without evaluation points has nothing held out
        if r["as_of"] > task.asof.point(u)[0]:
            raise LeakageError(
                f"sample {r['sample_id']}: as-of {r['as_of']} is after {u!r}'s {task.name} point"
            )
        req = LLMRequest(messages=tuple(ChatMessage(**m) for m in msgs), output_model=BaseModel, key=u)
        by_task.setdefault(task.name, []).append(req)
    for name, reqs in by_task.items():
        guard_user_prompts(split, split.valid if name == split.valid.name else split.test, reqs)


__all__ = ["guard_samples"]
