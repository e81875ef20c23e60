"""Self-contained HTML report of an experiment: the table, accuracy-vs-diversity, exposure Lorenz curves."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from recgpt.data.atomic import write_text_atomic

if TYPE_CHECKING:
    from recgpt.eval.experiment import ExperimentResult

TABLE_COLUMNS = (
    "HR@10",
    "NDCG@10",
    "MRR@10",
    "HR@50",
    "NDCG@50",
    "Coverage@10",
    "Gini@10",
    "Entropy@10",
    "Novelty@10",
    "Tail@10",
    "ILD@10",
    "CatDiv@10",
    "Serendipity@10",
)


def table_columns(result: ExperimentResult) -> list[str]:
    """The columns of the summary table that every model of the result has."""
    present = set.intersection(*(set(r.test) for r in result.runs)) if result.runs else set()
    return [c for c in TABLE_COLUMNS if c in present]


def lorenz(exposure: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative share of items (x) vs cumulative share of exposure (y), items sorted ascending."""
    e = np.sort(exposure.astype(np.float64))
    total = e.sum()
    y = np.concatenate([[0.0], np.cumsum(e) / total]) if total > 0 else np.linspace(0, 1, len(e) + 1)
    x = np.linspace(0.0, 1.0, len(e) + 1)
    return x, y


def _png(fig: object) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")  # type: ignore[attr-defined]
    return base64.b64encode(buf.getvalue()).decode()


def _plots(result: ExperimentResult, k: int = 10) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    names = [r.name for r in result.runs]
    for y_metric in ("CatDiv@10", "Coverage@10"):
        if not all(y_metric in r.test for r in result.runs):
            continue
        fig, ax = plt.subplots(figsize=(5.2, 3.8))
        xs = [r.test["NDCG@10"] for r in result.runs]
        ys = [r.test[y_metric] for r in result.runs]
        ax.scatter(xs, ys, s=50)
        for n, x, y in zip(names, xs, ys, strict=True):
            ax.annotate(n, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=9)
        ax.set_xlabel("NDCG@10 (accuracy)")
        ax.set_ylabel(y_metric)
        ax.set_title(f"Accuracy vs {y_metric.split('@')[0]}")
        ax.grid(alpha=0.3)
        out.append((f"Accuracy vs {y_metric}", _png(fig)))
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="equal exposure")
    for r in result.runs:
        exposure = np.bincount(r.recs[:, :k][r.recs[:, :k] >= 0].ravel(), minlength=result.n_items)
        x, y = lorenz(exposure)
        ax.plot(x, y, label=f"{r.name} (Gini {r.test.get(f'Gini@{k}', float('nan')):.3f})")
    x, y = lorenz(result.item_exposure_base)
    ax.plot(x, y, ":", color="grey", label="training interactions")
    ax.set_xlabel("share of items (least exposed first)")
    ax.set_ylabel(f"share of top-{k} slots")
    ax.set_title("Exposure Lorenz curves")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    out.append(("Exposure Lorenz curves", _png(fig)))
    plt.close(fig)
    return out


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;font-size:13px;margin:1em 0}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}
tr:nth-child(even){background:#f6f6f6}
td.best{font-weight:bold;background:#e3f1e3}
.plots img{margin:0 1em 1em 0;border:1px solid #ddd}
code{background:#f2f2f2;padding:1px 4px}
"""


def render_html(result: ExperimentResult) -> str:
    """The report as one HTML string (plots embedded as base64 PNG)."""
    from recgpt.eval.metrics import METRIC_DOCS

    cols = table_columns(result)
    lower_better = {"Gini@10", "AvgPop@10"}
    best = {}
    for c in cols:
        vals = [r.test[c] for r in result.runs]
        best[c] = min(vals) if c in lower_better else max(vals)
    rows = []
    for r in result.runs:
        cells = "".join(
            f'<td class="{"best" if r.test[c] == best[c] else ""}">{r.test[c]:.4f}</td>' for c in cols
        )
        rows.append(f"<tr><td>{html.escape(r.name)}</td>{cells}</tr>")
    header = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    cfg = result.config
    plots = "".join(
        f'<figure><img alt="{html.escape(t)}" src="data:image/png;base64,{b}"><figcaption>{html.escape(t)}</figcaption></figure>'
        for t, b in _plots(result)
    )
    tuning = "".join(
        f"<tr><td>{html.escape(r.name)}</td><td>{html.escape(str(r.params))}</td>"
        f"<td>{len(r.validation)}</td><td>{max(v[cfg.select_metric] for v in r.validation):.4f}</td>"
        f"<td>{r.fit_s:.1f}</td><td>{r.score_s:.1f}</td></tr>"
        for r in result.runs
    )
    docs = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in METRIC_DOCS.items())
    env = html.escape(", ".join(f"{k}={v}" for k, v in result.env.items()))
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>recgpt evaluation: {html.escape(result.dataset)}</title>
<style>{CSS}</style></head><body>
<h1>recgpt evaluation: {html.escape(result.dataset)}</h1>
<p>Split <code>{cfg.split.kind}</code>, full ranking over all {result.n_items:,} items,
{result.n_users_test:,} test users, seen items <b>{"masked" if cfg.mask_seen else "not masked"}</b>,
hyper-parameters chosen on validation by <code>{cfg.select_metric}</code>, seed {cfg.seed};
category metrics at category level <code>{html.escape(result.category_level or "?")}</code>.</p>
<h2>Test metrics</h2><table><tr><th>model</th>{header}</tr>{"".join(rows)}</table>
<p>Best value per column highlighted (lowest for Gini).</p>
<div class="plots">{plots}</div>
<h2>Chosen hyper-parameters (validation only)</h2>
<table><tr><th>model</th><th>params</th><th>candidates</th><th>valid {cfg.select_metric}</th><th>fit s</th><th>test scoring s</th></tr>{tuning}</table>
<h2>Metric definitions</h2><ul>{docs}</ul>
<p><small>{env}</small></p>
</body></html>
"""


def write_report(result: ExperimentResult, path: str | Path) -> Path:
    """Write the HTML report atomically."""
    path = Path(path)
    return write_text_atomic(path, render_html(result))
