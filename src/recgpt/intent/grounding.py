"""Tags grounded in the catalogue (an option beyond the paper, for small models).

A small model's free tags often name things the catalogue does not have ("quantum hiking drone"),
and such a tag maps to no category and retrieves nothing real. With `tags.grounding`:

- "core": the tag's core word (its last word, `split_tag`) must be one of the catalogue's own
  head words; the model writes a free modifier and picks the core word from an enum;
- "tag": the whole tag must be one of the catalogue's phrases (an enum);
- "free" (default): the paper's free tags.

The enum goes into the output model's JSON schema, so every backend constrains it the way it
constrains the rest of the answer (llama.cpp: the schema's GBNF grammar; OpenAI-compatible servers:
`json_schema` response_format; transformers: llguidance). Validation stays lenient (any string), as
for `interest_id`: an unconstrained backend's (or the fake backend's) stray word costs one tag in
`grounded_tags`, counted, not the whole answer.

**Vocabulary** (`build_vocabulary(items, size)`), from the items table only:

- phrases: the leaf category of every item (the last entry of `categories`; of a name longer than
  3 words, e.g. a flattened path, its last 2 words), by item count, then title phrases of 2-3 words
  (no stop word at either end, every word with a letter) by the number of titles that hold them (at
  least `min_titles`), up to `size` phrases in all;
- core words: the last word of each leaf category, by item count, then single title words (3+
  letters, not stop or vague words) by title count, up to `size` words.

Both are lower-cased and bounded by `size` (default 300) so that the grammar stays fast.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import polars as pl
from pydantic import BaseModel, Field, create_model

from recgpt.behavior.items import clean_title

Grounding = Literal["free", "core", "tag"]
_STOP_WORDS = (
    "a an the and or of in on at to for with by from is are be it its this that as your you our my "
    "new set pack kit pcs pc piece pieces x vs de la le el"
)
STOP = frozenset(_STOP_WORDS.split())
VAGUE = frozenset("smart modular set best premium quality great good various other misc".split())  # noqa: SIM905
_WORD = re.compile(r"[a-z0-9]*[a-z][a-z0-9'&-]*")  # words with a letter ("3d" yes, "4524" no)
LEAF_WORDS = (
    3  # a longer leaf name (a flattened path, as the Amazon importer stores it) keeps its last 2 words
)


@dataclass(frozen=True)
class Vocabulary:
    """A catalogue's grounded vocabulary: phrases (whole tags) and core words, most frequent first."""

    phrases: tuple[str, ...]
    cores: tuple[str, ...]

    def terms(self, mode: Grounding) -> tuple[str, ...]:
        """What the enum of `mode` holds ("core": core words, "tag": phrases)."""
        if mode == "core":
            return self.cores
        if mode == "tag":
            return self.phrases
        raise ValueError(f"grounding {mode!r} has no vocabulary (use 'core' or 'tag')")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _leaf(categories: Any) -> str:
    cats = [c for c in (categories or []) if c and str(c).strip()]
    words = _words(str(cats[-1])) if cats else []
    return " ".join(words if len(words) <= LEAF_WORDS else words[-2:])


def build_vocabulary(items: pl.DataFrame, size: int = 300, *, min_titles: int = 3) -> Vocabulary:
    """The vocabulary of an items table (`item_id`, `title`, optional `categories`): module docstring."""
    if "title" not in items.columns:
        raise ValueError(f"the items table lacks a 'title' column (has {items.columns})")
    if size < 1:
        raise ValueError(f"vocabulary size must be >= 1, got {size}")
    leaves: Counter[str] = Counter()
    if "categories" in items.columns:
        leaves.update(leaf for leaf in map(_leaf, items["categories"].to_list()) if leaf)
    grams: Counter[str] = Counter()
    singles: Counter[str] = Counter()
    for title in items["title"].to_list():
        words = _words(clean_title(title or ""))
        found: set[str] = set()
        for n in (2, 3):
            for i in range(len(words) - n + 1):
                g = words[i : i + n]
                if g[0] not in STOP and g[-1] not in STOP and len(g[-1]) >= 3:
                    found.add(" ".join(g))
        grams.update(found)
        singles.update({w for w in words if len(w) >= 3 and w not in STOP and w not in VAGUE})
    phrases = [p for p, _ in leaves.most_common()]
    phrases += [g for g, n in grams.most_common() if n >= min_titles and g not in leaves]
    heads = [p.split()[-1] for p, _ in leaves.most_common()]
    cores = [w for w in heads if w not in STOP and w not in VAGUE]
    cores += [w for w, n in singles.most_common() if n >= min_titles]
    return Vocabulary(tuple(dict.fromkeys(phrases))[:size], tuple(dict.fromkeys(cores))[:size])


