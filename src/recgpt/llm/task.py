"""One LLM task, one runner: ask, apply the rules, ask again, fall back, in one place.

Every LLM stage of the chain (interests, tags, explanations, the judge) is the same loop: build one
request per item, run the batch through the engine, turn each validated answer into output rows
under the stage's rules, ask again (a new seed, sampled) the items whose answer the rules emptied,
and give every item the LLM contributed nothing to a rule-based fallback, recording why. An
`LLMTask` says what is particular to a stage; `run_task` is the loop, written once:

- `name`: the ledger bucket (every request of the task is counted under it);
- `prompt(item)`: the first ask, an `LLMRequest` whose `output_model` is the answer's schema
  (`request(item, attempt)` derives the n-th re-ask from it: `reask_temperature`, seed + n);
- `postprocess(item, value)`: the validated answer -> output rows (`[]`: the rules rejected it all);
- `fallback(item, reason)`: the rows of an item the LLM contributed nothing to (default: none);
- `reasks`: how often an emptied answer is asked again.

A new task (a SerenGPT-style "surprise" stage, say, with its `seren_surprise.j2` template and a
`SurpriseConfig`) is a class and a call:

    class Surprise(BaseModel):
        item: str = Field(description="one item the user has not met, 2 to 6 words")
        why: str = Field(description="at most 12 words")

    class SurpriseTask(LLMTask[UserContext]):
        name = "serendipity"
        empty_detail = "the suggestion repeated the user's history"

        def __init__(self, cfg: SurpriseConfig) -> None:
            self.cfg, self.reasks = cfg, cfg.reasks

        def prompt(self, ctx: UserContext) -> LLMRequest[Any]:
            sampling = SamplingParams(temperature=self.cfg.temperature, max_tokens=80, seed=self.cfg.seed)
            return make_request("seren_surprise", Surprise, sampling=sampling, stage=self.name,
                                key=ctx.user_id, history=ctx.history, pool=list(ctx.pool))

        def postprocess(self, ctx: UserContext, value: Surprise) -> list[dict[str, Any]]:
            item = clean_phrase(value.item)
            if not item or phrase_key(item) in phrase_key(ctx.history):
                return []
            return [{"user_id": ctx.user_id, "item": item, "why": clean_phrase(value.why), "fallback": False}]

        def fallback(self, ctx: UserContext, reason: str) -> list[dict[str, Any]]:
            return [{"user_id": ctx.user_id, "item": p, "why": "from your interests", "fallback": True}
                    for p in ctx.pool[:1]]

    out = run_task(SurpriseTask(cfg), engine, contexts)
    table = pl.DataFrame(out.rows, schema=SURPRISE_SCHEMA)
    failures = pl.DataFrame(out.failure_rows("user_id"), schema=FAILURES_SCHEMA)

The engine is anything with `run(requests) -> results` and a `ledger` (`TaskEngine`): an
`LLMEngine`, or a wrapper that checks prompts first. The runner adds `reasks` and `fallbacks` to
the task's ledger stage. This module returns plain lists of dicts: the LLM layer does not import
polars (its worker threads would swallow Ctrl-C in a script that only asks a model).
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from recgpt.llm.ledger import Ledger
from recgpt.llm.types import LLMRequest, LLMResult

ItemT = TypeVar("ItemT")
EMPTY = "empty"  # the failure reason of an answer the rules emptied (after every re-ask)


class TaskEngine(Protocol):
    """What `run_task` needs: `LLMEngine`, or any wrapper with the same `run` and `ledger`."""

    @property
    def ledger(self) -> Ledger: ...

    def run(self, requests: Sequence[LLMRequest[Any]]) -> list[LLMResult[Any]]: ...


def reask_request(request: LLMRequest[Any], attempt: int, temperature: float) -> LLMRequest[Any]:
    """The `attempt`-th re-ask of `request`: same prompt, sampled at `temperature`, seed + attempt.

    Greedy decoding would repeat the emptied answer; a new seed per attempt gives a new one.
    """
    sampling = request.sampling.model_copy(
        update={"seed": request.sampling.seed + attempt, "temperature": temperature}
    )
    return dataclasses.replace(request, sampling=sampling)


class LLMTask(ABC, Generic[ItemT]):
    """What one LLM stage adds to the shared loop (module docstring); `run_task` runs it."""

    name: str = "default"  # the ledger stage
    reasks: int = 0  # an answer the rules empty is asked again, up to this often
    reask_temperature: float = 0.7
    empty_detail: str = "the rules rejected every part of the answer"  # the failure detail of an emptied item

    @abstractmethod
    def prompt(self, item: ItemT) -> LLMRequest[Any]:
        """The first ask of `item`; its `output_model` is the answer's schema, its `key` names the item."""

    def request(self, item: ItemT, attempt: int) -> LLMRequest[Any]:
        """Attempt 0 is `prompt(item)`; attempt n its n-th re-ask (`reask_request`)."""
        first = self.prompt(item)
        return first if attempt == 0 else reask_request(first, attempt, self.reask_temperature)

    @abstractmethod
    def postprocess(self, item: ItemT, value: Any) -> list[dict[str, Any]]:
        """Output rows of one validated answer; `[]` when the rules reject all of it (it is asked again)."""

    def fallback(self, item: ItemT, reason: str) -> list[dict[str, Any]]:
        """Rows of an item the LLM contributed nothing to; `reason` is its failure's. Default: none."""
        return []


