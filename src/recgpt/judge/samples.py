"""Judge samples: one row per judged output, with the context a judge (or a person) needs.

Two doors in:

- `samples_from_run(run_dir)` reads a finished run folder: the LLM_UI interests, LLM_IT tags and
  LLM_RE explanations it wrote (rule/pool fallbacks are skipped by default: they are not the
  model's output), and rebuilds each user's context from what the chain itself showed the model:
  the stored compressed history (`01_compress`), the dataset's user attributes, the as-of date, and
  the items engaged in the freshness window, all from the run's test `AsOf` view. Held-out items
  never enter: every user context is checked with the pipeline's leakage guard.
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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import polars as pl
from pydantic import BaseModel
from rich.console import Console

from recgpt.intent.context import UserContext, attribute_text, build_contexts, describe_date, history_tail
from recgpt.intent.tags import recent_titles
from recgpt.judge.criteria import TASKS, check_task
from recgpt.llm.types import ChatMessage, LLMRequest

if TYPE_CHECKING:  # the pipeline pulls in the whole chain
    from recgpt.pipeline.state import RunState

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
ROW_KEYS = frozenset({"output", "user_id", "interest", "item_id", "as_of", "hemisphere", "profile", "history",
                      "recent", "item", "item_title", "context"})  # fmt: skip
HISTORY_CHARS = 600  # of the compressed history shown to the judge (the small model's context is short)
MAX_RECENT = 8


def sample_id(task: str, user_id: str | None, as_of: int | None, interest: str | None, item_id: str | None,
              output: str) -> str:  # fmt: skip
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
            raise ValueError(f"{task} sample row {i}: unknown field(s) {sorted(unknown)}; valid: {sorted(ROW_KEYS)}")
        output = row.get("output")
        if not isinstance(output, str) or not output.strip():
            raise ValueError(f"{task} sample row {i}: 'output' must be a non-empty string, got {output!r}")
        if task == "tags" and not row.get("interest"):
            raise ValueError(f"tags sample row {i}: a tag needs its linked 'interest'")
        if task == "explanations" and not (row.get("interest") and (row.get("item") or row.get("item_title"))):
            raise ValueError(f"explanations sample row {i}: needs 'interest' and 'item' (or 'item_title')")
        as_of = None if row.get("as_of") is None else int(row["as_of"])
        sid = sample_id(task, row.get("user_id"), as_of, row.get("interest"), row.get("item_id"), output)
        if sid in seen:
            continue
        seen.add(sid)
        facts = {"recent": list(row.get("recent") or []), "item_title": row.get("item_title"), "as_of": as_of}
        out.append({"sample_id": sid, "task": task, "user_id": row.get("user_id"),
                    "context": row.get("context") or build_context(task, row), "output": output,
                    "interest": row.get("interest"), "item_id": row.get("item_id"), "source": source,
                    "created_at": now, "facts": json.dumps(facts, ensure_ascii=False)})  # fmt: skip
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
    """stage name -> folder, from the `done.json` markers on disk (folder numbering changes between
    versions of the chain; the newest finished folder wins when two claim one stage)."""
    found: dict[str, tuple[float, str]] = {}
    for marker in sorted(Path(run_dir).glob("*/done.json")):
        try:
            m = json.loads(marker.read_text())
        except (OSError, ValueError):
            continue
        stage, when = m.get("stage"), float(m.get("finished_at") or 0.0)
        if stage and (stage not in found or when > found[stage][0]):
            found[stage] = (when, marker.parent.name)
    return {s: f for s, (_, f) in found.items()}


def open_run(run_dir: str | Path, *, llm: Mapping[str, Any] | None = None, progress: bool = False,
             console: Console | None = None) -> RunState:  # fmt: skip
    """A `RunState` over an existing run folder (wherever it now lives); `llm` overrides fields of the
    run's `LLMSettings` (e.g. {"spec": "llamacpp", "workers": 2}) to judge with another model."""
    from recgpt.pipeline.config import RunConfig
    from recgpt.pipeline.state import RunState, load_dataset

    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path} is missing: {run_dir} is not a run folder (run `recgpt run` first)")
    cfg = RunConfig.model_validate(json.loads(cfg_path.read_text()))
    update: dict[str, Any] = {"runs_dir": run_dir.parent, "name": run_dir.name}
    if llm:
        update["llm"] = cfg.llm.model_validate({**cfg.llm.model_dump(), **llm})
    cfg = cfg.model_copy(update=update)
    return RunState(cfg, load_dataset(cfg.dataset), console=console or Console(quiet=True), progress=progress,
                    folders=stage_folders(run_dir))  # fmt: skip


