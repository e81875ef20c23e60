"""SerenGPT (SERAL §2): rank a user's short candidate list by serendipity, as an `LLMTask`.

The paper reports Hit@1 and NDCG@3, so SerenGPT ranks a small list (papers.md §2.3 [I]). One request
per list (`seren_request`, template `seral_seren.j2`, keyed by user id): the user's cognition profile
(H1's `render_profile`) and the numbered candidates ("n. title [category]"), both as data blocks.

**Answer format** (`seren_model`; `seren_completion` writes it for a given order, the SFT / IPO
target): `{"ranking": [{"id", "relevance", "unexpected", "reason"} * top], "rest": [id * (n - top)]}`.
Only the best `rank_top` (default 3) candidates are judged with relevance 1-5, unexpectedness 1-5 and
a reason of at most 12 words; the others follow as plain numbers, best first. A full judgement of
ten candidates is ~250 answer tokens and the 135M model loses track of which numbers it has used; the
short form is ~100 tokens and still yields a whole order (`rank_top = list_size` asks for judgements
of every candidate). Candidate numbers are 1-based in the text; `order` arguments are 0-based
indices into `SerenInput.candidates`. The grammar (llama.cpp) limits ids to the list's numbers,
scores to 1..5 and the list lengths to `top` / `n - top`; pydantic validation stays lenient (any
int, any length), so an unconstrained backend's stray value costs a slot, not the answer.

**Post-processing** (`SerenTask.postprocess`): ids outside the list and repeats are dropped (first
kept); scores are clamped to 1..5; candidates the answer did not place are appended in candidate
order (the list is then *partial*: counted with a FAILURES row of reason `partial`, the answer is
kept). An answer whose judged block names no valid id, or whose reasons repeat a reason of the
worked example (`recgpt.intent.examples`; failure reason `example_copy`), is emptied and asked again
(`reasks`); a list
the LLM contributed nothing to gets the **fallback**: the candidates in the order given (source
'fallback'). LISTS are shuffled with a seed (H2), so the fallback is a random order and cannot
inflate Hit@1. Every list on fallback has a FAILURES row (the `run_task` reason).

**Score**: monotone in rank, `(n - rank - 1 + q) / n` with `q = relevance * unexpected / 25` for a
judged row and 0 otherwise, so judged rows break no rank order (q <= 1) and scores lie in [0, 1].
Rows of unjudged slots carry relevance = unexpected = 0 and an empty reason.

**Leakage**: a ranking evaluation includes the held-out item among the candidates by design, so the
guard (`guard_seren_inputs`) checks each input's *profile* text, not the whole prompt; a
`GuardedEngine` that checks whole prompts must not wrap this stage.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, create_model

from recgpt.behavior.items import clean_title
from recgpt.data.leakage import guard_user_texts
from recgpt.data.split import EvalTask, Split
from recgpt.intent.context import Resampling, clean_phrase
from recgpt.intent.examples import CopyLog, ExampleFilter, evidence_stems, relabel_failures
from recgpt.intent.interests import FAILURES_SCHEMA
from recgpt.llm.prompts import make_request
from recgpt.llm.task import LLMTask, TaskEngine, reask_request, run_task
from recgpt.llm.types import LLMRequest, SamplingParams

TEMPLATE = "seral_seren"
STAGE = "seren"
SCALE = (1, 2, 3, 4, 5)
PARTIAL = "partial"  # FAILURES reason of a kept answer that left candidates unplaced
RANKINGS_SCHEMA = {
    "list_id": pl.String(),
    "user_id": pl.String(),
    "item_id": pl.String(),
    "rank": pl.Int32(),  # 0 = best
    "score": pl.Float32(),
    "relevance": pl.Int8(),  # 1..5; 0 = not judged
    "unexpected": pl.Int8(),  # 1..5; 0 = not judged
    "reason": pl.String(),
    "source": pl.String(),  # 'llm' | 'fallback' | 'reference:<kind>'
}
SEREN_FAILURES_SCHEMA = {**FAILURES_SCHEMA, "list_id": pl.String()}
# A judged reason that repeats a reason of the worked example (SmolLM2 wrote "birds seen on her hikes"
# for lab supplies) marks the answer as a copy of the example: emptied, asked again, else fallback.
REASON_EXAMPLES = ExampleFilter([TEMPLATE], fields=("reason",))


class SerenConfig(Resampling):
    """SerenGPT settings. `list_size` caps the candidates of one list; `rank_top` are judged."""

    model_config = ConfigDict(frozen=True)

    list_size: int = Field(default=10, ge=2, le=50)
    rank_top: int = Field(default=3, ge=1, le=50, description="candidates judged with scores and a reason")
    temperature: float = 0.0
    max_tokens: int | None = Field(default=None, ge=16, description="None: sized from the list")
    seed: int = 0
    title_chars: int = Field(default=80, ge=10, description="a candidate's title is cut to this")
    reason_words: int = Field(default=12, ge=1)

    def answer_tokens(self, n: int) -> int:
        """Answer budget of a list of `n`: ~45 tokens per judged row, 4 per plain id, 40 spare."""
        top = min(self.rank_top, n)
        return self.max_tokens or 45 * top + 4 * (n - top) + 40


@dataclass(frozen=True)
class SerenCandidate:
    """One candidate as SerenGPT sees it."""

    item_id: str
    title: str
    category: str = ""


@dataclass(frozen=True)
class SerenInput:
    """One list to rank: the user's profile text (as of `asof_ts`) and the candidates in list order."""

    list_id: str
    user_id: str
    asof_ts: int
    profile: str
    candidates: tuple[SerenCandidate, ...]


