"""The SERAL evaluation stage (09_eval) and what it prints: two questions, each on the sampled test users.

1. **The serendipity slot.** Rows `with-slot` (the classic list with the cache merged at the quota),
   `without-slot` (the classic list alone) and `cache-only` (the cache first, the classic list after:
   the slot at quota = k, for scale), each scored by the harness (`eval.experiment.topk_metrics`:
   NDCG@10, HR@10, CatDiv@10, Coverage@10, Gini@10, ...) and by `eval.serendipity.serendipity_metrics`
   (Unexp@10: mean embedding unexpectedness; UnexpCat@10; Serendipity@10 = mean over users of
   |top-10 items that are held out (relevant) and unexpected by the labels' rule| / non-empty slots;
   PVR@10 = share of exposed slots that are serendipitous-by-rule). The bar (issue 13): with the slot,
   Serendipity@10 and Unexp@10 up while NDCG@10 stays within 5% of the list without it, each judged
   by a paired bootstrap interval over users (`eval.bootstrap`).
2. **SerenGPT on labelled lists.** Hit@1, NDCG@3, NDCG@10 of SerenGPT's rankings of the evaluation
   lists (log labels, people's verdicts over them) next to the non-LLM references on the same lists
   (random, popularity, embedding distance to the history), with bootstrap intervals over lists.
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import polars as pl
from rich.console import Console
from rich.table import Table

from recgpt.data.atomic import write_json_atomic
from recgpt.eval.bootstrap import paired_difference, paired_ratio, verdict
from recgpt.pipeline.core import StageContext
from recgpt.pipeline.evaluation import throughput
from recgpt.pipeline.report import _fmt, metrics_table
from recgpt.pipeline.resources import Resources
from recgpt.pipeline.runner import fallback_from_markers, fallback_table
from recgpt.pipeline.tables import fill_lists, table_lists

ROWS = ("with-slot", "without-slot", "cache-only")
HEADLINE = (
    "NDCG@10",
    "HR@10",
    "Serendipity@10",
    "Unexp@10",
    "UnexpCat@10",
    "PVR@10",
    "PVR-slot@10",
    "CatDiv@10",
    "Coverage@10",
    "Gini@10",
    "Novelty@10",
)
REFERENCES = ("random", "popularity", "distance")
SEREN_METRICS = ("Hit@1", "NDCG@3", "NDCG@10")


def _recs(table: pl.DataFrame, name: str, users: list[str], pos: dict[str, int], k: int) -> np.ndarray:
    rows = table.filter(pl.col("list") == name)
    return fill_lists(table_lists(rows, users, pos), np.zeros((len(users), 0), dtype=np.int64), k)


def _channel(table: pl.DataFrame, name: str, users: list[str], k: int) -> np.ndarray:
    """(users x k) True where list `name`'s item came from the serendipity cache."""
    out = np.zeros((len(users), k), dtype=bool)
    at = {u: i for i, u in enumerate(users)}
    seren = table.filter((pl.col("list") == name) & (pl.col("channel") == "seren") & (pl.col("rank") < k))
    for u, r in seren.select("user_id", "rank").iter_rows():
        out[at[u], r] = True
    return out


def per_user_serendipity(
    recs: np.ndarray, truth: Any, hist: Any, n_items: int, rule: dict[str, Any]
) -> np.ndarray:
    """Serendipity@10 of each user (NaN without ground truth): `serendipity_at_k` one user at a time,
    so the paired interval uses exactly the reported definition."""
    from recgpt.eval.serendipity import serendipity_at_k

    out = np.full(len(recs), np.nan)
    for i in range(len(recs)):
        if truth[i].nnz:
            out[i] = serendipity_at_k(recs[i : i + 1], truth[i], hist[i], k=10, n_items=n_items, **rule)
    return out


def per_user_unexpectedness(recs: np.ndarray, hist: Any, vectors: np.ndarray) -> np.ndarray:
    from recgpt.eval.serendipity import unexpectedness_at_k

    return np.asarray(
        [unexpectedness_at_k(recs[i : i + 1], hist[i], vectors, k=10) for i in range(len(recs))]
    )