@dataclass(frozen=True)
class PlainTag:
    """A grounded answer's tag in the free tags' shape (`tag`, `interest_id`, `rationale`)."""

    tag: str
    interest_id: int
    rationale: str


@lru_cache(maxsize=64)
def grounded_tags_model(
    count: int, interest_ids: tuple[int, ...], mode: Grounding, terms: tuple[str, ...]
) -> type[BaseModel]:
    """Output model `{tags: [item] * count}` whose schema holds `terms` as an enum.

    "core": item = (modifier, core, interest_id, rationale), `core` in `terms`; "tag": item =
    (tag, interest_id, rationale), `tag` in `terms`.
    """
    if mode not in ("core", "tag"):
        raise ValueError(f"grounding must be 'core' or 'tag', got {mode!r}")
    if not terms:
        raise ValueError("the grounded vocabulary is empty: the catalogue has no categories or titles")
    if not interest_ids:
        raise ValueError("interest_ids must not be empty")
    ids = Field(json_schema_extra={"enum": list(interest_ids)})
    vocab = Field(description="one of the catalogue's words", json_schema_extra={"enum": list(terms)})
    fields: dict[str, Any]
    if mode == "core":
        fields = {
            "modifier": (str, Field(description="descriptive words, 1 to 4")),
            "core": (str, vocab),
            "interest_id": (int, ids),
            "rationale": (str, Field(description="at most 12 words")),
        }
    else:
        fields = {
            "tag": (str, vocab),
            "interest_id": (int, ids),
            "rationale": (str, Field(description="at most 12 words")),
        }
    digest = hashlib.sha1("\n".join(terms).encode()).hexdigest()[
        :10
    ]  # stable: model names enter the cache key
    suffix = f"{mode}{count}_{'_'.join(map(str, interest_ids))}_{digest}"
    item = create_model(f"GroundedTag_{suffix}", **fields)
    return create_model(
        f"GroundedTags_{suffix}", tags=(list[item], Field(min_length=count, max_length=count))
    )


def grounded_tags(tags: Sequence[Any], mode: Grounding, vocabulary: Vocabulary) -> tuple[list[PlainTag], int]:
    """A grounded answer's tags as `PlainTag`s, those outside the vocabulary dropped; (tags, dropped)."""
    allowed = set(vocabulary.terms(mode))
    out: list[PlainTag] = []
    for t in tags:
        if mode == "core":
            core = " ".join(_words(t.core))
            words = str(t.modifier).split()
            if words and words[-1].lower() == core:
                words = words[:-1]  # "waterproof jacket" + "jacket": the core once
            text = " ".join([*words, core])
        else:
            core = text = " ".join(_words(t.tag))
        if core not in allowed:
            continue
        out.append(PlainTag(text, int(t.interest_id), str(t.rationale)))
    return out, len(tags) - len(out)


def grounded_share(tags: pl.DataFrame, vocabulary: Vocabulary, mode: Grounding = "core") -> float:
    """Share of a tags table's rows whose core word (`mode="core"`) or whole tag is in the vocabulary."""
    if tags.height == 0:
        return 0.0
    allowed = set(vocabulary.terms(mode))
    col = "core" if mode == "core" else "tag"
    keys = [" ".join(_words(v or "")) for v in tags[col].to_list()]
    return sum(k in allowed for k in keys) / tags.height


__all__ = [
    "Grounding",
    "PlainTag",
    "Vocabulary",
    "build_vocabulary",
    "grounded_share",
    "grounded_tags",
    "grounded_tags_model",
]
