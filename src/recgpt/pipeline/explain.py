"""Stage 10: LLM_RE explanations of the top of every final (fused) list.

Each explained slot gets at most one (interest, item) pair:

- a RecGPT-channel item keeps the interest that retrieved it (its tag's interest), with the
  category φ matched them on (else none: the item's own first category is used);
- any other item (the classic channel) gets the user's interest that it actually matches: the
  item's category is among φ(interest)'s top `phi_top_k` (`match_pairs`) AND the interest-item
  embedding cosine reaches `explanations.attach_similarity`, the best such interest by cosine.
  φ alone is not enough: it gives every text, however unrelated (an invented or copied interest),
  its top categories, so "for fans of <interest>" would otherwise speak to an interest the item
  does not serve. An item with no such interest gets none and is served an item-only text.

The unique pairs go to the LLM once; `served` joins the texts back to the slots with their `source`
("llm", "template:pair", "template:item"), and the stage's stats give the share of LLM-written
explanations among the served ones, with counts.
"""

from __future__ import annotations

from typing import Any, cast

import polars as pl

from recgpt.pipeline.core import StageContext
from recgpt.pipeline.resources import Resources
from recgpt.pipeline.runner import fallback_stats

PAIR_SCHEMA = {
    "user_id": pl.String(),
    "rank": pl.Int64(),
    "item_id": pl.String(),
    "interest": pl.String(),
    "category": pl.String(),
    "score": pl.Float64(),
}
EMPTY_EXPLANATIONS = {
    "interest": pl.String(),
    "item_id": pl.String(),
    "explanation": pl.String(),
    "template": pl.String(),
    "fallback": pl.Boolean(),
    "source": pl.String(),
}


def explanation_pairs(config: Any, phi: Any, top: pl.DataFrame, interests: pl.DataFrame) -> pl.DataFrame:
    """One (interest, item) pair per explained slot of `top` (see the module docstring)."""
    from recgpt.intent.explanations import match_pairs

    names = {u: g.sort("interest_id")["interest"].to_list() for (u,), g in interests.group_by("user_id")}
    rows: list[dict[str, Any]] = []
    for (u,), g in top.group_by("user_id", maintain_order=True):
        mine = names.get(u, [])
        pairs = match_pairs(config, mine, phi, g["item_id"].to_list()) if mine else None
        by_item: dict[str, list[tuple[str, str, float]]] = {}
        for interest, iid, cat, score in pairs.iter_rows() if pairs is not None else ():
            by_item.setdefault(iid, []).append((interest, cat, score))
        for rank, iid, producer in g.select("rank", "item_id", "interest").iter_rows():
            options = by_item.get(iid, [])
            best: tuple[str, str | None, float | None] | None
            if producer is not None:
                best = next((o for o in options if o[0] == producer), (producer, None, None))
            else:
                floor = config.attach_similarity
                best = max((o for o in options if o[2] >= floor), key=lambda o: o[2], default=None)
            rows.append(
                {
                    "user_id": u,
                    "rank": rank,
                    "item_id": iid,
                    "interest": best[0] if best else None,
                    "category": best[1] if best else None,
                    "score": best[2] if best else None,
                }
            )
    return pl.DataFrame(rows, schema=PAIR_SCHEMA)


def serve_slots(serving: Any, top: pl.DataFrame, slots: pl.DataFrame) -> pl.DataFrame:
    """The `served` table: each explained slot of `top` with the text `serving.serve([interest], item)`
    gives its pair (`slots`, from `explanation_pairs`) and that text's source."""
    from recgpt.intent.explanations import SOURCE_ITEM

    got = [serving.serve([i], iid) for i, iid in slots.select("interest", "item_id").iter_rows()]
    return (
        top.select("user_id", "rank", "item_id", "channel", "tag", pl.col("interest").alias("producer"))
        .join(
            slots.select("user_id", "rank", pl.col("interest").alias("explained_interest")),
            on=["user_id", "rank"],
            how="left",
            maintain_order="left",
        )
        .with_columns(
            pl.Series("explanation", [g[0] for g in got], dtype=pl.String()),
            pl.Series("item_only", [g[1] == SOURCE_ITEM for g in got], dtype=pl.Boolean()),
            pl.Series("source", [g[1] for g in got], dtype=pl.String()),
        )
    )


def run_explanations(ctx: StageContext) -> dict[str, Any]:
    from recgpt.intent.explanation_table import ExplanationTable, llm_share
    from recgpt.intent.explanations import generate_explanations

    res, cfg = cast(Resources, ctx.resources), ctx.config
    config = cfg.explanations
    top = ctx.read("fusion", "fused").filter(pl.col("rank") <= cfg.explain_top).sort("user_id", "rank")
    slots = explanation_pairs(config, res.phi(cfg.phi, cfg.embedder), top, ctx.read("interests", "interests"))
    pairs = slots.filter(pl.col("interest").is_not_null()).select("interest", "item_id", "category", "score")
    pairs = pairs.unique(subset=["interest", "item_id"], keep="first", maintain_order=True)
    items = res.dataset.items
    table = (
        generate_explanations(config, ctx.engine(), pairs, items, res.untrusted)
        if pairs.height
        else pl.DataFrame(schema=EMPTY_EXPLANATIONS)
    )
    serving = ExplanationTable(table, items, config, popularity=res.popularity, untrusted=res.untrusted)
    served = serve_slots(serving, top, slots)
    ctx.write("pairs", pairs)
    ctx.write("explanations", table)
    ctx.write("served", served)
    n_fallback = int(table["fallback"].sum())
    ledger = ctx.engine().ledger.stages.get("explanations") if pairs.height else None
    reasons = dict(sorted(ledger.failures.items())) if ledger else {}
    if n_fallback - sum(reasons.values()) > 0:
        reasons["rule_broken"] = n_fallback - sum(reasons.values())
    return {
        "slots": top.height,
        "pairs": pairs.height,
        "llm_texts": int((~table["fallback"]).sum()),
        "rule_fallbacks": n_fallback,
        "item_only_slots": int(served["item_only"].sum()),
        "served_explanations": llm_share(served["source"].to_list()),
        "rejected_untrusted": res.untrusted.rejected["explanations"],
        **fallback_stats(n_fallback, pairs.height, reasons, unit="pairs"),
    }


__all__ = ["explanation_pairs", "run_explanations", "serve_slots"]
