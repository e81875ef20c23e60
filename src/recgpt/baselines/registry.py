"""Name -> recommender class, resolved lazily so optional backends stay optional.

`torch` (SASRec) and `implicit` (ALS, BPR) come only with the `baselines` extra; importing this
module, listing names or using MostPop / Markov / ItemKNN must work without them, and asking for
a model whose backend is missing must say exactly what to install.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Iterator, Mapping
from typing import Any

from recgpt.baselines.base import Recommender

# name -> (module, class, optional third-party package it needs)
_ENTRIES: dict[str, tuple[str, str, str | None]] = {
    "mostpop": ("recgpt.baselines.mostpop", "MostPop", None),
    "markov": ("recgpt.baselines.markov", "MarkovChain", None),
    "itemknn": ("recgpt.baselines.itemknn", "ItemKNN", None),
    "als": ("recgpt.baselines.mf", "ImplicitALS", "implicit"),
    "bpr": ("recgpt.baselines.mf", "ImplicitBPR", "implicit"),
    "sasrec": ("recgpt.baselines.sasrec", "SASRec", "torch"),
}

_INSTALL_HINT = "pip install 'recgpt[baselines]'"


def _unknown(name: str) -> KeyError:
    return KeyError(f"unknown recommender {name!r}; valid names: {', '.join(sorted(_ENTRIES))}")


def is_available(name: str) -> bool:
    """True when `name` is registered and its optional backend package is installed."""
    if name not in _ENTRIES:
        raise _unknown(name)
    dep = _ENTRIES[name][2]
    return dep is None or importlib.util.find_spec(dep) is not None


def load_recommender_class(name: str) -> type[Recommender]:
    """Import and return the class registered as `name` (raises ImportError naming the extra)."""
    if name not in _ENTRIES:
        raise _unknown(name)
    module_name, class_name, dep = _ENTRIES[name]
    if dep is not None and importlib.util.find_spec(dep) is None:
        raise ImportError(f"recommender {name!r} needs the '{dep}' package: {_INSTALL_HINT}")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if dep is not None and e.name is not None and e.name.split(".")[0] == dep:
            raise ImportError(f"recommender {name!r} needs the '{dep}' package: {_INSTALL_HINT}") from e
        raise
    cls = getattr(module, class_name)
    if getattr(cls, "name", None) != name:
        raise TypeError(f"{module_name}.{class_name}.name is {cls.name!r}, registered as {name!r}")
    return cls


class _LazyRegistry(Mapping[str, type[Recommender]]):
    """Read-only mapping whose values are imported on first access (iteration imports nothing)."""

    def __getitem__(self, name: str) -> type[Recommender]:
        return load_recommender_class(name)

    def __iter__(self) -> Iterator[str]:
        return iter(_ENTRIES)

    def __len__(self) -> int:
        return len(_ENTRIES)

    def __contains__(self, name: object) -> bool:
        return name in _ENTRIES

    def __repr__(self) -> str:
        return f"RECOMMENDERS({', '.join(_ENTRIES)})"


RECOMMENDERS: Mapping[str, type[Recommender]] = _LazyRegistry()


def get_recommender(name: str, **params: Any) -> Recommender:
    """Construct the recommender registered as `name` with hyper-parameters `params`."""
    return load_recommender_class(name)(**params)