def _ci(interval: Any, bar: float, *, strict: bool = False) -> dict[str, Any]:
    return {**interval.to_json(), "bar": bar, "verdict": verdict(interval, bar, strict=strict)}


def slot_rows(ctx: StageContext, catalogue: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The three list rows (module docstring) and the slot bar's intervals."""
    from recgpt.eval.experiment import sets_matrix, topk_metrics
    from recgpt.eval.metrics import evaluate_per_user
    from recgpt.eval.serendipity import serendipity_metrics

    res, cfg = cast(Resources, ctx.resources), ctx.config
    task, split = res.task, res.split
    n_items, k = split.train.n_items, max(cfg.ks)
    table = ctx.read("slot", "lists")
    truth = sets_matrix(task.targets, n_items)
    hist = sets_matrix(task.histories, n_items)
    rule = {
        "rule": cfg.labels.rule,
        "distance": cfg.labels.distance,
        "item_vectors": catalogue.vectors,
        "item_categories": catalogue.categories,
    }
    recs = {name: _recs(table, name, task.user_ids, split.item_pos, k) for name in ROWS}
    rows = []
    for name, r in recs.items():
        m = topk_metrics(split, task, r, cfg.ks, cfg.category_level)
        m.update(
            serendipity_metrics(
                r,
                truth,
                hist,
                ks=(10,),
                item_vectors=catalogue.vectors,
                item_categories=catalogue.categories,
                rule=cfg.labels.rule,
                distance=cfg.labels.distance,
                channel=_channel(table, name, task.user_ids, k),
            )
        )
        rows.append({"model": name, **m})
    w, wo, seed = "with-slot", "without-slot", cfg.seed
    pair = {n: recs[n] for n in (w, wo)}
    ndcg = {n: evaluate_per_user(r, truth, n_items=n_items, ks=(10,))["NDCG@10"] for n, r in pair.items()}
    srdp = {n: per_user_serendipity(r, truth, hist, n_items, rule) for n, r in pair.items()}
    unexp = {n: per_user_unexpectedness(r, hist, catalogue.vectors) for n, r in pair.items()}
    ci = {
        "with/without NDCG@10": _ci(paired_ratio(ndcg[w], ndcg[wo], seed=seed), 0.95),
        "with-without Serendipity@10": _ci(paired_difference(srdp[w], srdp[wo], seed=seed), 0.0, strict=True),
        "with-without Unexp@10": _ci(paired_difference(unexp[w], unexp[wo], seed=seed), 0.0, strict=True),
    }
    parts = [c["verdict"] for c in ci.values()]
    bar = {
        "ndcg_ratio": ci["with/without NDCG@10"]["value"],
        "verdict": "met"
        if all(p == "met" for p in parts)
        else "missed"
        if "missed" in parts
        else "inconclusive",
        "ci": ci,
    }
    return rows, bar


def seren_table(ctx: StageContext, catalogue: Any) -> dict[str, dict[str, Any]]:
    """Hit@1 / NDCG@3 / NDCG@10 (with intervals) of SerenGPT and of each reference on the eval lists."""
    from recgpt.eval.serendipity import ranking_metrics
    from recgpt.serendipity.references import reference_rankings

    res, cfg = cast(Resources, ctx.resources), ctx.config
    lists = ctx.read("labels", "lists")
    seren = ctx.read("seren", "eval")
    spec = ctx.declared("llm:seren")["spec"]
    out: dict[str, dict[str, Any]] = {}
    if not lists.height:
        return out
    out[f"SerenGPT ({spec})"] = ranking_metrics(seren, lists, seed=cfg.seed)
    task = res.task
    histories = {u: task.histories[i] for i, u in enumerate(task.user_ids)}
    for kind in REFERENCES:
        ref = reference_rankings(
            lists,
            kind,  # type: ignore[arg-type]
            item_ids=catalogue.item_ids.tolist(),
            popularity=catalogue.popularity,
            item_vectors=catalogue.vectors,
            histories=histories,
            seed=cfg.seed,
        )
        out[kind] = ranking_metrics(ref, lists, seed=cfg.seed)
    return out


def evaluate_seral(ctx: StageContext) -> dict[str, Any]:
    """The eval stage: rows, the SerenGPT table, `results.json` (module docstring)."""
    from recgpt.pipeline.seral_stages import catalogue as run_catalogue

    res, cfg = cast(Resources, ctx.resources), ctx.config
    cat = run_catalogue(ctx)
    rows, bar = slot_rows(ctx, cat)
    seren = seren_table(ctx, cat)
    ctx.write("rows", pl.DataFrame(rows))
    n, split = len(res.users), res.split
    markers = ctx.finished()
    note = (
        f"a seeded sample of {n} of {len(split.test)} test users" if n < len(split.test) else "all test users"
    )
    payload = {
        "dataset": res.dataset.manifest.name,
        "run": ctx.store.run_dir.name,
        "pipeline": "seral",
        "users": {"sampled": n, "test_users": len(split.test), "seed": cfg.seed, "note": note},
        "n_items": split.train.n_items,
        "llm": ctx.declared("llm:seren")["spec"],
        "base": ctx.stats("base"),
        "slot": {"quota": cfg.slot.quota, "k": cfg.slot.k, "positions": list(cfg.slot.slots())},
        "labels": {
            "rule": cfg.labels.rule,
            "distance": cfg.labels.distance,
            **markers.get("labels", {}).get("stats", {}),
        },
        "profiles": markers.get("profiles", {}).get("stats", {}).get("size", {}),
        "table": [{"model": r["model"], **{c: r.get(c) for c in HEADLINE}} for r in rows],
        "seren": seren,
        "bar": bar,
        "ci": bar["ci"],
        "llm_fallback": fallback_from_markers(markers, res.cfg),
        "throughput": throughput({k: m for k, m in markers.items() if k != ctx.stage.name}, n),
    }
    path = ctx.store.run_dir / "results.json"
    write_json_atomic(path, payload)
    return {
        "results": str(path),
        "rows": [r["model"] for r in rows],
        "bar": bar["verdict"],
        "seren_lists": next(iter(seren.values()), {}).get("n_lists", 0),
    }


def print_seral_results(payload: dict[str, Any], console: Console, *, fallback: bool = True) -> None:
    """The SERAL tables: the slot rows, the bar with its intervals, SerenGPT vs references."""
    title = (
        f"{payload['dataset']} - SERAL run {payload['run']}: {payload['users']['note']}, "
        f"classic channel {payload['base']['baseline']}, slot {payload['slot']['quota']} of {payload['slot']['k']}"
    )
    console.print(metrics_table(payload["table"], HEADLINE, title, first="list"))
    for name, c in payload["ci"].items():
        console.print(
            f"  {name}: {_fmt(c['value'])} [{_fmt(c['lo'])}, {_fmt(c['hi'])}] (bar {c['bar']}): {c['verdict']}"
        )
    console.print(f"serendipity slot bar: [bold]{payload['bar']['verdict']}[/bold]")
    s = Table(title="SerenGPT on the labelled evaluation lists (95% bootstrap intervals over lists)")
    for c in ("ranker", "lists", *SEREN_METRICS):
        s.add_column(c, justify="left" if c == "ranker" else "right")
    for name, m in payload["seren"].items():
        ci = m.get("ci", {})
        cells = [
            f"{_fmt(m.get(x))} [{_fmt(ci[x]['lo'])}, {_fmt(ci[x]['hi'])}]" if x in ci else _fmt(m.get(x))
            for x in SEREN_METRICS
        ]
        s.add_row(name, str(m.get("n_lists", 0)), *cells)
    console.print(s)
    if fallback:
        console.print(fallback_table(payload.get("llm_fallback") or {}))


__all__ = [
    "HEADLINE",
    "REFERENCES",
    "ROWS",
    "evaluate_seral",
    "print_seral_results",
    "seren_table",
    "slot_rows",
]
