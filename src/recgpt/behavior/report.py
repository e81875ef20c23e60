"""Compression report: prompt tokens raw vs compressed per user, share of users within a budget.

"Raw" is what a prompt would hold without RecGPT's compression: every visible event, one line each,
``date behaviour[ value] title | category | brand`` (searches: the query; tags: the tag text), with the
original title. "Reliable raw" is the same after the reliable-behaviour filter only, so the table
separates what the filter saves from what bucketing and aggregation save. "Compressed" is B_u before
the overflow cut; "fitted" after it (always within the budget it was cut to).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import polars as pl
from rich.console import Console
from rich.table import Table

from recgpt.behavior import BehaviorCompressor, CompressedHistory
from recgpt.behavior.filter import filter_reliable
from recgpt.behavior.items import ItemCompressor, single_line
from recgpt.behavior.sequence import utc_date
from recgpt.data.atomic import write_parquet_atomic as write_parquet_atomic  # re-export
from recgpt.data.split import AsOf

TOKEN_COLUMNS = {
    "raw_tokens": "raw (every event, one line)",
    "reliable_raw_tokens": "reliable events, one line each",
    "compressed_tokens": "compressed (before the cut)",
    "fitted_tokens": "compressed, fitted to the budget",
}


def raw_lines(history: pl.DataFrame, items: ItemCompressor, category_sep: str = "/") -> list[str]:
    """One uncompressed line per event, oldest first."""
    out = []
    cols = ("timestamp", "behavior", "item_id", "query", "value", "text")
    for ts, beh, item, query, value, text in history.sort("timestamp", "event_id").select(cols).iter_rows():
        head = f"{utc_date(ts).isoformat()} {beh}" + (f" {value:g}" if value is not None else "")
        if item is None:
            out.append(f'{head} "{single_line(query or "")}"')
            continue
        rec = items.record(item)
        parts = [single_line(rec.get("title") or ""), category_sep.join(rec.get("categories") or [])]
        parts.append(rec.get("brand") or "")
        if text:
            parts.append(single_line(text))
        out.append(f"{head} {' | '.join(p for p in parts if p)}")
    return out


def compression_report(
    view: AsOf, results: Sequence[CompressedHistory], compressor: BehaviorCompressor
) -> pl.DataFrame:
    """One row per compressed user: event counts, token counts raw / reliable raw / compressed / fitted.

    `results` come from `compressor.compress_many(view, ...)`; raw texts are rebuilt from the same view.
    """
    count, items = compressor.counter.count, compressor.items
    rows = []
    for r in results:
        hist = view.history(r.user_id)
        reliable = filter_reliable(hist, compressor.config.filter)
        sep = compressor.config.items.category_sep
        rows.append(
            {
                "user_id": r.user_id,
                "asof": utc_date(r.asof_ts).isoformat(),
                "n_events": r.n_events,
                "n_reliable": r.n_reliable,
                "raw_tokens": count("\n".join(raw_lines(hist, items, sep))),
                "reliable_raw_tokens": count("\n".join(raw_lines(reliable, items, sep))),
                "compressed_tokens": r.full_tokens,
                "fitted_tokens": r.tokens,
                "n_lines": r.n_lines,
                "n_buckets": len(r.buckets),
                "n_dropped_buckets": len(r.dropped_buckets),
                "dropped_events": r.dropped_events,
                "budget": compressor.config.budget,
                "tokenizer": compressor.counter.name,
            }
        )
    return pl.DataFrame(rows)


def summarize(report: pl.DataFrame, budgets: Sequence[int]) -> dict[str, Any]:
    """Token statistics (mean / median / p95 / max) and the share of users within each budget."""
    if report.height == 0:
        raise ValueError("empty report: no users were compressed")
    tokens = {
        col: {
            "mean": float(report[col].mean()),  # type: ignore[arg-type]
            "median": float(report[col].median()),  # type: ignore[arg-type]
            "p95": float(report[col].quantile(0.95, "linear")),  # type: ignore[arg-type]
            "max": int(report[col].max()),  # type: ignore[arg-type]
        }
        for col in TOKEN_COLUMNS
    }
    within = {
        int(b): {
            col: float((report[col] <= b).mean())
            for col in ("raw_tokens", "reliable_raw_tokens", "compressed_tokens")
        }
        for b in budgets
    }
    ratio = report["raw_tokens"].sum() / max(int(report["compressed_tokens"].sum()), 1)
    budget = int(report["budget"][0])
    fitted = {
        "budget": budget,
        "within": float((report["fitted_tokens"] <= budget).mean()),  # 1.0 unless the cut is broken
        "cut_share": float((report["dropped_events"] > 0).mean()),
        "mean_dropped_buckets": float(report["n_dropped_buckets"].mean()),  # type: ignore[arg-type]
        "mean_dropped_events": float(report["dropped_events"].mean()),  # type: ignore[arg-type]
    }
    return {
        "users": report.height,
        "tokens": tokens,
        "within": within,
        "fitted": fitted,
        "raw_over_compressed": float(ratio),
    }


def print_summary(summary: dict[str, Any], console: Console | None = None, title: str = "") -> None:
    """Two rich tables: tokens per user, and the share of users within each budget."""
    console = console or Console()
    t = Table(title=f"{title}tokens per user ({summary['users']:,} users)")
    t.add_column("text")
    for c in ("mean", "median", "p95", "max"):
        t.add_column(c, justify="right")
    for col, label in TOKEN_COLUMNS.items():
        s = summary["tokens"][col]
        t.add_row(label, f"{s['mean']:,.0f}", f"{s['median']:,.0f}", f"{s['p95']:,.0f}", f"{s['max']:,}")
    console.print(t)
    w = Table(
        title=f"{title}share of users within budget (raw / compressed = {summary['raw_over_compressed']:.2f}x)"
    )
    for c in ("budget", "raw", "reliable raw", "compressed"):
        w.add_column(c, justify="right")
    for b, s in summary["within"].items():
        w.add_row(
            f"{b:,}", *(f"{s[c]:.1%}" for c in ("raw_tokens", "reliable_raw_tokens", "compressed_tokens"))
        )
    console.print(w)
    f = summary["fitted"]
    console.print(
        f"fitted to {f['budget']:,} tokens: {f['within']:.1%} within; {f['cut_share']:.1%} of users needed the "
        f"oldest-first cut (mean {f['mean_dropped_buckets']:.1f} buckets, {f['mean_dropped_events']:.1f} events dropped)"
    )
