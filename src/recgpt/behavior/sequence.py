"""Sequence-level compression (RecGPT §1.2 step 2): time buckets, aggregation, reverse aggregation.

Time buckets are relative to the as-of date D (the UTC date of the user's split point):

- an event less than one calendar month before D falls in a **day** bucket;
- one month or more, but less than one calendar year, before D: a **month** bucket;
- one year or more: a **year** bucket.

"One month before" is D with the month decreased and the day clamped (2025-03-31 -> 2025-02-28), so an
event exactly one month old is already in a month bucket ("1 month ago") and exactly one year old in a
year bucket ("1 year ago"). Labels are relative by default ("today", "3 days ago", "2 months ago",
"4 years ago", as in the paper's case study) or calendar dates ("2025-06-14", "2025-03", "2023").

Step 1 (temporal-behavioural aggregation): (bucket, behaviour) -> the set of items.
Step 2 (item-based reverse aggregation): each item gets the set of (bucket, behaviour) groups it is in;
items with the same set share one line:

    3 months ago (rated), 2 days ago (rated, tagged "pixar") | Toy Story (1995) [Animation/Comedy]

Searches have no item: the quoted query text takes the item's place (``2 days ago (searched) | "red
shoes"``). A tag's text is part of its behaviour (``tagged "pixar"``) because it says why.

Ordering is deterministic: times inside a line oldest first; behaviours in `BEHAVIOR_LABELS` order
(unknown ones after, alphabetically); items in order of first engagement; lines ordered by their most
recent bucket (so the latest activity ends the text, nearest the question), then by first engagement.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Literal

import polars as pl
from pydantic import BaseModel, ConfigDict

from recgpt.behavior.items import single_line

BEHAVIOR_LABELS: dict[str, str] = {
    "purchase": "purchased",
    "cart": "added to cart",
    "favorite": "saved",
    "review": "reviewed",
    "rating": "rated",
    "tag": "tagged",
    "detail_view": "viewed details",
    "search": "searched",
    "click": "clicked",
}


class SequenceConfig(BaseModel):
    """How a reliable history is bucketed and written."""

    model_config = ConfigDict(frozen=True)

    time_labels: Literal["relative", "calendar"] = "relative"
    behavior_labels: dict[str, str] = BEHAVIOR_LABELS
    tag_text: bool = True
    item_sep: str = ", "


def add_months(d: date, months: int) -> date:
    """`d` shifted by whole calendar months, the day clamped to the target month's length."""
    y, m = divmod(d.year * 12 + d.month - 1 + months, 12)
    m += 1
    for day in (d.day, 30, 29, 28):
        try:
            return date(y, m, min(d.day, day))
        except ValueError:
            continue
    raise AssertionError("unreachable: every month has 28 days")


def _whole_months(day: date, asof: date) -> int:
    """Largest n with add_months(asof, -n) >= day."""
    n = (asof.year - day.year) * 12 + asof.month - day.month
    return n - 1 if add_months(asof, -n) < day else n


def time_bucket(day: date, asof: date, style: Literal["relative", "calendar"] = "relative") -> str:
    """The bucket label of an event on `day` seen from `asof` (see the module docstring)."""
    if day > asof:
        raise ValueError(f"event on {day} is after the as-of date {asof}: build from AsOf.history()")
    if day > add_months(asof, -1):
        if style == "calendar":
            return day.isoformat()
        n = (asof - day).days
        return "today" if n == 0 else f"{n} day{'s' if n > 1 else ''} ago"
    if day > add_months(asof, -12):
        if style == "calendar":
            return f"{day.year}-{day.month:02d}"
        n = _whole_months(day, asof)
        return f"{n} month{'s' if n > 1 else ''} ago"
    if style == "calendar":
        return str(day.year)
    n = _whole_months(day, asof) // 12
    return f"{n} year{'s' if n > 1 else ''} ago"


def utc_date(ts: int) -> date:
    """UTC calendar date of an epoch-seconds timestamp."""
    return datetime.fromtimestamp(ts, UTC).date()


