"""The LLM judge (RecGPT §1.8): per-criterion verdicts for interests, tags and explanations.

`Judge(engine, config).run(samples)` renders one `judge_<task>` prompt per sample (criteria from
`judge.criteria`, the sample's context and output as untrusted data blocks, one worked example),
asks any backend of the LLM layer under the verdict model's schema (one `Literal` per criterion,
so a grammar-constrained model can only write allowed verdicts), and returns the verdicts in long
format, plus the deterministic rules (`judge.rules`) as `rule:<name>` criteria:

    sample_id | task | criterion | verdict ("Yes"/"No", "Excellent"/"Good"/"Bad", "error") | passed

A sample whose judge call failed (a typed `LLMFailure`: truncated, invalid JSON, backend error...)
gets verdict "error" and passed=False on every judge criterion: a failure is never a pass, and
`pass_rates` counts it under "errors". `overall` folds the rows per sample (passed = every
criterion and rule passed) and `Judge.filter` keeps the samples that pass: reject sampling by
judge and rules in one step. The LLM half is `JudgeTask`, a `recgpt.llm.task.LLMTask` (its
fallback is the "error" verdicts) run by `run_task`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from recgpt.judge.criteria import ERROR, criteria, is_rule, verdict_model, verdicts_of
from recgpt.judge.rules import VERDICTS_SCHEMA, RulesConfig, apply_rules
from recgpt.judge.samples import check_samples
from recgpt.llm.prompts import make_request
from recgpt.llm.task import LLMTask, TaskEngine, run_task
from recgpt.llm.types import LLMRequest, SamplingParams

STAGE = "judge"
CHARS_PER_WORD = 8  # reason length cap = reason_words * this (validation; the grammar cannot bound it)
OVERALL_SCHEMA: dict[str, pl.DataType] = {
    "sample_id": pl.String(),
    "task": pl.String(),
    "passed": pl.Boolean(),
    "failed": pl.List(pl.String()),
}


class JudgeConfig(BaseModel):
    """Judge settings. `reason_words` > 0 asks for a short reason before the verdicts (costs tokens);
    `judge_rule_failures=False` skips the LLM for samples a rule already rejects (filtering only:
    per-criterion pass rates then cover the rule-clean samples)."""

    model_config = ConfigDict(frozen=True)

    reason_words: int = Field(default=0, ge=0, le=40)
    temperature: float = 0.0
    max_tokens: int = Field(default=64, ge=16)
    seed: int = 0
    use_rules: bool = True
    judge_rule_failures: bool = True
    rules: RulesConfig = Field(default_factory=RulesConfig)

    @property
    def reason_chars(self) -> int:
        return self.reason_words * CHARS_PER_WORD


def answer_format(task: str, reason: bool = False) -> str:
    """The JSON shape the prompt shows, e.g. `{"relevance": "Yes|No", ...}`."""
    parts = ['"reason": "..."'] if reason else []
    parts += [f'"{c.name}": "{"|".join(c.scale)}"' for c in criteria(task)]
    return "{" + ", ".join(parts) + "}"


def judge_request(cfg: JudgeConfig, sample: Mapping[str, Any]) -> LLMRequest[Any]:
    """The judge request of one sample (key = sample_id), rendered from the `judge_<task>` template."""
    task = sample["task"]
    return make_request(
        f"judge_{task}",
        verdict_model(task, cfg.reason_chars),
        sampling=SamplingParams(
            temperature=cfg.temperature, seed=cfg.seed, max_tokens=cfg.max_tokens + 2 * cfg.reason_words
        ),
        stage=STAGE,
        key=sample["sample_id"],
        criteria=[c.describe() for c in criteria(task)],
        answer_format=answer_format(task, cfg.reason_words > 0),
        reason_words=cfg.reason_words,
        context=sample["context"],
        output=sample["output"],
    )


def verdict_json(task: str, verdicts: Mapping[str, str], reason_chars: int = 0, reason: str = "") -> str:
    """A verdict object as the judge writes it (the judge SFT target), validated by the verdict model."""
    fields: dict[str, Any] = {"reason": reason[:reason_chars]} if reason_chars > 0 else {}
    fields.update({c.name: verdicts[c.name] for c in criteria(task)})
    return json.dumps(
        verdict_model(task, reason_chars).model_validate(fields).model_dump(), ensure_ascii=False
    )


class JudgeTask(LLMTask[Mapping[str, Any]]):
    """The judge as an `LLMTask` over sample rows: one verdict row per criterion; a failed call gets
    `ERROR` on every criterion (its fallback), never a pass."""

    name = STAGE

    def __init__(self, cfg: JudgeConfig) -> None:
        self.cfg = cfg

    def prompt(self, item: Mapping[str, Any]) -> LLMRequest[Any]:
        return judge_request(self.cfg, item)

    def postprocess(self, item: Mapping[str, Any], value: Any) -> list[dict[str, Any]]:
        return _verdict_rows(item, verdicts_of(item["task"], value))

    def fallback(self, item: Mapping[str, Any], reason: str) -> list[dict[str, Any]]:
        return _verdict_rows(item, {c.name: ERROR for c in criteria(item["task"])})


def _verdict_rows(sample: Mapping[str, Any], verdicts: Mapping[str, str]) -> list[dict[str, Any]]:
    sid, task = sample["sample_id"], sample["task"]
    rows = []
    for c in criteria(task):
        v = verdicts[c.name]
        rows.append(
            {
                "sample_id": sid,
                "task": task,
                "criterion": c.name,
                "verdict": v,
                "passed": v != ERROR and c.passes(v),
            }
        )
    return rows


class Judge:
    """LLM judge + rules over judge samples (module docstring)."""

    def __init__(self, engine: TaskEngine, config: JudgeConfig | None = None) -> None:
        self.engine = engine
        self.config = config or JudgeConfig()
        self.failures: list[dict[str, str]] = []  # sample_id, reason, detail of the last run's failed calls

    def requests(self, samples: pl.DataFrame) -> list[LLMRequest[Any]]:
        """The judge requests of `samples`, in order (what the judge SFT data must match)."""
        return [judge_request(self.config, s) for s in samples.iter_rows(named=True)]

    def run(self, samples: pl.DataFrame) -> pl.DataFrame:
        """Long-format verdicts (`VERDICTS_SCHEMA`): every judge criterion and rule of every sample."""
        samples = check_samples(samples)
        cfg = self.config
        rules = apply_rules(samples, cfg.rules) if cfg.use_rules else pl.DataFrame(schema=VERDICTS_SCHEMA)
        todo = samples
        if not cfg.judge_rule_failures and rules.height:
            broken = rules.filter(~pl.col("passed"))["sample_id"].unique()
            todo = samples.filter(~pl.col("sample_id").is_in(broken.implode()))
        out = run_task(JudgeTask(cfg), self.engine, list(todo.iter_rows(named=True)))
        self.failures = [{**f.row("sample_id"), "detail": f.detail[:300]} for f in out.failures]
        verdicts = pl.concat([pl.DataFrame(out.rows, schema=VERDICTS_SCHEMA), rules])
        order = pl.DataFrame({"sample_id": samples["sample_id"], "_i": range(samples.height)})
        return verdicts.join(order, on="sample_id", how="left").sort("_i", maintain_order=True).drop("_i")

    def filter(self, samples: pl.DataFrame) -> pl.DataFrame:
        """The samples that pass every judge criterion and rule (reject sampling)."""
        return passing(samples, self.run(samples))


def overall(verdicts: pl.DataFrame) -> pl.DataFrame:
    """One row per sample: passed (all criteria and rules pass) and the failed criteria ("error" for a
    failed judge call), in first-seen order."""
    rows = []
    for (sid, task), g in verdicts.group_by("sample_id", "task", maintain_order=True):
        failed = [
            ERROR if v == ERROR else c
            for c, v, p in g.select("criterion", "verdict", "passed").iter_rows()
            if not p
        ]
        rows.append(
            {"sample_id": sid, "task": task, "passed": not failed, "failed": list(dict.fromkeys(failed))}
        )
    return pl.DataFrame(rows, schema=OVERALL_SCHEMA)


def passing(samples: pl.DataFrame, verdicts: pl.DataFrame) -> pl.DataFrame:
    """The rows of `samples` whose verdicts all pass (samples without verdicts are dropped)."""
    ok = overall(verdicts).filter(pl.col("passed"))["sample_id"]
    return samples.filter(pl.col("sample_id").is_in(ok.implode()))


def pass_rates(verdicts: pl.DataFrame) -> dict[str, dict[str, float | int]]:
    """{task: {"overall": rate, criterion: rate, ..., "n": samples, "errors": failed judge calls}}.

    Judge criteria come first (in criteria order), then rules; an errored sample counts as failing
    every judge criterion.
    """
    out: dict[str, dict[str, float | int]] = {}
    per_sample = overall(verdicts)
    for (task,), g in per_sample.group_by("task", maintain_order=True):
        rows = verdicts.filter(pl.col("task") == task)
        rates: dict[str, float | int] = {"overall": float(g["passed"].mean()), "n": g.height}  # type: ignore[arg-type]
        rates["errors"] = int(rows.filter(pl.col("verdict") == ERROR)["sample_id"].n_unique())
        names = [c.name for c in criteria(task)]
        present = rows["criterion"].unique(maintain_order=True).to_list()
        for name in [*names, *(c for c in present if is_rule(c))]:
            sub = rows.filter(pl.col("criterion") == name)
            if sub.height:
                rates[name] = float(sub["passed"].mean())  # type: ignore[arg-type]
        out[task] = rates
    return out


__all__ = [
    "OVERALL_SCHEMA",
    "STAGE",
    "VERDICTS_SCHEMA",
    "Judge",
    "JudgeConfig",
    "JudgeTask",
    "answer_format",
    "judge_request",
    "overall",
    "pass_rates",
    "passing",
    "verdict_json",
]
