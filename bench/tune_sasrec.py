"""Tune SASRec on the validation split and report full-ranking LOO test metrics.

Standalone on purpose (reads the raw files itself) so the numbers can be reproduced without the
dataset importers. Protocol (docs/baselines.md §3.1): per user the last item is the test target, the
second-last the validation target, the rest is training; every catalogue item is a candidate;
ml-100k masks the user's history, amazon-scientific does not. Each configuration is fitted once on
the training part, validation picks the configuration, and its test row is the reported one.

    OMP_NUM_THREADS=2 .venv/bin/python bench/tune_sasrec.py --dataset ml-100k --threads 2
    .venv/bin/python bench/tune_sasrec.py --dataset amazon-scientific --set hidden=128 dropout=0.5
"""

from __future__ import annotations

import argparse
import ast
import json
import resource
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recgpt.baselines.base import Interactions
from recgpt.baselines.sasrec import SASRec
from recgpt.eval.ranking import mask_seen, topk

DATA = Path("/work/shared/data")


@dataclass
class LOOSplit:
    """Full chronological sequences with the last two items held out per user."""

    name: str
    n_items: int
    seqs: list[np.ndarray]
    mask: bool

    def train(self) -> Interactions:
        parts = [s[:-2] for s in self.seqs]
        users = np.repeat(np.arange(len(parts)), [len(s) for s in parts])
        items = np.concatenate(parts).astype(np.int64)
        ts = np.concatenate([np.arange(len(s)) for s in parts]).astype(np.int64)
        return Interactions(len(parts), self.n_items, users.astype(np.int64), items, ts)

    def eval_set(self, which: str) -> tuple[list[np.ndarray], np.ndarray]:
        """(histories, targets) for 'valid' (history = train) or 'test' (history = train + valid)."""
        cut = 2 if which == "valid" else 1
        return [s[:-cut] for s in self.seqs], np.array([s[-cut] for s in self.seqs], dtype=np.int64)


def load_ml100k() -> LOOSplit:
    """u.data, ordered per user by timestamp with ties kept in file order (stable sort)."""
    raw = np.loadtxt(DATA / "ml-100k/u.data", dtype=np.int64)
    order = np.lexsort((np.arange(len(raw)), raw[:, 3], raw[:, 0]))
    raw = raw[order]
    users, starts = np.unique(raw[:, 0], return_index=True)
    if not np.array_equal(users, np.arange(1, 944)) or raw[:, 1].max() != 1682:
        raise ValueError("unexpected ml-100k ids: expected users 1..943 and items 1..1682")
    seqs = np.split(raw[:, 1] - 1, starts[1:])
    return LOOSplit("ml-100k", 1682, [s.astype(np.int64) for s in seqs], mask=True)


def _read_inter(path: Path) -> list[tuple[int, list[int], int]]:
    rows = []
    with path.open() as f:
        next(f)
        for line in f:
            u, hist, tgt = line.rstrip("\n").split("\t")
            rows.append((int(u), [int(x) for x in hist.split()], int(tgt)))
    return rows


def load_scientific() -> LOOSplit:
    """Rebuild each user's sequence from the prefix rows of train.inter plus valid/test targets."""
    base = DATA / "amazon-scientific"
    by_user: dict[int, list[tuple[list[int], int]]] = defaultdict(list)
    for u, hist, tgt in _read_inter(base / "Scientific.train.inter"):
        by_user[u].append((hist, tgt))
    valid = {u: (h, t) for u, h, t in _read_inter(base / "Scientific.valid.inter")}
    test = {u: (h, t) for u, h, t in _read_inter(base / "Scientific.test.inter")}
    n_users = 8442
    seqs = []
    for u in range(n_users):
        rows = by_user[u][::-1]  # the file lists prefixes longest first
        seq = list(rows[0][0])
        for hist, tgt in rows:
            if hist != seq[-50:]:
                raise ValueError(f"user {u}: train prefixes are not consecutive")
            seq.append(tgt)
        for part, name in ((valid, "valid"), (test, "test")):
            hist, tgt = part[u]
            if hist != seq[-50:]:
                raise ValueError(f"user {u}: {name} history does not continue the train sequence")
            seq.append(tgt)
        seqs.append(np.array(seq, dtype=np.int64))
    return LOOSplit("amazon-scientific", 4385, seqs, mask=False)


