"""Data contracts (items, users, events), importers and the leakage-safe split."""

from recgpt.data.dataset import Dataset, Manifest
from recgpt.data.errors import DataError
from recgpt.data.schema import Behavior

__all__ = ["Behavior", "DataError", "Dataset", "Manifest"]
