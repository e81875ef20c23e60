"""Tri-tower retrieval on real data: user tower vs classic baselines, tag tower and fusion with oracle tags.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_retrieval.py                       # ml-100k + ml-latest-small
    .venv/bin/python bench/bench_retrieval.py --datasets ml-100k --epochs 5 --out /tmp/bench_retrieval

Per dataset (temporal leave-one-out split, full ranking, seen items masked, test task):

* MostPop / Markov / ItemKNN from the harness (hyper-parameters chosen on validation);
* the tri-tower's **user tower alone** (trained on `split.train` only, early-stopped on validation);
* **oracle tags**: each test user's tags are the categories of their held-out test item (one interest
  per category). This leaks the answer's category on purpose: it is the upper bound of what perfect
  LLM tags could give. Reported: fusion at β ∈ {0, .25, .5, .75, 1} (β = 0 is the tag tower alone,
  β = 1 the user tower) and TagPrec@50 = share of tag-retrieved items that carry the tag's category;
* **history tags** (no leakage): the 3 most frequent categories in the user's last 20 history items,
  a cheap stand-in for what an LLM would infer from the same history;
* the **fused list**: ItemKNN + RecGPT channel at a 30% RecGPT share, with either kind of tags;
* training time and peak RSS during training (sampled from /proc every 50 ms).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import json
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

KS = (10, 50)
COLUMNS = ("NDCG@10", "HR@10", "HR@50", "Coverage@10", "Gini@10", "CatDiv@10", "Novelty@10")


class PeakRSS:
    """Peak resident memory of this process while the block runs (MB), sampled from /proc."""

    def __enter__(self) -> PeakRSS:
        self.peak, self._stop = self._rss(), threading.Event()
        self.start = self.peak
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    @staticmethod
    def _rss() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self._rss())


TAG_SCHEMA = {
    "user_id": pl.String,
    "tag": pl.String,
    "interest_id": pl.Int64,
    "interest": pl.String,
    "rank": pl.Int64,
}


def oracle_tags(split: Any) -> pl.DataFrame:
    """Tags = the categories of each test user's held-out item (an upper bound, leaks by design)."""
    cats = split.dataset.items["categories"].to_list()
    rows = []
    for uid, tgt in zip(split.test.user_ids, split.test.targets, strict=True):
        for j, c in enumerate(cats[int(tgt[0])] or []):
            rows.append({"user_id": uid, "tag": c, "interest_id": j, "interest": c, "rank": j + 1})
    return pl.DataFrame(rows, schema=TAG_SCHEMA)


def history_tags(split: Any, last: int = 20, n: int = 3) -> pl.DataFrame:
    """Tags = the n most frequent categories of the user's last `last` history items (as of test)."""
    cats = split.dataset.items["categories"].to_list()
    rows = []
    for uid, hist in zip(split.test.user_ids, split.test.histories, strict=True):
        counts = Counter(c for i in hist[-last:] for c in (cats[int(i)] or []))
        for j, (c, _) in enumerate(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]):
            rows.append({"user_id": uid, "tag": c, "interest_id": j, "interest": c, "rank": j + 1})
    return pl.DataFrame(rows, schema=TAG_SCHEMA)


def tag_precision(split: Any, cands: pl.DataFrame) -> float:
    """Share of tag-produced candidates whose item carries the producing tag as a category."""
    cats = dict(
        zip(
            split.dataset.items["item_id"].to_list(), split.dataset.items["categories"].to_list(), strict=True
        )
    )
    rows = cands.filter(pl.col("tag").is_not_null()).select("item_id", "tag").iter_rows()
    hits = [t in (cats[i] or []) for i, t in rows]
    return float(np.mean(hits)) if hits else float("nan")


