"""The SERAL run's HTML report (`RUN_DIR/report.html`), built with the RecGPT report's helpers.

Metrics of the final lists with and without the serendipity slot (and the cache alone), the slot
bar with its intervals, SerenGPT against the references on the labelled lists, the profile size
against the raw history, the LLM fallback per stage, throughput and the ledger; then a walk-through
of `report_users` users: profile levels -> serving candidates -> SerenGPT's ranking and reasons ->
the final list (slot items marked, the held-out item flagged). Every catalogue, user and LLM text is
HTML-escaped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import polars as pl

from recgpt.data.atomic import write_text_atomic
from recgpt.eval.report import CSS
from recgpt.pipeline.core import StageContext
from recgpt.pipeline.evaluation import throughput
from recgpt.pipeline.report import _e, _fmt, _rate, _table
from recgpt.pipeline.resources import Resources
from recgpt.pipeline.runner import ledger_from_markers
from recgpt.pipeline.seral_eval import HEADLINE, SEREN_METRICS

WALK_ITEMS = 10


def _metrics(payload: dict[str, Any]) -> str:
    cols = [c for c in HEADLINE if any(r.get(c) is not None for r in payload["table"])]
    return _table(
        ["list", *cols], [[_e(r["model"]), *(_fmt(r.get(c)) for c in cols)] for r in payload["table"]]
    )


def _intervals(ci: dict[str, Any]) -> str:
    rows = [
        [
            _e(n),
            _fmt(c["value"]),
            f"[{_fmt(c['lo'])}, {_fmt(c['hi'])}]",
            _e(c["bar"]),
            f"<b>{_e(c['verdict'])}</b>",
        ]
        for n, c in ci.items()
    ]
    return _table(["comparison", "value", "95% interval", "bar", "verdict"], rows)


def _seren(payload: dict[str, Any]) -> str:
    rows = []
    for name, m in payload["seren"].items():
        ci = m.get("ci", {})
        cells = [
            f"{_fmt(m.get(x))} [{_fmt(ci[x]['lo'])}, {_fmt(ci[x]['hi'])}]" if x in ci else _fmt(m.get(x))
            for x in SEREN_METRICS
        ]
        rows.append([_e(name), _e(m.get("n_lists", 0)), *cells])
    return _table(["ranker", "lists", *SEREN_METRICS], rows)


def walk_users(profiles: pl.DataFrame, serving: pl.DataFrame, users: list[str], n: int) -> list[str]:
    """Users to walk through: LLM profiles and an LLM ranking first, then the rest, by id."""
    llm_prof = set(profiles.filter(pl.col("source") == "llm")["user_id"].to_list())
    llm_rank = set(serving.filter(pl.col("source") == "llm")["user_id"].to_list())
    return sorted(users, key=lambda u: (u not in llm_rank, u not in llm_prof, u))[:n]


def _walk(user: str, t: dict[str, pl.DataFrame], res: Resources, titles: dict[str, str]) -> str:
    from recgpt.serendipity.profiles import profile_version

    target_ids = {res.split.item_ids[i] for i in res.task.targets[res.task.user_ids.index(user)]}
    name = lambda i: _e(titles.get(i) or i) + (" <b>(held-out item)</b>" if i in target_ids else "")  # noqa: E731
    prof = t["profiles"].filter(pl.col("user_id") == user).sort("level", "window")
    comp = t["compressed"].filter(pl.col("user_id") == user)
    cand = t["candidates"].filter(pl.col("user_id") == user).sort("rank")
    rank = t["serving"].filter(pl.col("user_id") == user).sort("rank")
    final = t["lists"].filter((pl.col("user_id") == user) & (pl.col("list") == "with-slot")).sort("rank")
    cached = t["cache"].filter(pl.col("user_id") == user)
    version = profile_version(t["profiles"], user) if prof.height else "-"
    return "\n".join(
        [
            f"<h3>User {_e(user)}</h3>",
            f"<p>Held-out next item (never shown to any stage): <b>{', '.join(_e(titles.get(i) or i) for i in target_ids) or '-'}</b></p>",
            f"<h4>1. Compressed history B_u ({comp['tokens'][0] if comp.height else 0} tokens)</h4>",
            f"<pre>{_e(comp['text'][0] if comp.height else '')}</pre>",
            f"<h4>2. Cognition profile (version {_e(version)})</h4>",
            _table(
                ["level", "window", "interests", "text", "reasoning", "source", "tokens"],
                [
                    [
                        _e(r["level"]),
                        _e(r["window"]),
                        _e(", ".join(r["interests"] or [])),
                        _e(r["text"]),
                        _e(r["reasoning"]),
                        _e(r["source"]),
                        _e(r["tokens"]),
                    ]
                    for r in prof.iter_rows(named=True)
                ],
            ),
            "<h4>3. Serving candidates (unfamiliar categories)</h4>",
            _table(
                ["rank", "item", "category", "score", "unexpectedness"],
                [
                    [
                        _e(r["rank"]),
                        name(r["item_id"]),
                        _e(r["category"]),
                        _fmt(r["score"]),
                        _fmt(r["unexpectedness"]),
                    ]
                    for r in cand.iter_rows(named=True)
                ],
            ),
            "<h4>4. SerenGPT's ranking and reasons</h4>",
            _table(
                ["rank", "item", "relevance", "unexpected", "reason", "source"],
                [
                    [
                        _e(r["rank"]),
                        name(r["item_id"]),
                        _e(r["relevance"]),
                        _e(r["unexpected"]),
                        _e(r["reason"]),
                        _e(r["source"]),
                    ]
                    for r in rank.iter_rows(named=True)
                ],
            ),
            f"<p>Cached: {cached.height} items.</p>",
            "<h4>5. Final list with the serendipity slot</h4>",
            _table(
                ["rank", "item", "channel"],
                [
                    [
                        _e(r["rank"]),
                        name(r["item_id"]),
                        "<b>serendipity slot</b>" if r["channel"] == "seren" else _e(r["channel"]),
                    ]
                    for r in final.head(WALK_ITEMS).iter_rows(named=True)
                ],
            ),
        ]
    )


def render_seral_html(
    payload: dict[str, Any], markers: dict[str, dict[str, Any]], walks: str, cfg: Any
) -> str:
    ledger = ledger_from_markers(markers, payload["run"]).to_json()
    stages = throughput({n: m for n, m in markers.items() if n != "report"}, payload["users"]["sampled"])
    thr = _table(
        ["stage", "seconds", "users/min"],
        [[_e(s["stage"]), f"{s['seconds']:.1f}", _rate(s["users_per_min"])] for s in stages],
    )
    led = _table(
        ["stage", *next(iter(ledger["stages"].values()), {}).keys()],
        [
            [_e(n), *(_e(json.dumps(v) if isinstance(v, dict) else v) for v in s.values())]
            for n, s in ledger["stages"].items()
        ],
    )
    fb = _table(
        ["LLM stage", "on fallback", "share", "limit"],
        [
            [_e(n), f"{f['fallback']} / {f['asked']}", f"{f['fallback_share']:.1%}", f"{f['limit']:.0%}"]
            for n, f in (payload.get("llm_fallback") or {}).items()
        ],
    )
    size = payload.get("profiles") or {}
    base, slot = payload["base"], payload["slot"]
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>SERAL run {_e(payload["run"])}</title>
<style>{CSS} pre{{white-space:pre-wrap;background:#f7f7f7;padding:8px;font-size:12px}}</style></head><body>
<h1>SERAL: {_e(payload["dataset"])} (run {_e(payload["run"])})</h1>
<p>{_e(payload["users"]["note"])} (seed {cfg.seed}); full ranking over {payload["n_items"]:,} items, seen items masked.
SerenGPT <code>{_e(payload["llm"])}</code>; classic channel <code>{_e(base["baseline"])}</code> (validation-best of
{_e(", ".join(base["baselines"]))}); serendipity slot: {slot["quota"]} of the top {slot["k"]} at ranks
{_e(", ".join(str(p) for p in slot["positions"]))} (0-based).</p>
<h2>Final lists</h2>{_metrics(payload)}
<p>Serendipity@10 = mean over users of |top-10 items that are held out and unexpected by the labels' rule
(<code>{_e(payload["labels"].get("rule"))}</code>)| / non-empty slots; Unexp@10 = mean 1 - mean cosine to the history;
PVR@10 = share of exposed slots that are unexpected by the rule (PVR-slot@10: and came from the cache).</p>
<h3>The slot bar (paired bootstrap over users): <b>{_e(payload["bar"]["verdict"])}</b></h3>{_intervals(payload["ci"])}
<h2>SerenGPT on the labelled lists</h2>
<p>{_e(payload["labels"].get("lists", 0))} lists ({_e(payload["labels"].get("users", 0))} users considered; a list only for a
user whose held-out item is serendipitous: engaged and unexpected). Hit@1 and NDCG@3 as in the paper.</p>{_seren(payload)}
<h2>Profiles</h2><p>Mean tokens of the rendered profile {size.get("profile_tokens", "-")} vs the raw history
{size.get("raw_tokens", "-")} (ratio {size.get("ratio", "-")}).</p>
<h2>LLM fallback</h2>{fb}
<h2>Throughput</h2>{thr}
<h2>LLM ledger</h2>{led}
<h2>Walkthrough</h2>{walks}
</body></html>
"""


def report_from_stage(ctx: StageContext) -> Path:
    """The report stage: `<run>/report.html` (atomic) from the stage's declared inputs."""
    from recgpt.pipeline.seral_stages import titles as item_titles

    res, cfg = cast(Resources, ctx.resources), ctx.config
    payload = json.loads((ctx.store.run_dir / "results.json").read_text())
    t = {
        "profiles": ctx.read("profiles", "profiles"),
        "compressed": ctx.read("compress", "compressed"),
        "candidates": ctx.read("candidates", "candidates"),
        "serving": ctx.read("seren", "serving"),
        "cache": ctx.read("cache", "cache"),
        "lists": ctx.read("slot", "lists"),
    }
    names = item_titles(res)
    users = walk_users(t["profiles"], t["serving"], res.users, cfg.report_users)
    walks = "".join(_walk(u, t, res, names) for u in users)
    html = render_seral_html(payload, ctx.finished(), walks, cfg)
    return write_text_atomic(ctx.store.run_dir / "report.html", html)


__all__ = ["render_seral_html", "report_from_stage", "walk_users"]
