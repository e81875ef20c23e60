"""The per-user building blocks of the RecGPT chain, shared by its stages and the nearline refresher.

A stage (`recgpt.pipeline.stages`) reads its inputs from the run's tables, calls one of these on all
its users and writes the result; the nearline refresher (`recgpt.pipeline.refresh`) calls the same
functions on one user's fresh history. Keeping them here is what makes a refreshed list the list
the run would have written for that history: the two never carry their own copy of a step.

`cfg` is the run config or a stage's declared view of it (`core.ConfigView`): each function reads only
the fields its stage declares.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from recgpt.pipeline.resources import Resources

if TYPE_CHECKING:  # these pull in torch / faiss
    from recgpt.data.interactions import Interactions, Recommender
    from recgpt.intent.context import UserContext
    from recgpt.intent.pool import InterestPool
    from recgpt.retrieval.index import ItemIndex
    from recgpt.retrieval.tritower import TriTower


def interest_pool(res: Resources, cfg: Any) -> InterestPool:
    """The catalogue's interest pool I_m (config: `pool`, `embedder`)."""
    from recgpt.intent.pool import InterestPool

    return InterestPool.build(res.dataset.items, res.encoder(cfg.embedder), cfg.pool)


def mine(
    res: Resources, cfg: Any, engine: Any, contexts: list[UserContext]
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """LLM_UI over `contexts`: (interests, failures) (config: `interests`, `embedder`)."""
    from recgpt.intent.interests import mine_interests

    return mine_interests(
        cfg.interests, engine, contexts, encoder=res.encoder(cfg.embedder), untrusted=res.untrusted
    )


def tag_scorer(res: Resources, cfg: Any) -> Any:
    """The best-of-n scorer of LLM_IT: None (the rules' default) unless `tags.score` is "grounded" and
    several answers are drawn; then a tag also scores when its nearest catalogue title reaches the floor."""
    from recgpt.intent.bestofn import AnswerScorer, catalogue_grounding

    if cfg.tags.score != "grounded" or cfg.tags.n_samples < 2:
        return None
    titles = res.dataset.items["title"].drop_nulls().unique(maintain_order=True).to_list()
    check = catalogue_grounding(res.encoder(cfg.embedder), titles, cfg.tags.grounding_floor)
    return AnswerScorer("tag", grounding=check)


def tag(
    res: Resources, cfg: Any, engine: Any, contexts: list[UserContext], interests: pl.DataFrame
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """LLM_IT over `contexts` and their interests: (tags, failures) (config: `tags`, `embedder`)."""
    from recgpt.intent.tags import predict_tags

    return predict_tags(
        cfg.tags,
        engine,
        contexts,
        interests,
        res.untrusted,
        catalogue=res.dataset.items if cfg.tags.grounding != "free" else None,
        scorer=tag_scorer(res, cfg),
    )


def load_tritower(folder: Path, res: Resources, cfg: Any) -> tuple[TriTower, ItemIndex]:
    """The trained tri-tower and its item index from the tritower stage's folder (config: `embedder`)."""
    from recgpt.retrieval.index import ItemIndex
    from recgpt.retrieval.tritower import TriTower

    model = TriTower.load(folder / "model", embed=res.encoder(cfg.embedder).encode)
    return model, ItemIndex.load(folder / "index")


def classic_channel(tune_dir: Path, tuned: dict[str, Any], train: Interactions, seed: int) -> Recommender:
    """The classic channel the tune stage chose (`tuned`: its stats), as it fitted it on train, else
    fitted again with the same parameters and seed."""
    from recgpt.baselines.registry import get_recommender
    from recgpt.pipeline.fitted import load_fitted

    name, params = tuned["baseline"], tuned["baseline_params"]
    return load_fitted(tune_dir, name, params) or get_recommender(name, **params).fit(train, seed=seed)


__all__ = ["classic_channel", "interest_pool", "load_tritower", "mine", "tag", "tag_scorer"]
