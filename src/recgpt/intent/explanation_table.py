"""Serving LLM_RE explanations (RecGPT §1.6): the stored table as O(1) lookups, every text with its source.

`ExplanationTable.serve(interests, item_id)` returns the first of the user's interests that has an
entry for the item, else an item-only text built from item data alone (`item_explanation`), and
says who wrote it: "llm", "template:pair" or "template:item" (`recgpt.intent.explanations`).
`llm_share` counts the served sources, so the run's stats and report state how many explanations
the LLM actually wrote.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import polars as pl

from recgpt.data.untrusted import UntrustedText
from recgpt.intent.context import phrase_key
from recgpt.intent.explanations import (
    SOURCE_ITEM,
    SOURCE_LLM,
    SOURCE_PAIR,
    SOURCES,
    UNTRUSTED_FALLBACK,
    ExplanationsConfig,
    item_explanation,
)


def lookup(table: pl.DataFrame, interest: str, item_id: str) -> str | None:
    """The stored explanation of (interest, item) (case/spacing-insensitive interest), or None."""
    key = phrase_key(interest)
    hit = table.filter(
        (pl.col("item_id") == item_id)
        & (pl.col("interest").map_elements(phrase_key, return_dtype=pl.String) == key)
    )
    return None if hit.is_empty() else str(hit["explanation"][0])


def table_sources(table: pl.DataFrame) -> list[str]:
    """Each stored row's `source`; tables written before the column existed derive it from `fallback`."""
    if "source" in table.columns:
        return [str(s) for s in table["source"].to_list()]
    return [SOURCE_PAIR if f else SOURCE_LLM for f in table["fallback"].to_list()]


def llm_share(sources: Sequence[str | None]) -> dict[str, Any]:
    """How many served explanations the LLM wrote, and how many each template wrote (None = not explained)."""
    got = [s for s in sources if s is not None]
    counts = {s: sum(1 for g in got if g == s) for s in SOURCES}
    return {
        "served": len(got),
        "by_source": counts,
        "llm_share": round(counts[SOURCE_LLM] / len(got), 4) if got else 0.0,
    }


class ExplanationTable:
    """Serving view of the table: O(1) lookups, then the item-only fallback; every text with its source."""

    def __init__(
        self,
        table: pl.DataFrame,
        items: pl.DataFrame,
        config: ExplanationsConfig | None = None,
        popularity: Mapping[str, float] | None = None,
        untrusted: UntrustedText | None = None,
    ) -> None:
        self.config = config or ExplanationsConfig()
        self.untrusted = (
            untrusted  # stored texts and rule-based ones that repeat a flagged payload are not served
        )
        rows = table.select("interest", "item_id", "explanation").iter_rows()
        self._index = {
            (phrase_key(i), iid): (e, src)
            for (i, iid, e), src in zip(rows, table_sources(table), strict=True)
            if untrusted is None or not untrusted.hit(e)
        }
        cols = [c for c in ("item_id", "title", "brand", "categories") if c in items.columns]
        self._items = {r["item_id"]: r for r in items.select(cols).iter_rows(named=True)}
        self._popular = self._popular_items(popularity) if popularity else set()

    def _popular_items(self, popularity: Mapping[str, float]) -> set[str]:
        """Items in the top `popular_share` of their first category by training popularity."""
        by_cat: dict[str, list[tuple[float, str]]] = {}
        for iid, row in self._items.items():
            cats = [c for c in (row.get("categories") or []) if c]
            if cats:
                by_cat.setdefault(cats[0], []).append((float(popularity.get(iid, 0.0)), iid))
        out = set()
        for members in by_cat.values():
            members.sort(key=lambda x: (-x[0], x[1]))
            n = max(1, int(len(members) * self.config.popular_share))
            out.update(iid for pop, iid in members[:n] if pop > 0)
        return out

    def serve(self, interests: Sequence[str | None], item_id: str) -> tuple[str, str]:
        """(explanation, source): the first interest with an entry for the item, else the item-only text."""
        for interest in interests:
            hit = None if interest is None else self._index.get((phrase_key(interest), item_id))
            if hit is not None:
                return hit
        return self.item_only(item_id), SOURCE_ITEM

    def get(self, interest: str | None, item_id: str) -> tuple[str, bool]:
        """(explanation, is_item_only) for one interest and item."""
        text, source = self.serve([interest], item_id)
        return text, source == SOURCE_ITEM

    def explain(self, interests: Sequence[str], item_id: str) -> tuple[str, bool]:
        """The first of a user's interests with an entry for the item, else the item-only text."""
        text, source = self.serve(interests, item_id)
        return text, source == SOURCE_ITEM

    def annotate(self, candidates: pl.DataFrame) -> pl.DataFrame:
        """Add `explanation`, `explanation_fallback` (item-only) and `explanation_source` to a candidates
        table (by its `interest` column)."""
        if "item_id" not in candidates.columns:
            raise ValueError("candidates table lacks an 'item_id' column")
        interests = (
            candidates["interest"].to_list()
            if "interest" in candidates.columns
            else [None] * candidates.height
        )
        got = [
            self.serve([i], iid) for i, iid in zip(interests, candidates["item_id"].to_list(), strict=True)
        ]
        return candidates.with_columns(
            pl.Series("explanation", [g[0] for g in got], dtype=pl.String()),
            pl.Series("explanation_fallback", [g[1] == SOURCE_ITEM for g in got], dtype=pl.Boolean()),
            pl.Series("explanation_source", [g[1] for g in got], dtype=pl.String()),
        )

    def item_only(self, item_id: str) -> str:
        """Item-only explanation (KeyError for an item not in the catalogue)."""
        try:
            row = self._items[item_id]
        except KeyError:
            raise KeyError(f"item {item_id!r} is not in the items table") from None
        text = item_explanation(self.config, row, popular=item_id in self._popular)
        if self.untrusted is not None and (
            self.untrusted.hit(text) or self.untrusted.is_flagged("item", item_id)
        ):
            return UNTRUSTED_FALLBACK
        return text


__all__ = ["ExplanationTable", "llm_share", "lookup", "table_sources"]
