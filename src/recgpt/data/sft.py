"""The SFT sample table: one row per training example, the contract every builder, judge and trainer shares.

It lives in `data/`, below both `judge/` (which turns human labels into judge examples) and
`training/` (whose builders and trainers make and read them), so neither has to import the other;
`recgpt.training.data` re-exports it next to the prompt helpers that need the LLM request types.

Columns (`SAMPLE_SCHEMA`):

- `sample_id`: sha1 of (task, user_id, as_of, messages, completion): the same example built twice
  (by two builders, or in two rounds) is the same sample, so concatenation can de-duplicate;
- `task`: "tags" | "interests" | "explanations" | "judge" | a catalogue subtask ("category", ...);
- `level`: "foundation" | "intermediate" | "advanced" (the curriculum stage, paper §1.7);
- `messages`: JSON list of {"role", "content"}: the prompt, rendered by the SAME request builder the
  chain uses at inference (so train and serve prompts are identical), ending with a user turn;
- `completion`: the assistant target, JSON that validates against the request's output model;
- `source`: "logs" | "catalogue" | "distill" | "self" | "labels";
- `user_id`, `as_of`: whose prompt and its as-of point (epoch s); everything in `messages` comes from
  events strictly before `as_of`. Both null for prompts that hold no user data;
- `lineage`: JSON object: dataset fingerprint, template id, target item ids, teacher, verdict, round...
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import polars as pl

from recgpt.data.atomic import write_parquet_atomic

SAMPLE_SCHEMA: dict[str, pl.DataType] = {
    "sample_id": pl.String(),
    "task": pl.String(),
    "level": pl.String(),
    "messages": pl.String(),
    "completion": pl.String(),
    "source": pl.String(),
    "user_id": pl.String(),
    "as_of": pl.Int64(),
    "lineage": pl.String(),
}
LEVELS: tuple[str, ...] = ("foundation", "intermediate", "advanced")
SOURCES: tuple[str, ...] = ("logs", "catalogue", "distill", "self", "labels")
ROLES: tuple[str, ...] = ("system", "user", "assistant")
MAX_ERRORS = 10  # errors listed in one SampleError message


class SampleError(ValueError):
    """A sample table breaks the contract; the message names each bad row and field."""


class Turn(Protocol):
    """One chat turn as an object (`recgpt.llm.types.ChatMessage` is one; no LLM import needed here)."""

    role: str
    content: str


Messages = Sequence[Turn] | Sequence[Mapping[str, Any]] | str


# ---------------------------------------------------------------- rows


def messages_json(messages: Messages) -> str:
    """The canonical JSON text of a message list (chat-turn objects, dicts, or JSON text)."""
    if isinstance(messages, str):
        messages = json.loads(messages)
    out = []
    for m in messages:
        if isinstance(m, Mapping):
            out.append({"role": m["role"], "content": m["content"]})
        else:
            out.append({"role": m.role, "content": m.content})
    return json.dumps(out, ensure_ascii=False)


def sample_id(task: str, user_id: str | None, as_of: int | None, messages: str, completion: str) -> str:
    """Stable id of one example: the same prompt and target for the same user and point."""
    payload = json.dumps([task, user_id, as_of, messages, completion], ensure_ascii=False)
    return hashlib.sha1(payload.encode()).hexdigest()


def sample_row(
    task: str,
    level: str,
    messages: Messages,
    completion: str,
    source: str,
    *,
    user_id: str | None = None,
    as_of: int | None = None,
    lineage: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One row of the sample table (not validated: `validate_samples` checks whole tables)."""
    msgs = messages_json(messages)
    as_of = None if as_of is None else int(as_of)
    return {
        "sample_id": sample_id(task, user_id, as_of, msgs, completion),
        "task": task,
        "level": level,
        "messages": msgs,
        "completion": completion,
        "source": source,
        "user_id": user_id,
        "as_of": as_of,
        "lineage": json.dumps(dict(lineage or {}), ensure_ascii=False, sort_keys=True, default=str),
    }


def samples_frame(rows: Iterable[Mapping[str, Any]]) -> pl.DataFrame:
    """Rows -> sample table (duplicate sample ids keep the first row)."""
    df = pl.DataFrame(list(rows), schema=SAMPLE_SCHEMA)
    return df.unique(subset=["sample_id"], keep="first", maintain_order=True)


def concat_samples(*tables: pl.DataFrame) -> pl.DataFrame:
    """Several sample tables as one, de-duplicated by sample id (first wins)."""
    parts = [t.select(list(SAMPLE_SCHEMA)).cast(SAMPLE_SCHEMA) for t in tables if t.height]  # type: ignore[arg-type]
    if not parts:
        return pl.DataFrame(schema=SAMPLE_SCHEMA)
    return pl.concat(parts).unique(subset=["sample_id"], keep="first", maintain_order=True)


