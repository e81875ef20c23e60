"""What a user the run does not know is served: the run's most popular items, explained by the item alone.

Popularity is MostPop's (`recgpt.baselines.MostPop`): the interaction counts of the run's training
split, built from the run's dataset and split settings (its config.json) exactly as the run built
them, so the fallback is the list the run's `mostpop` comparison would give. Each item carries the
explanation stage's item-only text (`ExplanationTable.item_only`, the same rules, popular-item
wording and untrusted-text filter), so a fallback item reads like an unexplained slot of a run list.
The catalogue loaded here also answers `GET /v1/items/{id}`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from pydantic import TypeAdapter, ValidationError

from recgpt.serving.models import Item, Recommendation
from recgpt.serving.service import CONFIG, NotARun

FALLBACK_SIZE = 100  # items kept: more than any page asks for
FALLBACK_CHANNEL = "mostpop"  # the classic baseline the list comes from


@dataclass(frozen=True)
class RunCatalogue:
    """The run's catalogue (titles, categories; untrusted spans redacted) and its popularity fallback list."""

    items: dict[str, Item]
    fallback: list[dict[str, Any]]  # Recommendation dicts in rank order

    @classmethod
    def build(cls, run_dir: Path, size: int = FALLBACK_SIZE) -> RunCatalogue:
        """Load the run's dataset, split it as the run did, and rank items by training popularity."""
        from recgpt.baselines.mostpop import MostPop
        from recgpt.data.split import SplitConfig, make_split
        from recgpt.data.untrusted import UntrustedText, redact_dataset
        from recgpt.datasets import load_dataset
        from recgpt.intent.explanation_table import ExplanationTable
        from recgpt.intent.explanations import SOURCE_ITEM, ExplanationsConfig

        config = json.loads((run_dir / CONFIG).read_text())
        try:
            split_cfg = TypeAdapter(SplitConfig).validate_python(config.get("split") or {})
            expl_cfg = ExplanationsConfig.model_validate(config.get("explanations") or {})
        except ValidationError as e:
            raise NotARun(
                f"{CONFIG}: bad 'split' or 'explanations' settings: {e}", file=run_dir / CONFIG
            ) from e
        source = load_dataset(str(config["dataset"]))
        untrusted = UntrustedText.of(source)
        dataset = redact_dataset(source, untrusted.report)
        split = make_split(dataset, split_cfg)
        pop = MostPop().fit(split.train).popularity_
        assert pop is not None
        ids = split.item_ids
        popularity = dict(zip(ids.tolist(), pop.tolist(), strict=True))
        table = ExplanationTable(
            pl.DataFrame(
                schema={
                    "interest": pl.String(),
                    "item_id": pl.String(),
                    "explanation": pl.String(),
                    "source": pl.String(),
                }
            ),
            dataset.items,
            expl_cfg,
            popularity=popularity,
            untrusted=untrusted,
        )
        items = {
            iid: Item(item_id=iid, title=title, categories=list(cats or []))
            for iid, title, cats in dataset.items.select("item_id", "title", "categories").iter_rows()
        }
        order = [int(i) for i in np.argsort(-pop, kind="stable") if pop[i] > 0][:size]
        fallback = [
            Recommendation(
                rank=rank,
                item_id=str(ids[i]),
                title=items[str(ids[i])].title,
                categories=items[str(ids[i])].categories,
                score=float(pop[i]),
                channel=FALLBACK_CHANNEL,
                tag=None,
                interest=None,
                explained_interest=None,
                explanation=table.item_only(str(ids[i])),
                item_only=True,
                explanation_source=SOURCE_ITEM,
            ).model_dump(mode="json")
            for rank, i in enumerate(order, start=1)
        ]
        return cls(items=items, fallback=fallback)


__all__ = ["FALLBACK_CHANNEL", "FALLBACK_SIZE", "RunCatalogue"]
