"""SASRec learns a sequential signal, is deterministic, and honours its scoring contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recgpt.baselines.base import Interactions
from recgpt.baselines.sasrec import SASRec, _seen_mask, _use_prefixes, _windows
from recgpt.data.ranking import mask_seen, topk

N_ITEMS = 30
TINY = {
    "hidden": 32,
    "blocks": 1,
    "heads": 2,
    "dropout": 0.1,
    "lr": 5e-3,
    "epochs": 25,
    "early_stopping": False,
    "max_len": 12,
    "batch_targets": 128,
    "prefix_aug": False,
    "threads": 1,
}


def _interactions(seqs: list[np.ndarray], n_items: int = N_ITEMS) -> Interactions:
    users = np.repeat(np.arange(len(seqs)), [len(s) for s in seqs]).astype(np.int64)
    items = np.concatenate(seqs).astype(np.int64)
    ts = np.concatenate([np.arange(len(s)) for s in seqs]).astype(np.int64)
    return Interactions(len(seqs), n_items, users, items, ts)


def _cyclic(n_users: int = 120, seed: int = 0) -> list[np.ndarray]:
    """Each user walks the item cycle 0 -> 1 -> ... -> N-1 -> 0 from a random start."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_users):
        start, length = rng.integers(N_ITEMS), rng.integers(6, 25)
        out.append((start + np.arange(length)) % N_ITEMS)
    return out


@pytest.fixture(scope="module")
def cyclic_model() -> SASRec:
    return SASRec(**TINY).fit(_interactions(_cyclic()), seed=0)


def test_learns_the_cycle(cyclic_model: SASRec) -> None:
    seqs = _cyclic(n_users=60, seed=1)
    hists = [s[:-1] for s in seqs]
    targets = np.array([s[-1] for s in seqs])
    top5 = topk(cyclic_model.score(np.arange(len(seqs)), hists), 5)
    hit5 = (top5 == targets[:, None]).any(axis=1).mean()
    assert hit5 > 0.8, f"hit@5 {hit5:.2f} vs chance {5 / N_ITEMS:.2f}"


def test_loss_falls(cyclic_model: SASRec) -> None:
    losses = [row["loss"] for row in cyclic_model.history_]
    assert len(losses) == TINY["epochs"]
    assert losses[-1] < 0.5 * losses[0]


def test_scores_shape_dtype_and_empty_history(cyclic_model: SASRec) -> None:
    hists = [np.array([3, 4, 5]), np.array([], dtype=np.int64), np.array([7])]
    scores = cyclic_model.score(np.arange(3), hists)
    assert scores.shape == (3, N_ITEMS)
    assert scores.dtype == np.float32
    assert np.isfinite(scores).all()
    assert scores[0].argmax() == 6


def test_long_history_is_truncated_to_max_len(cyclic_model: SASRec) -> None:
    long = (np.arange(40) + 3) % N_ITEMS
    full = cyclic_model.score(np.zeros(1), [long])
    cut = cyclic_model.score(np.zeros(1), [long[-TINY["max_len"] :]])
    np.testing.assert_array_equal(full, cut)
    # and the batch layout (padding of shorter neighbours) does not change a row's scores
    both = cyclic_model.score(np.zeros(2), [long, np.array([1])])
    np.testing.assert_allclose(both[0], full[0], rtol=1e-5, atol=1e-5)


def test_deterministic_for_a_seed() -> None:
    data = _interactions(_cyclic(n_users=40))
    params = {**TINY, "epochs": 3}
    hists = [np.array([1, 2, 3]), np.array([9])]
    a = SASRec(**params).fit(data, seed=7).score(np.arange(2), hists)
    b = SASRec(**params).fit(data, seed=7).score(np.arange(2), hists)
    c = SASRec(**params).fit(data, seed=8).score(np.arange(2), hists)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_fit_leaves_global_torch_state_alone() -> None:
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    rng_state = torch.random.get_rng_state()
    SASRec(**{**TINY, "epochs": 1}).fit(_interactions(_cyclic(n_users=10)), seed=3)
    assert torch.get_num_threads() == threads
    assert torch.are_deterministic_algorithms_enabled() == det
    assert torch.equal(torch.random.get_rng_state(), rng_state)


