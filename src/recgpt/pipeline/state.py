"""Old home of the run's shared state; `RunState` is gone (see `resources` and `recgpt.data.runstore`).

Kept only for the names other packages and tests still import from here.
"""

from __future__ import annotations

from recgpt.data.runstore import MARKER
from recgpt.data.split import sample_users, subtask
from recgpt.datasets import load_dataset

__all__ = ["MARKER", "load_dataset", "sample_users", "subtask"]
