"""Distillation with reject sampling (RecGPT §1.7 stage 2: 90.0k teacher outputs -> 19.0k kept).

A teacher model (any backend of the LLM layer: a large model behind an OpenAI-compatible server, or
the current model itself in self-training) answers the chain's own prompts (`TrainPrompt`s from
`logs.tag_prompts`, `logs.interest_prompts`, `catalogue.catalogue_prompts`, ...). An answer becomes a
training sample only if

1. it validates against the prompt's output model (the engine's job: grammar, retries);
2. it keeps every rule (`rules`; default `chain_rules`: the chain's own post-processing would keep
   every tag / interest unchanged, the explanation passes `check_explanation` without truncation);
3. its parts pass `filter_fn`, the judge-and-rules filter (`recgpt.judge.Judge.filter`): each tag,
   interest or explanation of the answer is one row of the judge sample table, and the answer is
   kept when at least `min_pass` of its parts pass (default: all of them). Catalogue tasks have no
   judge criteria and skip this step.

This module does not import the judge: `filter_fn` is any `DataFrame -> DataFrame` over the judge
sample table, built by `judge_table` (which defers to `recgpt.judge.samples.make_samples`, the one
definition of that table). Each sample's lineage records the teacher (backend, model id), the
template id, the round and the verdict.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import polars as pl
from pydantic import BaseModel

from recgpt.intent.explanations import ExplanationsConfig, check_explanation, item_label
from recgpt.intent.interests import InterestsConfig, postprocess_interests
from recgpt.intent.tags import TagsConfig, postprocess_tags
from recgpt.llm.engine import LLMEngine
from recgpt.llm.types import LLMRequest
from recgpt.training.builders.catalogue import TASK_LEVELS
from recgpt.training.data import CHAIN_TASKS, TrainPrompt, prompt_sample, samples_frame

Rule = Callable[[TrainPrompt, BaseModel], str | None]
"""(prompt, answer) -> None when the answer keeps the rule, else why it breaks it."""
JudgeFilter = Callable[[pl.DataFrame], pl.DataFrame]
"""Judge sample table -> the rows that pass (e.g. `Judge.filter`)."""


def chain_rules(prompt: TrainPrompt, value: BaseModel) -> str | None:
    """The chain's post-processing as a rule: a target it would change is not a good target.

    Tags and interests need the prompt's `meta` ("context" and "interests"; built by the log
    prompts); without it the rule cannot run and passes.
    """
    meta = prompt.meta
    if prompt.task == "tags" and "context" in meta and "interests" in meta:
        cfg = meta.get("tags_config") or TagsConfig()
        kept = postprocess_tags(cfg, meta["context"], value.tags, meta["interests"])  # type: ignore[attr-defined]
        n = len(value.tags)  # type: ignore[attr-defined]
        return None if len(kept) == n else f"chain post-processing drops {n - len(kept)} of {n} tags"
    if prompt.task == "interests" and "context" in meta:
        cfg_i = meta.get("interests_config") or InterestsConfig()
        kept_i = postprocess_interests(cfg_i, meta["context"], value.interests)  # type: ignore[attr-defined]
        n = len(value.interests)  # type: ignore[attr-defined]
        return None if len(kept_i) == n else f"chain post-processing drops {n - len(kept_i)} of {n} interests"
    if prompt.task == "explanations" and "item" in meta:
        strict = ExplanationsConfig(on_too_long="fallback")
        _, broken = check_explanation(strict, value.explanation, meta["item"].get("title") or "")  # type: ignore[attr-defined]
        return None if broken is None else f"explanation rule: {broken}"
    return None


DEFAULT_RULES: tuple[Rule, ...] = (chain_rules,)


def judge_rows(prompt: TrainPrompt, value: BaseModel) -> list[dict[str, Any]]:
    """One judge-sample row per judged part of an answer (fields of `judge.samples.make_samples`)."""
    meta = prompt.meta
    if prompt.task not in CHAIN_TASKS:
        return []
    base: dict[str, Any] = {}
    if "context" in meta:
        from recgpt.judge.samples import context_fields

        base = context_fields(meta["context"])
    elif prompt.request.messages:
        base = {
            "context": prompt.request.messages[-1].content,
            "user_id": prompt.user_id,
            "as_of": prompt.as_of,
        }
    if prompt.task == "tags":
        names = dict(meta.get("interests") or ())
        return [
            {**base, "output": t.tag, "interest": names.get(t.interest_id) or f"interest {t.interest_id}"}
            for t in value.tags
        ]  # type: ignore[attr-defined]
    if prompt.task == "interests":
        return [{**base, "output": i.interest} for i in value.interests]  # type: ignore[attr-defined]
    item = meta.get("item") or {}
    return [
        {
            **base,
            "output": value.explanation,
            "interest": meta.get("interest"),  # type: ignore[attr-defined]
            "item_id": item.get("item_id"),
            "item": item_label(item) if item else None,
            "item_title": item.get("title"),
        }
    ]


def judge_table(task: str, rows: Sequence[Mapping[str, Any]], source: str) -> pl.DataFrame:
    """The judge sample table of some rows (`recgpt.judge.samples.make_samples`, imported lazily)."""
    from recgpt.judge.samples import make_samples

    return make_samples(task, [{k: v for k, v in r.items() if v is not None} for r in rows], source=source)


@dataclass
class DistillStats:
    """What happened to the teacher's answers."""

    prompts: int = 0
    failed: Counter[str] = field(default_factory=Counter)  # no valid answer, by failure reason
    rule_rejected: Counter[str] = field(default_factory=Counter)  # by rule message
    judge_rejected: int = 0
    judged_parts: int = 0
    passed_parts: int = 0
    kept: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "prompts": self.prompts,
            "failed": dict(self.failed),
            "rule_rejected": dict(self.rule_rejected),
            "judge_rejected": self.judge_rejected,
            "judged_parts": self.judged_parts,
            "passed_parts": self.passed_parts,
            "kept": self.kept,
        }


