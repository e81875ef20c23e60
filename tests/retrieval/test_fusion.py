"""Fusion math, the interest-quota merge, channel mixing and the Recommender adapters."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from recgpt.baselines.itemknn import ItemKNN
from recgpt.data.ranking import mask_seen, topk
from recgpt.eval.experiment import recommend
from recgpt.retrieval.channel import FusedChannel, RecGPTChannel
from recgpt.retrieval.fusion import (
    CANDIDATE_SCHEMA,
    FusionConfig,
    TagHits,
    fuse,
    merge_interests,
    mix_lists,
    primary_slots,
    retrieve,
)
from recgpt.retrieval.index import ItemIndex
from tests.retrieval.conftest import CATEGORIES


def _hits(tag: str, interest_id: int, pairs: list[tuple[int, float]]) -> TagHits:
    items, scores = zip(*pairs, strict=True)
    return TagHits(tag, interest_id, f"interest {interest_id}", np.asarray(items), np.asarray(scores))


# ---------------------------------------------------------------- fusion math


def test_fuse_endpoints_and_normalisation() -> None:
    rng = np.random.default_rng(0)
    hu = rng.standard_normal(8).astype(np.float32)
    hu /= np.linalg.norm(hu)
    ht = rng.standard_normal((3, 8)).astype(np.float32)
    ht /= np.linalg.norm(ht, axis=1, keepdims=True)
    np.testing.assert_allclose(fuse(hu, ht, 1.0), np.tile(hu, (3, 1)), atol=1e-6)
    np.testing.assert_allclose(fuse(hu, ht, 0.0), ht, atol=1e-6)
    mid = fuse(hu, ht, 0.25)
    np.testing.assert_allclose(np.linalg.norm(mid, axis=1), 1.0, atol=1e-6)
    want = 0.25 * hu + 0.75 * ht
    np.testing.assert_allclose(mid, want / np.linalg.norm(want, axis=1, keepdims=True), atol=1e-6)
    with pytest.raises(ValueError, match="beta"):
        fuse(hu, ht, 1.2)


# ---------------------------------------------------------------- merge


def test_quota_merge_hand_made() -> None:
    hits = [
        _hits("a", 1, [(10, 0.9), (11, 0.8), (12, 0.7)]),
        _hits("b", 1, [(11, 0.85), (13, 0.6)]),
        _hits("c", 2, [(20, 0.95), (10, 0.5), (21, 0.4)]),
        _hits("d", 3, [(30, 0.3)]),
    ]
    got = merge_interests(hits, 5)  # quota ceil(5/3) = 2; interests ordered 2 (.95), 1 (.9), 3 (.3)
    assert [c.item for c in got] == [20, 10, 30, 21, 11]
    assert [c.tag for c in got] == ["c", "a", "d", "c", "b"]  # item 11 keeps its best tag (b: .85)
    assert [c.interest_id for c in got] == [2, 1, 3, 2, 1]
    assert [c.score for c in got] == [0.95, 0.9, 0.3, 0.4, 0.85]
    got7 = merge_interests(hits, 7)  # quota 3: interest 1 fills its 3rd slot, then the uncapped fill
    assert [c.item for c in got7] == [20, 10, 30, 21, 11, 12, 13]
    assert merge_interests(hits, 100) == got7  # everything, once


def test_quota_caps_then_fills_and_ignores_empty_slots() -> None:
    hits = [_hits("x", 1, [(1, 0.9), (2, 0.8), (3, 0.7), (4, 0.6)]), _hits("y", 2, [(5, 0.5), (-1, -np.inf)])]
    assert [c.item for c in merge_interests(hits, 4)] == [1, 5, 2, 3]
    assert merge_interests([], 3) == []
    with pytest.raises(ValueError):
        merge_interests(hits, 0)


# ---------------------------------------------------------------- channel mixing


@pytest.mark.parametrize(
    ("k", "share"), [(10, 0.3), (20, 0.3), (50, 0.3), (10, 0.5), (7, 0.0), (7, 1.0), (50, 0.25)]
)
def test_mix_shares_are_exact(k: int, share: float) -> None:
    primary, secondary = list(range(100, 200)), list(range(200, 300))
    mixed = mix_lists(primary, secondary, share, k)
    assert len(mixed) == k
    n_primary = sum(p for _, p in mixed)
    assert n_primary == int(np.floor(k * share + 1e-9)) == primary_slots(k, share).sum()
    # each channel keeps its own order
    assert [i for i, p in mixed if p] == primary[:n_primary]
    assert [i for i, p in mixed if not p] == secondary[: k - n_primary]


def test_mix_positions_dedupe_and_run_out() -> None:
    assert primary_slots(10, 0.3).nonzero()[0].tolist() == [3, 6, 9]
    # primary's items already placed by the secondary are skipped, not repeated
    mixed = mix_lists([1, 2, 7, 8], [1, 2, 3, 4, 5, 6], 0.5, 6)
    assert mixed == [(1, False), (2, True), (3, False), (7, True), (4, False), (8, True)]
    # a channel that runs out hands its slots to the other
    assert mix_lists([9], [1, 2, 3], 0.5, 4) == [(1, False), (9, True), (2, False), (3, False)]
    assert mix_lists([], [], 0.5, 4) == []
    with pytest.raises(ValueError, match="share"):
        mix_lists([1], [2], 1.5, 2)


# ---------------------------------------------------------------- retrieval with the trained model


@pytest.fixture(scope="module")
def index(trained) -> ItemIndex:
    return ItemIndex.build(trained.model.item_vectors(), threads=1)


def _tags(split, per_user: int = 3) -> pl.DataFrame:
    rows = []
    for u in split.test.user_ids[:40]:
        for r in range(per_user):
            cat = CATEGORIES[(int(u[1:]) + r) % 8]
            rows.append(
                {
                    "user_id": u,
                    "tag": cat,
                    "modifier": "",
                    "core": cat,
                    "interest_id": r,
                    "interest": f"{cat} lover",
                    "rationale": "",
                    "rank": r + 1,
                }
            )
    return pl.DataFrame(rows)


def test_beta_one_is_the_user_tower_and_beta_zero_the_tag_tower(split, trained, index) -> None:
    model, task = trained.model, split.test
    users, hists = task.user_idx[:40], task.histories[:40]
    tags = _tags(split)
    tower = topk(mask_seen(model.user_vectors(users, hists) @ model.item_vectors().T, hists), 10)
    _, lists = retrieve(model, index, tags, users, hists, FusionConfig(beta=1.0, k=10, per_tag=10))
    assert [[c.item for c in lst] for lst in lists] == tower.tolist()
    one_tag = tags.filter(pl.col("rank") == 1)
    _, lists0 = retrieve(model, index, one_tag, users, hists, FusionConfig(beta=0.0, k=10, per_tag=10))
    tag_vecs = model.tag_vectors(one_tag["tag"].to_list())
    want = topk(mask_seen(tag_vecs @ model.item_vectors().T, hists), 10)
    assert [[c.item for c in lst] for lst in lists0] == want.tolist()
    assert all(c.tag == t for lst, t in zip(lists0, one_tag["tag"], strict=True) for c in lst)


def test_recgpt_channel_scores_reproduce_its_lists_and_candidates_table(split, trained, index) -> None:
    task = split.test
    ch = RecGPTChannel(trained.model, index, _tags(split), context=task.asof.events(), beta=0.5, k=20).fit(
        split.train
    )
    recs = recommend(ch, task, 20, mask=True)
    _, lists = ch.lists(task.user_idx, task.histories)
    assert recs.tolist() == [[c.item for c in lst] for lst in lists]
    seen = [set(h.tolist()) for h in task.histories]
    assert not any(set(r.tolist()) & s for r, s in zip(recs, seen, strict=True))
    cands = ch.candidates(task.user_idx[:50], task.histories[:50])
    assert dict(cands.schema) == CANDIDATE_SCHEMA
    assert cands.group_by("user_id").len()["len"].to_list() == [20] * 50
    tagged = cands.filter(pl.col("tag").is_not_null())
    untagged = cands.filter(pl.col("tag").is_null())  # users without tags: pure user tower
    assert tagged["user_id"].n_unique() == 40 and untagged["user_id"].n_unique() == 10
    assert (cands["channel"] == "recgpt").all()
    with pytest.raises(ValueError, match="unknown parameter"):
        RecGPTChannel(trained.model, index, None, betta=0.1)


def test_fused_channel_mixes_at_the_share(split, trained, index) -> None:
    task = split.test
    rec = RecGPTChannel(trained.model, index, _tags(split), beta=0.5, k=20)
    knn = ItemKNN().fit(split.train)
    fused = FusedChannel(knn, rec, share=0.3, k=20)
    items, from_rec = fused.mixed(task.user_idx, task.histories)
    assert (from_rec.sum(1) == 6).all()
    assert recommend(fused, task, 20, mask=True).tolist() == items.tolist()
    base = recommend(knn, task, 20, mask=True)
    _, rl = rec.lists(task.user_idx, task.histories)
    for i in range(len(task)):
        rec_items = items[i][from_rec[i]].tolist()
        # RecGPT's slots hold its own list in order, minus what the baseline had already placed
        assert set(rec_items) <= {c.item for c in rl[i]}
        assert rec_items == sorted(rec_items, key=[c.item for c in rl[i]].index)
        # the baseline's slots hold its list in order, minus what RecGPT had already placed
        assert items[i][~from_rec[i]].tolist() == [it for it in base[i] if it not in rec_items][:14]
    cands = fused.candidates(task.user_idx[:5], task.histories[:5])
    assert set(cands["channel"]) == {"recgpt", "itemknn"}
    assert (
        cands.filter(pl.col("channel") == "itemknn")["tag"].null_count()
        == cands.filter(pl.col("channel") == "itemknn").height
    )


# ---------------------------------------------------------------- the share chosen on validation


def test_the_largest_share_within_the_tolerance_is_chosen() -> None:
    from recgpt.retrieval.fusion import choose_share

    curve = [(0.0, 0.100), (0.1, 0.104), (0.2, 0.097), (0.3, 0.096), (0.4, 0.0955), (0.5, 0.080), (1.0, 0.05)]
    got = choose_share(curve, 0.05)
    assert got.share == 0.4 and got.reference == 0.1 and got.floor == pytest.approx(0.095)
    assert choose_share(curve, 0.0).share == 0.1  # no loss allowed: only shares that do not lose
    assert choose_share(curve, 0.6).share == 1.0


def test_a_recgpt_channel_that_only_hurts_gets_no_slot() -> None:
    from recgpt.retrieval.fusion import choose_share

    assert choose_share([(0.0, 0.2), (0.5, 0.1), (1.0, 0.0)], 0.05).share == 0.0
    empty = choose_share([(0.0, 0.0), (1.0, 0.0)], 0.05)  # no validation hit: nothing to decide on
    assert empty.share is None and "no validation hit" in empty.reason
    with pytest.raises(ValueError, match="share 0"):
        choose_share([(0.5, 0.1)], 0.05)


def test_mixing_at_share_0_and_1_gives_each_channel_alone() -> None:
    from recgpt.retrieval.fusion import mix_all

    rec, base = [[5, 6, 7]], [[1, 2, 5, 3]]
    assert mix_all(rec, base, 0.0, 4) == [[1, 2, 5, 3]]
    assert mix_all(rec, base, 1.0, 4) == [[5, 6, 7, 1]]  # RecGPT ran out: the classic channel fills
