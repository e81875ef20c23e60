"""Item categories at one level, so tag HR and category diversity count one kind of category.

The items contract stores `categories` as a list that is one of two structures:

* a **path**, most general first ("Home>Lighting>Lamps" -> ["Home", "Lighting", "Lamps"], Amazon's
  category paths). Counting every element makes the roots (one or two per catalogue) hit every user
  and adds a root and a middle level to every list's diversity, so a figure is computed at one level.
* a **set** (MovieLens genres): every element is a leaf, all of them count.

Which one a dataset holds is recorded by its importer in `manifest.extra["category_structure"]`
("path" or "set"; edit `manifest.json` to change it). Without the flag, `infer_structure` decides:
a path's roots (elements at position 0) never occur further down a path, and there are few of them
(at most half of the distinct categories); anything else is a set. Lists of one element are a path
of depth 1 (both readings agree).

Levels (`CategoryLevel`):

* "leaf": a path's last element; a set's elements.
* "all": every element (the old behaviour; kept to compare against).
* int d: a path's element at depth d (0 = root), or its leaf when the path is shorter.
* "auto" (default): the leaf if its categories have enough items (median items per category
  >= `AUTO_MIN_ITEMS`), else the finest depth that does, else depth 0. A set is always its elements.

Same-named categories under different parents are one category at a level (the name is the key).
`LevelledCategories.name` says which level was used, for tables: "leaf", "depth 1", "all", "set".
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import polars as pl

from recgpt.data.dataset import Dataset

CategoryLevel = Literal["auto", "leaf", "all"] | int
Structure = Literal["path", "set"]
STRUCTURE_KEY = "category_structure"
STRUCTURES: tuple[str, ...] = ("path", "set")
AUTO_MIN_ITEMS = 5  # "auto": a level needs a median of at least this many items per category


@dataclass(frozen=True)
class LevelledCategories:
    """Each item's categories at one level (rows in the items table's order)."""

    name: str
    structure: Structure
    item_ids: list[str]
    categories: list[list[str]]

    @property
    def vocabulary(self) -> list[str]:
        """The distinct categories at this level, sorted."""
        return sorted({c for cats in self.categories for c in cats})

    def by_item(self) -> dict[str, list[str]]:
        """item_id -> its categories at this level."""
        return dict(zip(self.item_ids, self.categories, strict=True))

    def items_table(self, items: pl.DataFrame) -> pl.DataFrame:
        """`items` with its `categories` column replaced by the categories at this level."""
        by_item = self.by_item()
        cats = [by_item.get(i, []) for i in items["item_id"].to_list()]
        return items.with_columns(pl.Series("categories", cats, dtype=pl.List(pl.String())))


def parse_level(value: Any) -> CategoryLevel:
    """A level from config or the command line: "auto", "leaf", "all", an int >= 0, "2" or "depth 2"."""
    if isinstance(value, bool):
        raise ValueError(f"category level must be auto, leaf, all or a depth >= 0, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"category level depth must be >= 0 (0 = root), got {value}")
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("auto", "leaf", "all"):
            return text  # type: ignore[return-value]
        digits = text.removeprefix("depth").strip()
        if digits.isdigit():
            return int(digits)
    raise ValueError(f"category level must be auto, leaf, all or a depth >= 0, got {value!r}")


def _clean(lists: Sequence[Sequence[str] | None]) -> list[list[str]]:
    return [[c.strip() for c in (cats or []) if c and c.strip()] for cats in lists]


def infer_structure(categories: Sequence[Sequence[str] | None]) -> Structure:
    """Whether the lists are a "path" or a "set" (heuristic in the module docstring)."""
    lists = [c for c in _clean(categories) if c]
    roots = {c[0] for c in lists}
    below = {x for c in lists for x in c[1:]}
    distinct = roots | below
    if roots & below or (below and len(roots) > max(1, len(distinct) // 2)):
        return "set"
    return "path"


def category_structure(data: Dataset | pl.DataFrame) -> Structure:
    """The manifest's `category_structure`, else `infer_structure` of the items' lists."""
    if isinstance(data, Dataset):
        flag = data.manifest.extra.get(STRUCTURE_KEY)
        if flag is not None:
            if flag not in STRUCTURES:
                raise ValueError(
                    f"manifest.json extra.{STRUCTURE_KEY} of dataset {data.manifest.name!r} must be "
                    f"'path' or 'set', got {flag!r}"
                )
            return flag  # type: ignore[no-any-return]
        items = data.items
    else:
        items = data
    return infer_structure(items["categories"].to_list())


def _at_depth(lists: list[list[str]], depth: int) -> list[list[str]]:
    return [[c[min(depth, len(c) - 1)]] if c else [] for c in lists]


def _median_items(lists: list[list[str]]) -> float:
    counts = Counter(c for cats in lists for c in set(cats))
    return float(np.median(list(counts.values()))) if counts else 0.0


def categories_at_level(
    data: Dataset | pl.DataFrame,
    level: CategoryLevel | str = "auto",
    *,
    structure: Structure | None = None,
) -> LevelledCategories:
    """Every item's categories at `level` (module docstring); `structure` overrides the manifest."""
    items = data.items if isinstance(data, Dataset) else data
    if "categories" not in items.columns or "item_id" not in items.columns:
        raise ValueError("the items table needs 'item_id' and 'categories' columns")
    lvl = parse_level(level)
    kind = structure or category_structure(data)
    if kind not in STRUCTURES:
        raise ValueError(f"category structure must be 'path' or 'set', got {kind!r}")
    ids = items["item_id"].to_list()
    lists = _clean(items["categories"].to_list())
    if lvl == "all":
        return LevelledCategories("all", kind, ids, [list(dict.fromkeys(c)) for c in lists])
    if kind == "set":
        if isinstance(lvl, int):
            raise ValueError(
                f"category level depth {lvl} needs category paths, but this dataset's categories are a "
                "set (every element is a leaf): use auto, leaf or all"
            )
        return LevelledCategories("set", kind, ids, [list(dict.fromkeys(c)) for c in lists])
    leaf = [[c[-1]] if c else [] for c in lists]
    if lvl == "leaf":
        return LevelledCategories("leaf", kind, ids, leaf)
    if isinstance(lvl, int):
        return LevelledCategories(f"depth {lvl}", kind, ids, _at_depth(lists, lvl))
    if _median_items(leaf) >= AUTO_MIN_ITEMS:
        return LevelledCategories("leaf", kind, ids, leaf)
    deepest = max((len(c) for c in lists), default=1) - 1
    for depth in range(deepest - 1, -1, -1):
        at = _at_depth(lists, depth)
        if _median_items(at) >= AUTO_MIN_ITEMS or depth == 0:
            return LevelledCategories(f"depth {depth}", kind, ids, at)
    return LevelledCategories("leaf", kind, ids, leaf)  # one-element paths: the leaf is all there is


__all__ = [
    "AUTO_MIN_ITEMS",
    "STRUCTURES",
    "STRUCTURE_KEY",
    "CategoryLevel",
    "LevelledCategories",
    "Structure",
    "categories_at_level",
    "category_structure",
    "infer_structure",
    "parse_level",
]
