"""Importers: real datasets in, contract-conforming `Dataset`s out (`recgpt data import <format> <src>`).

How source feedback maps to behaviours (copied into the README):

| source | behavior | value | text |
|---|---|---|---|
| MovieLens 100K `u.data` rating | `rating` | stars 1–5 | – |
| MovieLens latest-small `ratings.csv` | `rating` | stars 0.5–5 | – |
| MovieLens latest-small `tags.csv` | `tag` | – | the tag |
| Amazon / UniSRec `*.inter` interaction | `review` | – | – |
| generic | the mapped behavior column, or the constant `events.behavior` | mapped `value` | mapped `text` |

- Ratings stay ratings: we do not invent clicks or purchases from them. Every rating is an
  interaction for the sequential protocol; stages that need *intentional* positives treat
  `value >= 4` (5-point scale) as strong.
- An Amazon review implies the reviewer bought the item, so UniSRec interactions are `review`
  events (UniSRec keeps neither stars nor review text). UniSRec has no timestamps: they are
  synthesized from the order (`manifest.synthetic_timestamps = true`).

Every importer returns a validated `Dataset` in memory and writes nothing; `Dataset.save` writes
atomically, so a failed import never leaves a half-written folder behind.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from recgpt.data.dataset import Dataset
from recgpt.data.errors import DataError
from recgpt.data.importers.amazon import import_unisrec
from recgpt.data.importers.generic import import_generic
from recgpt.data.importers.movielens import import_movielens_100k, import_movielens_latest_small

IMPORTERS: dict[str, Callable[..., Dataset]] = {
    "movielens-100k": import_movielens_100k,
    "ml-100k": import_movielens_100k,
    "movielens-latest-small": import_movielens_latest_small,
    "ml-latest-small": import_movielens_latest_small,
    "amazon-scientific": import_unisrec,
    "unisrec": import_unisrec,
    "generic": import_generic,
}


def import_dataset(fmt: str, src: Path, **opts: Any) -> Dataset:
    """Run the importer registered for `fmt` on `src`; unknown formats list the known ones."""
    fn = IMPORTERS.get(fmt.lower())
    if fn is None:
        raise DataError(f"unknown format {fmt!r}; known formats: {', '.join(IMPORTERS)}", field="format")
    src = Path(src)
    if not src.exists():
        raise DataError("source path does not exist", file=src)
    try:
        inspect.signature(fn).bind(src, **opts)
    except TypeError as e:
        raise DataError(f"format {fmt!r} does not take these options: {e}", field="options") from e
    return fn(src, **opts)


__all__ = ["IMPORTERS", "import_dataset"]
