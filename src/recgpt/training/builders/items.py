"""What the catalogue says about an item, as short texts: the raw material of weak supervision.

`Catalogue` wraps a dataset's items table (and optionally the training events, for popularity) and
answers, deterministically:

- `year(item)`: the release year in a MovieLens-style title ("Heat (1995)"), else None;
- `specific_category(item)`: the item's least frequent category in the catalogue (MovieLens genres
  are a set: "Animation" says more than "Comedy"; Amazon stores one flattened path);
- `short_category(text)`: a category short enough for a tag or a rationale (the last two words of a
  long flattened Amazon path: "... Manual Sanding Products Sanding Rolls" -> "Sanding Rolls");
- `tag(item)`: a "modifier + core word" phrase for the item, in one of two styles:
  * "attributes": decade + categories, most specific last ("1990s action sci-fi thriller"): for
    catalogues whose categories are short genre-like labels (MovieLens), where a title ("Heat")
    says little and the chain's prompt forbids exact titles;
  * "title": the cleaned title's head noun phrase: the first segment (cut at ",", ":", " - " ...)
    with at least two words left once years, sizes, units, codes, the brand and a leading article
    are gone, cut before its first "with / for / in / by" and to its last 6 words (English noun
    phrases are head-final): the paper's "item title used directly as the Tag" (§1.4 incremental
    learning), for descriptive product titles (Amazon).
  "auto" picks "attributes" when most categories have at most two words and most titles a year.

`core_word` (e.g. "film" for MovieLens, which `core_word_for` picks from the manifest) ends every
attribute phrase, so a genre list reads as a kind of item ("1990s children's film").
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from typing import Any, Literal

import polars as pl

from recgpt.behavior.items import clean_title
from recgpt.intent.pool import STOP_WORDS

TagStyle = Literal["auto", "attributes", "title"]
_YEAR = re.compile(r"\((1[89]\d\d|20\d\d)\)")
_PARENS = re.compile(r"\([^)]*(?:\)|$)|\[[^]]*(?:\]|$)")
_SEGMENT = re.compile(r"\s*[,:;|/]\s*|\s+[-–—]\s+")
_LEADING = frozenset({"the", "a", "an"})
_CUT = re.compile(r"\s(?:with|for|in|by|from|featuring|includes?)\s", re.IGNORECASE)
_TECH = re.compile(r"^\d[A-Z]$")  # "3D", "4K": digits that are part of the product kind
_UNITS = frozenset(
    (
        "lb",
        "lbs",
        "oz",
        "fl",
        "mm",
        "cm",
        "ml",
        "kg",
        "g",
        "gm",
        "mg",
        "ft",
        "in",
        "inch",
        "inches",
        "pack",
        "pcs",
        "pc",
        "pk",
        "count",
        "ct",
        "qt",
        "gal",
    )
)
MAX_TAG_WORDS = 6
ROW_COLUMNS = ("item_id", "title", "brand", "categories")


class Catalogue:
    """Item rows, category frequencies and (optional) popularity of one dataset's catalogue."""

    def __init__(
        self,
        items: pl.DataFrame,
        events: pl.DataFrame | None = None,
        style: TagStyle = "auto",
        core_word: str | None = None,
    ) -> None:
        if "item_id" not in items.columns or "title" not in items.columns:
            raise ValueError("the catalogue needs an items table with 'item_id' and 'title' columns")
        cols = [c for c in ROW_COLUMNS if c in items.columns]
        self.rows: dict[str, dict[str, Any]] = {
            r["item_id"]: r for r in items.select(cols).iter_rows(named=True)
        }
        self.category_counts: Counter[str] = Counter()
        for r in self.rows.values():
            self.category_counts.update({c.strip() for c in self.categories(r["item_id"])})
        self.popularity: Counter[str] = Counter()
        if events is not None and events.height:
            ids = events.filter(pl.col("item_id").is_not_null())["item_id"].to_list()
            self.popularity.update(ids)
        self.style: Literal["attributes", "title"] = self._pick_style() if style == "auto" else style
        self.core_word = (core_word or "").strip().lower() or None

    def _pick_style(self) -> Literal["attributes", "title"]:
        cats = list(self.category_counts)
        short = sum(len(c.split()) <= 2 for c in cats) >= 0.8 * len(cats) if cats else False
        years = sum(self.year(i) is not None for i in self.rows) >= 0.5 * max(1, len(self.rows))
        return "attributes" if short and years else "title"

    def __contains__(self, item_id: object) -> bool:
        return item_id in self.rows

    def row(self, item_id: str) -> dict[str, Any]:
        try:
            return self.rows[item_id]
        except KeyError:
            raise KeyError(f"item {item_id!r} is not in the catalogue") from None

    def title(self, item_id: str) -> str:
        return self.row(item_id).get("title") or ""

    def clean(self, item_id: str) -> str:
        """The title as the compressed history writes it ("The American President (1995)")."""
        r = self.row(item_id)
        return clean_title(r.get("title") or "", r.get("brand"))

    def categories(self, item_id: str) -> list[str]:
        return [c.strip() for c in (self.row(item_id).get("categories") or []) if c and c.strip()]

    def year(self, item_id: str) -> int | None:
        found = _YEAR.findall(self.title(item_id))
        return int(found[-1]) if found else None

    def specific_category(self, item_id: str) -> str | None:
        """The item's least frequent category (ties: the later one in its list), None without any."""
        cats = self.categories(item_id)
        if not cats:
            return None
        return min(reversed(cats), key=lambda c: self.category_counts[c])

    def by_specificity(self, item_id: str) -> list[str]:
        """The item's categories, most frequent (general) first, most specific last."""
        cats = list(dict.fromkeys(self.categories(item_id)))
        return sorted(cats, key=lambda c: (-self.category_counts[c], cats.index(c)))

    def names(self, item_id: str) -> set[str]:
        """Lower-cased texts that name the item in a prompt: raw and cleaned title (8+ characters)."""
        return {n.lower() for n in (self.title(item_id), self.clean(item_id)) if len(n) >= 8}

    # ------------------------------------------------------------------ tags

    def tag(self, item_id: str) -> str:
        """The item's tag phrase in this catalogue's style ("" when nothing usable is left)."""
        if self.style == "attributes":
            phrase = self.attribute_phrase(item_id)
            if phrase:
                return phrase
        return self.title_phrase(item_id)

    def attribute_phrase(self, item_id: str, max_categories: int = 3) -> str:
        """Decade + categories, the most specific last ("1990s action sci-fi thriller")."""
        cats = [short_category(c).lower() for c in self.by_specificity(item_id)]
        cats = [c for c in cats if c][-max_categories:]
        if not cats:
            return ""
        year = self.year(item_id)
        words = (
            ([f"{year // 10 * 10}s"] if year else []) + cats + ([self.core_word] if self.core_word else [])
        )
        return " ".join(words[-MAX_TAG_WORDS:])

    def title_phrase(self, item_id: str) -> str:
        """The cleaned title's head noun phrase (module docstring), "" when no word is left."""
        r = self.row(item_id)
        brand = {w.lower() for w in (r.get("brand") or "").split()}
        text = " ".join(_PARENS.sub(" ", self.clean(item_id)).split())
        phrases = [_head_words(seg, brand) for seg in _SEGMENT.split(text)]
        words = next((p for p in phrases if len(p) >= 2), next((p for p in phrases if p), []))
        if len(words) == 1:  # one word says too little ("Heat"): add the item's category as core
            cat = self.specific_category(item_id)
            if cat and short_category(cat).lower() != words[0].lower():
                words.append(short_category(cat).lower())
        return " ".join(words)


