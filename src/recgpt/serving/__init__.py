"""Serving: answers read from a finished run, the same for every front door.

    from recgpt.serving import RecommendationService
    service = RecommendationService.open("runs/quickstart")
    for rec in service.recommend("167", k=10):
        print(rec.rank, rec.title, rec.channel, rec.tag, rec.interest, rec.explanation)

`recgpt recommend`, the run's HTML report and the HTTP server all call this service, so they show the
same list. It sits below `recgpt.pipeline` (it reads a run folder through `recgpt.data.runstore`, never
the pipeline that wrote it) and does not import torch.
"""

from __future__ import annotations

from recgpt.serving.models import CompressedHistory, Interest, Item, PoolMatch, Recommendation, Tag, UserView
from recgpt.serving.service import (
    DEFAULT_K,
    TABLES,
    NotARun,
    RecommendationService,
    ServingError,
    UnknownUser,
)

__all__ = [
    "DEFAULT_K",
    "TABLES",
    "CompressedHistory",
    "Interest",
    "Item",
    "NotARun",
    "PoolMatch",
    "Recommendation",
    "RecommendationService",
    "ServingError",
    "Tag",
    "UnknownUser",
    "UserView",
]
