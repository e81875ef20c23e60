"""Fitted classic channels kept by the tune stage, so fusion and evaluation do not fit them again.

The tune stage fits every candidate baseline on the split's train part to pick one on validation;
SASRec's fit alone took 500-2,700 s on 2 cores, and fusion and evaluation used to repeat it with the
same parameters and seed. The tune stage now pickles each validation-best model under
`07_tune/models/<name>.pkl`; a reader gets it back only when its parameters match, else None (and
fits, as before). The files are the run's own output (a pickle runs code when loaded: never open one
from a run folder you did not make).
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from recgpt.data.atomic import write_bytes_atomic
from recgpt.data.interactions import Recommender

FOLDER = "models"


def save_fitted(stage_dir: Path, models: Iterable[Recommender]) -> list[str]:
    """Pickle each fitted model as `<stage_dir>/models/<name>.pkl` (atomic); the names written."""
    names = []
    for model in models:
        write_bytes_atomic(stage_dir / FOLDER / f"{model.name}.pkl", pickle.dumps(model, protocol=5))
        names.append(model.name)
    return names


def load_fitted(stage_dir: Path, name: str, params: Mapping[str, Any]) -> Recommender | None:
    """The model `name` fitted by the tune stage with exactly `params`, or None when there is none."""
    path = stage_dir / FOLDER / f"{name}.pkl"
    if not path.is_file():
        return None
    model = pickle.loads(path.read_bytes())
    if not isinstance(model, Recommender) or model.params != dict(params):
        return None
    return model


def load_all(stage_dir: Path, params: Mapping[str, Mapping[str, Any]]) -> dict[str, Recommender]:
    """Every model of `params` ({name: params}) the tune stage kept."""
    out = {}
    for name, p in params.items():
        model = load_fitted(stage_dir, name, p)
        if model is not None:
            out[name] = model
    return out


__all__ = ["FOLDER", "load_all", "load_fitted", "save_fitted"]
