"""SerenGPT training samples from labelled candidate lists (SERAL §2: SFT, then IPO).

One training LIST (`recgpt.serendipity.labels`, part 'train') plus its rendered `SerenInput`
(`recgpt.serendipity.seren`: the user's profile and the numbered candidates) becomes:

- `prompt`: the chat messages SerenGPT sees at inference (`seren_request(cfg, inp).messages`, so the
  training prompt and the served prompt are the same text);
- `completion` (SFT target) = `chosen`: the ranking answer (`seren_completion`) with the
  serendipitous item(s) first, the other candidates after them in candidate order;
- `rejected`: the same answer with the (first) positive and one negative swapped, so the negative
  stands first and the positive where the negative was. The pair differs in exactly the decision
  IPO should learn (which item goes first), nothing else; `pairs` negatives are drawn per list
  without replacement, seeded by (seed, list_id), so the draw does not depend on row order.

All four message columns are TRL's conversational format (lists of {role, content}); answers are in
the compact JSON the transformers backend's grammar admits (`sft.compact_answer`). Lists without a
positive or without a negative teach nothing and are skipped (`skipped_lists` says how many).
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import polars as pl

from recgpt.data.sft import SampleError, sample_row, samples_frame

if TYPE_CHECKING:
    from recgpt.data.split import AsOf, Split
    from recgpt.llm.task import TaskEngine
    from recgpt.serendipity.profiles import ProfileConfig
    from recgpt.serendipity.seren import SerenConfig, SerenInput

_MSG = pl.List(pl.Struct({"role": pl.String(), "content": pl.String()}))
SEREN_SAMPLE_SCHEMA: dict[str, pl.DataType] = {
    "list_id": pl.String(),
    "user_id": pl.String(),
    "asof_ts": pl.Int64(),
    "pair": pl.Int32(),  # 0..pairs-1 within the list
    "positive": pl.String(),  # item id put first in `chosen`
    "negative": pl.String(),  # item id put first in `rejected`
    "prompt": _MSG,
    "completion": _MSG,
    "chosen": _MSG,
    "rejected": _MSG,
}
SFT_TASK = "seren"
SFT_LEVEL = "advanced"  # one phase of `run_sft`'s curriculum: SerenGPT is a single task


def _assistant(text: str) -> list[dict[str, str]]:
    from recgpt.training.sft import compact_answer

    return [{"role": "assistant", "content": compact_answer(text)}]


def _positions(row: dict[str, Any], inp: SerenInput) -> tuple[list[int], list[int]]:
    """Candidate indices of the list's positives and negatives; the input must show the list's items."""
    cand = [c.item_id for c in inp.candidates]
    if sorted(cand) != sorted(row["item_ids"]):
        raise SampleError(
            f"list {row['list_id']!r}: the SerenInput's candidates {cand} are not the list's item_ids "
            f"{list(row['item_ids'])}"
        )
    if len(row["labels"]) != len(row["item_ids"]):
        raise SampleError(
            f"list {row['list_id']!r}: field 'labels' has {len(row['labels'])} entries for "
            f"{len(row['item_ids'])} item_ids"
        )
    label = dict(zip(row["item_ids"], row["labels"], strict=True))
    pos = [i for i, item in enumerate(cand) if label[item] == 1]
    neg = [i for i, item in enumerate(cand) if label[item] != 1]
    return pos, neg


def seren_samples(
    lists: pl.DataFrame,
    inputs: Sequence[SerenInput],
    cfg: SerenConfig | None = None,
    *,
    pairs: int = 2,
    seed: int = 0,
) -> pl.DataFrame:
    """SFT targets and IPO pairs (`SEREN_SAMPLE_SCHEMA`), `pairs` rows per usable train list.

    Only part='train' lists are accepted: evaluation lists must never be trained on. Every input must
    belong to a list (by list_id) and show exactly the list's items; inputs of lists not given, or
    lists without an input, are errors naming the list.
    """
    from recgpt.serendipity.seren import SerenConfig, seren_completion, seren_request

    if pairs < 1:
        raise ValueError(f"pairs must be >= 1, got {pairs}")
    missing = [
        c for c in ("list_id", "user_id", "part", "asof_ts", "item_ids", "labels") if c not in lists.columns
    ]
    if missing:
        raise SampleError(f"LISTS table lacks column(s) {missing}")
    if (bad := lists.filter(pl.col("part") != "train")).height:
        raise SampleError(
            f"list {bad['list_id'][0]!r}: field 'part' is {bad['part'][0]!r}; SerenGPT trains on 'train' lists only"
        )
    cfg = cfg or SerenConfig()
    by_id = {r["list_id"]: r for r in lists.iter_rows(named=True)}
    rows: list[dict[str, Any]] = []
    for inp in inputs:
        row = by_id.get(inp.list_id)
        if row is None:
            raise SampleError(f"SerenInput of list {inp.list_id!r}: no such list in the LISTS table")
        if inp.user_id != row["user_id"]:
            raise SampleError(
                f"list {inp.list_id!r}: field 'user_id' is {row['user_id']!r}, the input's is {inp.user_id!r}"
            )
        pos, neg = _positions(row, inp)
        if not pos or not neg:
            continue
        prompt = [m.model_dump() for m in seren_request(cfg, inp).messages]
        chosen = pos + neg  # positives first, then the rest in candidate order
        rng = random.Random(f"{seed}:{inp.list_id}")
        for k, n in enumerate(rng.sample(neg, min(pairs, len(neg)))):
            rejected = list(chosen)
            a, b = rejected.index(pos[0]), rejected.index(n)
            rejected[a], rejected[b] = rejected[b], rejected[a]
            good = _assistant(seren_completion(inp, chosen, cfg=cfg))
            rows.append(
                {
                    "list_id": inp.list_id,
                    "user_id": inp.user_id,
                    "asof_ts": int(inp.asof_ts),
                    "pair": k,
                    "positive": inp.candidates[pos[0]].item_id,
                    "negative": inp.candidates[n].item_id,
                    "prompt": prompt,
                    "completion": good,
                    "chosen": good,
                    "rejected": _assistant(seren_completion(inp, rejected, cfg=cfg)),
                }
            )
    return pl.DataFrame(rows, schema=SEREN_SAMPLE_SCHEMA)


def skipped_lists(lists: pl.DataFrame, samples: pl.DataFrame) -> int:
    """Train lists that gave no sample (no positive, or nothing but positives)."""
    return lists.height - samples["list_id"].n_unique()


def list_view(split: Split, lists: pl.DataFrame) -> AsOf:
    """What a list's user may be profiled from: a 'train' list sees the train split's events strictly
    before its cut (`asof_ts`; never a validation or test event), an 'eval' list the test task's view."""
    from recgpt.data.split import AsOf

    parts = set(lists["part"].unique().to_list())
    if parts == {"eval"}:
        return split.test.asof
    if parts != {"train"}:
        raise ValueError(f"profile train and eval lists apart, got parts {sorted(parts)}")
    if (dup := lists.filter(pl.col("user_id").is_duplicated())).height:
        raise ValueError(
            f"list {dup['list_id'][0]!r}: one train list per user (a view has one point per user)"
        )
    points = lists.select(
        "user_id", pl.col("asof_ts").alias("point_ts"), pl.lit(-1, dtype=pl.Int64).alias("point_eid")
    )  # event id -1: every event at the cut's timestamp is hidden too
    return AsOf(split.train_events, points)


