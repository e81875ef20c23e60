"""Online tag-aware retrieval (papers.md §1.5): fuse user and tag vectors, retrieve per tag, merge.

For user u and each of their tags t: ``h = normalise(β·h_u + (1−β)·h_t)``; the index returns the
top ``per_tag`` unseen items for h. Choices where the paper is silent (`FusionConfig`):

* **Normalising** the fused query makes scores comparable across a user's tags (a tag whose vector
  points away from h_u would otherwise score lower for every item just because |h| is smaller).
* **Merging across tags**: the tags of one interest pool their hits (an item keeps its best score and
  the tag that gave it); interests are visited round-robin, ordered by their best score, each taking
  its next not-yet-taken item, and each capped at ⌈K / #interests⌉ slots. When every interest is
  capped or exhausted and slots remain, the round-robin continues without caps. Every candidate
  keeps the tag, interest_id and interest that produced it. Tags without an interest_id form one
  group.
* **Users without tags** get the pure user tower (β = 1), so a channel never returns an empty list;
  their candidates have null tag / interest.

Channel mixing (`mix_lists`): the RecGPT channel and a baseline channel share the final list. Slot i
(0-based) goes to the primary channel iff ⌊(i+1)·share⌋ > ⌊i·share⌋, so exactly ⌊K·share⌋ of K slots
are the primary's, spread evenly and starting with the secondary's best. A channel skips items
already placed; a channel that runs out yields its slots to the other.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from recgpt.retrieval.index import ItemIndex

if TYPE_CHECKING:  # annotations only: fusing lists must not load torch
    from recgpt.retrieval.tritower import BehaviorLabels, TriTower

CANDIDATE_SCHEMA: dict[str, pl.DataType] = {
    "user_id": pl.String(),
    "item_id": pl.String(),
    "rank": pl.Int64(),
    "score": pl.Float64(),
    "tag": pl.String(),
    "interest_id": pl.Int64(),
    "interest": pl.String(),
    "channel": pl.String(),
}


@dataclass(frozen=True)
class FusionConfig:
    """β (1 = pure user tower, 0 = pure tag tower), list length K, hits per tag, tags used per user."""

    beta: float = 0.5
    k: int = 50
    per_tag: int = 20
    max_tags: int | None = None  # the user's first max_tags tags by rank (None: all)

    def __post_init__(self) -> None:
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {self.beta}")
        if self.k < 1 or self.per_tag < 1:
            raise ValueError(f"k and per_tag must be >= 1, got k={self.k}, per_tag={self.per_tag}")
        if self.max_tags is not None and self.max_tags < 1:
            raise ValueError(f"max_tags must be >= 1 or None, got {self.max_tags}")


def fuse(h_user: np.ndarray, h_tag: np.ndarray, beta: float) -> np.ndarray:
    """``normalise(β·h_user + (1−β)·h_tag)``, row-wise (h_user may be one row broadcast to all tags)."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    h = beta * np.asarray(h_user, dtype=np.float32) + (1.0 - beta) * np.asarray(h_tag, dtype=np.float32)
    norm = np.linalg.norm(h, axis=-1, keepdims=True)
    return (h / np.where(norm > 0, norm, 1.0)).astype(np.float32)


@dataclass
class TagHits:
    """What one tag retrieved: items best first (-1 = empty slot) and their fused scores."""

    tag: str | None
    interest_id: int | None
    interest: str | None
    items: np.ndarray
    scores: np.ndarray


@dataclass(frozen=True)
class Candidate:
    """One merged candidate and its provenance."""

    item: int
    score: float
    tag: str | None
    interest_id: int | None
    interest: str | None


def _interest_queue(hits: Sequence[TagHits]) -> list[Candidate]:
    """Pool the hits of one interest's tags: best score per item (earlier tag on ties), best first."""
    best: dict[int, Candidate] = {}
    for h in hits:
        for item, score in zip(h.items.tolist(), h.scores.tolist(), strict=True):
            if item < 0:
                continue
            if item not in best or score > best[item].score:
                best[item] = Candidate(item, float(score), h.tag, h.interest_id, h.interest)
    return sorted(best.values(), key=lambda c: (-c.score, c.item))