# ---------------------------------------------------------------- validation


def _message_errors(raw: Any) -> str | None:
    if not isinstance(raw, str) or not raw.strip():
        return "must be a JSON list of messages, got an empty value"
    try:
        msgs = json.loads(raw)
    except json.JSONDecodeError as exc:
        return f"is not JSON ({exc})"
    if not isinstance(msgs, list) or not msgs:
        return "must be a non-empty JSON list"
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or set(m) != {"role", "content"}:
            return f"message {i} must be an object with exactly 'role' and 'content'"
        if m["role"] not in ROLES:
            return f"message {i} has role {m['role']!r}; valid: {', '.join(ROLES)}"
        if not isinstance(m["content"], str) or not m["content"].strip():
            return f"message {i} has empty or non-string content"
    if msgs[-1]["role"] != "user":
        return f"must end with a user turn, ends with {msgs[-1]['role']!r}"
    return None


def _row_errors(r: Mapping[str, Any]) -> list[tuple[str, str]]:
    errs: list[tuple[str, str]] = []
    for name in ("sample_id", "task"):
        if not isinstance(r[name], str) or not r[name].strip():
            errs.append((name, "must be a non-empty string"))
    if r["level"] not in LEVELS:
        errs.append(("level", f"is {r['level']!r}; valid: {', '.join(LEVELS)}"))
    if r["source"] not in SOURCES:
        errs.append(("source", f"is {r['source']!r}; valid: {', '.join(SOURCES)}"))
    bad = _message_errors(r["messages"])
    if bad:
        errs.append(("messages", bad))
    comp = r["completion"]
    if not isinstance(comp, str) or not comp.strip():
        errs.append(("completion", "must be a non-empty string"))
    else:
        try:
            if not isinstance(json.loads(comp), dict | list):
                errs.append(("completion", "must hold a JSON object or list"))
        except json.JSONDecodeError as exc:
            errs.append(("completion", f"is not JSON ({exc})"))
    if r["user_id"] is not None and r["as_of"] is None:
        errs.append(("as_of", "must be an epoch-seconds int when user_id is set"))
    try:
        if not isinstance(json.loads(r["lineage"] or ""), dict):
            errs.append(("lineage", "must hold a JSON object"))
    except json.JSONDecodeError:
        errs.append(("lineage", "must hold a JSON object"))
    return errs


def validate_samples(df: pl.DataFrame) -> pl.DataFrame:
    """`df` conformed to `SAMPLE_SCHEMA`, or `SampleError` naming each bad row and field."""
    missing = [c for c in SAMPLE_SCHEMA if c not in df.columns]
    if missing:
        raise SampleError(f"sample table lacks column(s) {missing}; expected {list(SAMPLE_SCHEMA)}")
    try:
        df = df.select(list(SAMPLE_SCHEMA)).cast(SAMPLE_SCHEMA)  # type: ignore[arg-type]
    except pl.exceptions.PolarsError as exc:
        raise SampleError(f"sample table has a column of the wrong type: {exc}") from exc
    errors: list[str] = []
    seen: dict[str, int] = {}
    for i, r in enumerate(df.iter_rows(named=True)):
        for fld, why in _row_errors(r):
            errors.append(f"row {i} (sample_id={r['sample_id']!r}): field '{fld}' {why}")
        sid = r["sample_id"]
        if sid in seen:
            errors.append(f"row {i}: field 'sample_id' {sid!r} repeats row {seen[sid]}")
        seen.setdefault(sid, i)
        if len(errors) >= MAX_ERRORS:
            break
    if errors:
        raise SampleError(f"{len(errors)} problem(s) in the sample table:\n  " + "\n  ".join(errors))
    return df


# ---------------------------------------------------------------- files


def save_samples(df: pl.DataFrame, path: str | Path) -> Path:
    """Validate and write a sample table as Parquet (temp file + rename: readers never see half a file)."""
    return write_parquet_atomic(validate_samples(df), path)


def load_samples(path: str | Path) -> pl.DataFrame:
    """Read and validate a sample table."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no sample table at {p}")
    return validate_samples(pl.read_parquet(p))


__all__ = [
    "LEVELS",
    "MAX_ERRORS",
    "ROLES",
    "SAMPLE_SCHEMA",
    "SOURCES",
    "SampleError",
    "Turn",
    "concat_samples",
    "load_samples",
    "messages_json",
    "sample_id",
    "sample_row",
    "samples_frame",
    "save_samples",
    "validate_samples",
]
