"""The faiss item index: exact results, seen-item exclusion, save/load."""

from __future__ import annotations

import numpy as np
import pytest

from recgpt.data.ranking import topk
from recgpt.retrieval.index import ItemIndex


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 16)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_flat_search_is_exact_and_excludes(vectors: np.ndarray) -> None:
    index = ItemIndex.build(vectors, threads=1)
    q = vectors[:4] + 0.1
    scores, ids = index.search(q, 10)
    np.testing.assert_array_equal(ids, topk(q @ vectors.T, 10))
    np.testing.assert_allclose(scores, np.take_along_axis(q @ vectors.T, ids, 1), rtol=1e-5)
    ex = ids[0, :5]
    _, ids2 = index.search(q[:1], 10, exclude=ex)
    assert not set(ids2[0]) & set(ex)
    assert ids2[0].tolist() == [i for i in topk(q[:1] @ vectors.T, 15)[0] if i not in ex][:10]


def test_more_than_available_is_padded(vectors: np.ndarray) -> None:
    index = ItemIndex.build(vectors[:5])
    scores, ids = index.search(vectors[:1], 8, exclude=[0, 1])
    assert ids[0, :3].tolist() != [-1] * 3 and set(ids[0, :3]) == {2, 3, 4}
    assert (ids[0, 3:] == -1).all() and np.isneginf(scores[0, 3:]).all()


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_save_load_round_trip(tmp_path, vectors: np.ndarray, kind: str) -> None:
    index = ItemIndex.build(vectors, kind, threads=1)
    before = index.search(vectors[:20], 10, exclude=[3, 4])
    index.save(tmp_path / kind)
    back = ItemIndex.load(tmp_path / kind)
    assert (back.kind, back.n_items, back.dim) == (kind, 500, 16)
    after = back.search(vectors[:20], 10, exclude=[3, 4])
    np.testing.assert_array_equal(before[1], after[1])
    np.testing.assert_array_equal(before[0], after[0])
    if kind == "hnsw":  # approximate, but on 500 items it should find almost all true neighbours
        exact = ItemIndex.build(vectors).search(vectors[:20], 10, exclude=[3, 4])[1]
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(after[1], exact, strict=True)])
        assert recall > 0.9


def test_bad_input(tmp_path, vectors: np.ndarray) -> None:
    with pytest.raises(ValueError, match="unknown index kind"):
        ItemIndex.build(vectors, "ivf")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-empty"):
        ItemIndex.build(np.zeros((0, 4), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        ItemIndex.build(np.full((3, 4), np.nan, np.float32))
    index = ItemIndex.build(vectors)
    with pytest.raises(ValueError, match="dimension"):
        index.search(np.zeros((1, 3), np.float32), 5)
    with pytest.raises(FileNotFoundError):
        ItemIndex.load(tmp_path / "nothing")
