"""Human-LLM cooperative judge (RecGPT §1.8): criteria, LLM judge, rules, human labels, calibration, buffer.

from recgpt.judge import Judge, JudgeConfig, samples_from_run, pass_rates
samples = samples_from_run("runs/quickstart")
verdicts = Judge(engine).run(samples)
pass_rates(verdicts)  # {task: {"overall": r, criterion: r, ..., "n": n, "errors": k}}
"""

from recgpt.judge.criteria import CRITERIA, TASKS, Criterion, criteria, verdict_model
from recgpt.judge.judge import Judge, JudgeConfig, judge_request, overall, pass_rates, passing
from recgpt.judge.rules import RulesConfig, apply_rules
from recgpt.judge.samples import SAMPLES_SCHEMA, context_fields, make_samples, samples_from_run

__all__ = [
    "CRITERIA",
    "SAMPLES_SCHEMA",
    "TASKS",
    "Criterion",
    "Judge",
    "JudgeConfig",
    "RulesConfig",
    "apply_rules",
    "context_fields",
    "criteria",
    "judge_request",
    "make_samples",
    "overall",
    "pass_rates",
    "passing",
    "samples_from_run",
    "verdict_model",
]
