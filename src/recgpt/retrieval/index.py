"""A faiss inner-product index over item-tower vectors, with seen-item exclusion and save/load.

`flat` (exact, `IndexFlatIP`) is the default: our catalogues are 10^3-10^5 items, where exact search
is fast and keeps results deterministic. `hnsw` (`IndexHNSWFlat`, inner-product metric) is for large
catalogues where approximate search pays off. Results are re-sorted by (score desc, item index asc)
so ties never depend on faiss internals.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

IndexKind = Literal["flat", "hnsw"]


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as e:  # pragma: no cover - faiss is part of the retrieval extra
        raise ImportError("the item index needs faiss: pip install 'recgpt[retrieval]'") from e
    return faiss


class ItemIndex:
    """Maximum-inner-product search over item vectors (row i = item index i)."""

    def __init__(self, index: Any, kind: IndexKind, params: dict[str, Any]) -> None:
        self.index, self.kind, self.params = index, kind, params

    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        kind: IndexKind = "flat",
        *,
        hnsw_m: int = 32,
        ef_construction: int = 80,
        ef_search: int = 128,
        threads: int | None = None,
    ) -> ItemIndex:
        """Index `vectors` (n_items, dim); `threads` sets faiss' OpenMP threads (None: leave as is)."""
        faiss = _faiss()
        if threads is not None:
            faiss.omp_set_num_threads(int(threads))
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        if x.ndim != 2 or x.shape[0] == 0:
            raise ValueError(f"item vectors must be a non-empty (n_items, dim) array, got shape {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError("item vectors contain NaN or inf")
        dim = x.shape[1]
        params: dict[str, Any] = {}
        if kind == "flat":
            index = faiss.IndexFlatIP(dim)
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, int(hnsw_m), faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = int(ef_construction)
            index.hnsw.efSearch = int(ef_search)
            params = {"hnsw_m": hnsw_m, "ef_construction": ef_construction, "ef_search": ef_search}
        else:
            raise ValueError(f"unknown index kind {kind!r}; use 'flat' or 'hnsw'")
        index.add(x)
        return cls(index, kind, params)

    @property
    def n_items(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def search(
        self, queries: np.ndarray, k: int, exclude: Sequence[int] | np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, items), each (n_queries, k): best first, `exclude`d items never returned.

        Over-fetches by len(exclude) so k results survive the exclusion; slots that cannot be filled
        hold item -1 and score -inf.
        """
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if q.shape[1] != self.dim:
            raise ValueError(f"queries have dimension {q.shape[1]}, the index {self.dim}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        ex = np.unique(np.asarray(exclude if exclude is not None else [], dtype=np.int64))
        fetch = min(k + len(ex), self.n_items)
        scores, ids = self.index.search(q, fetch)
        ids = ids.astype(np.int64)
        drop = (ids < 0) | np.isin(ids, ex)
        scores = np.where(drop, -np.inf, scores).astype(np.float32)
        order = np.lexsort((np.where(ids < 0, np.iinfo(np.int64).max, ids), -scores), axis=1)[:, :k]
        out_s = np.take_along_axis(scores, order, axis=1)
        out_i = np.where(np.isfinite(out_s), np.take_along_axis(ids, order, axis=1), -1)
        if out_s.shape[1] < k:
            pad = k - out_s.shape[1]
            out_s = np.pad(out_s, ((0, 0), (0, pad)), constant_values=-np.inf)
            out_i = np.pad(out_i, ((0, 0), (0, pad)), constant_values=-1)
        return out_s, out_i

    def save(self, path: str | Path) -> Path:
        """A folder with `items.faiss` and `index.json` (kind, size, parameters)."""
        faiss = _faiss()
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.index, str(path / "items.faiss"))
        meta = {"kind": self.kind, "n_items": self.n_items, "dim": self.dim, "params": self.params}
        (path / "index.json").write_text(json.dumps(meta, indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> ItemIndex:
        faiss = _faiss()
        path = Path(path)
        if not (path / "index.json").exists() or not (path / "items.faiss").exists():
            raise FileNotFoundError(f"no saved item index in {path} (need items.faiss and index.json)")
        meta = json.loads((path / "index.json").read_text())
        index = faiss.read_index(str(path / "items.faiss"))
        if int(index.ntotal) != int(meta["n_items"]):
            raise ValueError(f"{path}: index holds {index.ntotal} items, index.json says {meta['n_items']}")
        if meta["kind"] == "hnsw":
            index.hnsw.efSearch = int(meta["params"]["ef_search"])
        return cls(index, meta["kind"], meta["params"])