def list_inputs(
    split: Split,
    lists: pl.DataFrame,
    profile_cfg: ProfileConfig,
    *,
    engine: TaskEngine | None = None,
) -> tuple[list[SerenInput], pl.DataFrame]:
    """SerenGPT inputs of LISTS of one part, with the PROFILES they read: rule profiles
    (`rule_profiles`, cheap) or, given an `engine`, LLM profiles (`build_profiles`); profiles see only
    `list_view`. Eval inputs are checked against the test split (`guard_seren_inputs`)."""
    from recgpt.llm.types import approx_tokens
    from recgpt.serendipity.profiles import build_profiles, profile_inputs, render_profile, rule_profiles
    from recgpt.serendipity.seren import guard_seren_inputs, seren_inputs

    view = list_view(split, lists)
    users = list(dict.fromkeys(lists["user_id"].to_list()))
    pins = profile_inputs(view, split.dataset, users, profile_cfg, approx_tokens)
    profiles = (
        rule_profiles(pins, profile_cfg) if engine is None else build_profiles(profile_cfg, engine, pins)[0]
    )
    texts = {u: render_profile(profiles, u) for u in users}
    inputs = seren_inputs(lists, texts, split.dataset.items)
    if set(lists["part"].to_list()) == {"eval"}:
        guard_seren_inputs(split, split.test, inputs)
    return inputs, profiles