def _head_words(segment: str, brand: set[str]) -> list[str]:
    cut = _CUT.split(f" {segment} ")[0]
    return _words(cut, brand) or _words(segment, brand)


def _words(text: str, brand: set[str]) -> list[str]:
    words = [w.strip("\"'“”‘’.,!?") for w in text.split()]
    words = [
        w
        for w in words
        if w
        and any(ch.isalpha() for ch in w)
        and w.lower() not in _UNITS
        and w.lower() not in brand
        and (_TECH.match(w) or not any(ch.isdigit() for ch in w))
    ]
    while words and words[0].lower() in _LEADING:
        words.pop(0)
    words = words[-MAX_TAG_WORDS:]
    while len(words) > 1 and words[0].lower() in STOP_WORDS:
        words.pop(0)
    while len(words) > 1 and words[-1].lower() in STOP_WORDS:
        words.pop()
    return words


def short_category(category: str, max_words: int = 2) -> str:
    """A category short enough for a tag: long flattened paths keep their last `max_words` words."""
    words = category.replace("&", " ").split() if len(category.split()) > 3 else category.split()
    return " ".join(words[-max_words:]) if len(words) > 3 else " ".join(words)


def core_word_for(source: str) -> str | None:
    """The core noun of attribute phrases for a dataset source: "film" for MovieLens, else None."""
    return "film" if "movielens" in source.lower() else None


def decade(year: int | None) -> str | None:
    return f"{year // 10 * 10}s" if year else None


def item_facts(cat: Catalogue, item_id: str) -> Mapping[str, Any]:
    """The item's facts a target may state: title, year, categories (most specific last)."""
    return {
        "item_id": item_id,
        "title": cat.title(item_id),
        "year": cat.year(item_id),
        "categories": cat.by_specificity(item_id),
    }


__all__ = [
    "MAX_TAG_WORDS",
    "Catalogue",
    "TagStyle",
    "core_word_for",
    "decade",
    "item_facts",
    "short_category",
]
