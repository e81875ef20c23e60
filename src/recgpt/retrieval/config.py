"""`TriTowerConfig`, in a module of its own so that a run's config (`recgpt.pipeline.config`) can be
validated without importing torch; `recgpt.retrieval.tritower` builds the model from it."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class TriTowerConfig:
    """Architecture and training hyper-parameters (the paper gives none of them except alpha)."""

    dim: int = 64  # shared output space
    id_dim: int = 64  # item-id and user-id embeddings
    cat_dim: int = 32
    brand_dim: int = 16
    text_dim: int = 64  # projection of the frozen title embedding
    hidden: int = 256
    dropout: float = 0.3  # chosen on ml-100k validation NDCG@10 (0.1: 0.107, 0.3: 0.111)
    max_history: int = 50  # L: last L items per behaviour type are pooled
    min_rating: float = 4.0  # rating >= this is behaviour "rating+", below is "rating-"
    temperature: float = 0.1
    n_negatives: int = 256  # uniformly sampled negatives per batch, shared by the batch (plus in-batch)
    logq_correction: bool = True  # subtract log(sampling frequency) from L_col / L_tag logits
    alpha: float = 0.5  # L = L_col + alpha*L_tag + (1-alpha)*L_cate
    title_tag_prob: float = (
        0.5  # training tag of a clicked item: its title w.p. p, else one of its categories
    )
    epochs: int = 30
    batch_size: int = 1024
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 3  # epochs without validation gain before stopping (only with a validation task)
    seed: int = 0
    threads: int = 1

    def __post_init__(self) -> None:
        for name in (
            "dim",
            "id_dim",
            "cat_dim",
            "brand_dim",
            "text_dim",
            "hidden",
            "max_history",
            "epochs",
            "batch_size",
            "patience",
            "threads",
        ):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TriTowerConfig.{name} must be >= 1, got {getattr(self, name)!r}")
        if self.n_negatives < 0:
            raise ValueError(f"n_negatives must be >= 0, got {self.n_negatives}")
        for name in ("alpha", "title_tag_prob"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.temperature <= 0 or self.lr <= 0:
            raise ValueError("temperature and lr must be > 0")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TriTowerConfig:
        """Build from a dict, rejecting unknown keys (a typo must not be silently ignored)."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown TriTowerConfig key(s) {sorted(unknown)}; valid: {sorted(known)}")
        return cls(**d)


__all__ = ["TriTowerConfig"]
