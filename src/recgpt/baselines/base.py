"""The recommender interface, re-exported where the baselines have always found it.

The contracts live in `recgpt.data.interactions` (below evaluation, baselines and retrieval).
"""

from recgpt.data.interactions import Interactions, Recommender

__all__ = ["Interactions", "Recommender"]
