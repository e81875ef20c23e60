"""The central ranking protocol, where evaluation code has always found it.

`mask_seen` and `topk` live in `recgpt.data.ranking` (below both evaluation and the models).
"""

from recgpt.data.ranking import mask_seen, topk

__all__ = ["mask_seen", "topk"]
