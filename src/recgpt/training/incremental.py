"""Incremental learning for LLM_IT over a new time window (RecGPT §1.4, "bi-weekly incremental learning").

The paper refreshes LLM_IT every two weeks on the last 14 days of interactions, in three steps; one
`incremental(...)` call (and `recgpt train incremental`) does all of them and then fine-tunes the
current model on the result:

1. **Interest completion.** Every interaction of a training user inside the window becomes a
   (Tag, Interest, Rationale) triplet: the item's own title phrase is the tag (as in the paper),
   linked to the user's interest that names it (`LogsConfig.interest_match`; the paper asks a 32B
   model, we match against the interest pool and categories, deterministic and documented in
   `builders.logs`), with a factual rationale from the history before the window.
2. **Balancing.** A fixed number of tags per user sample (`TagsConfig.count`; paper: 80) and at
   most `max_per_category` tags of one category per sample and `category_cap` in the whole set
   (paper: at most 2 per category) — `builders.logs.build_tag_samples`.
3. **Purification.** Each triplet is judged (relevance of the behaviour to the interest, and the
   judge's other tag criteria plus the rules); a sample is kept when at least `min_pass` of its
   tags pass. As in self-training, the LLM judge takes part only when its calibration passes the
   gate (`selftrain.judge_filter`); otherwise the rules alone purify, and the summary says so.

Then LoRA SFT starts from the current model (`--model`, a merged HF folder such as
`<sft-out>/merged`) on the window's samples only, into `out/sft/` (its `merged/` is the refreshed
model). Contexts see only events before the window start; the chain's evaluation users are never
used.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from recgpt.data.atomic import write_json_atomic
from recgpt.data.dataset import Dataset
from recgpt.data.split import Split
from recgpt.training.builders.distill import JudgeFilter
from recgpt.training.builders.source import LogContext, LogsConfig
from recgpt.training.data import save_samples
from recgpt.training.sft import SFTConfig

DAY = 86_400


class IncrementalConfig(BaseModel):
    """Window and purification settings (module docstring)."""

    model_config = ConfigDict(frozen=True)

    window_days: int = Field(default=14, ge=1)
    end: int | None = Field(default=None, description="window end, epoch s (None: the last training event)")
    judge: str | None = None
    calibration: Path | None = None
    gate_threshold: float = Field(default=0.8, ge=0.0, le=1.0)
    min_pass: float = Field(default=1.0, ge=0.0, le=1.0)
    eval_users: int = 200
    eval_seed: int = 0


def window_of(split: Split, days: int, end: int | None = None) -> tuple[int, int]:
    """[end - days, end) with `end` defaulting to just after the last event of the train split."""
    if end is None:
        end = int(split.train_events["timestamp"].max()) + 1  # type: ignore[arg-type]
    return end - days * DAY, end


def purify(
    samples: pl.DataFrame,
    contexts: list[LogContext],
    logs: LogsConfig,
    filter_fn: JudgeFilter | None,
    min_pass: float,
) -> tuple[pl.DataFrame, dict[str, int]]:
    """Keep the samples whose tags pass `filter_fn` (share >= min_pass); no filter keeps everything."""
    stats = {"samples": samples.height, "tags_judged": 0, "tags_passed": 0, "kept": samples.height}
    if filter_fn is None or samples.is_empty():
        return samples, stats
    from recgpt.training.builders.distill import judge_rows, judge_table
    from recgpt.training.builders.logs import tag_prompts

    prompts = {(p.user_id, p.as_of): p for p in tag_prompts(contexts, logs)}
    per_sample: list[pl.DataFrame] = []
    for r in samples.iter_rows(named=True):
        p = prompts[(r["user_id"], r["as_of"])]
        answer = p.request.output_model.model_validate_json(r["completion"])
        per_sample.append(judge_table("tags", judge_rows(p, answer), "incremental"))
    passed = set(filter_fn(pl.concat(per_sample, how="vertical_relaxed"))["sample_id"].to_list())
    keep = []
    for t in per_sample:
        ok = [sid in passed for sid in t["sample_id"].to_list()]
        stats["tags_judged"] += len(ok)
        stats["tags_passed"] += sum(ok)
        keep.append(bool(ok) and sum(ok) >= min_pass * len(ok))
    kept = samples.filter(pl.Series(keep, dtype=pl.Boolean))
    stats["kept"] = kept.height
    return kept, stats


def incremental(
    config: IncrementalConfig,
    sft: SFTConfig,
    dataset: Dataset,
    split: Split,
    logs: LogsConfig,
    model: str | Path,
    out_dir: str | Path,
    *,
    progress: bool = True,
    console: Any = None,
) -> dict[str, Any]:
    """Build, purify and train on one window (module docstring); returns the summary it writes."""
    from recgpt.retrieval.embeddings import Embedder
    from recgpt.training.builders import build_tag_samples, eval_users, tag_contexts
    from recgpt.training.builders.source import LogSource
    from recgpt.training.selftrain import judge_filter
    from recgpt.training.sft import run_sft

    model = Path(model)
    if not (model / "config.json").is_file():
        raise FileNotFoundError(
            f"{model} is not a Hugging Face model folder (e.g. <recgpt train sft --out>/merged)"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    window = window_of(split, config.window_days, config.end)
    excluded = eval_users(split, config.eval_users, config.eval_seed)
    src = LogSource(dataset, split, logs, encoder=Embedder(cache_dir=out / "embed-cache"))
    ctxs = tag_contexts(
        dataset, split, logs, exclude_users=excluded, window=window, progress=progress, source=src
    )
    built = build_tag_samples(
        dataset,
        split,
        logs,
        pool=src.pool,
        compressor=src.compressor,
        exclude_users=excluded,
        window=window,
        contexts=ctxs,
        progress=progress,
    )
    if built.is_empty():
        raise ValueError(f"no training samples in the window {window} (widen --window-days or move --end)")
    filter_fn, note = judge_filter(
        config.judge, config.calibration, config.gate_threshold, "tags", cache=out / "judge-cache.sqlite"
    )
    kept, stats = purify(built, ctxs, logs, filter_fn, config.min_pass)
    if kept.is_empty():
        raise ValueError("purification rejected every sample of the window: nothing to train on")
    save_samples(kept, out / "window.parquet")
    build_s = time.perf_counter() - t0
    res = run_sft(
        SFTConfig.from_dict({**sft.to_dict(), "base": str(model)}),
        kept,
        out / "sft",
        progress=progress,
        console=console,
    )
    summary = {
        "window": {"start": window[0], "end": window[1], "days": config.window_days},
        "contexts": len(ctxs),
        "built": built.height,
        "purification": {**stats, "judge": note},
        "trained_on": kept.height,
        "start_model": str(model),
        "model": str(res.merged_dir),
        "complete": res.complete,
        "build_s": round(build_s, 1),
        "sft_s": round(res.wall_s, 1),
    }
    write_json_atomic(out / "incremental.json", summary)
    return summary


__all__ = ["IncrementalConfig", "incremental", "purify", "window_of"]