def as_prompt(p: TrainPrompt | LLMRequest[Any]) -> TrainPrompt:
    """A bare request as a prompt: task = its stage, no user (lineage keeps its key)."""
    if isinstance(p, TrainPrompt):
        return p
    level = TASK_LEVELS.get(p.stage, "advanced")
    return TrainPrompt(p, p.stage, level, lineage={"key": p.key} if p.key is not None else {})


def run_distill(
    prompts: Sequence[TrainPrompt | LLMRequest[Any]],
    teacher: LLMEngine,
    filter_fn: JudgeFilter | None,
    rules: Sequence[Rule] | None = None,
    *,
    source: str = "distill",
    min_pass: float = 1.0,
    round: int | None = None,
) -> tuple[pl.DataFrame, DistillStats]:
    """(sample table, stats) of a distillation pass (module docstring). `rules=None`: `chain_rules`."""
    if not 0.0 <= min_pass <= 1.0:
        raise ValueError(f"min_pass must be in [0, 1], got {min_pass}")
    items = [as_prompt(p) for p in prompts]
    rules = DEFAULT_RULES if rules is None else tuple(rules)
    stats = DistillStats(prompts=len(items))
    results = teacher.run([p.request for p in items])
    survivors: list[tuple[TrainPrompt, BaseModel]] = []
    for p, res in zip(items, results, strict=True):
        if res.value is None:
            stats.failed[str(res.failure.reason) if res.failure else "unknown"] += 1
            continue
        broken = next((why for rule in rules if (why := rule(p, res.value)) is not None), None)
        if broken is not None:
            stats.rule_rejected[broken] += 1
            continue
        survivors.append((p, res.value))
    verdicts = _judge(survivors, filter_fn, source, stats)
    teacher_id = {"backend": teacher.backend.name, "model": teacher.backend.model_id}
    rows = []
    for (p, value), verdict in zip(survivors, verdicts, strict=True):
        parts = verdict.get("parts", 0)
        if parts and verdict["passed"] < min_pass * parts:
            stats.judge_rejected += 1
            continue
        rows.append(
            prompt_sample(
                p,
                value,
                source,
                teacher=teacher_id,
                round=round,
                verdict=verdict,
                builder=f"distill.{p.task}",
            )
        )
    stats.kept = len(rows)
    return samples_frame(rows), stats


def _judge(
    survivors: Sequence[tuple[TrainPrompt, BaseModel]],
    filter_fn: JudgeFilter | None,
    source: str,
    stats: DistillStats,
) -> list[dict[str, Any]]:
    """One verdict per answer: {"rules": "passed", "parts", "passed", "failed": [outputs]} (no judge: parts 0)."""
    base = {"rules": "passed"}
    if filter_fn is None:
        return [{**base, "judge": "not run"} for _ in survivors]
    tables: list[pl.DataFrame] = []
    for p, value in survivors:
        rows = judge_rows(p, value)
        tables.append(judge_table(p.task, rows, source) if rows else pl.DataFrame())
    judged = [t for t in tables if t.height]
    passed: set[str] = set()
    if judged:
        everything = pl.concat(judged, how="vertical_relaxed").unique(
            subset=["sample_id"], keep="first", maintain_order=True
        )
        kept = filter_fn(everything)
        if "sample_id" not in kept.columns:
            raise ValueError("filter_fn must return rows of the judge sample table (with 'sample_id')")
        passed = set(kept["sample_id"].to_list())
    out = []
    for t in tables:
        if not t.height:
            out.append({**base, "judge": "no criteria for this task"})
            continue
        ok = [sid in passed for sid in t["sample_id"].to_list()]
        stats.judged_parts += len(ok)
        stats.passed_parts += sum(ok)
        failed = [o for o, good in zip(t["output"].to_list(), ok, strict=True) if not good]
        out.append({**base, "judge": "run", "parts": len(ok), "passed": sum(ok), "failed": failed})
    return out


def distill(
    prompts: Sequence[TrainPrompt | LLMRequest[Any]],
    teacher: LLMEngine,
    filter_fn: JudgeFilter | None,
    rules: Sequence[Rule] | None = None,
    **kwargs: Any,
) -> pl.DataFrame:
    """The kept samples of `run_distill` (same arguments)."""
    return run_distill(prompts, teacher, filter_fn, rules, **kwargs)[0]


__all__ = [
    "DEFAULT_RULES",
    "DistillStats",
    "JudgeFilter",
    "Rule",
    "as_prompt",
    "chain_rules",
    "distill",
    "judge_rows",
    "judge_table",
    "run_distill",
]
