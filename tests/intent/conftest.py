"""The intent tests' encoder and toy catalogue now live in tests/conftest.py (shared by every package);
these names stay importable from here for older test modules."""

from __future__ import annotations

from tests.conftest import BASE_TS, DAY, EVENTS, ITEMS, HashEncoder, toy_dataset

__all__ = ["BASE_TS", "DAY", "EVENTS", "ITEMS", "HashEncoder", "toy_dataset"]