class _StoredCompression:
    """The run's stored B_u texts behind the compressor interface `build_contexts` calls."""

    def __init__(self, table: pl.DataFrame) -> None:
        self._rows = {r["user_id"]: r for r in table.iter_rows(named=True)}

    def compress_many(self, view: Any, user_ids: Sequence[str]) -> list[Any]:
        missing = [u for u in user_ids if u not in self._rows]
        if missing:
            raise ValueError(f"the run's compressed histories lack users {missing[:5]}")
        return [_Text(u, self._rows[u]["text"]) for u in user_ids]


@dataclass(frozen=True)
class _Text:
    user_id: str
    text: str


def _guard(state: RunState, fields: Mapping[str, dict[str, Any]]) -> None:
    """Raise `LeakageError` if a user's dataset-derived context names one of their held-out items."""
    from recgpt.pipeline.state import guard_user_prompts

    reqs = [LLMRequest(messages=(ChatMessage(role="user", content=user_context_text(f)),), output_model=BaseModel,
                       key=u) for u, f in fields.items()]  # fmt: skip
    guard_user_prompts(state.split, state.task, reqs)


def _finished_at(state: RunState, stage: str) -> int:
    m = state.marker(stage)
    return int(m.get("finished_at") or time.time()) if m else int(time.time())


def samples_from_state(
    state: RunState,
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
        ctxs = build_contexts(state.task, state.dataset, users,
                              compressor=_StoredCompression(state.read("compress", "compressed")))  # type: ignore[arg-type]  # fmt: skip
        cfg = state.cfg
        fields = {c.user_id: context_fields(c, history_chars=history_chars, freshness_days=cfg.tags.freshness_days,
                                            max_recent=max_recent, hemisphere=cfg.tags.hemisphere)
                  for c in ctxs}  # fmt: skip
        _guard(state, fields)
    parts = []
    if "interests" in tables:
        rows = [{**fields[u], "output": name} for u, name in tables["interests"].select("user_id", "interest").iter_rows()]
        parts.append(make_samples("interests", rows, source=source, created_at=_finished_at(state, "interests")))
    if "tags" in tables:
        rows = [{**fields[u], "output": tag, "interest": interest}
                for u, tag, interest in tables["tags"].select("user_id", "tag", "interest").iter_rows()]  # fmt: skip
        parts.append(make_samples("tags", rows, source=source, created_at=_finished_at(state, "tags")))
    if "explanations" in tables:
        items = state.dataset.items
        meta = {r["item_id"]: r for r in items.select([c for c in ("item_id", "title", "brand", "categories")
                                                       if c in items.columns]).iter_rows(named=True)}  # fmt: skip
        rows = [{"output": text, "interest": interest, "item_id": iid, "item": item_label(meta[iid]),
                 "item_title": meta[iid]["title"]}
                for interest, iid, text in tables["explanations"].select("interest", "item_id", "explanation").iter_rows()]  # fmt: skip
        parts.append(make_samples("explanations", rows, source=source, created_at=_finished_at(state, "explanations")))
    return pl.concat(parts) if parts else pl.DataFrame(schema=SAMPLES_SCHEMA)


def samples_from_run(run_dir: str | Path, tasks: Sequence[str] = TASKS, *, llm_only: bool = True) -> pl.DataFrame:
    """Judge samples of a finished run folder (`runs/<name>`)."""
    state = open_run(run_dir)
    return samples_from_state(state, tasks, llm_only=llm_only)


def sample_per_task(samples: pl.DataFrame, n: int | None, seed: int = 0) -> pl.DataFrame:
    """At most `n` samples of each task (seeded), in the table's order."""
    if n is None:
        return samples
    parts = [g.sample(min(n, g.height), seed=seed).sort("sample_id") if g.height > n else g
             for _, g in samples.group_by("task", maintain_order=True)]  # fmt: skip
    return pl.concat(parts) if parts else samples


__all__ = [
    "SAMPLES_SCHEMA",
    "build_context",
    "check_samples",
    "context_fields",
    "facts_of",
    "make_samples",
    "open_run",
    "sample_id",
    "sample_per_task",
    "samples_from_run",
    "samples_from_state",
    "stage_folders",
    "user_context_text",
]
