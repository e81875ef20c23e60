"""Training-side helpers around the SFT sample table: rendered prompts, completions, chat views, balancing.

The table's contract itself (`SAMPLE_SCHEMA`, `sample_row`, `validate_samples`, `save_samples`...)
lives in `recgpt.data.sft`, below both `judge/` and `training/`; it is re-exported here, where
builders and trainers have always found it.

`TrainPrompt` is a rendered request plus what a sample needs besides the answer (task, level, user,
as-of, lineage, and in-memory `meta` for rules and judges), so builders, distillation and
self-training turn (prompt, answer) into rows the same way (`prompt_sample`).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import polars as pl
from pydantic import BaseModel, ValidationError

from recgpt.data.sft import (
    LEVELS,
    MAX_ERRORS,
    ROLES,
    SAMPLE_SCHEMA,
    SOURCES,
    SampleError,
    concat_samples,
    load_samples,
    messages_json,
    sample_id,
    sample_row,
    samples_frame,
    save_samples,
    validate_samples,
)
from recgpt.llm.types import LLMRequest

CHAIN_TASKS: tuple[str, ...] = ("interests", "tags", "explanations")

T = TypeVar("T")


@dataclass(frozen=True)
class TrainPrompt:
    """A rendered request plus everything a training row needs besides the answer.

    `lineage` is JSON-able and goes into the row; `meta` stays in memory (the `UserContext`, the
    interests, the item row...) for rules and judges that need structured inputs.
    """

    request: LLMRequest[Any]
    task: str
    level: str = "advanced"
    user_id: str | None = None
    as_of: int | None = None
    lineage: Mapping[str, Any] = field(default_factory=dict)
    meta: Mapping[str, Any] = field(default_factory=dict)


def completion_json(prompt: TrainPrompt, answer: BaseModel | Mapping[str, Any] | str) -> str:
    """The answer as compact JSON, after validating it against the prompt's output model."""
    model = prompt.request.output_model
    try:
        if isinstance(answer, BaseModel):
            value = model.model_validate(answer.model_dump())
        elif isinstance(answer, str):
            value = model.model_validate_json(answer)
        else:
            value = model.model_validate(dict(answer))
    except ValidationError as exc:
        raise SampleError(f"{prompt.task} target does not validate against {model.__name__}: {exc}") from exc
    return json.dumps(value.model_dump(mode="json"), ensure_ascii=False)


def prompt_sample(
    prompt: TrainPrompt, answer: BaseModel | Mapping[str, Any] | str, source: str, **lineage: Any
) -> dict[str, Any]:
    """A sample row from a prompt and its (validated) answer; `lineage` adds to the prompt's own."""
    merged = {"template": prompt.request.template, **prompt.lineage, **lineage}
    return sample_row(
        prompt.task,
        prompt.level,
        prompt.request.messages,
        completion_json(prompt, answer),
        source,
        user_id=prompt.user_id,
        as_of=prompt.as_of,
        lineage=merged,
    )


# ---------------------------------------------------------------- training views


def to_chat(df: pl.DataFrame) -> list[dict[str, Any]]:
    """TRL's conversational prompt-completion records: prompt = the messages, completion = one
    assistant turn holding the target."""
    return [
        {"prompt": json.loads(m), "completion": [{"role": "assistant", "content": c}]}
        for m, c in df.select("messages", "completion").iter_rows()
    ]


def cap_per_key(items: Iterable[T], key: Callable[[T], Hashable], cap: int) -> list[T]:
    """The items in order, keeping at most `cap` per key (the paper's "at most N per category")."""
    if cap < 1:
        raise ValueError(f"cap must be >= 1, got {cap}")
    counts: dict[Hashable, int] = {}
    out = []
    for it in items:
        k = key(it)
        if counts.get(k, 0) < cap:
            counts[k] = counts.get(k, 0) + 1
            out.append(it)
    return out


def balance(df: pl.DataFrame, by: str | Sequence[str], cap: int, seed: int = 0) -> pl.DataFrame:
    """At most `cap` rows per group of `by`, picked at random (seeded), original order kept."""
    if cap < 1:
        raise ValueError(f"cap must be >= 1, got {cap}")
    keys = [by] if isinstance(by, str) else list(by)
    missing = [k for k in keys if k not in df.columns]
    if missing:
        raise ValueError(f"cannot balance by missing column(s) {missing}")
    order = list(range(df.height))
    random.Random(seed).shuffle(order)
    rows = df.select(keys).rows()
    kept = sorted(cap_per_key(order, lambda i: rows[i], cap))
    return df[kept]


__all__ = [
    "CHAIN_TASKS",
    "LEVELS",
    "MAX_ERRORS",
    "ROLES",
    "SAMPLE_SCHEMA",
    "SOURCES",
    "SampleError",
    "TrainPrompt",
    "balance",
    "cap_per_key",
    "completion_json",
    "concat_samples",
    "load_samples",
    "messages_json",
    "prompt_sample",
    "sample_id",
    "sample_row",
    "samples_frame",
    "save_samples",
    "to_chat",
    "validate_samples",
]
