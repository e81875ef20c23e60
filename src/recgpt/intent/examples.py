"""Few-shot copies: an answer that repeats a prompt's worked example is a failure, not an answer.

A small model parrots its prompt's worked example: on an Amazon science catalogue 6 of 50 users were
tagged "Sourdough Starter Kit" and 8 of 50 got interests such as "Marathon training plan" or
"Baking", all from the examples of `recgpt_interests.j2` / `recgpt_tags.j2`. An exact-match list
kept by hand missed them. Here:

- **one source of truth**: the example phrases are read from the templates themselves
  (`recgpt.llm.prompts.example_messages`): every string of the assistant example's JSON, under its
  field name ("interest", "tag", "rationale", ...), and every phrase of the user example's data
  blocks (list entries without their "1: " ids, history item titles, their category path parts,
  quoted searches) under "input". The profile block is skipped (it names no item or interest).
  Change an example and the filter follows it.
- **normalised matching** (`stems`): lower case, punctuation and stop words dropped, a light
  stemmer (plural and -ing/-ed endings, a doubled final consonant, a final "e": "Bakes", "baking"
  and "bake" meet), word order ignored (a set of stems).
- **near-duplicates** (`is_near`): the stem sets are equal, or their Jaccard overlap is at least
  `NEAR_JACCARD` (2/3), or one contains the other and the overlap is at least `CONTAINED_JACCARD`
  (1/2). So "Marathon training plan" ~ "Marathon training" (contained, 2/3), "Baking" ~ "Home baking"
  (contained, 1/2), "sourdough starter kits" ~ "Sourdough Starter Kit" (equal), while "chemistry
  starter kit" is no copy of "Sourdough Starter Kit" (1/2, neither contains the other) and
  "Running" no copy of "Trail Running Shoes" (1/3). With an encoder, a cosine of at least
  `EMBED_SIMILARITY` (0.9) to an example phrase counts as near too.
- **the user's own evidence wins**: a phrase that matches an example is a copy only when some of its
  stems do not occur in the user's own text (compressed history, item titles, matched pool): "Baking"
  from a user who bought baking books is a real answer, "Baking" on a science catalogue a copy.

Copies are dropped like any other invalid answer item, and counted: `CopyLog` keeps how many items
each user's last answer lost to copies, so an answer emptied by copies becomes a failure with reason
`EXAMPLE_COPY` (`relabel_failures`) instead of the generic "empty", and the user is on fallback.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

from recgpt.intent.pool import STOP_WORDS, TextEncoder
from recgpt.llm.prompts import example_messages
from recgpt.llm.task import EMPTY

EXAMPLE_COPY = "example_copy"  # the failure reason of an answer emptied by copies of the worked example
INPUT = "input"  # the field name of phrases from the user example's data blocks
NEAR_JACCARD = 2 / 3
CONTAINED_JACCARD = 1 / 2
EMBED_SIMILARITY = 0.9
SKIP_BLOCKS = frozenset({"profile"})

_WORD = re.compile(r"[a-z0-9]+")
_DATA = re.compile(r'<data name="(?P<name>[a-z0-9_]+)">\n(?P<body>.*?)\n</data>', re.S)
_LIST_ID = re.compile(r"^\d+\s*[:.)]\s*")
_QUOTED = re.compile(r'"([^"]+)"')
_BRACKETS = re.compile(r"\[([^\]]*)\]")


def _stem(word: str) -> str:
    """A light stemmer: enough to meet "kits"/"kit", "baking"/"bake", "running"/"run" (module docstring)."""
    w = word
    if w.endswith("ies") and len(w) > 4:
        w = w[:-3] + "y"
    elif w.endswith(("ches", "shes", "sses", "xes", "zes")) and len(w) > 4:
        w = w[:-2]
    elif w.endswith("s") and not w.endswith("ss") and len(w) > 3:
        w = w[:-1]
    for suffix in ("ing", "ed"):
        if w.endswith(suffix) and len(w) - len(suffix) >= 3:
            w = w[: -len(suffix)]
            break
    if len(w) > 3 and w[-1] == w[-2] and w[-1] not in "aeiouls":
        w = w[:-1]
    if len(w) > 3 and w.endswith("e"):
        w = w[:-1]
    return w


def stems(text: str) -> frozenset[str]:
    """The normalised identity of a phrase: its content words, stemmed, as a set (word order ignored)."""
    return frozenset(_stem(w) for w in _WORD.findall((text or "").lower()) if w not in STOP_WORDS)


def is_near(a: frozenset[str], b: frozenset[str]) -> bool:
    """Whether two stem sets are the same phrase or a near-duplicate (thresholds in the module docstring)."""
    if not a or not b:
        return False
    shared = len(a & b)
    jaccard = shared / len(a | b)
    return jaccard >= NEAR_JACCARD or (shared == min(len(a), len(b)) and jaccard >= CONTAINED_JACCARD)


@dataclass(frozen=True)
class ExamplePhrase:
    """One phrase of a worked example: its text, the answer field (or "input") it came from, its stems."""

    text: str
    field: str
    stems: frozenset[str]


def _json_strings(value: Any, key: str = "") -> Iterable[tuple[str, str]]:
    if isinstance(value, str):
        yield key, value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from _json_strings(v, str(k))
    elif isinstance(value, list):
        for v in value:
            yield from _json_strings(v, key)


def _input_phrases(text: str) -> Iterable[str]:
    """Phrases of a user example's data blocks: list entries, history titles, category parts, searches."""
    for block in _DATA.finditer(text):
        if block["name"] in SKIP_BLOCKS:
            continue
        for line in block["body"].splitlines():
            line = line.strip().removeprefix("- ")
            yield from _QUOTED.findall(line)
            for cats in _BRACKETS.findall(line):
                yield from cats.split("/")
            line = _BRACKETS.sub("", _QUOTED.sub("", line))
            if "|" in line:  # "5 months ago (reviewed) | Title, Title": the titles after the bar
                yield from line.split("|", 1)[1].split(",")
            else:
                yield _LIST_ID.sub("", line)


