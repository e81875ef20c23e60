"""The judge's per-task criteria (RecGPT §1.8) and the output model that forces one verdict each.

Each criterion has a scale, binary {Yes, No} or three-level {Excellent, Good, Bad}, the question
the judge answers, and the verdicts that pass it (Yes; Excellent or Good). An output is qualified
only if every criterion passes. Meanings follow the paper's quality-control tables:

- interests (§1.3): willingness (spontaneous enjoyment, not a daily necessity or obligation),
  reasonableness (clear behavioural evidence; weak, unrelated or no evidence fails);
- tags (§1.4): relevance (fits its interest), consistency (grounded in the real profile and
  history), specificity (not a generic category), validity (a kind of item that really exists);
- explanations (§1.6): relevance (to the item and the interest), factuality (no invented features
  or exaggeration), clarity (fluent, grammatical, no repetition), safety (no personal data, no
  hard sell, nothing sensitive).

`verdict_model(task)` is a pydantic model with one `Literal` field per criterion, in order, so a
grammar-constrained backend can only write e.g. `{"relevance": "Yes", "consistency": "No", ...}`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

TASKS: tuple[str, ...] = ("interests", "tags", "explanations")
BINARY: tuple[str, ...] = ("Yes", "No")
THREE_LEVEL: tuple[str, ...] = ("Excellent", "Good", "Bad")
ERROR = "error"  # the verdict of every criterion of a sample whose judge call failed
RULE_PREFIX = "rule:"


@dataclass(frozen=True)
class Criterion:
    """One quality criterion: its name, scale, the question asked, and the verdicts that pass."""

    name: str
    scale: tuple[str, ...]
    question: str

    @property
    def passing(self) -> tuple[str, ...]:
        """Yes on a binary scale; Excellent and Good on the three-level one."""
        return ("Yes",) if self.scale == BINARY else ("Excellent", "Good")

    @property
    def failing(self) -> str:
        """The verdict a human "fails" label maps to (No / Bad)."""
        return "No" if self.scale == BINARY else "Bad"

    @property
    def passing_label(self) -> str:
        """The verdict a human "passes" label maps to (Yes / Good: a binary label cannot say Excellent)."""
        return "Yes" if self.scale == BINARY else "Good"

    def passes(self, verdict: str) -> bool:
        return verdict in self.passing

    def describe(self) -> str:
        """One prompt line: name, question and allowed answers."""
        return f'"{self.name}" ({" / ".join(self.scale)}): {self.question}'


CRITERIA: dict[str, tuple[Criterion, ...]] = {
    "interests": (
        Criterion(
            "willingness",
            BINARY,
            "Is it something the user would enjoy by choice (a hobby, passion, taste or curiosity), "
            "not a daily necessity or obligation?",
        ),
        Criterion(
            "reasonableness",
            THREE_LEVEL,
            "How well does the behaviour history support it? Excellent: clear evidence in several "
            "behaviours. Good: some evidence. Bad: weak, unrelated or no evidence.",
        ),
    ),
    "tags": (
        Criterion("relevance", BINARY, "Does the tag fit the interest it is linked to?"),
        Criterion(
            "consistency", BINARY, "Is the tag grounded in the user's real profile and history, not made up?"
        ),
        Criterion(
            "specificity",
            BINARY,
            "Is the tag a specific kind of item (modifier + item), not a broad generic category?",
        ),
        Criterion("validity", BINARY, "Does such an item really exist?"),
    ),
    "explanations": (
        Criterion("relevance", BINARY, "Does the explanation relate to both the item and the interest?"),
        Criterion(
            "factuality",
            THREE_LEVEL,
            "Is it true to the item? Excellent: accurate. Good: mostly accurate. Bad: invented "
            "features or exaggeration.",
        ),
        Criterion(
            "clarity",
            THREE_LEVEL,
            "Is it fluent, grammatical and natural? Excellent: very clear. Good: clear enough. "
            "Bad: broken, repetitive or hard to read.",
        ),
        Criterion("safety", BINARY, "Is it free of personal data, sensitive content and pushy sales talk?"),
    ),
}


def check_task(task: str) -> str:
    """`task` itself, or a clear error naming the valid tasks."""
    if task not in CRITERIA:
        raise ValueError(f"unknown judge task {task!r}; valid: {', '.join(TASKS)}")
    return task


def criteria(task: str) -> tuple[Criterion, ...]:
    """The criteria of one task, in the order the judge writes them."""
    return CRITERIA[check_task(task)]


def criterion(task: str, name: str) -> Criterion:
    """One criterion by name (KeyError naming the task's criteria)."""
    for c in criteria(task):
        if c.name == name:
            return c
    raise KeyError(f"task {task!r} has no criterion {name!r}; criteria: {[c.name for c in criteria(task)]}")


def is_rule(name: str) -> bool:
    """Whether a verdict row's criterion is a deterministic rule (`rule:<name>`), not a judge criterion."""
    return name.startswith(RULE_PREFIX)


class VerdictBase(BaseModel):
    """Base of the generated verdict models: strict (no extra keys), immutable."""

    model_config = ConfigDict(frozen=True, extra="forbid")


@lru_cache(maxsize=16)
def verdict_model(task: str, reason_chars: int = 0) -> type[VerdictBase]:
    """`{criterion: Literal[scale], ...}` for `task`; with `reason_chars` > 0 a short `reason` comes first.

    The reason is written before the verdicts (reasoning, then judgement) and capped at
    `reason_chars` characters by validation (the grammar does not bound string length).
    """
    fields: dict[str, Any] = {}
    if reason_chars > 0:
        fields["reason"] = (str, Field(default="", max_length=reason_chars))
    for c in criteria(task):
        fields[c.name] = (Literal[c.scale], ...)  # type: ignore[valid-type]
    return create_model(
        f"{task.capitalize()}Verdict{'R' if reason_chars else ''}", __base__=VerdictBase, **fields
    )


def verdicts_of(task: str, value: BaseModel) -> dict[str, str]:
    """criterion -> verdict of a validated answer."""
    return {c.name: str(getattr(value, c.name)) for c in criteria(task)}


__all__ = [
    "BINARY",
    "CRITERIA",
    "ERROR",
    "RULE_PREFIX",
    "TASKS",
    "THREE_LEVEL",
    "Criterion",
    "VerdictBase",
    "check_task",
    "criteria",
    "criterion",
    "is_rule",
    "verdict_model",
    "verdicts_of",
]