def check_seren_samples(samples: pl.DataFrame) -> pl.DataFrame:
    """`samples` conformed to `SEREN_SAMPLE_SCHEMA`, or `SampleError` naming the row and field."""
    missing = [c for c in SEREN_SAMPLE_SCHEMA if c not in samples.columns]
    if missing:
        raise SampleError(f"SerenGPT sample table lacks column(s) {missing}")
    samples = samples.select(list(SEREN_SAMPLE_SCHEMA)).cast(SEREN_SAMPLE_SCHEMA)  # type: ignore[arg-type]
    if samples.height == 0:
        raise SampleError("no SerenGPT samples to train on (no train list had a positive and a negative)")
    for i, r in enumerate(samples.iter_rows(named=True)):
        if not r["prompt"] or r["prompt"][-1]["role"] != "user":
            raise SampleError(f"row {i} (list {r['list_id']!r}): field 'prompt' must end with a user turn")
        for col in ("completion", "chosen", "rejected"):
            if len(r[col] or []) != 1 or r[col][0]["role"] != "assistant":
                raise SampleError(
                    f"row {i} (list {r['list_id']!r}): field {col!r} must be one assistant turn"
                )
        if r["chosen"] == r["rejected"]:
            raise SampleError(f"row {i} (list {r['list_id']!r}): 'chosen' and 'rejected' are the same answer")
    return samples


def sft_table(samples: pl.DataFrame) -> pl.DataFrame:
    """One SFT row per list in the sample-table contract (`recgpt.data.sft`), for `run_sft`."""
    first = samples.unique("list_id", keep="first", maintain_order=True)
    return samples_frame(
        sample_row(
            SFT_TASK,
            SFT_LEVEL,
            r["prompt"],
            r["completion"][0]["content"],
            "labels",
            user_id=r["user_id"],
            as_of=r["asof_ts"],
            lineage={"list_id": r["list_id"], "positive": r["positive"]},
        )
        for r in first.iter_rows(named=True)
    )


def ipo_records(samples: pl.DataFrame) -> list[dict[str, Any]]:
    """TRL's conversational preference records (prompt, chosen, rejected)."""
    return [
        {"prompt": p, "chosen": c, "rejected": r}
        for p, c, r in samples.select("prompt", "chosen", "rejected").iter_rows()
    ]


def records_digest(records: Sequence[dict[str, Any]]) -> str:
    """A short fingerprint of training records (a resumed run must train on the same ones)."""
    import hashlib

    return hashlib.sha256(json.dumps(list(records), sort_keys=True).encode()).hexdigest()[:16]


__all__ = [
    "SEREN_SAMPLE_SCHEMA",
    "check_seren_samples",
    "ipo_records",
    "list_inputs",
    "list_view",
    "records_digest",
    "seren_samples",
    "sft_table",
    "skipped_lists",
]
