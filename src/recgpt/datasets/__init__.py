"""Datasets shipped inside the package (only ones whose licence allows redistribution).

`ml-latest-small` (MovieLens latest-small, GroupLens) may be redistributed under its own licence,
which travels with it (`ml-latest-small/README.txt`). MovieLens-100K may not, so it is never shipped.
"""

from __future__ import annotations

from importlib.resources import as_file, files

from recgpt.data.dataset import Dataset

BUNDLED = ("ml-latest-small",)
BUNDLED_DEFAULT = "ml-latest-small"
BUNDLED_PREFIX = "bundled:"


def load_bundled(name: str = BUNDLED_DEFAULT) -> Dataset:
    """Import a shipped dataset in memory (a second or two)."""
    if name not in BUNDLED:
        raise KeyError(f"no bundled dataset {name!r}; bundled: {', '.join(BUNDLED)}")
    from recgpt.data.importers import import_dataset

    with as_file(files("recgpt.datasets") / name) as path:
        return import_dataset("movielens-latest-small", path)


def load_dataset(spec: str) -> Dataset:
    """A dataset folder (from `recgpt data import`) or `bundled:<name>` (shipped with recgpt)."""
    if spec.startswith(BUNDLED_PREFIX):
        return load_bundled(spec[len(BUNDLED_PREFIX) :])
    return Dataset.load(spec)
