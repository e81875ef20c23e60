"""The serendipity slot: SERAL's cache merged into the classic channel's list at a fixed quota.

SERAL serves its serendipity cache as a *slot* of the final list: `quota` of the top `k` positions
go to the user's cached serendipitous items, the other positions keep the classic channel's order.
Where the paper is silent (the quota, the positions) this module chooses and `SlotConfig` makes it
configurable:

* positions: `positions` (0-based ranks within the top `k`) when given, else spread evenly over the
  list (`spread(k, quota)`: 2 of 10 -> ranks 3 and 6, so the head of the list stays the classic
  channel's best guess and the slot is seen without taking the first position);
* a cached item already in the classic top `k` is not a slot item (it would only duplicate an
  exposure); the next cached item takes the slot. With fewer usable cached items than the quota, the
  classic list fills the remaining slots, so a slot never leaves a hole;
* past the top `k` the final list is the classic list without the items placed above, so metrics at
  larger cut-offs (@20, @50) compare like with like.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

T = TypeVar("T", bound=Hashable)
BASE, SEREN = "base", "seren"


class SlotConfig(BaseModel):
    """How the serendipity cache enters the final list (module docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    k: int = Field(default=10, ge=1, description="length of the final list the quota applies to")
    quota: int = Field(default=2, ge=0, description="slots of the top k given to the serendipity cache")
    positions: tuple[int, ...] = Field(
        default=(), description="0-based ranks of the slots within the top k (empty: spread evenly)"
    )
    cache_size: int = Field(default=10, ge=1, description="items kept per user in the serendipity cache")

    @model_validator(mode="after")
    def _check(self) -> SlotConfig:
        if self.quota > self.k:
            raise ValueError(f"slot.quota ({self.quota}) cannot exceed slot.k ({self.k})")
        if self.positions:
            if len(self.positions) != self.quota:
                raise ValueError(
                    f"slot.positions must name exactly slot.quota={self.quota} ranks, got {list(self.positions)}"
                )
            if len(set(self.positions)) != len(self.positions) or any(
                not 0 <= p < self.k for p in self.positions
            ):
                raise ValueError(
                    f"slot.positions must be distinct ranks in [0, {self.k}), got {self.positions}"
                )
        return self

    def slots(self) -> tuple[int, ...]:
        """The 0-based ranks the serendipity items take, sorted."""
        return tuple(sorted(self.positions)) if self.positions else spread(self.k, self.quota)


def spread(k: int, quota: int) -> tuple[int, ...]:
    """`quota` ranks spread evenly over a list of `k` (never rank 0 unless quota == k)."""
    if quota >= k:
        return tuple(range(k))
    return tuple(sorted({(j + 1) * k // (quota + 1) for j in range(quota)}))


def merge_slot(
    base: Sequence[T], cache: Sequence[T], cfg: SlotConfig, length: int | None = None
) -> list[tuple[T, str]]:
    """The final list: `base` with up to `cfg.quota` items of `cache` at `cfg.slots()`, as
    (item, channel) pairs, `channel` 'base' or 'seren'; no item twice; `length` items at most
    (default: as many as the inputs give)."""
    slots = cfg.slots()
    top = set(base[: cfg.k])
    picked: list[T] = []
    for item in cache:
        if len(picked) >= len(slots):
            break
        if item not in top and item not in picked:
            picked.append(item)
    chosen = set(picked)
    rest = [b for b in dict.fromkeys(base) if b not in chosen]
    slot_set = set(slots[: len(picked)])
    limit = len(rest) + len(picked) if length is None else length
    out: list[tuple[T, str]] = []
    bi = si = 0
    while len(out) < limit:
        if si < len(picked) and (len(out) in slot_set or bi >= len(rest)):
            out.append((picked[si], SEREN))
            si += 1
        elif bi < len(rest):
            out.append((rest[bi], BASE))
            bi += 1
        else:
            break
    return out


__all__ = ["BASE", "SEREN", "SlotConfig", "merge_slot", "spread"]
