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
- `reasks`: how often an emptied answer is asked again;
- `n_samples` and `score(item, rows)`: best-of-n. Each item is asked `n_samples` times in the first
  round (attempt 0 = the prompt as configured, attempt j its j-th variation: `reask_temperature`,
  seed + j, the very request a re-ask j would send), every answer is post-processed and scored, and
  the highest-scoring non-empty one is kept (ties: the earliest attempt, so n = 1 is the plain
  ask-once behaviour). Re-asks continue at attempt n. The default score is the number of rows kept;
  an intent task adds distinctness, grounding or a judge (`recgpt.intent.bestofn`).

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
`LLMEngine`, or a wrapper that checks prompts first. The runner adds `reasks`, `fallbacks`,
`samples` (best-of-n answers drawn beyond the first ask) and `winners` (kept attempt index -> items)
to the task's ledger stage; `TaskOutput.choices` says per item how many answers were drawn, which
one was kept and its score. Every attempt has its own seed, so the cache keys each sample apart and
a resumed run reuses all of them. This module returns plain lists of dicts: the LLM layer does not import
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
    n_samples: int = 1  # best-of-n: answers drawn per item in the first round (module docstring)
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

    def score(self, item: ItemT, rows: list[dict[str, Any]]) -> float:
        """How good one non-empty answer's rows are, to pick among best-of-n samples (higher wins).

        Default: the number of rows the rules kept.
        """
        return float(len(rows))


@dataclass(frozen=True)
class TaskFailure:
    """Why one item got nothing from the LLM: an `LLMFailure` reason, or `EMPTY`."""

    key: str  # the item's request key (user id, sample id, "item|interest")
    reason: str
    detail: str

    def row(self, key_column: str = "key") -> dict[str, str]:
        return {key_column: self.key, "reason": self.reason, "detail": self.detail}


@dataclass(frozen=True)
class SampleChoice:
    """Best-of-n bookkeeping of one item: answers drawn, the kept one's attempt index and score."""

    key: str
    drawn: int  # requests sent for the item: best-of-n samples plus re-asks
    winner: int | None  # attempt index of the kept answer (0: the first ask); None: on fallback
    score: float | None  # the kept answer's `LLMTask.score`; None: on fallback

    def columns(self) -> dict[str, Any]:
        """The per-row columns an output table records (`samples`, `sample`, `sample_score`)."""
        score = None if self.score is None else round(self.score, 6)
        return {"samples": self.drawn, "sample": self.winner, "sample_score": score}


@dataclass
class TaskOutput:
    """What `run_task` returns: the rows of every item in item order, failures, fallback flags."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    failures: list[TaskFailure] = field(default_factory=list)  # in item order
    on_fallback: list[bool] = field(default_factory=list)  # per item: its rows (if any) are the fallback's
    choices: list[SampleChoice] = field(default_factory=list)  # per item, in item order

    def choice_of(self) -> dict[str, SampleChoice]:
        """Item key -> its `SampleChoice`."""
        return {c.key: c for c in self.choices}

    def failure_rows(self, key_column: str = "key") -> list[dict[str, str]]:
        """The failures as table rows, the key under `key_column` ("user_id", "sample_id", ...)."""
        return [f.row(key_column) for f in self.failures]


def _stamped(task: LLMTask[Any], request: LLMRequest[Any]) -> LLMRequest[Any]:
    """The request counted under the task's ledger stage, whatever its builder wrote."""
    return request if request.stage == task.name else dataclasses.replace(request, stage=task.name)


@dataclass
class _Candidates:
    """The answers of one item so far: attempt -> rows (non-empty only), and whether any validated."""

    kept: dict[int, tuple[float, list[dict[str, Any]]]] = field(default_factory=dict)
    validated: bool = False
    drawn: int = 0

    def best(self) -> tuple[int, float, list[dict[str, Any]]] | None:
        if not self.kept:
            return None
        attempt = max(self.kept, key=lambda a: (self.kept[a][0], -a))  # ties: the earliest attempt
        return attempt, *self.kept[attempt]


def _ask(
    task: LLMTask[ItemT],
    engine: TaskEngine,
    items: list[ItemT],
    todo: list[tuple[int, int]],
    cands: list[_Candidates],
) -> list[LLMResult[Any]]:
    """Send (item index, attempt) requests in one batch, post-process and score each valid answer."""
    results = engine.run([_stamped(task, task.request(items[i], a)) for i, a in todo])
    if len(results) != len(todo):
        raise RuntimeError(f"engine returned {len(results)} results for {len(todo)} requests")
    for (i, a), res in zip(todo, results, strict=True):
        cands[i].drawn += 1
        if res.value is None:
            continue
        cands[i].validated = True
        rows = task.postprocess(items[i], res.value)
        if rows:
            cands[i].kept[a] = (task.score(items[i], rows), rows)
    return results


def run_task(task: LLMTask[ItemT], engine: TaskEngine, items: Sequence[ItemT]) -> TaskOutput:
    """Run `task` over `items` through `engine`: one batch of first asks (`n_samples` per item), then
    one batch per re-ask round.

    An item is re-asked only while one of its first answers validated and the rules left nothing of
    every answer so far (a failed request is the engine's business: it has retried already). An item
    ends with the rows of its best-scoring non-empty answer, else a `TaskFailure` (the first ask's
    failure, or `EMPTY` when an answer validated) and `task.fallback`'s rows.
    """
    items = list(items)
    if not items:
        return TaskOutput()  # nothing asked: no ledger stage either
    n = max(1, int(task.n_samples))
    cands = [_Candidates() for _ in items]
    first = [_stamped(task, task.request(item, 0)) for item in items]
    # sample-major: the first n_items requests are exactly the plain first asks
    results = _ask(task, engine, items, [(i, a) for a in range(n) for i in range(len(items))], cands)
    first_results = results[: len(items)]
    stats = engine.ledger.stage(task.name)
    stats.samples += (n - 1) * len(items)
    for attempt in range(n, n + task.reasks):
        redo = [i for i, c in enumerate(cands) if c.validated and not c.kept]
        if not redo:
            break
        stats.reasks += len(redo)
        _ask(task, engine, items, [(i, attempt) for i in redo], cands)
    out = TaskOutput()
    for i, (item, request, res, c) in enumerate(zip(items, first, first_results, cands, strict=True)):
        key = request.key if request.key is not None else str(i)
        best = c.best()
        if best is None:
            if c.validated:
                detail = task.empty_detail if n == 1 else f"{task.empty_detail} (all {c.drawn} answers)"
                out.failures.append(TaskFailure(key, EMPTY, detail))
            else:
                failure = res.failure
                assert failure is not None  # an LLMResult holds a value or a failure
                out.failures.append(TaskFailure(key, str(failure.reason), failure.detail))
            out.choices.append(SampleChoice(key, c.drawn, None, None))
            out.rows.extend(task.fallback(item, out.failures[-1].reason))
        else:
            attempt, score, rows = best
            stats.winners[str(attempt)] += 1
            out.choices.append(SampleChoice(key, c.drawn, attempt, score))
            out.rows.extend(rows)
        out.on_fallback.append(best is None)
    stats.fallbacks += sum(out.on_fallback)
    return out


__all__ = [
    "EMPTY",
    "LLMTask",
    "SampleChoice",
    "TaskEngine",
    "TaskFailure",
    "TaskOutput",
    "reask_request",
    "run_task",
]
