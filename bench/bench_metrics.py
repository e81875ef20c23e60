"""Benchmark `recgpt.eval.metrics.evaluate_lists` against a naive per-user loop and check they agree.

The naive implementation below is the baseline (and the independent reference that
tests/eval/test_metrics.py cross-checks on small inputs): one Python iteration per user, plain sets
and per-list similarity matrices, written straight from docs/metrics.md with the conventions of the
metrics module docstring (empty slots -1, users without truth left out of accuracy, ...).

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_metrics.py            # 10k users x top-50, 10k items
    .venv/bin/python bench/bench_metrics.py --users 2000 --skip-naive     # quick timing only
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse
import math
import sys
import time
from collections import Counter
from typing import Any

import numpy as np
import scipy.sparse as sp

from recgpt.eval.metrics import DEFAULT_KS, TAIL_RATIO, evaluate_lists


def _unit_dense(x: Any) -> np.ndarray:
    d = x.toarray() if sp.issparse(x) else np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(d, axis=1, keepdims=True)
    return np.divide(d, norms, out=np.zeros_like(d, dtype=np.float64), where=norms > 0)


def naive_evaluate(
    recs: np.ndarray,
    truth: Any,
    *,
    item_popularity: np.ndarray,
    ks: tuple[int, ...] = DEFAULT_KS,
    item_features: Any = None,
    item_embeddings: np.ndarray | None = None,
    item_categories: Any = None,
    histories: Any = None,
    tail_ratio: float = TAIL_RATIO,
) -> dict[str, float]:
    """Per-user loop version of `evaluate_lists` (same keys, same conventions)."""
    n_users, width = recs.shape
    pop = [float(p) for p in item_popularity]
    n_items = len(pop)
    if sp.issparse(truth):
        t = sp.csr_matrix(truth)
        truth_sets = [set(t.indices[t.indptr[u] : t.indptr[u + 1]].tolist()) for u in range(n_users)]
    else:
        truth_sets = [set() if int(x) < 0 else {int(x)} for x in truth]
    if tail_ratio > 1:
        tail = {i for i in range(n_items) if pop[i] <= tail_ratio}
    else:
        ranked = sorted(range(n_items), key=lambda i: (pop[i], i))
        tail = set(ranked[: max(int(n_items * tail_ratio), 1)])
    total_pop = sum(pop)
    nov = [-math.log2((p + 1.0) / (total_pop + n_items)) for p in pop]
    sims = {}
    if item_features is not None:
        sims[""] = _unit_dense(item_features)
    if item_embeddings is not None:
        sims["-emb"] = _unit_dense(item_embeddings)
    cat_sets = None
    if item_categories is not None:
        c = sp.csr_matrix(item_categories)
        cat_sets = [set(c.indices[c.indptr[i] : c.indptr[i + 1]].tolist()) for i in range(n_items)]
    hist_lists = None
    if histories is not None:
        h = sp.csr_matrix(histories)
        hist_lists = [sorted(set(h.indices[h.indptr[u] : h.indptr[u + 1]].tolist())) for u in range(n_users)]

    acc: dict[str, list[float]] = {}
    per_list: dict[str, list[float]] = {}
    exposure = {k: Counter() for k in ks}
    for u in range(n_users):
        row = [int(i) for i in recs[u]] + [-1] * max(0, max(ks) - width)
        targets = truth_sets[u]
        full = [i for i in row if i >= 0]
        sim_mats = {sfx: vecs[full] @ vecs[full].T for sfx, vecs in sims.items()}
        for k in ks:
            top = row[:k]
            items = [i for i in top if i >= 0]
            exposure[k].update(items)
            if targets:
                hit_pos = [j for j, i in enumerate(top) if i >= 0 and i in targets]
                dcg = sum(1.0 / math.log2(j + 2) for j in hit_pos)
                idcg = sum(1.0 / math.log2(j + 2) for j in range(min(len(targets), k)))
                acc.setdefault(f"HR@{k}", []).append(1.0 if hit_pos else 0.0)
                acc.setdefault(f"Recall@{k}", []).append(len(hit_pos) / len(targets))
                acc.setdefault(f"Precision@{k}", []).append(len(hit_pos) / k)
                acc.setdefault(f"NDCG@{k}", []).append(dcg / idcg)
                acc.setdefault(f"MRR@{k}", []).append(1.0 / (hit_pos[0] + 1) if hit_pos else 0.0)
            if items:
                per_list.setdefault(f"AvgPop@{k}", []).append(sum(pop[i] for i in items) / len(items))
                per_list.setdefault(f"Tail@{k}", []).append(sum(i in tail for i in items) / len(items))
                per_list.setdefault(f"Novelty@{k}", []).extend(nov[i] for i in items)
            for sfx, mat in sim_mats.items():
                m = len(items)
                ild = 0.0
                if m >= 2:
                    sub = mat[:m, :m]  # items are a prefix of `full` (empty slots removed)
                    ild = 1.0 - (sub.sum() - np.trace(sub)) / (m * (m - 1))
                per_list.setdefault(f"ILD{sfx}@{k}", []).append(float(ild))
                if hist_lists is not None and targets:
                    hist = hist_lists[u]
                    ser = 0.0
                    for i in items:
                        if i in targets:
                            if hist:
                                ser += 1.0 - float(np.mean(sims[sfx][hist] @ sims[sfx][i]))
                            else:
                                ser += 1.0
                    per_list.setdefault(f"Serendipity{sfx}@{k}", []).append(ser / max(len(items), 1))
            if cat_sets is not None:
                distinct = len(set().union(*(cat_sets[i] for i in items))) if items else 0
                per_list.setdefault(f"CatDiv@{k}", []).append(float(distinct))

    out: dict[str, float] = {}
    for k in ks:
        for name in ("HR", "Recall", "Precision", "NDCG", "MRR"):
            out[f"{name}@{k}"] = float(np.mean(acc[f"{name}@{k}"]))
        counts = exposure[k]
        total = sum(counts.values())
        out[f"Coverage@{k}"] = len(counts) / n_items
        srt = sorted([0] * (n_items - len(counts)) + list(counts.values()))
        out[f"Gini@{k}"] = sum((2 * j - n_items - 1) * c for j, c in enumerate(srt, start=1)) / (
            n_items * total
        )
        out[f"Entropy@{k}"] = -sum(c / total * math.log2(c / total) for c in counts.values())
        for name in ("AvgPop", "Tail", "Novelty"):
            out[f"{name}@{k}"] = float(np.mean(per_list[f"{name}@{k}"]))
        for key in [f"ILD{s}@{k}" for s in sims] + [f"Serendipity{s}@{k}" for s in sims if hist_lists]:
            out[key] = float(np.mean(per_list[key]))
        if cat_sets is not None:
            n_cats = sp.csr_matrix(item_categories).shape[1]
            out[f"CatDiv@{k}"] = float(np.mean(per_list[f"CatDiv@{k}"]))
            out[f"CatDivNorm@{k}"] = out[f"CatDiv@{k}"] / min(k, n_cats)
    return out


def make_data(n_users: int, n_items: int, k: int, seed: int = 0) -> dict[str, Any]:
    """Random but realistic inputs: popularity-skewed lists, LOO targets, a few short lists and gaps."""
    rng = np.random.default_rng(seed)
    popularity = np.floor(rng.pareto(1.2, n_items) * 5).astype(np.float64)
    logits = np.log1p(popularity)
    recs = np.empty((n_users, k), dtype=np.int64)
    for start in range(0, n_users, 1000):  # Gumbel top-k, popularity-biased, no repeats in a row
        g = logits + rng.gumbel(size=(min(1000, n_users - start), n_items))
        top = np.argpartition(-g, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(g, top, axis=1), axis=1)
        recs[start : start + len(top)] = np.take_along_axis(top, order, axis=1)
    short = rng.random(n_users) < 0.02  # LLM-style short lists: trailing empty slots
    recs[short, k // 2 :] = -1
    recs[rng.random(recs.shape) < 0.005] = -1  # isolated invalid generations
    in_list = rng.random(n_users) < 0.3
    targets = rng.integers(0, n_items, n_users)
    pick = recs[np.arange(n_users), rng.integers(0, k // 2, n_users)]
    targets = np.where(in_list & (pick >= 0), pick, targets)
    targets[rng.random(n_users) < 0.01] = -1  # users without a test item
    n_genres, n_cats = 20, 200
    rows = np.repeat(np.arange(n_items), 3)
    features = sp.csr_matrix(
        (np.ones(len(rows)), (rows, rng.integers(0, n_genres, len(rows)))), shape=(n_items, n_genres)
    )
    features.data[:] = 1.0
    categories = sp.csr_matrix(
        (np.ones(2 * n_items), (np.repeat(np.arange(n_items), 2), rng.integers(0, n_cats, 2 * n_items))),
        shape=(n_items, n_cats),
        dtype=bool,
    )
    h_len = rng.integers(0, 100, n_users)
    h_rows = np.repeat(np.arange(n_users), h_len)
    histories = sp.csr_matrix(
        (np.ones(len(h_rows), dtype=np.float32), (h_rows, rng.integers(0, n_items, len(h_rows)))),
        shape=(n_users, n_items),
    )
    return {
        "recs": recs,
        "truth": targets,
        "item_popularity": popularity,
        "item_features": features,
        "item_embeddings": rng.standard_normal((n_items, 64)).astype(np.float32),
        "item_categories": categories,
        "histories": histories,
    }


def compare(fast: dict[str, float], slow: dict[str, float], tol: float = 1e-9) -> float:
    """Largest relative difference; raises if the key sets differ."""
    if set(fast) != set(slow):
        raise AssertionError(f"key mismatch: {sorted(set(fast) ^ set(slow))}")
    return max(abs(fast[key] - slow[key]) / max(1.0, abs(slow[key])) for key in fast)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3, help="timed runs of evaluate_lists (best is kept)")
    ap.add_argument("--budget", type=float, default=5.0, help="seconds evaluate_lists may take")
    ap.add_argument("--skip-naive", action="store_true")
    args = ap.parse_args(argv)

    data = make_data(args.users, args.items, args.k, args.seed)
    ks = tuple(k for k in DEFAULT_KS if k <= args.k)
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        fast = evaluate_lists(**data, ks=ks)
        times.append(time.perf_counter() - t0)
    t_fast = min(times)
    print(f"{args.users} users x top-{args.k}, {args.items} items, {len(fast)} metric values")
    print(f"evaluate_lists: {t_fast:.3f} s (best of {args.repeat}: {', '.join(f'{t:.3f}' for t in times)})")
    for k in ks:
        keys = [key for key in fast if key.endswith(f"@{k}")]
        print("  " + "  ".join(f"{key}={fast[key]:.4f}" for key in keys))
    ok = t_fast < args.budget
    if not args.skip_naive:
        t0 = time.perf_counter()
        slow = naive_evaluate(**data, ks=ks)
        t_slow = time.perf_counter() - t0
        diff = compare(fast, slow)
        print(f"naive per-user loop: {t_slow:.3f} s; speed-up x{t_slow / t_fast:.1f}")
        print(f"max relative difference over {len(fast)} values: {diff:.2e}")
        ok = ok and diff < 1e-9
    print("OK" if ok else f"FAIL (budget {args.budget} s, tolerance 1e-9)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
