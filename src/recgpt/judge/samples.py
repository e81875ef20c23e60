"""Judge samples: one row per judged output, with the context a judge (or a person) needs.

Two doors in:

- `samples_from_run(run_dir)` reads a finished run folder: the LLM_UI interests, LLM_IT tags and
  LLM_RE explanations it wrote (rule/pool fallbacks are skipped by default: they are not the
  model's output), and rebuilds each user's context from what the chain itself showed the model:
  the stored compressed history (`01_compress`), the dataset's user attributes, the as-of date, and
  the items engaged in the freshness window, all from the run's test `AsOf` view. Held-out items
  never enter: every user context is checked with the leakage guard (`intent.context.guard_requests`).
  The run is opened through `RunStore` and its `config.json`, never through the pipeline package.
- `make_samples(task, rows)` turns freshly generated outputs (training builders, self-training)
  into the same table, from plain fields (`context_fields(ctx)` gives them for a `UserContext`).

Table (`SAMPLES_SCHEMA`): sample_id (sha1 of task, user, as-of, interest, item, output), task,
user_id, context, output, interest, item_id, source, created_at, and `facts`: a JSON object of the
structured fields the deterministic rules need (`recent` titles, `item_title`, `as_of`).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import polars as pl
from pydantic import BaseModel, TypeAdapter
from rich.console import Console

from recgpt.data.dataset import Dataset
from recgpt.data.runstore import RunStore
from recgpt.data.split import EvalTask, Split, SplitConfig, make_split, sample_users, subtask
from recgpt.intent.context import (
    UserContext,
    attribute_text,
    contexts_from_tables,
    describe_date,
    guard_requests,
    history_tail,
)
from recgpt.intent.tags import TagsConfig, recent_titles
from recgpt.judge.criteria import TASKS, check_task
from recgpt.llm.types import ChatMessage, LLMRequest

if TYPE_CHECKING:
    from recgpt.llm.engine import LLMEngine

SAMPLES_SCHEMA: dict[str, pl.DataType] = {
    "sample_id": pl.String(),
    "task": pl.String(),
    "user_id": pl.String(),
    "context": pl.String(),
    "output": pl.String(),
    "interest": pl.String(),
    "item_id": pl.String(),
    "source": pl.String(),
    "created_at": pl.Int64(),
    "facts": pl.String(),
}
ROW_KEYS = frozenset(
    {
        "output",
        "user_id",
        "interest",
        "item_id",
        "as_of",
        "hemisphere",
        "profile",
        "history",
        "recent",
        "item",
        "item_title",
        "context",
    }
)
HISTORY_CHARS = 600  # of the compressed history shown to the judge (the small model's context is short)
MAX_RECENT = 8


def sample_id(
    task: str, user_id: str | None, as_of: int | None, interest: str | None, item_id: str | None, output: str
) -> str:
    """Stable id of one judged output: the same output for the same user and point is the same sample."""
    payload = json.dumps([task, user_id, as_of, interest, item_id, output], ensure_ascii=False)
    return hashlib.sha1(payload.encode()).hexdigest()


def context_fields(
    ctx: UserContext,
    *,
    history_chars: int | None = HISTORY_CHARS,
    freshness_days: int = 30,
    max_recent: int = MAX_RECENT,
    hemisphere: Literal["north", "south"] = "north",
) -> dict[str, Any]:
    """The user part of a sample row, from a `UserContext` (what `make_samples` takes)."""
    return {
        "user_id": ctx.user_id,
        "as_of": ctx.asof_ts,
        "hemisphere": hemisphere,
        "profile": attribute_text(ctx.attributes),
        "history": history_tail(ctx.history, history_chars) or "(no reliable behaviour)",
        "recent": recent_titles(ctx, freshness_days)[:max_recent],
    }


def user_context_text(row: Mapping[str, Any], *, recent: bool = True) -> str:
    """Profile, date, history and (with `recent`) recent items of a row: only dataset-derived text,
    which is what the leakage guard checks."""
    lines = [f"Profile: {row.get('profile') or 'unknown'}"]
    if row.get("as_of") is not None:
        d = describe_date(int(row["as_of"]), row.get("hemisphere") or "north")
        lines.append(f"Date: {d['date']} ({d['month']}, {d['season']})")
    lines.append(f"Behaviour history (oldest first):\n{row.get('history') or '(no reliable behaviour)'}")
    if recent and row.get("recent"):
        lines.append("Recently engaged items: " + "; ".join(row["recent"]))
    return "\n".join(lines)


def build_context(task: str, row: Mapping[str, Any]) -> str:
    """The context text of one sample (see the module docstring for what each task shows)."""
    if task == "explanations":
        return f"Interest: {row.get('interest') or '(none)'}\nItem: {row.get('item') or row.get('item_title') or '?'}"
    if task == "interests":
        return user_context_text(row, recent=False)
    return f"{user_context_text(row)}\nLinked interest: {row.get('interest') or '(none)'}"


def make_samples(
    task: str, rows: Iterable[Mapping[str, Any]], *, source: str, created_at: int | None = None
) -> pl.DataFrame:
    """Judge sample table from output rows.

    Each row needs `output` and may give `user_id`, `interest`, `item_id`, `as_of` (epoch s),
    `hemisphere`, `profile`, `history`, `recent` (titles), `item` (the label shown for the item),
    `item_title`, or a ready `context` (else one is built). Duplicate samples keep the first row.
    """
    check_task(task)
    now = int(time.time()) if created_at is None else int(created_at)
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i, row in enumerate(rows):
        unknown = set(row) - ROW_KEYS
        if unknown:
            raise ValueError(
                f"{task} sample row {i}: unknown field(s) {sorted(unknown)}; valid: {sorted(ROW_KEYS)}"
            )
        output = row.get("output")
        if not isinstance(output, str) or not output.strip():
            raise ValueError(f"{task} sample row {i}: 'output' must be a non-empty string, got {output!r}")
        if task == "tags" and not row.get("interest"):
            raise ValueError(f"tags sample row {i}: a tag needs its linked 'interest'")
        if task == "explanations" and not (
            row.get("interest") and (row.get("item") or row.get("item_title"))
        ):
            raise ValueError(f"explanations sample row {i}: needs 'interest' and 'item' (or 'item_title')")
        as_of = None if row.get("as_of") is None else int(row["as_of"])
        sid = sample_id(task, row.get("user_id"), as_of, row.get("interest"), row.get("item_id"), output)
        if sid in seen:
            continue
        seen.add(sid)
        facts = {"recent": list(row.get("recent") or []), "item_title": row.get("item_title"), "as_of": as_of}
        out.append(
            {
                "sample_id": sid,
                "task": task,
                "user_id": row.get("user_id"),
                "context": row.get("context") or build_context(task, row),
                "output": output,
                "interest": row.get("interest"),
                "item_id": row.get("item_id"),
                "source": source,
                "created_at": now,
                "facts": json.dumps(facts, ensure_ascii=False),
            }
        )
    return pl.DataFrame(out, schema=SAMPLES_SCHEMA)


def facts_of(sample: Mapping[str, Any]) -> dict[str, Any]:
    """The structured facts of a sample row ({} when it has none)."""
    raw = sample.get("facts")
    return dict(json.loads(raw)) if raw else {}


def check_samples(samples: pl.DataFrame) -> pl.DataFrame:
    """`samples` itself if it has the judge sample columns and known tasks, else a clear error."""
    missing = {"sample_id", "task", "context", "output"} - set(samples.columns)
    if missing:
        raise ValueError(f"judge samples lack column(s) {sorted(missing)}; expected {list(SAMPLES_SCHEMA)}")
    for task in samples["task"].unique().to_list():
        check_task(task)
    if samples["sample_id"].n_unique() != samples.height:
        raise ValueError("judge samples hold duplicate sample_id values")
    return samples


# ---------------------------------------------------------------- from a run folder


def stage_folders(run_dir: Path) -> dict[str, str]:
    """stage name -> folder of a run folder (`03_interests` -> `interests`)."""
    return dict(RunStore.open(run_dir).folders)


class OpenedRun:
    """A finished run folder as the judge reads it: its tables, config, dataset view and test task.

    Built from `RunStore.open`, the run's `config.json` and the dataset (with the same redaction of
    instruction-like text the run applied), so judging never imports the pipeline. `engine` is the
    LLM of the run's `llm` settings (or the overrides given to `open_run`).
    """

    def __init__(self, run_dir: Path, config: dict[str, Any], *, progress: bool = False) -> None:
        self.run_dir, self.config, self.progress = Path(run_dir), config, progress
        self.store = RunStore.open(run_dir)
        self._engine: LLMEngine | None = None

    @property
    def llm(self) -> dict[str, Any]:
        return dict(self.config.get("llm") or {})

    @property
    def llm_spec(self) -> str:
        """The judge backend spec as it may be printed (the run's config.json holds it redacted)."""
        from recgpt.llm.credentials import redact

        return redact(str(self.llm.get("spec", "llamacpp")))

    @cached_property
    def dataset(self) -> Dataset:
        return run_dataset(self.config)

    @cached_property
    def split(self) -> Split:
        config = TypeAdapter(SplitConfig).validate_python(self.config.get("split") or {})
        return make_split(self.dataset, config)

    @cached_property
    def users(self) -> list[str]:
        return sample_users(self.split.test, self.config.get("users"), int(self.config.get("seed", 0)))

    @cached_property
    def task(self) -> EvalTask:
        return subtask(self.split.test, self.dataset.events, self.users)

    @cached_property
    def tags_config(self) -> TagsConfig:
        return TagsConfig.model_validate(self.config.get("tags") or {})

    def read(self, stage: str, table: str) -> pl.DataFrame:
        return self.store.read(stage, table)

    def marker(self, stage: str) -> dict[str, Any] | None:
        return self.store.marker(stage)

    @property
    def engine(self) -> LLMEngine:
        """The judge's engine: the run's LLM settings, its cache (`llm.cache`, else the run's cache)."""
        if self._engine is None:
            from recgpt.llm import LLMCache, LLMEngine, make_backend

            llm = self.llm
            options = {k: llm[k] for k in ("threads", "workers", "n_ctx") if k in llm}
            backend = make_backend(str(llm.get("spec", "llamacpp")), options=options)
            extra = {k: llm[k] for k in ("max_retries", "chunk_size", "max_tokens_growth") if k in llm}
            cache = LLMCache(llm.get("cache") or self.run_dir / "llm-cache.sqlite")
            self._engine = LLMEngine(backend, cache=cache, progress=self.progress, **extra)
        return self._engine

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None


def run_dataset(config: Mapping[str, Any]) -> Dataset:
    """The dataset a run's `config.json` names, with the redaction of instruction-like text the run applied."""
    from recgpt.data.untrusted import UntrustedText, redact_dataset
    from recgpt.datasets import load_dataset

    if "dataset" not in config:
        raise ValueError("the run's config.json names no dataset (no 'dataset' field)")
    source = load_dataset(config["dataset"])
    return redact_dataset(source, UntrustedText.of(source).report)


def open_run(
    run_dir: str | Path,
    *,
    llm: Mapping[str, Any] | None = None,
    progress: bool = False,
    console: Console | None = None,
) -> OpenedRun:
    """An existing run folder (wherever it now lives); `llm` overrides fields of the run's LLM settings
    (e.g. {"spec": "llamacpp", "workers": 2}) to judge with another model. `console` is unused (kept for
    callers that pass one)."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(
            f"{cfg_path} is missing: {run_dir} is not a run folder (run `recgpt run` first)"
        )
    config = dict(json.loads(cfg_path.read_text()))
    if llm:
        config["llm"] = {**(config.get("llm") or {}), **llm}
    return OpenedRun(run_dir, config, progress=progress)


def _guard(run: OpenedRun, fields: Mapping[str, dict[str, Any]]) -> None:
    """Raise `LeakageError` if a user's dataset-derived context names one of their held-out items."""
    reqs = [
        LLMRequest(
            messages=(ChatMessage(role="user", content=user_context_text(f)),), output_model=BaseModel, key=u
        )
        for u, f in fields.items()
    ]
    guard_requests(run.split, run.task, reqs)


def _finished_at(run: OpenedRun, stage: str) -> int:
    m = run.marker(stage)
    return int(m.get("finished_at") or time.time()) if m else int(time.time())


def samples_from_state(
    state: OpenedRun,
    tasks: Sequence[str] = TASKS,
    *,
    llm_only: bool = True,
    history_chars: int | None = HISTORY_CHARS,
    max_recent: int = MAX_RECENT,
) -> pl.DataFrame:
    """Judge samples of a run (see the module docstring); `state` from `open_run`."""
    from recgpt.intent.explanations import item_label
    from recgpt.intent.interests import FALLBACK_TEMPLATE
    from recgpt.intent.tags import FALLBACK_RATIONALE

    for t in tasks:
        check_task(t)
    source = state.run_dir.name
    tables = {t: state.read(t, t) for t in tasks}
    if llm_only:
        if "interests" in tables:
            tables["interests"] = tables["interests"].filter(pl.col("template") != FALLBACK_TEMPLATE)
        if "tags" in tables:
            tables["tags"] = tables["tags"].filter(pl.col("rationale") != FALLBACK_RATIONALE)
        if "explanations" in tables:
            tables["explanations"] = tables["explanations"].filter(~pl.col("fallback"))
    users = sorted({u for t in ("interests", "tags") if t in tables for u in tables[t]["user_id"].to_list()})
    fields: dict[str, dict[str, Any]] = {}
    if users:
        ctxs = contexts_from_tables(state.task, state.dataset, users, state.read("compress", "compressed"))
        tags_cfg = state.tags_config
        fields = {
            c.user_id: context_fields(
                c,
                history_chars=history_chars,
                freshness_days=tags_cfg.freshness_days,
                max_recent=max_recent,
                hemisphere=tags_cfg.hemisphere,
            )
            for c in ctxs
        }
        _guard(state, fields)
    parts = []
    if "interests" in tables:
        rows = [
            {**fields[u], "output": name}
            for u, name in tables["interests"].select("user_id", "interest").iter_rows()
        ]
        parts.append(
            make_samples("interests", rows, source=source, created_at=_finished_at(state, "interests"))
        )
    if "tags" in tables:
        rows = [
            {**fields[u], "output": tag, "interest": interest}
            for u, tag, interest in tables["tags"].select("user_id", "tag", "interest").iter_rows()
        ]
        parts.append(make_samples("tags", rows, source=source, created_at=_finished_at(state, "tags")))
    if "explanations" in tables:
        items = state.dataset.items
        meta = {
            r["item_id"]: r
            for r in items.select(
                [c for c in ("item_id", "title", "brand", "categories") if c in items.columns]
            ).iter_rows(named=True)
        }
        rows = [
            {
                "output": text,
                "interest": interest,
                "item_id": iid,
                "item": item_label(meta[iid]),
                "item_title": meta[iid]["title"],
            }
            for interest, iid, text in tables["explanations"]
            .select("interest", "item_id", "explanation")
            .iter_rows()
        ]
        parts.append(
            make_samples("explanations", rows, source=source, created_at=_finished_at(state, "explanations"))
        )
    return pl.concat(parts) if parts else pl.DataFrame(schema=SAMPLES_SCHEMA)


def samples_from_run(
    run_dir: str | Path, tasks: Sequence[str] = TASKS, *, llm_only: bool = True
) -> pl.DataFrame:
    """Judge samples of a finished run folder (`runs/<name>`)."""
    state = open_run(run_dir)
    return samples_from_state(state, tasks, llm_only=llm_only)


def sample_per_task(samples: pl.DataFrame, n: int | None, seed: int = 0) -> pl.DataFrame:
    """At most `n` samples of each task (seeded), in the table's order."""
    if n is None:
        return samples
    parts = [
        g.sample(min(n, g.height), seed=seed).sort("sample_id") if g.height > n else g
        for _, g in samples.group_by("task", maintain_order=True)
    ]
    return pl.concat(parts) if parts else samples


__all__ = [
    "SAMPLES_SCHEMA",
    "OpenedRun",
    "build_context",
    "check_samples",
    "context_fields",
    "facts_of",
    "make_samples",
    "open_run",
    "run_dataset",
    "sample_id",
    "sample_per_task",
    "samples_from_run",
    "samples_from_state",
    "stage_folders",
    "user_context_text",
]
