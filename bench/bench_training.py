"""Does alignment training move the chain? Base vs SFT vs self-trained model on held-out users.

For one dataset, every model runs the whole chain (`recgpt run`) on the same seeded sample of test
users, which training never sees (`recgpt train` excludes the chain's evaluation samples), then the
judge scores the run's tags (`recgpt judge run`). Printed per model: tag HR@K (K = 1, 3, 10, 30: on
MovieLens, with 19 genres, @30 is saturated by construction, so the small K carry the signal), judge
pass rates (overall and per criterion), and the fused list's NDCG@10, category diversity, coverage
and exposure Gini. Written to `<runs-dir>/bench-training-<dataset>.json`.

    python bench/bench_training.py --dataset data/ml-100k --users 50 \
        --model sft=transformers:runs/train/ml-100k-tags/merged

Models are `label=SPEC` (any `--llm` spec); `base` is always included. By default a trained model
serves the tags stage only (`--stage tags`: `recgpt run --stage-llm tags=SPEC`, the paper's LLM_IT),
the other stages keep the base model and share its LLM cache, so every model sees the same
interests and only the tags differ; `--stage all` serves every stage with the model. Train first with
`recgpt train sft --task tags --dataset data/ml-100k --eval-users 50` (and `recgpt train self-train`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
KS = (1, 3, 10, 30)
LIST_METRICS = ("NDCG@10", "HR@10", "CatDiv@10", "Coverage@10", "Gini@10", "Novelty@10")


def _recgpt(args: list[str]) -> float:
    t0 = time.perf_counter()
    cmd = [str(Path(sys.executable).with_name("recgpt")), *args]
    print("$ recgpt " + " ".join(args), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return time.perf_counter() - t0


def _tag_hr(run_dir: Path) -> dict[str, float]:
    from recgpt.intent.phi import PhiConfig, TagToCategory, tag_hr
    from recgpt.judge.samples import open_run
    from recgpt.retrieval.embeddings import Embedder

    state = open_run(run_dir)
    try:
        tags = state.read("tags", "tags")
        cfg = state.config
        phi = TagToCategory(Embedder(cfg["embedder"]), PhiConfig(**cfg["phi"])).fit(state.dataset)
        return tag_hr(tags, phi, state.split, task=state.task, user_ids=state.users, ks=KS)
    finally:
        state.close()


def measure(label: str, spec: str, a: argparse.Namespace) -> dict[str, Any]:
    name = f"bench-train-{Path(a.dataset).name}-{label}"
    run_dir = Path(a.runs_dir) / name
    out: dict[str, Any] = {"label": label, "llm": spec, "run": str(run_dir)}
    if a.stage == "all":  # the model serves every LLM stage
        llm = ["--llm", spec]
    else:  # the model serves one stage; the others keep the base model, their answers shared through one cache
        cache = Path(a.runs_dir) / f"bench-train-{Path(a.dataset).name}-base" / "llm-cache.sqlite"
        llm = ["--llm", a.base, "--llm-cache", str(cache)] + (
            [] if label == "base" else ["--stage-llm", f"{a.stage}={spec}"]
        )
    out["run_s"] = _recgpt(
        [
            "run",
            "--dataset",
            a.dataset,
            "--users",
            str(a.users),
            *llm,
            "--name",
            name,
            "--runs-dir",
            a.runs_dir,
            "--no-progress",
            *a.run_args,
        ]
    )
    out["judge_s"] = _recgpt(
        [
            "judge",
            "run",
            str(run_dir),
            "--llm",
            a.judge_llm,
            "--tasks",
            "tags",
            "--max-samples",
            str(a.judge_samples),
            "--llm-workers",
            str(a.judge_workers),
            "--no-progress",
        ]
    )
    results = json.loads((run_dir / "results.json").read_text())
    rows = {r["model"]: r for r in results["table"]}
    out["fused"] = {m: rows["fused"].get(m) for m in LIST_METRICS}
    out["recgpt"] = {m: rows["recgpt"].get(m) for m in LIST_METRICS}
    out["tag_hr"] = _tag_hr(run_dir)
    out["judge"] = json.loads((run_dir / "judge" / "pass_rates.json").read_text())
    return out


def _print(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="alignment training: held-out users (tags judged by the judge model)")
    for col in (
        "model",
        *(f"TagHR@{k}" for k in KS),
        "judge pass (tags)",
        "fused NDCG@10",
        "CatDiv@10",
        "Coverage@10",
        "Gini@10",
    ):
        t.add_column(col, justify="right")
    for r in rows:
        tags = r["judge"].get("tags", {})
        t.add_row(
            r["label"],
            *(f"{r['tag_hr'].get(f'TagHR@{k}', float('nan')):.3f}" for k in KS),
            f"{tags.get('overall', float('nan')):.3f} (n={tags.get('n', 0)})",
            *(f"{r['fused'][m]:.4f}" for m in ("NDCG@10", "CatDiv@10", "Coverage@10", "Gini@10")),
        )
    Console().print(t)
    for r in rows:
        crit = {k: v for k, v in r["judge"].get("tags", {}).items() if k not in ("overall", "n")}
        print(f"  {r['label']}: tag criteria pass rates {json.dumps(crit)}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="data/ml-100k")
    p.add_argument("--users", type=int, default=50, help="held-out test users (the chain's seeded sample)")
    p.add_argument("--model", action="append", default=[], help="label=SPEC, repeatable")
    p.add_argument(
        "--base", default=None, help="spec of the base model (default: transformers on the SmolLM2 GGUF)"
    )
    p.add_argument(
        "--stage",
        default="tags",
        choices=("tags", "interests", "explanations", "all"),
        help="the LLM stage the trained models serve (the others keep the base model); all: every stage",
    )
    p.add_argument("--judge-llm", default="llamacpp")
    p.add_argument("--judge-samples", type=int, default=300)
    p.add_argument("--judge-workers", type=int, default=2, help="llama.cpp judge worker processes")
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--run-args", nargs=argparse.REMAINDER, default=[], help="extra `recgpt run` arguments")
    a = p.parse_args()
    if a.base is None:
        from recgpt.llm.backends.llamacpp_backend import default_model_path

        a.base = f"transformers:{default_model_path()}"
    models = [("base", a.base)] + [tuple(m.split("=", 1)) for m in a.model]
    rows = [measure(label, spec, a) for label, spec in models]
    dest = Path(a.runs_dir) / f"bench-training-{Path(a.dataset).name}.json"
    dest.write_text(json.dumps({"dataset": a.dataset, "users": a.users, "models": rows}, indent=2))
    _print(rows)
    print(f"written: {dest}")


if __name__ == "__main__":
    main()