class SerenJudgement(BaseModel):
    """One judged candidate: its number in the list, scores 1..5 and a short reason."""

    id: int
    relevance: int = Field(description="1-5: how much the user would enjoy it")
    unexpected: int = Field(description="1-5: how different from what the user usually chooses")
    reason: str = Field(description="at most 12 words")


@lru_cache(maxsize=128)
def seren_model(n: int, top: int) -> type[BaseModel]:
    """Output model `{ranking: [SerenJudgement] * top, rest: [id] * (n - top)}` for a list of `n`.

    The JSON schema (hence llama.cpp's grammar) allows only the ids 1..n and scores 1..5 and fixes the
    list lengths; validation accepts any int and any length (module docstring).
    """
    if n < 1:
        raise ValueError("a candidate list needs at least one candidate")
    top = min(top, n)
    ids = list(range(1, n + 1))
    scale = {"enum": list(SCALE)}
    item = create_model(
        f"SerenJudgement{n}",
        __base__=SerenJudgement,
        id=(int, Field(json_schema_extra={"enum": ids})),
        relevance=(int, Field(json_schema_extra=scale)),
        unexpected=(int, Field(json_schema_extra=scale)),
    )
    return create_model(
        f"SerenRanking{n}_{top}",
        ranking=(list[item], Field(json_schema_extra={"minItems": top, "maxItems": top})),  # type: ignore[valid-type]
        rest=(
            list[int],
            Field(
                default_factory=list,
                json_schema_extra={"items": {"enum": ids}, "minItems": n - top, "maxItems": n - top},
            ),
        ),
    )


def candidate_lines(cfg: SerenConfig, inp: SerenInput) -> list[str]:
    """The numbered candidate lines the prompt shows: "n. title [category]"."""
    out = []
    for i, c in enumerate(inp.candidates, start=1):
        title = clean_title(c.title or c.item_id)[: cfg.title_chars].rstrip()
        out.append(f"{i}. {title} [{c.category}]" if c.category else f"{i}. {title}")
    return out


def _check_size(cfg: SerenConfig, inp: SerenInput) -> int:
    n = len(inp.candidates)
    if not 1 <= n <= cfg.list_size:
        raise ValueError(
            f"list {inp.list_id!r} has {n} candidates; SerenGPT takes 1 to list_size={cfg.list_size}"
        )
    return n


def seren_request(cfg: SerenConfig, inp: SerenInput, attempt: int = 0) -> LLMRequest[Any]:
    """The SerenGPT request of one list (key = user id); attempt n > 0 is its n-th re-ask / sample
    (`reask_temperature`, seed + n), the very request `rank_lists` would send."""
    n = _check_size(cfg, inp)
    top = min(cfg.rank_top, n)
    first = make_request(
        TEMPLATE,
        seren_model(n, top),
        sampling=SamplingParams(temperature=cfg.temperature, max_tokens=cfg.answer_tokens(n), seed=cfg.seed),
        stage=STAGE,
        key=inp.user_id,
        profile=inp.profile,
        candidates=candidate_lines(cfg, inp),
        count=n,
        top=top,
        rest=n - top,
    )
    return first if attempt == 0 else reask_request(first, attempt, cfg.reask_temperature)


def default_reason(c: SerenCandidate, words: int = 12) -> str:
    """A reason for a training target without one: the candidate's category named as new ground."""
    text = (
        f"{c.category} is new ground that still fits the profile"
        if c.category
        else "a new direction that still fits the profile"
    )
    return " ".join(text.split()[:words])


