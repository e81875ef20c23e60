"""Behaviour compression (RecGPT §1.2): a user's as-of history -> a short, budgeted text B_u.

Pipeline, one module per step: `filter` (reliable behaviours) -> `items` (item-level compression) ->
`sequence` (time buckets, aggregation, reverse aggregation) -> `budget` (tokenizer count, drop the
oldest buckets on overflow); `report` compares raw and compressed token counts.

The only input is the `AsOf` view of a split: `BehaviorCompressor.compress(view, user_id)` reads
`view.history(user_id)`, checks it with `view.guard` (so a frame passed in by hand that reaches the
split point raises `LeakageError`), and buckets time relative to the user's split point.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from recgpt.behavior.budget import (
    Fitted,
    LlamaTokenCounter,
    RegexTokenCounter,
    TokenCounter,
    fit_to_budget,
    make_counter,
)
from recgpt.behavior.filter import FilterConfig, filter_reliable
from recgpt.behavior.items import ItemCompressor, ItemConfig, ItemSummarizer, clean_title, item_text
from recgpt.behavior.sequence import BehaviorSequence, SequenceConfig, prepare_sequence, time_bucket
from recgpt.data.split import AsOf

DEFAULT_BUDGET = 2048  # a quarter of SmolLM2's 8k context: room for instructions and the answer


class CompressionConfig(BaseModel):
    """Everything that shapes B_u. `budget` is in tokens of the counter's model."""

    model_config = ConfigDict(frozen=True)

    filter: FilterConfig = Field(default_factory=FilterConfig)
    items: ItemConfig = Field(default_factory=ItemConfig)
    sequence: SequenceConfig = Field(default_factory=SequenceConfig)
    budget: int = Field(default=DEFAULT_BUDGET, ge=1)


@dataclass
class CompressedHistory:
    """One user's compressed behaviour text and its accounting."""

    user_id: str
    asof_ts: int
    text: str
    tokens: int  # of `text`, within the budget
    full_tokens: int  # of the whole compressed history before the overflow cut
    n_events: int  # visible events (every behaviour)
    n_reliable: int  # after the reliable-behaviour filter
    n_lines: int
    buckets: list[str] = field(default_factory=list)  # every time bucket, oldest first
    dropped_buckets: list[str] = field(default_factory=list)
    dropped_events: int = 0


class BehaviorCompressor:
    """Builds B_u for users of an `AsOf` view (see the package docstring)."""

    def __init__(
        self,
        items: ItemCompressor | pl.DataFrame,
        counter: TokenCounter | None = None,
        config: CompressionConfig | None = None,
    ) -> None:
        self.config = config or CompressionConfig()
        self.items = items if isinstance(items, ItemCompressor) else ItemCompressor(items, self.config.items)
        self.counter = counter if counter is not None else make_counter()

    def compress(self, view: AsOf, user_id: str, history: pl.DataFrame | None = None) -> CompressedHistory:
        """B_u of one user; `history` (default `view.history(user_id)`) is guarded against leakage."""
        return self.compress_many(
            view, [user_id], histories={user_id: history} if history is not None else None
        )[0]

    def compress_many(
        self,
        view: AsOf,
        user_ids: Sequence[str],
        *,
        histories: dict[str, pl.DataFrame] | None = None,
        on_done: Callable[[int], None] | None = None,
    ) -> list[CompressedHistory]:
        """B_u of several users; item texts are prepared in one batch (one summariser call)."""
        histories = histories or {}
        prepared: list[tuple[str, pl.DataFrame, pl.DataFrame, BehaviorSequence]] = []
        for u in user_ids:
            hist = histories.get(u)
            hist = view.history(u) if hist is None else hist
            view.guard(u, hist)
            if hist.height and (hist["user_id"] != u).any():
                raise ValueError(f"history passed for user {u!r} holds other users' events")
            reliable = filter_reliable(hist, self.config.filter)
            prepared.append(
                (u, hist, reliable, prepare_sequence(reliable, view.point(u)[0], self.config.sequence))
            )
        self.items.prepare(e.target[1] for *_, seq in prepared for e in seq.entries if e.target[0] == "item")
        out = []
        for u, hist, reliable, seq in prepared:
            fit = fit_to_budget(
                seq, self.items.text, self.counter, self.config.budget, self.config.sequence.item_sep
            )
            out.append(_result(u, view.point(u)[0], hist, reliable, seq, fit))
            if on_done is not None:
                on_done(1)
        return out


def _result(
    user_id: str, asof_ts: int, hist: pl.DataFrame, reliable: pl.DataFrame, seq: BehaviorSequence, fit: Fitted
) -> CompressedHistory:
    return CompressedHistory(
        user_id=user_id,
        asof_ts=asof_ts,
        text=fit.text,
        tokens=fit.tokens,
        full_tokens=fit.full_tokens,
        n_events=hist.height,
        n_reliable=reliable.height,
        n_lines=len(fit.lines),
        buckets=seq.buckets,
        dropped_buckets=fit.dropped_buckets,
        dropped_events=fit.dropped_events,
    )


__all__ = [
    "DEFAULT_BUDGET",
    "BehaviorCompressor",
    "BehaviorSequence",
    "CompressedHistory",
    "CompressionConfig",
    "FilterConfig",
    "Fitted",
    "ItemCompressor",
    "ItemConfig",
    "ItemSummarizer",
    "LlamaTokenCounter",
    "RegexTokenCounter",
    "SequenceConfig",
    "TokenCounter",
    "clean_title",
    "filter_reliable",
    "fit_to_budget",
    "item_text",
    "make_counter",
    "prepare_sequence",
    "time_bucket",
]