def test_early_stopping_and_refit() -> None:
    data = _interactions(_cyclic(n_users=60))
    model = SASRec(**{**TINY, "early_stopping": True, "patience": 2, "epochs": 30, "refit_full": True})
    model.fit(data, seed=0)
    es_rows = [r for r in model.history_ if "val_ndcg10" in r]
    refit_rows = [r for r in model.history_ if "refit" in r]
    assert 1 <= model.best_epoch_ <= len(es_rows) <= 30
    best = max(r["val_ndcg10"] for r in es_rows)
    assert es_rows[model.best_epoch_ - 1]["val_ndcg10"] == best
    assert len(es_rows) == 30 or len(es_rows) - model.best_epoch_ == 2  # stopped after `patience` bad epochs
    assert len(refit_rows) == model.best_epoch_
    assert best > 0.5  # the internal holdout (each user's last item) is predictable on a cycle


def test_loss_mask_seen_trains_for_the_masked_protocol() -> None:
    seqs = _cyclic()
    model = SASRec(**{**TINY, "loss_mask_seen": True}).fit(_interactions(seqs), seed=0)
    hists = [s[:-1] for s in _cyclic(n_users=60, seed=1)]
    targets = np.array([s[-1] for s in _cyclic(n_users=60, seed=1)])
    scores = model.score(np.arange(60), hists)
    assert np.isfinite(scores).all()  # masking stays with recgpt.data.ranking
    top5 = topk(mask_seen(scores, hists), 5)
    assert (top5 == targets[:, None]).any(axis=1).mean() > 0.8


def test_bad_input_raises() -> None:
    with pytest.raises(ValueError, match="divisible"):
        SASRec(hidden=30, heads=4)
    with pytest.raises(ValueError, match="dropout"):
        SASRec(dropout=1.0)
    with pytest.raises(ValueError, match="unknown parameter"):
        SASRec(batch_size=32)
    with pytest.raises(ValueError, match="prefix_aug"):
        SASRec(prefix_aug="sometimes")
    with pytest.raises(RuntimeError, match="before fit"):
        SASRec().score(np.zeros(1), [np.array([1])])
    model = SASRec(**{**TINY, "epochs": 1}).fit(_interactions(_cyclic(10)), seed=0)
    with pytest.raises(ValueError, match="out of range"):
        model.score(np.zeros(1), [np.array([N_ITEMS])])
    with pytest.raises(ValueError, match="one history"):
        model.score(np.zeros(2), [np.array([1])])


def test_windows_make_every_later_item_a_target_once() -> None:
    seq = np.arange(23)
    wins, lens = _windows([seq, np.array([5])], max_len=10)
    targets = np.concatenate([w[1:n] - 1 for w, n in zip(wins, lens, strict=True)])
    np.testing.assert_array_equal(np.sort(targets), np.arange(1, 23))
    assert lens.max() == 11
    pre, pre_lens = _windows([np.arange(5)], max_len=10, prefixes=True)
    assert pre_lens.tolist() == [2, 3, 4, 5]
    np.testing.assert_array_equal(pre[-1, :5], np.arange(5) + 1)


def test_auto_rules_follow_sequence_length() -> None:
    short = [np.arange(i % 5 + 2) for i in range(50)]
    long = [np.arange(60) for _ in range(5)]
    assert _use_prefixes("auto", _windows(short, 50)[1])
    assert not _use_prefixes("auto", _windows(long, 50)[1])
    assert not _use_prefixes(False, _windows(short, 50)[1])
    params = {**TINY, "epochs": 2, "patience": 1, "early_stopping": True}
    # short sequences: holding out one item per user removes a big share of targets -> refit
    assert SASRec(**params).fit(_interactions([s % N_ITEMS for s in short]), seed=0).refit_used_
    assert not SASRec(**params).fit(_interactions([s % N_ITEMS for s in long]), seed=0).refit_used_


def test_seen_mask_covers_the_prefix() -> None:
    inp = torch.tensor([[3, 4, 3, 0], [1, 2, 0, 0]])  # shifted ids (0 = padding)
    keep = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    want = [
        [0, 0, 1, 0, 0, 0],  # {3} -> item index 2
        [0, 0, 1, 1, 0, 0],  # {3, 4}
        [0, 0, 1, 1, 0, 0],  # {3, 4, 3}
        [1, 0, 0, 0, 0, 0],  # {1}
        [1, 1, 0, 0, 0, 0],  # {1, 2}
    ]
    np.testing.assert_array_equal(_seen_mask(inp, keep, n_items=6).numpy(), np.array(want, dtype=bool))


def test_seen_bias_learns_that_repeats_are_rare(cyclic_model: SASRec) -> None:
    # on a cycle of 30 items with windows of 12 the next item is never in the window
    assert cyclic_model._net.seen_bias.item() < -0.1
    plain = SASRec(**{**TINY, "epochs": 2, "seen_bias": False}).fit(_interactions(_cyclic(40)), seed=0)
    assert plain._net.seen_bias.item() == 0.0
