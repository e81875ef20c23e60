"""How a run shows its evidence: the validation choices, the intervals and bar verdicts, tag HR with its
reference rows, and the accuracy-diversity frontier, on the terminal and in the HTML report.

Everything here reads `results.json` (the payload `pipeline.evaluation` writes), so `recgpt run`,
the report stage and a re-rendered report print the same figures.
"""

from __future__ import annotations

import html
from typing import Any

from rich.console import Console
from rich.table import Table

FRONTIER_Y = ("CatDiv@10", "Coverage@10", "Gini@10")


def _num(v: Any, digits: int = 4) -> str:
    return "-" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def channel_lines(payload: dict[str, Any]) -> list[str]:
    """The classic channel and share chosen on validation, with the validation numbers behind them."""
    tune = payload.get("tune") or {}
    fusion = payload.get("fusion") or {}
    scores = ", ".join(
        f"{n} {_num(t.get('valid_NDCG@10'))}" for n, t in (tune.get("baselines") or {}).items()
    )
    lines = [f"classic channel: {fusion.get('baseline')} (validation NDCG@10: {scores or '-'})"]
    curve = tune.get("curve") or []
    share = fusion.get("share")
    line = f"RecGPT share of the fused list: {_num(share, 2)} ({fusion.get('share_source') or tune.get('share_source')})"
    if curve:
        line += "; validation NDCG@10 by share: " + ", ".join(
            f"{p['share']:.1f} {p['NDCG@10']:.4f}" for p in curve
        )
        line += f" (tolerance {tune.get('tolerance')}, {tune.get('users')} validation users)"
    return [*lines, line]


def ci_rows(payload: dict[str, Any]) -> list[list[str]]:
    """[what, value, 95% interval, n, bar, verdict] for every interval of the run."""
    rows = []
    for name, c in (payload.get("ci") or {}).items():
        rows.append(
            [
                name,
                _num(c.get("value"), 3),
                f"[{_num(c.get('lo'), 3)}, {_num(c.get('hi'), 3)}]",
                str(c.get("n")),
                _num(c.get("bar"), 2),
                c.get("verdict", "-"),
            ]
        )
    return rows


CI_HEADER = ["what", "value", "95% interval", "n users", "bar", "verdict"]