def evaluate(
    model: SASRec, split: LOOSplit, which: str, mask: bool | None = None, batch: int = 1024
) -> dict[str, float]:
    """HR@10, NDCG@10, NDCG@20 over all users, full ranking via recgpt.eval.ranking."""
    mask = split.mask if mask is None else mask
    hists, targets = split.eval_set(which)
    ranks = []
    for s in range(0, len(hists), batch):
        h, t = hists[s : s + batch], targets[s : s + batch]
        scores = model.score(np.arange(s, s + len(h)), h)
        if mask:
            mask_seen(scores, h)
        top = topk(scores, 20)
        hit = top == t[:, None]
        ranks.append(np.where(hit.any(axis=1), hit.argmax(axis=1) + 1, 10**9))
    r = np.concatenate(ranks)
    gain = 1.0 / np.log2(r + 1.0)
    return {
        "HR@10": float((r <= 10).mean()),
        "NDCG@10": float(np.where(r <= 10, gain, 0).mean()),
        "NDCG@20": float(np.where(r <= 20, gain, 0).mean()),
    }


def run_config(split: LOOSplit, params: dict[str, Any], seed: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    model = SASRec(**params).fit(split.train(), seed=seed)
    fit_s = time.perf_counter() - t0
    val, test = evaluate(model, split, "valid"), evaluate(model, split, "test")
    return {
        "params": {k: params[k] for k in params if k != "threads"},
        "best_epoch": model.best_epoch_,
        "epochs_run": len(model.history_),
        "prefix_aug_used": model.prefix_aug_used_,
        "refit_used": model.refit_used_,
        "fit_s": round(fit_s, 1),
        "wall_s": round(time.perf_counter() - t0, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "valid": val,
        "test": test,
        # unmasked protocols: the masked test too, to see how much is lost to seen items
        "test_masked": test if split.mask else evaluate(model, split, "test", mask=True),
        "history": model.history_,
    }


def _parse_sets(items: list[str]) -> dict[str, Any]:
    out = {}
    for it in items:
        key, _, val = it.partition("=")
        try:
            out[key] = ast.literal_eval(val)
        except (ValueError, SyntaxError):
            out[key] = val
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=["ml-100k", "amazon-scientific"], required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--set", nargs="*", default=[], help="key=value overrides; with them only one config runs"
    )
    ap.add_argument("--grid", nargs="*", default=[], help="key=v1,v2 axes crossed over the overrides")
    ap.add_argument("--json", type=Path, help="append one JSON line per configuration here")
    args = ap.parse_args()

    split = load_ml100k() if args.dataset == "ml-100k" else load_scientific()
    overrides = {**_parse_sets(args.set), "threads": args.threads}
    if args.set or args.grid:
        configs = [{**SASRec.default_params(), **overrides}]
        for axis in args.grid:
            key, _, vals = axis.partition("=")
            configs = [{**c, **_parse_sets([f"{key}={v}"])} for c in configs for v in vals.split(",")]
    else:
        configs = [{**c, **overrides} for c in SASRec.search_space()]

    t_all = time.perf_counter()
    results = []
    for i, cfg in enumerate(configs):
        res = run_config(split, cfg, args.seed)
        results.append(res)
        diff = {k: v for k, v in res["params"].items() if SASRec.default_params().get(k) != v}
        print(
            f"[{i}] {diff} best_ep={res['best_epoch']} ran={res['epochs_run']} prefix={res['prefix_aug_used']} "
            f"refit={res['refit_used']} fit={res['fit_s']}s "
            f"valid N@10={res['valid']['NDCG@10']:.4f} test N@10={res['test']['NDCG@10']:.4f} "
            f"HR@10={res['test']['HR@10']:.4f} N@20={res['test']['NDCG@20']:.4f} "
            f"(masked N@10={res['test_masked']['NDCG@10']:.4f}) rss={res['peak_rss_mb']}MB",
            flush=True,
        )
        if args.json:
            with args.json.open("a") as f:
                f.write(json.dumps({"dataset": split.name, "seed": args.seed, **res}) + "\n")

    best = max(results, key=lambda r: r["valid"]["NDCG@10"])
    print(
        f"\n{split.name} (mask seen: {split.mask}), {len(configs)} configs, total {time.perf_counter() - t_all:.0f}s"
    )
    print(
        "| config | valid N@10 | test N@10 | test HR@10 | test N@20 | test N@10 masked "
        "| best epoch | prefix aug | refit | fit s | peak RSS MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for i, r in enumerate(results):
        mark = " **chosen**" if r is best else ""
        print(
            f"| {i}{mark} | {r['valid']['NDCG@10']:.4f} | {r['test']['NDCG@10']:.4f} | {r['test']['HR@10']:.4f} "
            f"| {r['test']['NDCG@20']:.4f} | {r['test_masked']['NDCG@10']:.4f} | {r['best_epoch']} "
            f"| {r['prefix_aug_used']} | {r['refit_used']} | {r['fit_s']} | {r['peak_rss_mb']} |"
        )


if __name__ == "__main__":
    main()
