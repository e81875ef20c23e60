"""Import + SASRec training + evaluation on a real dataset: wall time per phase and peak memory.

    python bench/bench_pipeline.py --src ../shared/data/ml-100k --format movielens-100k

Prints one line per phase (seconds) and the process's peak RSS. SASRec runs with its default
hyper-parameters (no search) so the figure is one training, not a grid.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--src", default="../shared/data/ml-100k")
    ap.add_argument("--format", default="movielens-100k")
    ap.add_argument("--models", default="markov,sasrec")
    ap.add_argument("--params", default="{}", help="JSON per-model params")
    args = ap.parse_args()

    from recgpt.data.dataset import Dataset
    from recgpt.data.importers import import_dataset
    from recgpt.data.split import make_split
    from recgpt.eval.experiment import ExperimentConfig, run_experiment

    phases: dict[str, float] = {}
    t0 = time.perf_counter()
    ds = import_dataset(args.format, Path(args.src))
    with tempfile.TemporaryDirectory() as d:
        ds.save(Path(d) / "ds")
        ds = Dataset.load(Path(d) / "ds")
    phases["import+save+load"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    split = make_split(ds)
    phases["split"] = time.perf_counter() - t0
    params = json.loads(args.params)
    for name in args.models.split(","):
        cfg = ExperimentConfig(models=[name], tune=False, model_params={name: params.get(name, {})})
        t0 = time.perf_counter()
        res = run_experiment(ds, cfg, split=split)
        run = res.runs[0]
        phases[f"{name}: fit"] = run.fit_s
        phases[f"{name}: fit+valid+test total"] = time.perf_counter() - t0
        print(
            f"{name}: NDCG@10 {run.test['NDCG@10']:.4f}  HR@10 {run.test['HR@10']:.4f}  params {run.params}"
        )
    for k, v in phases.items():
        print(f"{k:32s} {v:8.2f} s")
    print(f"{'peak RSS':32s} {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:8.0f} MB")


if __name__ == "__main__":
    main()