def tag_hr_rows(stats: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """(columns, rows) of the tag HR table: the LLM's tags and every reference row φ's stage stored
    (`recgpt.intent.reference.tag_hr_table`; a cut-off that cannot separate the rows prints "n/a")."""
    from recgpt.intent.reference import tag_hr_table

    table = tag_hr_table(stats)
    cols = sorted(
        {c for r in table for c in r if c.startswith("TagHR@")}, key=lambda c: int(c.rpartition("@")[2])
    )
    return [*cols, "users"], [
        [r["reference"], *(_num(r.get(c)) if r.get(c) is not None else "n/a" for c in cols), str(r["users"])]
        for r in table
    ]


def tag_hr_note(stats: dict[str, Any]) -> str:
    """The level the categories are counted at and, where it cannot, why the metric does not separate
    the reference rows."""
    parts = []
    if stats.get("category_level") or stats.get("level"):
        parts.append(f"categories at level {stats.get('category_level') or stats.get('level')}")
    if stats.get("note"):
        parts.append(str(stats["note"]))
    return "; ".join(parts)


def print_evidence(payload: dict[str, Any], console: Console) -> None:
    """Channel choice, the intervals with their verdicts, and tag HR with its reference rows."""
    for line in channel_lines(payload):
        console.print(line)
    t = Table(
        title="NDCG ratios and bars: 95% bootstrap intervals over users (met only when the interval says so)"
    )
    for c in CI_HEADER:
        t.add_column(c, justify="left" if c in ("what", "verdict") else "right")
    for r in ci_rows(payload):
        t.add_row(*r)
    console.print(t)
    stats = payload.get("tag_hr") or {}
    cols, rows = tag_hr_rows(stats)
    tt = Table(
        title="tag HR (share of users whose next item's category is among the first k tags' categories)"
    )
    tt.add_column("tags")
    for c in cols:
        tt.add_column(c, justify="right")
    for r in rows:
        tt.add_row(*r)
    console.print(tt)
    if note := tag_hr_note(stats):
        console.print(f"[dim]{note}[/dim]")


# ---------------------------------------------------------------- HTML


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def frontier_plots(frontier: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(title, base64 PNG) of NDCG@10 against CatDiv, Coverage and Gini along the share 0 -> 1 frontier,
    the chosen share starred."""
    if not frontier:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from recgpt.eval.report import _png

    out = []
    xs = [p["NDCG@10"] for p in frontier]
    for y_metric in FRONTIER_Y:
        ys = [p.get(y_metric) for p in frontier]
        if any(y is None for y in ys):
            continue
        fig, ax = plt.subplots(figsize=(5.2, 3.8))
        ax.plot(xs, ys, "o-", ms=4)
        for p, x, y in zip(frontier, xs, ys, strict=True):
            ax.annotate(f"{p['share']:.1f}", (x, y), textcoords="offset points", xytext=(4, 3), fontsize=8)
            if p.get("chosen"):
                ax.scatter(
                    [x],
                    [y],
                    marker="*",
                    s=220,
                    color="crimson",
                    zorder=3,
                    label=f"chosen share {p['share']:.2f}",
                )
        ax.set_xlabel("NDCG@10 (test users)")
        ax.set_ylabel(y_metric + (" (lower is fairer)" if y_metric.startswith("Gini") else ""))
        ax.set_title(f"Frontier: RecGPT share 0 -> 1, NDCG@10 vs {y_metric.split('@')[0]}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        out.append((f"Frontier: NDCG@10 vs {y_metric}", _png(fig)))
        plt.close(fig)
    return out


def evidence_html(payload: dict[str, Any]) -> str:
    """The report's "Choices, intervals and tag HR" and "Frontier" sections."""
    stats = payload.get("tag_hr") or {}
    cols, rows = tag_hr_rows(stats)
    note = tag_hr_note(stats)
    frontier = payload.get("frontier") or []
    plots = "".join(
        f'<figure><img alt="{html.escape(t)}" src="data:image/png;base64,{b}"><figcaption>{html.escape(t)}'
        "</figcaption></figure>"
        for t, b in frontier_plots(frontier)
    )
    ftable = _table(
        ["share", "NDCG@10", *FRONTIER_Y, "chosen"],
        [
            [
                f"{p['share']:.2f}",
                *(_num(p.get(c)) for c in ("NDCG@10", *FRONTIER_Y)),
                "yes" if p.get("chosen") else "",
            ]
            for p in frontier
        ],
    )
    return (
        "<h2>Channel and share (chosen on validation users, never on the test users)</h2>"
        + "".join(f"<p>{html.escape(line)}</p>" for line in channel_lines(payload))
        + "<h2>Intervals and bars</h2><p>95% paired bootstrap intervals over the test users (Wilson for"
        " fallback shares); a bar is met only when the whole interval clears it, missed when the whole"
        " interval falls short, inconclusive otherwise.</p>"
        + _table(CI_HEADER, ci_rows(payload))
        + "<h2>Tag HR with reference rows</h2>"
        + _table(["tags", *cols], rows)
        + (f"<p>{html.escape(note)}</p>" if note else "")
        + "<h2>Accuracy-diversity frontier</h2><p>The stored RecGPT candidates mixed with the classic channel"
        " at every share on the test users (share 0: the classic channel, 1: the RecGPT channel); the star"
        " marks the share chosen on validation. Pick another with <code>--share</code>.</p>"
        + f'<div class="plots">{plots}</div>{ftable}'
    )


__all__ = [
    "CI_HEADER",
    "channel_lines",
    "ci_rows",
    "evidence_html",
    "frontier_plots",
    "print_evidence",
    "tag_hr_note",
    "tag_hr_rows",
]