@dataclass(frozen=True)
class Entry:
    """One reliable event, bucketed: what the aggregation steps consume."""

    bucket: int  # index into BehaviorSequence.buckets (chronological)
    behavior: str  # display label, e.g. 'rated', 'tagged "pixar"'
    rank: tuple[int, str]  # sort key of the behaviour inside a time group
    target: tuple[str, str]  # ("item", item_id) or ("query", text)


@dataclass
class BehaviorSequence:
    """A user's reliable events, bucketed relative to the as-of date, oldest first."""

    asof: date
    buckets: list[str]
    entries: list[Entry]
    bucket_start: list[int]  # index of each bucket's first entry

    def render(self, text_of: Callable[[str], str], start: int = 0, item_sep: str = ", ") -> list[str]:
        """The compressed lines of entries[start:] (both aggregation steps)."""
        entries = self.entries[start:]
        # step 1: (bucket, behaviour) -> ordered set of targets
        groups: dict[tuple[int, tuple[int, str], str], dict[tuple[str, str], None]] = {}
        for e in entries:
            groups.setdefault((e.bucket, e.rank, e.behavior), {})[e.target] = None
        # step 2: target -> the (bucket, behaviour) groups it is in; same set = same line
        keys_of: dict[tuple[str, str], list[tuple[int, tuple[int, str], str]]] = {}
        first_seen = {}
        for e in entries:
            first_seen.setdefault(e.target, len(first_seen))
        for key, targets in groups.items():
            for t in targets:
                keys_of.setdefault(t, []).append(key)
        lines: dict[tuple, list[tuple[str, str]]] = {}
        for t in sorted(keys_of, key=first_seen.__getitem__):
            lines.setdefault(tuple(sorted(keys_of[t])), []).append(t)
        order = sorted(lines, key=lambda ks: (ks[-1][0], first_seen[lines[ks][0]]))
        return [self._line(ks, lines[ks], text_of, item_sep) for ks in order]

    def _line(
        self, keys: tuple, targets: list[tuple[str, str]], text_of: Callable[[str], str], sep: str
    ) -> str:
        times: dict[int, list[str]] = {}
        for bucket, _, behavior in keys:
            times.setdefault(bucket, []).append(behavior)
        when = ", ".join(f"{self.buckets[b]} ({', '.join(bs)})" for b, bs in times.items())
        what = sep.join(text_of(v) if kind == "item" else f'"{v}"' for kind, v in targets)
        return f"{when} | {what}"


def prepare_sequence(
    reliable: pl.DataFrame, asof_ts: int, config: SequenceConfig | None = None
) -> BehaviorSequence:
    """Bucket a reliable history frame (columns of EVENT_SCHEMA) relative to the as-of timestamp."""
    config = config or SequenceConfig()
    asof = utc_date(asof_ts)
    labels = config.behavior_labels
    known = list(labels)
    ev = reliable.sort("timestamp", "event_id")
    day_label: dict[int, str] = {}
    buckets: list[str] = []
    bucket_start: list[int] = []
    entries: list[Entry] = []
    for ts, beh, item, query, text in ev.select(
        "timestamp", "behavior", "item_id", "query", "text"
    ).iter_rows():
        if query is not None and (beh == "search" or item is None):
            target = ("query", single_line(query))
        elif item is not None:
            target = ("item", item)
        else:
            continue
        day = ts // 86_400
        if day not in day_label:
            day_label[day] = time_bucket(utc_date(ts), asof, config.time_labels)
        label = day_label[day]
        if not buckets or buckets[-1] != label:
            buckets.append(label)
            bucket_start.append(len(entries))
        shown = labels.get(beh, beh)
        if config.tag_text and beh == "tag" and text and text.strip():
            shown = f'{shown} "{single_line(text)}"'
        rank = (known.index(beh) if beh in labels else len(known), shown)
        entries.append(Entry(bucket=len(buckets) - 1, behavior=shown, rank=rank, target=target))
    return BehaviorSequence(asof=asof, buckets=buckets, entries=entries, bucket_start=bucket_start)
