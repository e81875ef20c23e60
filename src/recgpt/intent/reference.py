"""Reference rows for tag HR: what a tag list scores without an LLM, on the same users.

A tag HR figure means something only next to what trivial tag lists reach on the same users, at the
same category level, through the same φ (`phi.tag_hr`):

* `constant`: every user gets one tag, the most popular category at φ's level (by training
  interactions): what "always say the biggest category" scores.
* `random`: `max(ks)` tags per user drawn uniformly (seeded, without replacement) from the catalogue's
  category names at the level and its clean item titles: tags that know nothing of the user.
* `history`: the non-LLM baseline, the categories (at the level) and clean titles of the user's last
  items, most recent first (`history_baseline_tags`).

**Separability** (per K): HR@K cannot tell those rows apart, and so cannot credit an LLM, when the
level has at most K categories (K tags can name every category) or a trivial row (constant or
random) already reaches `TRIVIAL_CEILING`. Such a K is flagged `separable: False`, with a `note`
saying why, and `tag_hr_table` prints no number for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl

from recgpt.behavior.items import clean_title
from recgpt.data.categories import LevelledCategories
from recgpt.data.split import EvalTask, Split
from recgpt.intent.phi import HR_KS, TagToCategory, tag_hr
from recgpt.intent.tags import TAGS_SCHEMA, split_tag

TRIVIAL_CEILING = 0.8  # a trivial row at or above this HR@K makes K unable to separate the rows
REFERENCE_ROWS: tuple[str, ...] = ("llm", "history", "constant", "random")
ROW_LABELS = {
    "llm": "LLM tags",
    "history": "history baseline (last items)",
    "constant": "constant tag (most popular category)",
    "random": "random catalogue tags",
}


def _tag_rows(user_tags: dict[str, list[str]], rationale: str) -> pl.DataFrame:
    """A TAGS_SCHEMA table (interest columns null), tags ranked in list order."""
    rows: list[dict[str, Any]] = []
    for u, tags in user_tags.items():
        for rank, tag in enumerate(dict.fromkeys(t for t in tags if t.strip()), start=1):
            modifier, core = split_tag(tag)
            rows.append(
                {
                    "user_id": u,
                    "tag": tag,
                    "modifier": modifier,
                    "core": core,
                    "interest_id": None,
                    "interest": None,
                    "rationale": rationale,
                    "rank": rank,
                }
            )
    return pl.DataFrame(rows, schema=TAGS_SCHEMA)


def history_baseline_tags(
    task: EvalTask, items: pl.DataFrame, user_ids: Sequence[str], *, last_n: int = 10
) -> pl.DataFrame:
    """A non-LLM tag baseline: the categories and clean titles of each user's last `last_n` items.

    Built from the task's `AsOf` view only, same columns as `predict_tags` (interest columns null),
    ranked by recency, so `phi.tag_hr` scores it exactly like LLM tags. Pass `items` with categories
    at the level being measured (`LevelledCategories.items_table`) so roots are not offered as tags.
    """
    meta = {r["item_id"]: r for r in items.select("item_id", "title", "categories").iter_rows(named=True)}
    user_tags: dict[str, list[str]] = {}
    for u in user_ids:
        hist = task.asof.history(u).filter(pl.col("item_id").is_not_null())
        recent = list(dict.fromkeys(reversed(hist["item_id"].to_list())))[:last_n]
        texts: list[str] = []
        for iid in recent:
            texts.extend(c for c in (meta[iid]["categories"] or []) if c)
            texts.append(clean_title(meta[iid]["title"] or ""))
        user_tags[u] = texts
    return _tag_rows(user_tags, "history baseline")


def most_popular_category(phi: TagToCategory, split: Split) -> str:
    """The category (at φ's level) with the most training interactions over its items."""
    pop = split.train.item_popularity
    score = np.zeros(len(phi.categories))
    for pos, cats in zip(range(len(pop)), phi.item_categories(list(split.item_ids)), strict=True):
        for c in cats:
            score[phi.category_index(c)] += pop[pos]
    if not score.any():
        raise ValueError("no training interaction has a categorised item: no popular category")
    return phi.categories[int(np.argmax(score))]


def constant_tags(category: str, user_ids: Sequence[str]) -> pl.DataFrame:
    """Every user's tags = one constant tag (the same text for all)."""
    return _tag_rows({u: [category] for u in user_ids}, "constant reference")


def random_tags(
    phi: TagToCategory, items: pl.DataFrame, user_ids: Sequence[str], *, n: int, seed: int = 0
) -> pl.DataFrame:
    """`n` tags per user drawn (seeded, without replacement) from category names and clean titles."""
    titles = [clean_title(t or "") for t in items["title"].to_list()]
    pool = list(dict.fromkeys([*phi.categories, *(t for t in titles if t.strip())]))
    rng = np.random.default_rng(seed)
    draws = {
        u: [pool[i] for i in rng.choice(len(pool), size=min(n, len(pool)), replace=False)] for u in user_ids
    }
    return _tag_rows(draws, "random reference")


def reference_rows(
    phi: TagToCategory,
    split: Split,
    levelled: LevelledCategories,
    user_ids: Sequence[str],
    *,
    task: EvalTask | None = None,
    llm_tags: pl.DataFrame | None = None,
    ks: Sequence[int] = HR_KS,
    seed: int = 0,
    history_last_n: int = 10,
) -> dict[str, dict[str, float]]:
    """Tag HR of the LLM's tags (when given) and of the three references, on the same users.

    `phi` must be fitted at `levelled`'s level (`TagToCategory.at_level`). Returns
    {"llm": ..., "history": ..., "constant": ..., "random": ...}, each `phi.tag_hr`'s dict.
    """
    task = task or split.test
    if phi.level_name != levelled.name:
        raise ValueError(f"φ votes at level {phi.level_name!r} but the references are at {levelled.name!r}")
    users = list(dict.fromkeys(user_ids))
    items = levelled.items_table(split.dataset.items)
    tables = {
        "history": history_baseline_tags(task, items, users, last_n=history_last_n),
        "constant": constant_tags(most_popular_category(phi, split), users),
        "random": random_tags(phi, items, users, n=max(ks), seed=seed),
    }
    if llm_tags is not None:
        tables = {"llm": llm_tags, **tables}
    return {name: tag_hr(t, phi, split, task=task, user_ids=users, ks=ks) for name, t in tables.items()}


def separability(
    rows: dict[str, dict[str, float]], n_categories: int, ks: Sequence[int] = HR_KS
) -> tuple[dict[str, bool], str]:
    """Per K whether HR@K can separate the rows (module docstring), and a note naming each failing K."""
    flags, reasons = {}, []
    for k in ks:
        key = f"TagHR@{k}"
        trivial = {n: rows[n][key] for n in ("constant", "random") if n in rows}
        top = max(trivial, key=lambda n: trivial[n]) if trivial else None
        reason = None
        if n_categories <= k:
            reason = f"{key}: only {n_categories} categories at this level, so {k} tags can name them all"
        elif top is not None and trivial[top] >= TRIVIAL_CEILING:
            reason = f"{key}: the {top} reference already reaches {trivial[top]:.2f} (>= {TRIVIAL_CEILING})"
        flags[key] = reason is None
        if reason:
            reasons.append(reason)
    note = "; ".join(reasons) + ("; no headline figure for these cut-offs" if reasons else "")
    return flags, note


def tag_hr_stats(
    phi: TagToCategory,
    split: Split,
    levelled: LevelledCategories,
    user_ids: Sequence[str],
    *,
    task: EvalTask | None = None,
    llm_tags: pl.DataFrame | None = None,
    ks: Sequence[int] = HR_KS,
    seed: int = 0,
) -> dict[str, Any]:
    """The φ stage's stats: level, #categories, every row as `<name>_tags`, separability and note."""
    rows = reference_rows(phi, split, levelled, user_ids, task=task, llm_tags=llm_tags, ks=ks, seed=seed)
    flags, note = separability(rows, len(phi.categories), ks)
    return {
        "level": levelled.name,
        "category_level": levelled.name,
        "categories": len(phi.categories),
        **{f"{name}_tags": hr for name, hr in rows.items()},
        "separable": flags,
        "note": note,
    }


def tag_hr_table(stats: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows (reference, TagHR@K..., users) for printing; a K that cannot separate the rows is None
    (print `stats["note"]` instead of a number)."""
    flags: dict[str, bool] = stats.get("separable", {})
    out = []
    for name in REFERENCE_ROWS:
        hr = stats.get(f"{name}_tags")
        if hr is None:
            continue
        row: dict[str, Any] = {"reference": ROW_LABELS[name]}
        for key in sorted((k for k in hr if k.startswith("TagHR@")), key=lambda k: int(k.split("@")[1])):
            row[key] = hr[key] if flags.get(key, True) else None
        row["users"] = int(hr["users"])
        out.append(row)
    return out


__all__ = [
    "REFERENCE_ROWS",
    "TRIVIAL_CEILING",
    "constant_tags",
    "history_baseline_tags",
    "most_popular_category",
    "random_tags",
    "reference_rows",
    "separability",
    "tag_hr_stats",
    "tag_hr_table",
]