def seren_completion(
    inp: SerenInput,
    order: Sequence[int],
    reasons: Mapping[int, str] | None = None,
    *,
    cfg: SerenConfig | None = None,
    judgements: Mapping[int, tuple[int, int]] | None = None,
) -> str:
    """The exact answer text for `order` (0-based candidate indices, best first, a permutation): the
    SFT / IPO target. The first `cfg.rank_top` are judged: `reasons[i]` (default `default_reason`),
    `judgements[i]` = (relevance, unexpected) (default max(1, 5 - slot) for both: ordinal scores
    that agree with the order)."""
    cfg = cfg or SerenConfig()
    n = len(inp.candidates)
    if sorted(order) != list(range(n)):
        raise ValueError(
            f"order must be a permutation of 0..{n - 1} for list {inp.list_id!r}, got {list(order)}"
        )
    top = min(cfg.rank_top, n)
    reasons, judgements = reasons or {}, judgements or {}
    ranking = []
    for slot, i in enumerate(order[:top]):
        rel, unexp = judgements.get(i, (max(1, 5 - slot), max(1, 5 - slot)))
        reason = clean_phrase(reasons.get(i) or default_reason(inp.candidates[i], cfg.reason_words))
        reason = " ".join(reason.split()[: cfg.reason_words])
        ranking.append({"id": i + 1, "relevance": int(rel), "unexpected": int(unexp), "reason": reason})
    return json.dumps({"ranking": ranking, "rest": [i + 1 for i in order[top:]]}, ensure_ascii=False)


def _clamp(v: Any) -> int:
    return min(5, max(1, int(v)))


def _score(n: int, rank: int, relevance: int, unexpected: int) -> float:
    q = relevance * unexpected / 25.0 if relevance and unexpected else 0.0
    return (n - rank - 1 + q) / n


def _rows(inp: SerenInput, placed: list[tuple[int, int, int, str]], source: str) -> list[dict[str, Any]]:
    """RANKINGS rows of an order given as (index, relevance, unexpected, reason) tuples."""
    n = len(inp.candidates)
    return [
        {
            "list_id": inp.list_id,
            "user_id": inp.user_id,
            "item_id": inp.candidates[i].item_id,
            "rank": rank,
            "score": _score(n, rank, rel, unexp),
            "relevance": rel,
            "unexpected": unexp,
            "reason": reason,
            "source": source,
        }
        for rank, (i, rel, unexp, reason) in enumerate(placed)
    ]


class SerenTask(LLMTask[SerenInput]):
    """SerenGPT as an `LLMTask` (module docstring: post-processing, fallback, score)."""

    name = STAGE
    empty_detail = "the answer named no candidate of the list"

    def __init__(self, cfg: SerenConfig) -> None:
        self.cfg = cfg
        self.reasks, self.reask_temperature, self.n_samples = cfg.reasks, cfg.reask_temperature, cfg.n_samples
        self.copies = CopyLog()  # per list id: judged reasons that copied the worked example

    def _copies(self, item: SerenInput, reasons: Sequence[str]) -> int:
        """How many of an answer's reasons repeat a reason of the worked example (not the list's own words)."""
        evidence = evidence_stems([item.profile, *candidate_lines(self.cfg, item)])
        return sum(REASON_EXAMPLES.copy_of(r, evidence) is not None for r in reasons if r)

    def prompt(self, item: SerenInput) -> LLMRequest[Any]:
        return seren_request(self.cfg, item)

    def postprocess(self, item: SerenInput, value: Any) -> list[dict[str, Any]]:
        n = len(item.candidates)
        placed: list[tuple[int, int, int, str]] = []
        seen: set[int] = set()
        for j in value.ranking:
            i = int(j.id) - 1
            if 0 <= i < n and i not in seen:
                seen.add(i)
                reason = " ".join(clean_phrase(j.reason).split()[: self.cfg.reason_words])
                placed.append((i, _clamp(j.relevance), _clamp(j.unexpected), reason))
        copies = self._copies(item, [p[3] for p in placed])
        self.copies.record(item.list_id, copies)
        if not placed or copies:
            return []
        for r in value.rest:
            i = int(r) - 1
            if 0 <= i < n and i not in seen:
                seen.add(i)
                placed.append((i, 0, 0, ""))
        model_placed = len(placed)
        placed += [(i, 0, 0, "") for i in range(n) if i not in seen]
        rows = _rows(item, placed, "llm")
        for r in rows:
            r["_placed"] = model_placed
        return rows

    def score(self, item: SerenInput, rows: list[dict[str, Any]]) -> float:
        """Best-of-n: the answer that placed the most candidates itself wins."""
        return float(rows[0]["_placed"]) if rows else 0.0

    def fallback(self, item: SerenInput, reason: str) -> list[dict[str, Any]]:
        return _rows(item, [(i, 0, 0, "") for i in range(len(item.candidates))], "fallback")