def merge_interests(hits: Sequence[TagHits], k: int) -> list[Candidate]:
    """Round-robin merge over interests with ⌈k/#interests⌉ quotas, then uncapped fill; no duplicates."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    groups: dict[Any, list[TagHits]] = {}
    for h in hits:
        groups.setdefault(h.interest_id, []).append(h)
    queues = [q for q in (_interest_queue(g) for g in groups.values()) if q]
    if not queues:
        return []
    # interests by their best score; equal best scores keep first-appearance (tag rank) order
    queues = [q for _, q in sorted(enumerate(queues), key=lambda iq: (-iq[1][0].score, iq[0]))]
    quota = math.ceil(k / len(queues))
    out: list[Candidate] = []
    taken: set[int] = set()
    pos = [0] * len(queues)
    count = [0] * len(queues)
    for capped in (True, False):
        progress = True
        while len(out) < k and progress:
            progress = False
            for g, q in enumerate(queues):
                if len(out) >= k or (capped and count[g] >= quota):
                    continue
                while pos[g] < len(q) and q[pos[g]].item in taken:
                    pos[g] += 1
                if pos[g] < len(q):
                    out.append(q[pos[g]])
                    taken.add(q[pos[g]].item)
                    pos[g] += 1
                    count[g] += 1
                    progress = True
    return out


def _user_tags(tags: pl.DataFrame, max_tags: int | None) -> dict[str, pl.DataFrame]:
    """Tags per user ordered by rank, cut to max_tags; validates the columns the stage needs."""
    for col in ("user_id", "tag"):
        if col not in tags.columns:
            raise ValueError(
                f"tags table lacks column {col!r} (need user_id, tag[, interest_id, interest, rank])"
            )
    t = tags.with_row_index("_row")
    for col, dtype in (("interest_id", pl.Int64()), ("interest", pl.String()), ("rank", pl.Int64())):
        if col not in t.columns:
            t = t.with_columns(pl.lit(None, dtype=dtype).alias(col))
    t = t.filter(pl.col("tag").is_not_null() & (pl.col("tag").str.strip_chars() != ""))
    t = t.sort(["user_id", "rank", "_row"], nulls_last=True)
    if max_tags is not None:
        t = t.group_by("user_id", maintain_order=True).head(max_tags)
    return {k[0]: v for k, v in t.partition_by("user_id", as_dict=True).items()}


def retrieve(
    model: TriTower,
    index: ItemIndex,
    tags: pl.DataFrame | None,
    users: np.ndarray,
    histories: Sequence[np.ndarray],
    config: FusionConfig | None = None,
    labels: BehaviorLabels | None = None,
) -> tuple[np.ndarray, list[list[Candidate]]]:
    """User-tower vectors and the merged candidate list of every user (seen items excluded)."""
    cfg = config or FusionConfig()
    if index.n_items != model.n_items:
        raise ValueError(f"index holds {index.n_items} items, the model {model.n_items}")
    users = np.asarray(users, dtype=np.int64).reshape(-1)
    hu = model.user_vectors(users, histories, labels)
    by_user = _user_tags(tags, cfg.max_tags) if tags is not None and tags.height else {}
    uids = model.user_ids[users]
    texts = sorted({t for u in set(uids.tolist()) & set(by_user) for t in by_user[u]["tag"].to_list()})
    tag_vec = dict(zip(texts, model.tag_vectors(texts), strict=True)) if texts else {}
    out: list[list[Candidate]] = []
    for i, uid in enumerate(uids.tolist()):
        seen = histories[i]
        ut = by_user.get(uid)
        if ut is None:
            s, ids = index.search(hu[i : i + 1], cfg.k, exclude=seen)
            out.append(
                [
                    Candidate(int(it), float(sc), None, None, None)
                    for it, sc in zip(ids[0], s[0], strict=True)
                    if it >= 0
                ]
            )
            continue
        tag_texts = ut["tag"].to_list()
        q = fuse(hu[i], np.stack([tag_vec[t] for t in tag_texts]), cfg.beta)
        s, ids = index.search(q, cfg.per_tag, exclude=seen)
        hits = [
            TagHits(t, iid, name, ids[j], s[j])
            for j, (t, iid, name) in enumerate(
                zip(tag_texts, ut["interest_id"].to_list(), ut["interest"].to_list(), strict=True)
            )
        ]
        out.append(merge_interests(hits, cfg.k))
    return hu, out


def candidates_frame(
    model: TriTower, users: np.ndarray, lists: Sequence[Sequence[Candidate]], channel: str = "recgpt"
) -> pl.DataFrame:
    """The `candidates` stage table (columns: CANDIDATE_SCHEMA) from merged lists."""
    rows: dict[str, list[Any]] = {c: [] for c in CANDIDATE_SCHEMA}
    for u, lst in zip(np.asarray(users, dtype=np.int64).tolist(), lists, strict=True):
        for r, c in enumerate(lst, start=1):
            rows["user_id"].append(str(model.user_ids[u]))
            rows["item_id"].append(str(model.item_ids[c.item]))
            rows["rank"].append(r)
            rows["score"].append(c.score)
            rows["tag"].append(c.tag)
            rows["interest_id"].append(c.interest_id)
            rows["interest"].append(c.interest)
            rows["channel"].append(channel)
    return pl.DataFrame(rows, schema=CANDIDATE_SCHEMA)


def _share_fraction(share: float) -> Fraction:
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share must be in [0, 1], got {share}")
    return Fraction(share).limit_denominator(10_000)


def primary_slots(k: int, share: float) -> np.ndarray:
    """Bool (k,): which of k positions belong to the primary channel (exactly ⌊k·share⌋ of them)."""
    f = _share_fraction(share)
    return np.asarray([math.floor((i + 1) * f) > math.floor(i * f) for i in range(k)], dtype=bool)


def mix_lists(
    primary: Sequence[int], secondary: Sequence[int], share: float, k: int
) -> list[tuple[int, bool]]:
    """Interleave two ranked lists (-1 entries ignored) into k unique items: (item, from_primary)."""
    slots = primary_slots(k, share)
    lists = ([int(i) for i in secondary if i >= 0], [int(i) for i in primary if i >= 0])
    pos = [0, 0]
    placed: set[int] = set()
    out: list[tuple[int, bool]] = []

    def take(ch: int) -> int | None:
        lst = lists[ch]
        while pos[ch] < len(lst) and lst[pos[ch]] in placed:
            pos[ch] += 1
        if pos[ch] < len(lst):
            pos[ch] += 1
            return lst[pos[ch] - 1]
        return None

    for slot in slots:
        want = int(slot)  # 1 = primary
        for ch in (want, 1 - want):
            item = take(ch)
            if item is not None:
                placed.add(item)
                out.append((item, ch == 1))
                break
        else:
            break
    return out


def mix_all(
    primary: Sequence[Sequence[int]], secondary: Sequence[Sequence[int]] | np.ndarray, share: float, k: int
) -> list[list[int]]:
    """`mix_lists` for every user: each user's mixed list of at most k item indices."""
    if len(primary) != len(secondary):
        raise ValueError(f"one list per user in both channels, got {len(primary)} and {len(secondary)}")
    return [[it for it, _ in mix_lists(p, s, share, k)] for p, s in zip(primary, secondary, strict=True)]


