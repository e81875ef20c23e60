"""Item-level compression (RecGPT §1.2 step 1): each item reduced to its core attributes.

The paper asks an LLM to compress an item's raw information to name, category, brand and a few
essential features. The default here is deterministic (no model, same text on every machine):

    <name> [<category>; brand: <brand>; <key>: <value>]

- name: the title cleaned: HTML entities decoded, whitespace collapsed, MovieLens' trailing article
  moved to the front ("American President, The (1995)" -> "The American President (1995)"), a
  leading brand removed (the brand has its own field), long model numbers dropped
  ("PORTER-CABLE 740000801 ... Sanding Roll" -> "... Sanding Roll"), cut at a word boundary.
- category: the whole category list joined with "/" (MovieLens genres are a multi-label set, not a
  path, so "/" reads right for both) or only the leaf (last element).
- features: values of the `attributes` keys listed in `ItemConfig.feature_keys` (none by default:
  neither MovieLens nor UniSRec has attributes worth the tokens).

An optional summariser (e.g. an LLM stage, plugged in later) replaces the deterministic text. It is a
plain callable taking a batch of item records and returning one text per record, so this module does
not depend on the LLM layer; answers are cached per item in memory and, if a path is given, in a
Parquet file keyed by (summarizer_id, item_id), so a different summariser never reuses stale text.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

import polars as pl
from pydantic import BaseModel, ConfigDict

from recgpt.data.atomic import write_parquet_atomic

ItemSummarizer = Callable[[list[dict[str, Any]]], list[str]]
"""Batch of item records (the item row plus ``"deterministic"``: our text) -> one text per record."""

_ARTICLES = "The|A|An|La|Le|Les|L'|Il|El|Los|Las|Lo|Das|Der|Die|Det|Den|De|Una|Un|Une|Gli|I|O|Os|As"
_TRAILING_ARTICLE = re.compile(rf"^(?P<head>[^()]+?), (?P<art>{_ARTICLES})(?P<tail>(?:\s+\(.*)?)$")
_SPACES = re.compile(r"\s+")
_CACHE_SCHEMA = {"summarizer_id": pl.String(), "item_id": pl.String(), "text": pl.String()}


class ItemConfig(BaseModel):
    """How an item is written in a compressed history."""

    model_config = ConfigDict(frozen=True)

    categories: Literal["all", "leaf", "none"] = "all"
    category_sep: str = "/"
    brand: bool = True
    drop_brand_prefix: bool = True
    drop_model_numbers: bool = True
    max_name_chars: int = 80
    feature_keys: tuple[str, ...] = ()
    max_features: int = 3


def single_line(text: str) -> str:
    """Collapse whitespace; '|' becomes '/' because it separates times from items in a line."""
    return _SPACES.sub(" ", text.replace("|", "/")).strip()


def _is_model_number(token: str) -> bool:
    """Catalogue codes ("740000801", "EP-1234X"): no lower case, many digits; years and sizes survive."""
    core = token.strip(",;:()")
    digits = sum(ch.isdigit() for ch in core)
    if any(ch.islower() for ch in core) or not core:
        return False
    letters = any(ch.isalpha() for ch in core)
    return digits >= 5 or (letters and digits >= 3 and len(core) >= 6)


def clean_title(title: str, brand: str | None = None, config: ItemConfig | None = None) -> str:
    """A short, readable item name (see the module docstring for the rules)."""
    config = config or ItemConfig()
    name = single_line(html.unescape(title or ""))
    m = _TRAILING_ARTICLE.match(name)
    if m:
        art = m["art"]
        name = f"{art}{'' if art.endswith(chr(39)) else ' '}{m['head']}{m['tail']}"
    if config.drop_brand_prefix and brand:
        b = single_line(brand)
        if b and name.lower().startswith(b.lower() + " ") and len(name) > len(b) + 1:
            name = name[len(b) + 1 :].lstrip(" -,:")
    if config.drop_model_numbers:
        kept = [t for t in name.split(" ") if not _is_model_number(t)]
        name = " ".join(kept) if kept else name
    if len(name) > config.max_name_chars:
        cut = name[: config.max_name_chars + 1]
        name = cut[: cut.rfind(" ")] if " " in cut else cut[: config.max_name_chars]
        name = name.rstrip(" ,;:-/(")
    return name


def item_text(record: dict[str, Any], config: ItemConfig | None = None) -> str:
    """Deterministic compressed text of one item row (ITEM_SCHEMA columns; missing ones are fine)."""
    config = config or ItemConfig()
    brand = record.get("brand")
    parts: list[str] = []
    cats = [single_line(c) for c in (record.get("categories") or []) if c and c.strip()]
    if cats and config.categories != "none":
        parts.append(config.category_sep.join(cats) if config.categories == "all" else cats[-1])
    if config.brand and brand and brand.strip():
        parts.append(f"brand: {single_line(brand)}")
    if config.feature_keys:
        attrs = {a["key"]: a["value"] for a in (record.get("attributes") or []) if a and a.get("value")}
        feats = [f"{k}: {single_line(attrs[k])}" for k in config.feature_keys if k in attrs]
        parts.extend(feats[: config.max_features])
    name = clean_title(record.get("title") or "", brand, config)
    return f"{name} [{'; '.join(parts)}]" if parts else name


class ItemCompressor:
    """Item id -> compressed text, deterministic or through a summariser, cached per item."""

    def __init__(
        self,
        items: pl.DataFrame,
        config: ItemConfig | None = None,
        *,
        summarizer: ItemSummarizer | None = None,
        summarizer_id: str | None = None,
        cache_path: str | Path | None = None,
    ) -> None:
        if "item_id" not in items.columns or "title" not in items.columns:
            raise ValueError("items frame needs 'item_id' and 'title' columns (the dataset's items table)")
        self.config = config or ItemConfig()
        self._rows = {r["item_id"]: r for r in items.drop("_line", strict=False).iter_rows(named=True)}
        self.summarizer = summarizer
        if summarizer is not None and summarizer_id is None:
            summarizer_id = (
                f"{getattr(summarizer, '__module__', '')}.{getattr(summarizer, '__qualname__', '')}"
            )
        self.summarizer_id = summarizer_id or "deterministic"
        self.cache_path = Path(cache_path) if cache_path is not None else None
        self._cache: dict[str, str] = {}
        if summarizer is not None and self.cache_path is not None and self.cache_path.exists():
            df = pl.read_parquet(self.cache_path).filter(pl.col("summarizer_id") == self.summarizer_id)
            self._cache = dict(zip(df["item_id"].to_list(), df["text"].to_list(), strict=True))

    def record(self, item_id: str) -> dict[str, Any]:
        """The raw item row (a KeyError names the unknown id)."""
        try:
            return self._rows[item_id]
        except KeyError:
            raise KeyError(f"item {item_id!r} is not in the items table") from None

    def prepare(self, item_ids: Iterable[str]) -> None:
        """Compress every not-yet-cached item in one batch (one summariser call: lets an LLM batch)."""
        todo = list(dict.fromkeys(i for i in item_ids if i not in self._cache))
        if not todo:
            return
        records = [self.record(i) for i in todo]
        texts = [item_text(r, self.config) for r in records]
        if self.summarizer is not None:
            answers = self.summarizer(
                [{**r, "deterministic": t} for r, t in zip(records, texts, strict=True)]
            )
            if len(answers) != len(records):
                raise ValueError(f"summariser returned {len(answers)} texts for {len(records)} items")
            texts = [single_line(a) or t for a, t in zip(answers, texts, strict=True)]
        self._cache.update(zip(todo, texts, strict=True))
        if self.summarizer is not None and self.cache_path is not None:
            self.save_cache()

    def text(self, item_id: str) -> str:
        """Compressed text of one item."""
        if item_id not in self._cache:
            self.prepare([item_id])
        return self._cache[item_id]

    def save_cache(self) -> None:
        """Write the summariser cache atomically, keeping other summarisers' rows."""
        if self.cache_path is None:
            raise ValueError("no cache_path was given")
        ours = pl.DataFrame(
            {
                "summarizer_id": [self.summarizer_id] * len(self._cache),
                "item_id": list(self._cache),
                "text": list(self._cache.values()),
            },
            schema=_CACHE_SCHEMA,
        )
        if self.cache_path.exists():
            other = pl.read_parquet(self.cache_path).filter(pl.col("summarizer_id") != self.summarizer_id)
            ours = pl.concat([other.select(list(_CACHE_SCHEMA)).cast(_CACHE_SCHEMA), ours])
        write_parquet_atomic(ours, self.cache_path)