def rank_lists(
    cfg: SerenConfig, engine: TaskEngine, inputs: Sequence[SerenInput]
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """SerenGPT over lists: (RANKINGS, FAILURES + list_id). FAILURES holds one row per list on
    fallback (the `run_task` reason) and one of reason `partial` per kept answer that left candidates
    for the rules to append (detail: how many)."""
    inputs = list(inputs)
    ids = [i.list_id for i in inputs]
    if len(set(ids)) != len(ids):
        raise ValueError("rank_lists: list_id values must be unique")
    task = SerenTask(cfg)
    out = run_task(task, engine, inputs)
    failures = iter(out.failures)
    fail_rows: list[dict[str, Any]] = []
    for inp, on_fallback in zip(inputs, out.on_fallback, strict=True):
        if on_fallback:
            f = next(failures)
            fail_rows.append(
                {"user_id": inp.user_id, "reason": f.reason, "detail": f.detail, "list_id": inp.list_id}
            )
    fail_rows = relabel_failures(fail_rows, task.copies, "list_id")
    by_list: dict[str, int] = {}
    for r in out.rows:
        placed = r.pop("_placed", None)
        if placed is not None:
            by_list[r["list_id"]] = placed
    for inp in inputs:
        n, placed = len(inp.candidates), by_list.get(inp.list_id)
        if placed is not None and placed < n:
            detail = f"{n - placed} of {n} candidates appended in list order"
            fail_rows.append(
                {"user_id": inp.user_id, "reason": PARTIAL, "detail": detail, "list_id": inp.list_id}
            )
    rankings = pl.DataFrame(out.rows, schema=RANKINGS_SCHEMA)
    return rankings, pl.DataFrame(fail_rows, schema=SEREN_FAILURES_SCHEMA)


def ranking_stats(rankings: pl.DataFrame, failures: pl.DataFrame) -> dict[str, float]:
    """Lists ranked, shares on fallback and partial: the figures a report states next to the metrics."""
    lists = rankings.unique("list_id")
    n = lists.height
    fallback = int((lists["source"] == "fallback").sum()) if n else 0
    partial = int((failures["reason"] == PARTIAL).sum()) if failures.height else 0
    return {
        "n_lists": n,
        "fallback_share": fallback / n if n else float("nan"),
        "partial_share": partial / n if n else float("nan"),
    }


def guard_seren_inputs(split: Split, task: EvalTask, inputs: Sequence[SerenInput]) -> int:
    """Raise `LeakageError` when a list's *profile* names an item its user meets only at/after the
    task's point; candidates are not checked (a ranking evaluation includes the target by design).
    Returns how many profiles were checked."""
    return guard_user_texts(split, task, [(i.user_id, i.profile) for i in inputs], alias=clean_title)


def seren_inputs(
    lists: pl.DataFrame,
    profiles: Mapping[str, str],
    items: pl.DataFrame,
    categories: Mapping[str, str] | None = None,
) -> list[SerenInput]:
    """SerenGPT inputs of LISTS rows: `profiles` = user id -> profile text (H1's `render_profile`),
    titles from the dataset's `items`, `categories` = item id -> category at the run's level (absent:
    the item's last category in `items`)."""
    titles = dict(zip(items["item_id"].to_list(), items["title"].to_list(), strict=True))
    if categories is None and "categories" in items.columns:
        cats = items["categories"].to_list()
        categories = {i: (c[-1] if c else "") for i, c in zip(items["item_id"].to_list(), cats, strict=True)}
    categories = categories or {}
    out = []
    for r in lists.iter_rows(named=True):
        if r["user_id"] not in profiles:
            raise ValueError(f"list {r['list_id']!r}: no profile for user {r['user_id']!r}")
        unknown = [i for i in r["item_ids"] if i not in titles]
        if unknown:
            raise ValueError(f"list {r['list_id']!r}: item_ids not in the catalogue: {unknown[:5]}")
        cands = tuple(SerenCandidate(i, titles[i] or i, categories.get(i, "")) for i in r["item_ids"])
        out.append(SerenInput(r["list_id"], r["user_id"], int(r["asof_ts"]), profiles[r["user_id"]], cands))
    return out


__all__ = [
    "PARTIAL",
    "RANKINGS_SCHEMA",
    "SEREN_FAILURES_SCHEMA",
    "SerenCandidate",
    "SerenConfig",
    "SerenInput",
    "SerenJudgement",
    "SerenTask",
    "candidate_lines",
    "default_reason",
    "guard_seren_inputs",
    "rank_lists",
    "ranking_stats",
    "seren_completion",
    "seren_inputs",
    "seren_model",
    "seren_request",
]