@dataclass(frozen=True)
class ShareChoice:
    """The share chosen on a validation curve, and why."""

    share: float | None  # None: the curve cannot decide (the classic channel has no validation hit)
    reference: float  # the classic channel's validation NDCG@10 (share 0)
    floor: float  # (1 - tolerance) x reference: the least a chosen share may score
    reason: str


def choose_share(curve: Sequence[tuple[float, float]], tolerance: float) -> ShareChoice:
    """The largest share whose validation NDCG@10 is >= (1 - tolerance) x the classic channel's (share 0).

    By construction the fused list then loses at most `tolerance` of the classic channel's accuracy on
    validation; share 0 always qualifies, so a RecGPT channel that only hurts gets no slot. A curve
    whose share-0 point is 0 (no validation hit) carries no information: `share` is None.
    """
    points = dict(curve)
    if 0.0 not in points:
        raise ValueError(
            f"the validation curve needs share 0 (the classic channel alone); got {sorted(points)}"
        )
    if not 0.0 <= tolerance <= 1.0:
        raise ValueError(f"tolerance must be in [0, 1], got {tolerance}")
    ref = points[0.0]
    floor = (1.0 - tolerance) * ref
    if not ref > 0.0:
        return ShareChoice(None, ref, floor, "the classic channel has no validation hit: nothing to compare")
    best = max(s for s, v in points.items() if v >= floor)
    why = (
        "every larger share loses more than the tolerance"
        if best < max(points)
        else "every share stays within the tolerance"
    )
    return ShareChoice(best, ref, floor, why)
