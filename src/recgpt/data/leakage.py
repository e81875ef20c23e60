"""The one leakage guard of user-specific text: held-out items must not reach anything built for a user.

`guard_user_texts(split, task, keyed_texts)` checks each (user id, text) pair with `Split.guard_text`
(title, aliases, non-numeric id), with one exemption: `shadowed_items`. Catalogues hold duplicates
(ml-100k lists 18 films twice under one title) and variants whose compressed text is identical
(Amazon titles cut to the same 80 characters); a text that names the seen copy then "names" the
held-out one too, and no text check can tell the two apart. For those items only the id check
remains; every other held-out item is checked by title as usual.

`alias(title)` gives an extra name of an item (the compressor's cleaned title); the caller passes it,
so this module stays below `behavior/`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping

import polars as pl

from recgpt.data.split import EvalTask, Split

Alias = Callable[[str], str]


def _names(title: str | None, alias: Alias | None) -> set[str]:
    """How a text can name an item: its raw and aliased title, lower-cased (8+ characters, as the guard)."""
    raw = title or ""
    return {n.lower() for n in (raw, alias(raw) if alias else raw) if len(n) >= 8}


def shadowed_items(
    split: Split, task: EvalTask, user_id: str, titles: Mapping[str, str | None], alias: Alias | None = None
) -> set[str]:
    """The user's unseen held-out items with a name that is part of a name of an item they had seen."""
    seen = set(task.asof.history(user_id)["item_id"].drop_nulls().to_list())
    seen_names = [n for i in seen for n in _names(titles.get(i), alias)]
    out = set()
    for item in split.heldout_item_ids(user_id) - seen:
        if any(n in s for n in _names(titles.get(item), alias) for s in seen_names):
            out.add(item)
    return out


class _Aliases(Mapping[str, list[str]]):
    """item_id -> [alias(title)], computed only for the ids `guard_text` asks about."""

    def __init__(self, titles: Mapping[str, str | None], alias: Alias) -> None:
        self._titles, self._alias = titles, alias

    def __getitem__(self, item_id: str) -> list[str]:
        return [self._alias(self._titles[item_id] or "")]

    def __iter__(self) -> Iterator[str]:
        return iter(self._titles)

    def __len__(self) -> int:
        return len(self._titles)


def guard_user_texts(
    split: Split, task: EvalTask, keyed_texts: Iterable[tuple[str | None, str]], *, alias: Alias | None = None
) -> int:
    """Raise `LeakageError` when a user's text names an item they only meet at or after the task's
    point (module docstring); a text keyed None is an error. Returns how many texts were checked."""
    by_user: dict[str, list[str]] = {}
    for user, text in keyed_texts:
        if user is None:
            raise ValueError("request or text has no key: cannot tell whose prompt it is")
        by_user.setdefault(user, []).append(text)
    if not by_user:
        return 0
    items = split.dataset.items
    titles = dict(zip(items["item_id"].to_list(), items["title"].to_list(), strict=True))
    checked = 0
    for user, texts in by_user.items():
        shadow = shadowed_items(split, task, user, titles, alias) if task.asof.has_point(user) else set()
        sp, names = split, titles
        if shadow:
            blank = items.with_columns(
                pl.when(pl.col("item_id").is_in(list(shadow)))
                .then(pl.lit(""))
                .otherwise(pl.col("title"))
                .alias("title")
            )
            sp = dataclasses.replace(split, dataset=dataclasses.replace(split.dataset, items=blank))
            names = {k: ("" if k in shadow else v) for k, v in titles.items()}
        aliases = _Aliases(names, alias) if alias else None
        for text in texts:
            sp.guard_text(user, text, task, aliases=aliases)
            checked += 1
    return checked


__all__ = ["guard_user_texts", "shadowed_items"]
