"""SerenGPT zero-shot on hand-built serendipity lists, next to the random, popularity and distance references.

Lists (built here, independent of the SERAL run's candidate generator): test users of a LOO split whose
held-out item is *unexpected* (none of its categories, at the chosen level, occurs in the user's
history) get one list = that item (the positive) + `size - 1` negatives drawn (seeded) from 50 items
of categories new to the user, never an item the user engaged with; the list is shuffled. The 50 are
`--negatives near`: the nearest (MiniLM cosine) to the user's history centroid (the candidate
generator's idea; the positive then tends to be the most distant item, which the distance reference
exploits), or `matched`: those whose cosine to the centroid is closest to the positive's (distance
carries no signal: only relevance can find the positive). The profile is a short rule text: the user's
history categories with counts, and the newest three titles (what a rule-based cognition profile
says). Every profile passes the SerenGPT leakage guard.

    OMP_NUM_THREADS=1 .venv/bin/python bench/seren_zero_shot.py data/amazon-scientific --lists 20

Prints Hit@1 / NDCG@3 / NDCG@10 with 95% bootstrap intervals per row, the fallback and partial
shares and seconds per list.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl

from recgpt.behavior.items import clean_title
from recgpt.data.categories import categories_at_level
from recgpt.data.dataset import Dataset
from recgpt.data.split import make_split
from recgpt.eval.serendipity import ranking_metrics
from recgpt.llm.backends import make_backend
from recgpt.llm.cache import LLMCache
from recgpt.llm.engine import LLMEngine
from recgpt.retrieval.embeddings import Embedder
from recgpt.serendipity.references import KINDS, reference_rankings
from recgpt.serendipity.seren import SerenConfig, guard_seren_inputs, rank_lists, ranking_stats, seren_inputs


def build_lists(
    ds: Dataset, level: str, n_lists: int, size: int, seed: int, vectors: np.ndarray, negatives: str
) -> tuple[pl.DataFrame, dict[str, str], dict[str, str], dict[str, np.ndarray], object]:
    split = make_split(ds)
    task = split.test
    cats = categories_at_level(ds, level)
    item_cats = [set(c) for c in cats.categories]
    cat_of = {i: (c[0] if c else "") for i, c in zip(cats.item_ids, cats.categories, strict=True)}
    ids = split.item_ids.tolist()
    titles = dict(zip(ds.items["item_id"].to_list(), ds.items["title"].to_list(), strict=True))
    rng = np.random.default_rng(seed)
    rows, profiles, histories = [], {}, {}
    for u in rng.permutation(len(task.user_ids)):
        user, hist, target = task.user_ids[u], task.histories[u], task.targets[u]
        if len(target) != 1 or not len(hist):
            continue
        t = int(target[0])
        seen_cats = set().union(*(item_cats[i] for i in hist))
        if not item_cats[t] or item_cats[t] & seen_cats:
            continue  # the held-out item is expected: counted out, as the log labels do
        engaged = set(hist.tolist()) | {split.item_pos[i] for i in split.heldout_item_ids(user)}
        centroid = vectors[hist].mean(axis=0)
        sims = vectors @ centroid
        # matched: as far from the history as the positive; near: the closest (the generator's idea)
        near = np.argsort(np.abs(sims - sims[t])) if negatives == "matched" else np.argsort(-sims)
        pool = [i for i in near if item_cats[i] and not item_cats[i] & seen_cats and i not in engaged]
        negs = rng.choice(pool[:50], size=size - 1, replace=False)
        items = [t, *negs.tolist()]
        perm = rng.permutation(size)
        labels = [1 if items[j] == t else 0 for j in perm]
        rows.append(
            {
                "list_id": f"L{len(rows)}",
                "user_id": user,
                "part": "eval",
                "asof_ts": task.asof.point(user)[0],
                "item_ids": [ids[items[j]] for j in perm],
                "labels": labels,
            }
        )
        counts = Counter(c for i in hist for c in item_cats[i]).most_common(6)
        recent = "; ".join(clean_title(titles[ids[i]] or "")[:60] for i in hist[-3:][::-1])
        profiles[user] = (
            "Long-term categories: "
            + ", ".join(f"{c} ({n})" for c, n in counts)
            + f"\nRecent items: {recent}"
        )
        histories[user] = hist
        if len(rows) == n_lists:
            break
    lists = pl.DataFrame(rows, schema_overrides={"labels": pl.List(pl.Int8), "asof_ts": pl.Int64})
    return lists, profiles, cat_of, histories, (split, task)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset")
    ap.add_argument("--lists", type=int, default=20)
    ap.add_argument("--size", type=int, default=10)
    ap.add_argument("--level", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rank-top", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--negatives", choices=("near", "matched"), default="near")
    ap.add_argument("--cache", default=None, help="answer cache (sqlite): a rerun reuses every answer")
    ap.add_argument("--out", default=None, help="write the rankings (parquet) and the figures (json) here")
    args = ap.parse_args()
    ds = Dataset.load(args.dataset)
    vectors = Embedder(threads=args.threads, cache_dir="/tmp/h3/emb").encode(
        [clean_title(t or "") for t in ds.items["title"].to_list()]
    )
    lists, profiles, cat_of, histories, (split, task) = build_lists(
        ds, args.level, args.lists, args.size, args.seed, vectors, args.negatives
    )
    inputs = seren_inputs(lists, profiles, ds.items, cat_of)
    guard_seren_inputs(split, task, inputs)
    cfg = SerenConfig(list_size=args.size, rank_top=args.rank_top)
    cache = LLMCache(args.cache) if args.cache else None
    backend = make_backend("llamacpp", n_threads=args.threads, n_ctx=2048)
    engine = LLMEngine(backend, cache=cache, max_retries=1, chunk_size=2, progress=True)
    start = time.perf_counter()
    seren, failures = rank_lists(cfg, engine, inputs)
    per_list = (time.perf_counter() - start) / len(inputs)
    engine.close()
    pop = np.bincount(
        [split.item_pos[i] for i in split.train_events["item_id"].drop_nulls().to_list()],
        minlength=len(split.item_ids),
    )
    ids = split.item_ids.tolist()
    rows = {"SerenGPT base (zero-shot)": seren}
    for kind in KINDS:
        rows[f"reference:{kind}"] = reference_rankings(
            lists,
            kind,
            item_ids=ids,
            popularity=pop,
            item_vectors=vectors,
            histories=histories,
            seed=args.seed,
        )
    report = {
        "lists": lists.height,
        "size": args.size,
        "seconds_per_list": round(per_list, 2),
        **ranking_stats(seren, failures),
    }
    report["failure_reasons"] = dict(Counter(failures["reason"].to_list()))
    print(json.dumps(report))
    for name, r in rows.items():
        m = ranking_metrics(r, lists, seed=args.seed)
        ci = m["ci"]
        cells = "  ".join(
            f"{k} {m[k]:.3f} [{ci[k]['lo']:.2f}, {ci[k]['hi']:.2f}]" for k in ("Hit@1", "NDCG@3", "NDCG@10")
        )
        print(f"{name:28s} {cells}")
        report[name] = m
    top1 = seren.filter(pl.col("rank") == 0)
    print(
        "SerenGPT top-1 list position (1-based):",
        Counter(
            lists.join(top1, on="list_id")
            .select(
                pl.struct("item_ids", "item_id").map_elements(
                    lambda s: s["item_ids"].index(s["item_id"]) + 1, return_dtype=pl.Int64
                )
            )
            .to_series()
            .to_list()
        ),
    )
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        seren.write_parquet(f"{args.out}/seren_rankings.parquet")
        lists.write_parquet(f"{args.out}/lists.parquet")
        with open(f"{args.out}/seren_zero_shot.json", "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