@dataclass(frozen=True)
class TaskFailure:
    """Why one item got nothing from the LLM: an `LLMFailure` reason, or `EMPTY`."""

    key: str  # the item's request key (user id, sample id, "item|interest")
    reason: str
    detail: str

    def row(self, key_column: str = "key") -> dict[str, str]:
        return {key_column: self.key, "reason": self.reason, "detail": self.detail}


@dataclass
class TaskOutput:
    """What `run_task` returns: the rows of every item in item order, failures, fallback flags."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    failures: list[TaskFailure] = field(default_factory=list)  # in item order
    on_fallback: list[bool] = field(default_factory=list)  # per item: its rows (if any) are the fallback's

    def failure_rows(self, key_column: str = "key") -> list[dict[str, str]]:
        """The failures as table rows, the key under `key_column` ("user_id", "sample_id", ...)."""
        return [f.row(key_column) for f in self.failures]


def _stamped(task: LLMTask[Any], request: LLMRequest[Any]) -> LLMRequest[Any]:
    """The request counted under the task's ledger stage, whatever its builder wrote."""
    return request if request.stage == task.name else dataclasses.replace(request, stage=task.name)


def run_task(task: LLMTask[ItemT], engine: TaskEngine, items: Sequence[ItemT]) -> TaskOutput:
    """Run `task` over `items` through `engine`: one batch of first asks, then one batch per re-ask round.

    An item is re-asked only while its first answer validated and the rules left nothing of every
    answer so far (a failed request is the engine's business: it has retried already). An item ends
    with the rows of its last non-empty answer, else a `TaskFailure` and `task.fallback`'s rows.
    """
    items = list(items)
    if not items:
        return TaskOutput()  # nothing asked: no ledger stage either
    first = [_stamped(task, task.request(item, 0)) for item in items]
    results = engine.run(first)
    if len(results) != len(items):
        raise RuntimeError(f"engine returned {len(results)} results for {len(items)} requests")
    rows = [
        task.postprocess(item, r.value) if r.value is not None else []
        for item, r in zip(items, results, strict=True)
    ]
    stats = engine.ledger.stage(task.name)
    for attempt in range(1, task.reasks + 1):
        redo = [
            i for i, (r, got) in enumerate(zip(results, rows, strict=True)) if r.value is not None and not got
        ]
        if not redo:
            break
        stats.reasks += len(redo)
        again = engine.run([_stamped(task, task.request(items[i], attempt)) for i in redo])
        for i, res in zip(redo, again, strict=True):
            if res.value is not None:
                rows[i] = task.postprocess(items[i], res.value)
    out = TaskOutput()
    for i, (item, request, res, got) in enumerate(zip(items, first, results, rows, strict=True)):
        key = request.key if request.key is not None else str(i)
        if res.value is None:
            failure = res.failure
            assert failure is not None  # an LLMResult holds a value or a failure
            out.failures.append(TaskFailure(key, str(failure.reason), failure.detail))
        elif not got:
            out.failures.append(TaskFailure(key, EMPTY, task.empty_detail))
        out.on_fallback.append(not got)
        out.rows.extend(got if got else task.fallback(item, out.failures[-1].reason))
    stats.fallbacks += sum(out.on_fallback)
    return out


__all__ = ["EMPTY", "LLMTask", "TaskEngine", "TaskFailure", "TaskOutput", "reask_request", "run_task"]
