"""The judge as a best-of-n check (`recgpt.intent.bestofn.PartCheck`): which rows of an answer pass.

Best-of-n adds one point per row a judge passes, but only a judge the calibration gate trusts may
vote (`recgpt.training.selftrain.judge_filter` returns the filter, or None and why not): an
uncalibrated small-model judge would only add noise. `judge_check(filter_fn, "tags")` turns such a
filter (`Judge.filter`: judge sample table -> passing rows) into the per-row check the intent
scorers take; the sample rows are built exactly as `make_samples` builds them for a run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import polars as pl

from recgpt.intent.bestofn import PartCheck
from recgpt.intent.context import UserContext
from recgpt.judge.samples import context_fields, make_samples

_FIELD = {"tags": "tag", "interests": "interest"}


def judge_check(filter_fn: Callable[[pl.DataFrame], pl.DataFrame], task: str = "tags") -> PartCheck:
    """A `PartCheck` over tag or interest rows that passes the rows `filter_fn` keeps."""
    if task not in _FIELD:
        raise ValueError(f"judge_check scores 'tags' or 'interests' rows, not {task!r}")
    field = _FIELD[task]

    def check(ctx: UserContext, rows: list[dict[str, Any]]) -> list[bool]:
        base = context_fields(ctx)
        parts = [
            {**base, "output": str(r[field]), **({"interest": r["interest"]} if task == "tags" else {})}
            for r in rows
        ]
        samples = make_samples(task, parts, source="bestofn")
        passed = set(filter_fn(samples)["sample_id"].to_list())
        by_output = dict(zip(samples["output"].to_list(), samples["sample_id"].to_list(), strict=True))
        return [by_output.get(p["output"]) in passed for p in parts]

    return check


__all__ = ["judge_check"]
