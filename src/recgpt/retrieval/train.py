"""Training the tri-tower (papers.md §1.5): ``L = L_col + α·L_tag + (1−α)·L_cate``, all InfoNCE.

Choices where the paper is silent (all in `TriTowerConfig`):

* **Samples.** Every training interaction (u, v) is an L_col positive, with the user state *as of just
  before it* (the causal prefix of each behaviour type, last L items). The user tower thus learns
  next-item prediction and never sees its positive among its inputs.
* **Negatives.** In-batch positives plus ``n_negatives`` uniformly drawn catalogue items shared by the
  batch. A negative that is really a positive — the row's own item, or (tag losses) an item carrying
  the anchor's category — is masked out rather than pushed away.
* **Training tags** (the paper's incremental learning uses the clicked item's title as its tag): the
  tag of a positive v is its title with probability ``title_tag_prob``, otherwise one of its category
  names drawn uniformly (a "category phrase", e.g. ``Film-Noir``; a path level for Amazon-style
  paths). Both are derived from the item's own text, so no user text and no LLM output is trained on.
* **L_cate.** Anchor = the same tag; its category c = the tag's category for a category tag, else a
  random category of v; positive = a random item of category c; negatives = the other rows' L_cate
  positives and the sampled items, minus any item carrying c. Rows whose item has no category skip it.
* **Early stopping** on NDCG@10 of the user tower alone on the *validation* task (seen items masked);
  the test task is never touched here.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F

from recgpt.data.interactions import Interactions
from recgpt.data.ranking import mask_seen, topk
from recgpt.data.split import EvalTask, Split
from recgpt.eval.metrics import evaluate_lists
from recgpt.retrieval.tritower import (
    BehaviorLabels,
    EmbedFn,
    ItemFeatures,
    TriTower,
    TriTowerConfig,
    TriTowerNet,
    behavior_label_expr,
)


@dataclass
class TrainResult:
    """The fitted model, per-epoch log, the epoch kept, and the pairs training drew positives from."""

    model: TriTower
    history: list[dict[str, float]]
    best_epoch: int
    train_s: float
    pairs: tuple[np.ndarray, np.ndarray] = field(repr=False)  # (user_idx, item_idx), for leakage checks


def training_behaviors(split: Split, min_rating: float = 4.0) -> np.ndarray:
    """Behaviour type of every `split.train` interaction, aligned row by row (same filter as make_split)."""
    cfg = split.config
    ev = split.train_events.filter(pl.col("item_id").is_not_null())
    if cfg.target_behaviors:
        ev = ev.filter(pl.col("behavior").is_in(list(cfg.target_behaviors)))
    else:
        ev = ev.filter(~pl.col("behavior").is_in(list(cfg.non_target_behaviors)))
    if ev.height != len(split.train.item_idx) or not np.array_equal(
        ev["item_id"].to_numpy().astype(str), split.item_ids[split.train.item_idx]
    ):
        raise ValueError("split.train_events do not line up with split.train; was the split modified?")
    return ev.select(behavior_label_expr(min_rating).alias("g"))["g"].to_numpy().astype(str)


class _Sampler:
    """Vectorised causal windows: the last L items of each behaviour type before each interaction."""

    def __init__(self, train: Interactions, groups: np.ndarray, n_groups: int, max_len: int) -> None:
        u, n = train.user_idx, len(train.user_idx)
        if n and np.any(np.diff(u) < 0):
            raise ValueError("Interactions must be sorted by user (chronological within a user)")
        self.n_groups, self.max_len = n_groups, max_len
        order = np.lexsort((np.arange(n), groups, u))
        self.gitems = train.item_idx[order]
        key = (u * n_groups + groups)[order]
        self.gstart = np.searchsorted(key, np.arange(train.n_users * n_groups))
        onehot = np.zeros((n + 1, n_groups), dtype=np.int64)
        onehot[np.arange(n) + 1, groups] = 1
        cum = np.cumsum(onehot, axis=0)  # cum[j] = counts before interaction j (global)
        self.before = cum[:n] - cum[np.searchsorted(u, u)]
        self.users = u

    def windows(self, js: np.ndarray) -> np.ndarray:
        cnt = self.before[js]  # (B, G)
        take = np.minimum(cnt, self.max_len)
        start = self.gstart[self.users[js, None] * self.n_groups + np.arange(self.n_groups)] + cnt - take
        ar = np.arange(self.max_len)
        idx = start[..., None] + ar
        return np.where(ar < take[..., None], self.gitems[idx.clip(max=len(self.gitems) - 1)], -1)


def _info_nce(
    q: torch.Tensor,
    cand: torch.Tensor,
    rows: torch.Tensor,
    mask: torch.Tensor,
    tau: float,
    log_q: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy of row i against candidate rows[i] (the positive); masked candidates are dropped.

    `log_q` (per candidate) is the log of how often the candidate is drawn; subtracting it (the
    "logQ" correction) keeps in-batch negatives from penalising popular items just for being popular.
    """
    logits = q @ cand.T / tau
    if log_q is not None:
        logits = logits - log_q
    return F.cross_entropy(logits.masked_fill(mask, float("-inf")), rows)


