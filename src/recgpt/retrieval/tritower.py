"""The user-item-tag tri-tower of RecGPT's tag-aware retrieval (papers.md §1.5), in torch on CPU.

Three towers map into one d-dimensional, L2-normalised space, so every score is a cosine:

* **item tower** ``h_v = MLP([EMB(item_id); MEAN(EMB(categories)); EMB(brand); W·text(title)])``.
  The category list is mean-pooled whether it is a path (Amazon) or multi-label genres (MovieLens);
  the title embedding is the frozen MiniLM vector, projected by a learned linear map. Dense features
  (price, sales) from the paper are left out: our catalogues rarely have them.
* **user tower** ``h_u = MLP([EMB(user_id); s_u^b1; s_u^b2; ...])`` with one mean-pooled vector per
  behaviour type b over the user's last ``max_history`` items of that type. What is pooled is the item
  tower's *input* vector (``[EMB(id); cats; brand; text]``), so the user tower shares the item
  features' parameters. Behaviour types come from the event table: ``rating`` splits into
  ``rating+`` (value >= ``min_rating``) and ``rating-``, any other behaviour is its own type.
* **tag tower** ``h_t = MLP(text(tag))``: the frozen MiniLM sentence vector of the tag text stands in for
  the paper's mean of token embeddings (MiniLM already mean-pools its token states).

A history arrives at scoring time as bare item indices (the `Recommender` contract), so the behaviour
type of each history item is looked up by (user, item) in a `BehaviorLabels` table built from the
events the caller is allowed to see (the training events, or an `AsOf` view's events).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
from torch import nn

from recgpt.retrieval.config import TriTowerConfig

EmbedFn = Callable[[Sequence[str]], np.ndarray]


# ---------------------------------------------------------------- behaviour types


def behavior_label_expr(min_rating: float) -> pl.Expr:
    """Behaviour type of an event: ``rating+`` / ``rating-`` for ratings, else the behaviour itself."""
    is_rating = pl.col("behavior") == "rating"
    return (
        pl.when(is_rating & (pl.col("value") >= min_rating))
        .then(pl.lit("rating+"))
        .when(is_rating)
        .then(pl.lit("rating-"))
        .otherwise(pl.col("behavior"))
    )


@dataclass
class BehaviorLabels:
    """(user_idx, item_idx) -> behaviour-type index; the latest event of a pair wins.

    Pairs not in the table get `default` (the most frequent training type), so a model can still
    score a history it has no labels for.
    """

    groups: list[str]
    n_items: int
    keys: np.ndarray  # int64 user_idx * n_items + item_idx, sorted
    values: np.ndarray  # int64 group index
    default: int = 0

    @classmethod
    def from_pairs(
        cls,
        groups: list[str],
        n_items: int,
        users: np.ndarray,
        items: np.ndarray,
        labels: np.ndarray,
        default: int = 0,
    ) -> BehaviorLabels:
        keys = np.asarray(users, dtype=np.int64) * n_items + np.asarray(items, dtype=np.int64)
        # keep the last occurrence of each key (inputs are chronological)
        rev_keys = keys[::-1]
        uniq, first = np.unique(rev_keys, return_index=True)
        vals = np.asarray(labels, dtype=np.int64)[::-1][first]
        return cls(groups=list(groups), n_items=n_items, keys=uniq, values=vals, default=default)

    def with_events(
        self, events: pl.DataFrame, user_pos: dict[str, int], item_pos: dict[str, int], min_rating: float
    ) -> BehaviorLabels:
        """A table with this one's groups, built from an event frame (e.g. `AsOf.events()`)."""
        ev = events.filter(pl.col("item_id").is_not_null() & pl.col("user_id").is_in(list(user_pos)))
        labels = ev.select(behavior_label_expr(min_rating).alias("g"))["g"].to_list()
        index = {g: i for i, g in enumerate(self.groups)}
        keep = np.fromiter((g in index for g in labels), dtype=bool, count=len(labels))
        users = np.fromiter((user_pos[u] for u in ev["user_id"]), dtype=np.int64, count=ev.height)
        items = np.fromiter((item_pos.get(i, -1) for i in ev["item_id"]), dtype=np.int64, count=ev.height)
        keep &= items >= 0
        vals = np.fromiter((index.get(g, 0) for g in labels), dtype=np.int64, count=len(labels))
        return BehaviorLabels.from_pairs(
            self.groups, self.n_items, users[keep], items[keep], vals[keep], self.default
        )

    def lookup(self, users: np.ndarray, histories: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Behaviour-type index of every history item (unknown pairs -> `default`)."""
        users = np.asarray(users, dtype=np.int64)
        if not len(self.keys):
            return [np.full(len(h), self.default, dtype=np.int64) for h in histories]
        out = []
        for u, h in zip(users, histories, strict=True):
            k = int(u) * self.n_items + np.asarray(h, dtype=np.int64)
            pos = np.searchsorted(self.keys, k).clip(max=len(self.keys) - 1)
            out.append(np.where(self.keys[pos] == k, self.values[pos], self.default).astype(np.int64))
        return out


# ---------------------------------------------------------------- item features


@dataclass
class ItemFeatures:
    """Sparse ids and the frozen title embeddings of every catalogue item, in split item order."""

    cats: np.ndarray  # (n_items, max_cats) int64; 0 = padding, c+1 = cat_names[c]
    brands: np.ndarray  # (n_items,) int64; 0 = unknown, b+1 = brand_names[b]
    text: np.ndarray  # (n_items, text_in) float32, frozen
    cat_names: list[str] = field(default_factory=list)
    brand_names: list[str] = field(default_factory=list)
    titles: list[str] = field(default_factory=list)

    @classmethod
    def from_items(cls, items: pl.DataFrame, embed: EmbedFn) -> ItemFeatures:
        """Vocabularies of categories and brands, and title embeddings (one `embed` call)."""
        for col in ("item_id", "title"):
            if col not in items.columns:
                raise ValueError(f"items table lacks column {col!r}")
        titles = [t or "" for t in items["title"].to_list()]
        paths = items["categories"].to_list() if "categories" in items.columns else [None] * items.height
        brands = items["brand"].to_list() if "brand" in items.columns else [None] * items.height
        cat_vocab: dict[str, int] = {}
        rows = [
            [cat_vocab.setdefault(c, len(cat_vocab)) + 1 for c in dict.fromkeys(p or []) if c] for p in paths
        ]
        width = max((len(r) for r in rows), default=0) or 1
        cats = np.zeros((len(rows), width), dtype=np.int64)
        for i, r in enumerate(rows):
            cats[i, : len(r)] = r
        brand_vocab: dict[str, int] = {}
        b_idx = np.asarray(
            [brand_vocab.setdefault(b, len(brand_vocab)) + 1 if b else 0 for b in brands], dtype=np.int64
        )
        text = np.asarray(embed(titles), dtype=np.float32)
        if text.shape[0] != len(titles) or text.ndim != 2:
            raise ValueError(f"embed() returned shape {text.shape} for {len(titles)} titles")
        return cls(
            cats=cats,
            brands=b_idx,
            text=text,
            cat_names=list(cat_vocab),
            brand_names=list(brand_vocab),
            titles=titles,
        )

    @property
    def n_items(self) -> int:
        return len(self.brands)


# ---------------------------------------------------------------- network


def _mlp(n_in: int, hidden: int, n_out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, n_out))


class TriTowerNet(nn.Module):
    """The three towers; item features live in buffers so `item_inputs` needs only indices."""

    def __init__(self, cfg: TriTowerConfig, n_users: int, feats: ItemFeatures, n_groups: int) -> None:
        super().__init__()
        self.n_groups = n_groups
        text_in = feats.text.shape[1]
        self.item_emb = nn.Embedding(feats.n_items, cfg.id_dim)
        self.cat_emb = nn.Embedding(len(feats.cat_names) + 1, cfg.cat_dim, padding_idx=0)
        self.brand_emb = nn.Embedding(len(feats.brand_names) + 1, cfg.brand_dim, padding_idx=0)
        self.text_proj = nn.Linear(text_in, cfg.text_dim)
        self.user_emb = nn.Embedding(n_users, cfg.id_dim)
        self.feat_dim = cfg.id_dim + cfg.cat_dim + cfg.brand_dim + cfg.text_dim
        self.item_mlp = _mlp(self.feat_dim, cfg.hidden, cfg.dim, cfg.dropout)
        self.user_mlp = _mlp(cfg.id_dim + n_groups * self.feat_dim, cfg.hidden, cfg.dim, cfg.dropout)
        self.tag_mlp = _mlp(text_in, cfg.hidden, cfg.dim, cfg.dropout)
        for emb in (self.item_emb, self.user_emb, self.cat_emb, self.brand_emb):
            nn.init.normal_(emb.weight, std=0.05)
        with torch.no_grad():
            self.cat_emb.weight[0].zero_()
            self.brand_emb.weight[0].zero_()
        self.register_buffer("cats", torch.from_numpy(feats.cats))
        self.register_buffer("brands", torch.from_numpy(feats.brands))
        self.register_buffer("text", torch.from_numpy(feats.text))

    def item_inputs(self, idx: torch.Tensor) -> torch.Tensor:
        """(n, feat_dim) concatenated item features: what the item MLP and the user pooling consume."""
        c = self.cats[idx]
        n_c = (c > 0).sum(-1, keepdim=True).clamp(min=1)
        cat = self.cat_emb(c).sum(-2) / n_c
        return torch.cat(
            [self.item_emb(idx), cat, self.brand_emb(self.brands[idx]), self.text_proj(self.text[idx])],
            dim=-1,
        )

    def item_tower(self, idx: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.item_mlp(self.item_inputs(idx)), dim=-1)

    def user_tower(self, users: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
        """`windows` (B, groups, L) item indices, -1 = empty; mean-pooled per behaviour type."""
        b = windows.shape[0]
        flat = windows.reshape(-1, windows.shape[-1])
        mask = flat >= 0
        uniq, inv = torch.unique(flat[mask], return_inverse=True)  # row-major: bags stay contiguous
        lens = mask.sum(1)
        offsets = torch.cumsum(lens, 0) - lens
        # mean per (user, behaviour type); an empty bag pools to zeros
        pooled = F.embedding_bag(inv, self.item_inputs(uniq), offsets, mode="mean")
        return F.normalize(
            self.user_mlp(torch.cat([self.user_emb(users), pooled.reshape(b, -1)], -1)), dim=-1
        )

    def tag_tower(self, text: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.tag_mlp(text), dim=-1)


def history_windows(
    histories: Sequence[np.ndarray], labels: Sequence[np.ndarray], n_groups: int, max_len: int
) -> np.ndarray:
    """(B, n_groups, max_len) int64: the last `max_len` items of each behaviour type, -1 padded."""
    out = np.full((len(histories), n_groups, max_len), -1, dtype=np.int64)
    for i, (h, g) in enumerate(zip(histories, labels, strict=True)):
        h = np.asarray(h, dtype=np.int64)
        for grp in range(n_groups):
            items = h[g == grp][-max_len:]
            out[i, grp, : len(items)] = items
    return out


# ---------------------------------------------------------------- fitted model


class TriTower:
    """A fitted tri-tower: network, item features, vocabularies and the text embedder for tags.

    `embed` (texts -> vectors, the same function the titles were embedded with) is needed only
    for `tag_vectors`; it is not saved and must be given again to `load`.
    """

    def __init__(
        self,
        config: TriTowerConfig,
        net: TriTowerNet,
        features: ItemFeatures,
        user_ids: np.ndarray,
        item_ids: np.ndarray,
        labels: BehaviorLabels,
        embed: EmbedFn | None = None,
    ) -> None:
        self.config, self.net, self.features, self.labels, self.embed = config, net, features, labels, embed
        self.user_ids = np.asarray(user_ids).astype(str)
        self.item_ids = np.asarray(item_ids).astype(str)
        self.user_pos = {u: i for i, u in enumerate(self.user_ids)}
        self.item_pos = {it: i for i, it in enumerate(self.item_ids)}
        self._item_vecs: np.ndarray | None = None

    @property
    def groups(self) -> list[str]:
        return self.labels.groups

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def invalidate(self) -> None:
        """Forget cached item vectors (call after changing the weights)."""
        self._item_vecs = None

    @torch.no_grad()
    def item_vectors(self) -> np.ndarray:
        """(n_items, dim) float32, L2-normalised; cached."""
        if self._item_vecs is None:
            self.net.eval()
            idx = torch.arange(self.n_items)
            self._item_vecs = torch.cat([self.net.item_tower(c) for c in idx.split(4096)]).numpy()
        return self._item_vecs

    def labels_for(self, events: pl.DataFrame) -> BehaviorLabels:
        """Behaviour labels from events a caller may see (e.g. `split.test.asof.events()`)."""
        return self.labels.with_events(events, self.user_pos, self.item_pos, self.config.min_rating)

    @torch.no_grad()
    def user_vectors(
        self, users: np.ndarray, histories: Sequence[np.ndarray], labels: BehaviorLabels | None = None
    ) -> np.ndarray:
        """(len(users), dim) float32 user-tower vectors from as-of histories (item indices)."""
        users = np.asarray(users, dtype=np.int64).reshape(-1)
        if len(users) != len(histories):
            raise ValueError(f"got {len(users)} users but {len(histories)} histories")
        if len(users) and (users.min() < 0 or users.max() >= len(self.user_ids)):
            raise ValueError(f"user index out of range [0, {len(self.user_ids)})")
        self.net.eval()
        lab = (labels or self.labels).lookup(users, histories)
        out = []
        for lo in range(0, len(users), 1024):
            w = history_windows(
                histories[lo : lo + 1024], lab[lo : lo + 1024], self.net.n_groups, self.config.max_history
            )
            out.append(self.net.user_tower(torch.from_numpy(users[lo : lo + 1024]), torch.from_numpy(w)))
        return torch.cat(out).numpy() if out else np.zeros((0, self.config.dim), np.float32)

    @torch.no_grad()
    def tag_vectors(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) float32 tag-tower vectors; needs the text embedder."""
        if self.embed is None:
            raise RuntimeError("this TriTower has no text embedder; pass embed= to TriTower.load()")
        if not len(texts):
            return np.zeros((0, self.config.dim), np.float32)
        self.net.eval()
        emb = np.asarray(self.embed(list(texts)), dtype=np.float32)
        return self.net.tag_tower(torch.from_numpy(emb)).numpy()

    # ------------------------------------------------------------ disk
    def save(self, path: str | Path) -> Path:
        """A folder with the weights (tritower.pt), features/vocabularies (.npz) and config (.json)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        torch.save(self.net.state_dict(), path / "tritower.pt")
        f = self.features
        np.savez(
            path / "tritower.npz",
            cats=f.cats,
            brands=f.brands,
            text=f.text,
            user_ids=self.user_ids,
            item_ids=self.item_ids,
            label_keys=self.labels.keys,
            label_values=self.labels.values,
        )
        meta = {
            "config": asdict(self.config),
            "groups": self.groups,
            "default_group": self.labels.default,
            "cat_names": f.cat_names,
            "brand_names": f.brand_names,
            "titles": f.titles,
        }
        (path / "tritower.json").write_text(json.dumps(meta, indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path, embed: EmbedFn | None = None) -> TriTower:
        path = Path(path)
        if not (path / "tritower.json").exists():
            raise FileNotFoundError(f"no saved tri-tower in {path} (tritower.json missing)")
        meta = json.loads((path / "tritower.json").read_text())
        arr = np.load(path / "tritower.npz", allow_pickle=False)
        cfg = TriTowerConfig.from_dict(meta["config"])
        feats = ItemFeatures(
            cats=arr["cats"],
            brands=arr["brands"],
            text=arr["text"],
            cat_names=meta["cat_names"],
            brand_names=meta["brand_names"],
            titles=meta["titles"],
        )
        labels = BehaviorLabels(
            groups=meta["groups"],
            n_items=feats.n_items,
            keys=arr["label_keys"],
            values=arr["label_values"],
            default=int(meta["default_group"]),
        )
        net = TriTowerNet(cfg, len(arr["user_ids"]), feats, len(labels.groups))
        net.load_state_dict(torch.load(path / "tritower.pt", weights_only=True))
        return cls(cfg, net, feats, arr["user_ids"], arr["item_ids"], labels, embed)