@lru_cache(maxsize=32)
def template_examples(name: str) -> tuple[ExamplePhrase, ...]:
    """Every example phrase of template `name` (module docstring), distinct by (field, stems)."""
    found: dict[tuple[str, frozenset[str]], ExamplePhrase] = {}
    for msg in example_messages(name):
        if msg.role == "assistant":
            try:
                pairs = list(_json_strings(json.loads(msg.content)))
            except ValueError as e:
                raise ValueError(f"template {name!r}: the assistant example is not JSON ({e})") from None
        else:
            pairs = [(INPUT, p) for p in _input_phrases(msg.content)]
        for key, text in pairs:
            text = " ".join(text.split())
            s = stems(text)
            if s and (key, s) not in found:
                found[(key, s)] = ExamplePhrase(text, key, s)
    return tuple(found.values())


def example_values(name: str, field_name: str) -> tuple[str, ...]:
    """The texts of one answer field in template `name`'s worked example, e.g. its example tags."""
    return tuple(p.text for p in template_examples(name) if p.field == field_name)


class ExampleFilter:
    """Spots copies of worked-example phrases (module docstring); `fields` = which phrases count."""

    def __init__(self, templates: Sequence[str], fields: Sequence[str] | None = None) -> None:
        self.phrases = tuple(
            p for t in templates for p in template_examples(t) if fields is None or p.field in fields
        )
        self._vectors: dict[int, np.ndarray] = {}

    def _embedded(self, encoder: TextEncoder) -> np.ndarray:
        key = id(encoder)
        if key not in self._vectors:
            self._vectors[key] = np.asarray(encoder.encode([p.text for p in self.phrases]), dtype=np.float32)
        return self._vectors[key]

    def match(self, text: str, encoder: TextEncoder | None = None) -> ExamplePhrase | None:
        """The example phrase `text` repeats (exactly or nearly), else None; evidence is not looked at."""
        s = stems(text)
        for p in self.phrases:
            if is_near(s, p.stems):
                return p
        if encoder is not None and self.phrases and s:
            sims = self._embedded(encoder) @ np.asarray(encoder.encode([text]), dtype=np.float32)[0]
            best = int(np.argmax(sims))
            if sims[best] >= EMBED_SIMILARITY:
                return self.phrases[best]
        return None

    def copy_of(
        self, text: str, evidence: frozenset[str] = frozenset(), encoder: TextEncoder | None = None
    ) -> ExamplePhrase | None:
        """The example phrase `text` copies, or None when it copies none or the user's `evidence`
        (stems of their own text, `evidence_stems`) holds every word of it."""
        hit = self.match(text, encoder)
        if hit is None or stems(text) <= evidence:
            return None
        return hit


def evidence_stems(texts: Iterable[str]) -> frozenset[str]:
    """The stems of a user's own text (history, item titles, matched pool): what an answer may repeat."""
    out: set[str] = set()
    for t in texts:
        out |= stems(t)
    return frozenset(out)


@dataclass
class CopyLog:
    """How many answer items the example filter dropped: per key (that key's last answer) and in all."""

    last: dict[str, int] = field(default_factory=dict)
    total: int = 0

    def record(self, key: str, copies: int) -> None:
        """The count of one answer of `key` (a re-ask replaces the count of the answer before)."""
        self.last[key] = copies
        self.total += copies


def relabel_failures(
    rows: Sequence[Mapping[str, Any]], log: CopyLog, key_column: str
) -> list[dict[str, Any]]:
    """Failure rows with the generic "empty" reason become `EXAMPLE_COPY` where copies emptied the answer."""
    out = []
    for r in rows:
        n = log.last.get(str(r[key_column]), 0)
        if r["reason"] == EMPTY and n:
            r = {
                **r,
                "reason": EXAMPLE_COPY,
                "detail": f"{n} answer item(s) copied the prompt's worked example",
            }
        out.append(dict(r))
    return out


__all__ = [
    "CONTAINED_JACCARD",
    "EMBED_SIMILARITY",
    "EXAMPLE_COPY",
    "NEAR_JACCARD",
    "CopyLog",
    "ExampleFilter",
    "ExamplePhrase",
    "evidence_stems",
    "example_values",
    "is_near",
    "relabel_failures",
    "stems",
    "template_examples",
]