def _has_cat(cats: torch.Tensor, cand: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """(len(c), len(cand)) bool: candidate item carries category c (c == 0: nothing).

    `cats` is either the dense (n_items, n_cats + 1) incidence (column 0 all False) or, for catalogues
    too large for that, the padded (n_items, max_cats) id matrix.
    """
    if cats.dtype == torch.bool:
        return cats[cand][:, c].T
    return (cats[cand].unsqueeze(0) == c.view(-1, 1, 1)).any(-1) & (c.view(-1, 1) > 0)


def _category_lookup(feats: ItemFeatures, max_cells: int = 50_000_000) -> torch.Tensor:
    """The fastest membership table `_has_cat` can use within a memory cap."""
    n_cols = len(feats.cat_names) + 1
    if feats.n_items * n_cols > max_cells:
        return torch.from_numpy(feats.cats)
    dense = np.zeros((feats.n_items, n_cols), dtype=bool)
    dense[np.repeat(np.arange(feats.n_items), feats.cats.shape[1]), feats.cats.ravel()] = True
    dense[:, 0] = False
    return torch.from_numpy(dense)


class _Batches:
    """Draws everything one step needs (positives, windows, tags, category positives, negatives)."""

    def __init__(
        self, train: Interactions, feats: ItemFeatures, sampler: _Sampler, cfg: TriTowerConfig
    ) -> None:
        self.train, self.feats, self.sampler, self.cfg = train, feats, sampler, cfg
        self.ncat = (feats.cats > 0).sum(1)
        item, cat = np.nonzero(feats.cats)
        flat_cat = feats.cats[item, cat]
        order = np.lexsort((item, flat_cat))
        self.cat_items = item[order]
        self.cat_start = np.searchsorted(flat_cat[order], np.arange(len(feats.cat_names) + 2))
        self.cat_lookup = _category_lookup(feats)
        # candidates of L_col / L_tag: the batch's positives (~ popularity) plus uniform negatives
        pop = train.item_popularity / max(len(train.item_idx), 1)
        self.log_q = (
            torch.from_numpy(
                np.log(cfg.batch_size * pop + cfg.n_negatives / feats.n_items + 1e-12).astype(np.float32)
            )
            if cfg.logq_correction
            else None
        )

    def draw(self, js: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        v = self.train.item_idx[js]
        n_items = self.feats.n_items
        pick = (rng.random(len(v)) * np.maximum(self.ncat[v], 1)).astype(np.int64)
        rc = self.feats.cats[v, pick]  # 1-based category, 0 when the item has none
        is_title = (rng.random(len(v)) < self.cfg.title_tag_prob) | (rc == 0)
        lo, hi = self.cat_start[rc], self.cat_start[rc + 1]
        draw = (lo + rng.random(len(v)) * (hi - lo)).astype(np.int64)  # uniform item of category rc
        cate_pos = (
            np.where(rc > 0, self.cat_items[draw.clip(max=len(self.cat_items) - 1)], v)
            if len(self.cat_items)
            else v
        )
        return {
            "users": self.train.user_idx[js],
            "items": v,
            "windows": self.sampler.windows(js),
            "tag": np.where(is_title, v, n_items + rc - 1),
            "tag_cat": np.where(is_title, 0, rc),
            "cate_cat": rc,
            "cate_pos": cate_pos,
            "neg": rng.integers(0, n_items, self.cfg.n_negatives),
        }


def _step_losses(
    net: TriTowerNet,
    tag_text: torch.Tensor,
    cats: torch.Tensor,
    log_q: torch.Tensor | None,
    b: dict[str, np.ndarray],
    cfg: TriTowerConfig,
) -> dict[str, torch.Tensor]:
    t = {k: torch.from_numpy(v) for k, v in b.items()}
    v, neg, cpos = t["items"], t["neg"], t["cate_pos"]
    n_b = len(v)
    cand1, cand2 = torch.cat([v, neg]), torch.cat([cpos, neg])
    uniq, inv = torch.unique(torch.cat([cand1, cand2]), return_inverse=True)
    h_all = net.item_tower(uniq)[inv]
    h1, h2 = h_all[: len(cand1)], h_all[len(cand1) :]
    rows = torch.arange(n_b)
    off_diag = torch.ones(n_b, len(cand1), dtype=torch.bool)
    off_diag[rows, rows] = False
    tau = cfg.temperature
    lq = log_q[cand1] if log_q is not None else None

    hu = net.user_tower(t["users"], t["windows"])
    l_col = _info_nce(hu, h1, rows, (cand1.unsqueeze(0) == v.unsqueeze(1)) & off_diag, tau, lq)

    ht = net.tag_tower(tag_text[t["tag"]])
    title_row = (t["tag_cat"] == 0).unsqueeze(1)
    tag_mask = torch.where(
        title_row, cand1.unsqueeze(0) == v.unsqueeze(1), _has_cat(cats, cand1, t["tag_cat"])
    )
    l_tag = _info_nce(ht, h1, rows, tag_mask & off_diag, tau, lq)

    has_c = t["cate_cat"] > 0
    if bool(has_c.any()):
        r = rows[has_c]
        mask = _has_cat(cats, cand2, t["cate_cat"][has_c]) & off_diag[has_c]
        l_cate = _info_nce(ht[has_c], h2, r, mask, tau)
    else:
        l_cate = torch.zeros(())
    total = l_col + cfg.alpha * l_tag + (1 - cfg.alpha) * l_cate
    return {"loss": total, "col": l_col, "tag": l_tag, "cate": l_cate}


def user_tower_lists(
    model: TriTower, task: EvalTask, k: int, labels: BehaviorLabels | None = None
) -> np.ndarray:
    """Top-k lists of the user tower alone for a task's users (seen items masked)."""
    uv = model.user_vectors(task.user_idx, task.histories, labels)
    scores = uv @ model.item_vectors().T
    return topk(mask_seen(scores, task.histories), k)


def evaluate_user_tower(
    model: TriTower, task: EvalTask, labels: BehaviorLabels | None = None, k: int = 10
) -> dict[str, float]:
    """NDCG@k / HR@k of the user tower on a task (the early-stopping signal on validation)."""
    recs = user_tower_lists(model, task, k, labels)
    truth = np.asarray([t[0] if len(t) else -1 for t in task.targets], dtype=np.int64)
    m = evaluate_lists(recs, truth, item_popularity=np.ones(model.n_items), ks=(k,))
    return {f"NDCG@{k}": m[f"NDCG@{k}"], f"HR@{k}": m[f"HR@{k}"]}


def train_tritower(
    train: Interactions,
    items: pl.DataFrame,
    config: TriTowerConfig | None = None,
    *,
    embed: EmbedFn,
    behaviors: Sequence[str] | np.ndarray | None = None,
    user_ids: Sequence[str] | np.ndarray | None = None,
    valid: EvalTask | None = None,
    progress: bool = True,
) -> TrainResult:
    """Fit the three towers on training interactions and item metadata only.

    `behaviors` gives each interaction's behaviour type (default: one type for all); `valid` turns on
    early stopping on the validation task (never pass the test task).
    """
    cfg = config or TriTowerConfig()
    if len(train.item_idx) == 0:
        raise ValueError("training interactions are empty")
    if items.height != train.n_items:
        raise ValueError(
            f"items table has {items.height} rows but the interactions know {train.n_items} items"
        )
    beh = np.asarray(behaviors if behaviors is not None else ["all"] * len(train.item_idx)).astype(str)
    if len(beh) != len(train.item_idx):
        raise ValueError(f"{len(beh)} behaviour labels for {len(train.item_idx)} interactions")
    groups, gidx, counts = np.unique(beh, return_inverse=True, return_counts=True)
    labels = BehaviorLabels.from_pairs(
        [str(g) for g in groups],
        train.n_items,
        train.user_idx,
        train.item_idx,
        gidx,
        default=int(np.argmax(counts)),
    )
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    t0 = time.perf_counter()
    try:
        feats = ItemFeatures.from_items(items, embed)
        net = TriTowerNet(cfg, train.n_users, feats, len(groups))
        uids = np.asarray(user_ids if user_ids is not None else np.arange(train.n_users)).astype(str)
        model = TriTower(cfg, net, feats, uids, items["item_id"].to_numpy().astype(str), labels, embed)
        cat_text = np.asarray(embed(feats.cat_names), np.float32) if feats.cat_names else feats.text[:0]
        tag_text = torch.from_numpy(np.concatenate([feats.text, cat_text.reshape(-1, feats.text.shape[1])]))
        batches = _Batches(train, feats, _Sampler(train, gidx, len(groups), cfg.max_history), cfg)
        valid_labels = model.labels_for(valid.asof.events()) if valid is not None else None
        history, best_state, best_epoch = _fit_loop(
            model, batches, tag_text, rng, valid, valid_labels, progress
        )
        if best_state is not None:
            net.load_state_dict(best_state)
        model.invalidate()
    finally:
        torch.set_num_threads(prev_threads)
    return TrainResult(model, history, best_epoch, time.perf_counter() - t0, (train.user_idx, train.item_idx))


def _fit_loop(
    model: TriTower,
    batches: _Batches,
    tag_text: torch.Tensor,
    rng: np.random.Generator,
    valid: EvalTask | None,
    valid_labels: BehaviorLabels | None,
    progress: bool,
) -> tuple[list[dict[str, float]], dict[str, Any] | None, int]:
    """Epochs with a progress bar; returns the log, the best validation state (if any) and its epoch."""
    from rich.console import Console

    from recgpt.progress import make_progress

    cfg, net = model.config, model.net
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n = len(batches.train.item_idx)
    history: list[dict[str, float]] = []
    best, best_state, best_epoch, bad = -1.0, None, cfg.epochs, 0
    with make_progress(Console(), progress) as bar:
        task_id = bar.add_task("tri-tower", total=cfg.epochs)
        for epoch in range(1, cfg.epochs + 1):
            t0 = time.perf_counter()
            net.train()
            sums = {"loss": 0.0, "col": 0.0, "tag": 0.0, "cate": 0.0}
            perm = rng.permutation(n)
            n_batches = 0
            for lo in range(0, n, cfg.batch_size):
                batch = batches.draw(perm[lo : lo + cfg.batch_size], rng)
                losses = _step_losses(net, tag_text, batches.cat_lookup, batches.log_q, batch, cfg)
                opt.zero_grad()
                losses["loss"].backward()
                opt.step()
                for k in sums:
                    sums[k] += float(losses[k].detach())
                n_batches += 1
            model.invalidate()
            row = {
                "epoch": float(epoch),
                **{k: s / n_batches for k, s in sums.items()},
                "seconds": time.perf_counter() - t0,
            }
            if valid is not None:
                row.update(
                    {f"valid_{k}": v for k, v in evaluate_user_tower(model, valid, valid_labels).items()}
                )
            history.append(row)
            desc = f"tri-tower loss {row['loss']:.3f}"
            if valid is not None:
                score = row["valid_NDCG@10"]
                desc += f" valid NDCG@10 {score:.4f}"
                if score > best:
                    best, best_state, best_epoch, bad = score, copy.deepcopy(net.state_dict()), epoch, 0
                else:
                    bad += 1
            bar.update(task_id, advance=1, description=desc)
            if valid is not None and bad >= cfg.patience:
                break
    return history, best_state, best_epoch


def train_on_split(
    split: Split,
    config: TriTowerConfig | None = None,
    *,
    embed: EmbedFn,
    early_stopping: bool = True,
    progress: bool = True,
) -> TrainResult:
    """`train_tritower` on `split.train` + `split.dataset.items`, behaviour types from the train events."""
    cfg = config or TriTowerConfig()
    if not np.array_equal(split.dataset.items["item_id"].to_numpy().astype(str), split.item_ids):
        raise ValueError("split.dataset.items is not in split item order")
    return train_tritower(
        split.train,
        split.dataset.items,
        cfg,
        embed=embed,
        behaviors=training_behaviors(split, cfg.min_rating),
        user_ids=split.user_ids,
        valid=split.valid if early_stopping and len(split.valid) else None,
        progress=progress,
    )