def run_dataset(name: str, ds: Any, args: argparse.Namespace) -> dict[str, Any]:
    from rich.console import Console

    from recgpt.baselines.registry import get_recommender
    from recgpt.data.split import make_split
    from recgpt.eval.experiment import ExperimentConfig, recommend, run_experiment, topk_metrics
    from recgpt.retrieval.channel import FusedChannel, RecGPTChannel
    from recgpt.retrieval.embeddings import Embedder
    from recgpt.retrieval.index import ItemIndex
    from recgpt.retrieval.train import train_on_split
    from recgpt.retrieval.tritower import TriTowerConfig

    console = Console()
    split = make_split(ds)
    console.print(
        f"[bold]{name}[/bold]: {len(split.test)} test users, {split.train.n_items} items, "
        f"{len(split.train.item_idx)} training interactions"
    )
    rows: dict[str, dict[str, float]] = {}
    t0 = time.perf_counter()
    exp = run_experiment(
        ds, ExperimentConfig(models=args.baselines.split(","), ks=KS, tune=True), split=split
    )
    for r in exp.runs:
        rows[r.name] = r.test
    knn_params = next((r.params for r in exp.runs if r.name == "itemknn"), {})
    baselines_s = time.perf_counter() - t0

    embed = Embedder(cache_dir=args.cache_dir, threads=args.threads)
    t0 = time.perf_counter()
    embed.encode(ds.items["title"].fill_null("").to_list())  # warm the cache: not part of training time
    embed_s = time.perf_counter() - t0
    cfg = TriTowerConfig(epochs=args.epochs, threads=args.threads, seed=args.seed)
    with PeakRSS() as mem:
        res = train_on_split(split, cfg, embed=embed.encode, progress=True)
    model = res.model
    index = ItemIndex.build(model.item_vectors(), threads=args.threads)
    context = split.test.asof.events()

    def evaluate(label: str, rec: Any) -> None:
        recs = recommend(rec, split.test, max(KS), mask=True)
        rows[label] = topk_metrics(split, split.test, recs, KS)

    evaluate("user tower", RecGPTChannel(model, index, None, context=context, k=max(KS)))
    oracle, hist = oracle_tags(split), history_tags(split)
    tag_prec = {}
    for beta in args.betas:
        ch = RecGPTChannel(model, index, oracle, context=context, beta=beta, k=max(KS), per_tag=max(KS))
        evaluate(f"oracle tags β={beta:g}", ch)
        if beta == 0:
            tag_prec["oracle"] = tag_precision(
                split, ch.candidates(split.test.user_idx, split.test.histories)
            )
    hist_ch = RecGPTChannel(model, index, hist, context=context, beta=0.5, k=max(KS), per_tag=max(KS))
    evaluate("history tags β=0.5", hist_ch)
    knn = get_recommender("itemknn", **knn_params).fit(split.train)
    for tags_name, tags in (("oracle", oracle), ("history", hist)):
        ch = RecGPTChannel(model, index, tags, context=context, beta=0.5, k=max(KS), per_tag=max(KS))
        evaluate(f"fused itemknn+{tags_name} 30%", FusedChannel(knn, ch, share=0.3, k=max(KS)))
    return {
        "dataset": name,
        "test_users": len(split.test),
        "items": split.train.n_items,
        "train_interactions": len(split.train.item_idx),
        "metrics": rows,
        "tag_precision@50": tag_prec,
        "tritower": {
            "config": cfg.__dict__,
            "best_epoch": res.best_epoch,
            "epochs_run": len(res.history),
            "train_s": round(res.train_s, 1),
            "s_per_epoch": round(float(np.mean([h["seconds"] for h in res.history])), 2),
            "peak_rss_mb": round(mem.peak, 0),
            "rss_before_mb": round(mem.start, 0),
            "valid": {k: v for k, v in res.history[res.best_epoch - 1].items() if k.startswith("valid_")},
        },
        "title_embedding_s": round(embed_s, 1),
        "baselines_s": round(baselines_s, 1),
    }


def print_report(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=200)
    tt = report["tritower"]
    table = Table(
        title=f"{report['dataset']}: {report['test_users']} test users x {report['items']} items "
        f"(LOO, full ranking, seen masked) — tri-tower {tt['train_s']} s "
        f"({tt['epochs_run']} epochs, best {tt['best_epoch']}), peak RSS {tt['peak_rss_mb']:.0f} MB"
    )
    table.add_column("model")
    for c in COLUMNS:
        table.add_column(c, justify="right")
    for name, m in report["metrics"].items():
        table.add_row(name, *(f"{m.get(c, float('nan')):.4f}" for c in COLUMNS))
    console.print(table)
    console.print(f"tag precision@50 (oracle tags, β=0): {report['tag_precision@50']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="ml-100k,ml-latest-small")
    ap.add_argument("--ml100k-src", default="/work/shared/data/ml-100k")
    ap.add_argument("--baselines", default="mostpop,markov,itemknn")
    ap.add_argument("--epochs", type=int, default=30, help="maximum; early stopping on validation")
    ap.add_argument("--betas", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "recgpt" / "embeddings"))
    ap.add_argument("--out", type=Path, default=None, help="write results.json here")
    args = ap.parse_args()

    from recgpt.data.importers import import_dataset
    from recgpt.datasets import load_bundled

    reports = []
    for name in args.datasets.split(","):
        if name == "ml-100k":
            ds = import_dataset("movielens-100k", Path(args.ml100k_src))
        elif name == "ml-latest-small":
            ds = load_bundled("ml-latest-small")
        else:
            raise SystemExit(f"unknown dataset {name!r}: use ml-100k and/or ml-latest-small")
        report = run_dataset(name, ds, args)
        print_report(report)
        reports.append(report)
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "results.json").write_text(json.dumps(reports, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
