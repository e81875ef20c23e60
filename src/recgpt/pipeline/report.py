"""What a run shows: the terminal table and a self-contained HTML report.

The HTML report reuses `recgpt.eval.report` (its CSS and plots: accuracy vs diversity / coverage,
exposure Lorenz curves), adds the tag HR columns, the throughput of every stage and the LLM ledger,
and walks a few users through the chain: compressed history -> matched pool -> interests -> tags
(with φ's categories) -> the final list (channel, and the tag and interest that produced each
RecGPT item) -> explanations. Once `recgpt judge run` has judged the run, a "Judge" section shows
its pass rates per task and criterion. All catalogue, user and LLM text is HTML-escaped.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import polars as pl
from rich.console import Console
from rich.table import Table

from recgpt.data.atomic import write_json_atomic, write_text_atomic
from recgpt.eval.report import CSS, _plots
from recgpt.pipeline.evaluation import HEADLINE, LOWER_BETTER, load_result, throughput
from recgpt.pipeline.state import RunState

WALK_ITEMS = 10


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)


def _rate(v: float | None) -> str:
    return "-" if v is None else f"{v:,.1f}"


def results_table(payload: dict[str, Any]) -> Table:
    """The run's one table: accuracy, beyond-accuracy and tag HR per row."""
    cols = [c for c in HEADLINE if any(r.get(c) is not None for r in payload["table"])]
    t = Table(title=f"{payload['dataset']} - run {payload['run']}: {payload['users']['note']}, "
                    f"full ranking over {payload['n_items']:,} items, seen items masked")  # fmt: skip
    t.add_column("model")
    for c in cols:
        t.add_column(c, justify="right")
    for r in payload["table"]:
        t.add_row(r["model"], *(_fmt(r.get(c)) for c in cols))
    return t


def print_results(payload: dict[str, Any], console: Console, stages: list[dict[str, Any]] | None = None) -> None:
    """Table, tag HR of the history baseline, the issue's bar, and throughput per stage."""
    console.print(results_table(payload))
    hist = payload["tag_hr"]["history_tags"]
    console.print(f"[dim]tag HR of a non-LLM history baseline (last items' categories and titles): "
                  f"@10 {hist.get('TagHR@10', 0):.4f}, @30 {hist.get('TagHR@30', 0):.4f}[/dim]")  # fmt: skip
    b = payload["bar"]
    console.print(
        f"fused vs best baseline ({b['best_baseline']}): NDCG@10 ratio {b['fused_over_best_ndcg']:.3f} "
        f"(within 5%: {b['ndcg_within_5pct']}), CatDiv up: {b['catdiv_up']}, Coverage up: {b['coverage_up']}, "
        f"Gini down: {b['gini_down']} -> bar {'MET' if b['met'] else 'NOT met'}"
    )
    fb = Table(title="LLM fallback per stage (the LLM gave nothing usable)")
    for c in ("stage", "on fallback", "share", "limit", "reasons"):
        fb.add_column(c, justify="left" if c in ("stage", "reasons") else "right")
    for name, f in (payload.get("llm_fallback") or {}).items():
        fb.add_row(name, f"{f['fallback']} / {f['asked']}", f"{f['fallback_share']:.1%}", f"{f['limit']:.0%}",
                   ", ".join(f"{k}={v}" for k, v in f["fallback_reasons"].items()) or "-")  # fmt: skip
    console.print(fb)
    t = Table(title="throughput per stage (sampled users)")
    for c in ("stage", "seconds", "users/min"):
        t.add_column(c, justify="right" if c != "stage" else "left")
    for s in stages if stages is not None else payload["throughput"]:
        t.add_row(s["stage"], f"{s['seconds']:.1f}", _rate(s["users_per_min"]))
    console.print(t)


# ---------------------------------------------------------------- HTML


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _e(x: Any) -> str:
    return html.escape("" if x is None else str(x))


def _metrics_html(payload: dict[str, Any]) -> str:
    cols = [c for c in HEADLINE if any(r.get(c) is not None for r in payload["table"])]
    best = {}
    for c in cols:
        vals = [r[c] for r in payload["table"] if r.get(c) is not None]
        best[c] = min(vals) if c in LOWER_BETTER else max(vals)
    rows = [[_e(r["model"]), *(f'<span class="{"best" if r.get(c) == best[c] else ""}">{_fmt(r.get(c))}</span>'
                               for c in cols)] for r in payload["table"]]  # fmt: skip
    return _table(["model", *cols], rows)


def walk_users(state: RunState) -> list[str]:
    """Users to walk through: those whose interests came from the LLM first, then the rest, by id."""
    interests = state.read("interests", "interests")
    llm_users = set(interests.filter(pl.col("template") != "pool-fallback")["user_id"].to_list())
    order = sorted(state.users, key=lambda u: (u not in llm_users, u))
    return order[: state.cfg.report_users]


def _walk_one(state: RunState, user: str, titles: dict[str, str], cats: dict[str, list[str]]) -> str:
    comp = state.read("compress", "compressed").filter(pl.col("user_id") == user)
    pool = state.read("pool", "matches").filter(pl.col("user_id") == user).sort("rank")
    interests = state.read("interests", "interests").filter(pl.col("user_id") == user).sort("interest_id")
    tags = state.read("tags", "tags").filter(pl.col("user_id") == user).sort("rank")
    phi = state.read("phi", "tag_categories").filter(pl.col("rank") <= 3)
    phi_of = {t: g.sort("rank")["category"].to_list() for (t,), g in phi.group_by("tag")}
    fused = state.read("fusion", "fused").filter((pl.col("user_id") == user) & (pl.col("rank") <= WALK_ITEMS))
    served = state.read("explanations", "served").filter(pl.col("user_id") == user)
    expl = {r: (e, f, i) for r, e, f, i in served.select("rank", "explanation", "item_only", "explained_interest")
            .iter_rows()}  # fmt: skip
    target = state.read("split", "users").filter(pl.col("user_id") == user)["target_item_id"][0]
    text = comp["text"][0] if comp.height else ""
    parts = [f"<h3>User {_e(user)}</h3>",
             f"<p>Held-out next item (never shown to any stage): <b>{_e(titles.get(target, target))}</b></p>",
             f"<h4>1. Compressed history B_u ({comp['tokens'][0] if comp.height else 0} tokens)</h4>",
             f"<pre>{_e(text)}</pre>",
             f"<p>Matched pool I_m: {_e(', '.join(pool['interest'].to_list()))}</p>",
             "<h4>2. Interests (LLM_UI)</h4>",
             _table(["id", "interest", "stage", "kind", "reason", "template"],
                    [[_e(c) for c in r] for r in interests.select("interest_id", "interest", "stage", "kind", "reason",
                                                                  "template").iter_rows()]),
             "<h4>3. Tags (LLM_IT) and φ(tag)</h4>",
             _table(["rank", "tag", "interest", "rationale", "φ top categories"],
                    [[_e(r), _e(t), _e(i), _e(ra), _e(", ".join(phi_of.get(t, [])))] for r, t, i, ra in
                     tags.select("rank", "tag", "interest", "rationale").iter_rows()])]  # fmt: skip
    rows = []
    for rank, iid, channel, tag, interest in fused.sort("rank").select("rank", "item_id", "channel", "tag",
                                                                        "interest").iter_rows():  # fmt: skip
        e = expl.get(rank)
        hit = " <b>(held-out item)</b>" if iid == target else ""
        note = "" if e is None else f"{_e(e[0])} <small>({'item-only fallback' if e[1] else _e(e[2])})</small>"
        rows.append([_e(rank), _e(titles.get(iid, iid)) + hit, _e(", ".join(cats.get(iid, []))), _e(channel),
                     _e(tag), _e(interest), note])  # fmt: skip
    parts += ["<h4>4. Final list (fused) with provenance and 5. explanations (LLM_RE)</h4>",
              _table(["rank", "item", "categories", "channel", "tag", "interest", "explanation"], rows)]
    return "\n".join(parts)


def judge_html(run_dir: Path) -> str:
    """The "Judge" section from `recgpt judge run`'s `judge/pass_rates.json` ("" when the run was not judged)."""
    path = run_dir / "judge" / "pass_rates.json"
    if not path.exists():
        return ""
    rates = json.loads(path.read_text())
    try:
        meta = json.loads((run_dir / "judge" / "judge.json").read_text())
    except (OSError, ValueError):
        meta = {}
    rows = [[f"<b>{_e(task)}</b>", _e(r["n"]), _e(r.get("errors", 0)), f"<b>{r['overall']:.1%}</b>",
             ", ".join(f"{_e(k)} {v:.1%}" for k, v in r.items() if k not in ("overall", "n", "errors"))]
            for task, r in rates.items()]  # fmt: skip
    return (f"<h2>Judge</h2><p>LLM judge <code>{_e(meta.get('llm', '?'))}</code> plus deterministic rules "
            "(<code>rule:*</code>) over the LLM-written outputs; an output passes only if every criterion and "
            "rule passes, and a failed judge call counts as not passing.</p>"
            + _table(["task", "samples", "judge errors", "pass rate", "per criterion"], rows))  # fmt: skip


def render_run_html(state: RunState, payload: dict[str, Any], ledger: dict[str, Any]) -> str:
    result = load_result(state, payload)
    plots = "".join(f'<figure><img alt="{_e(t)}" src="data:image/png;base64,{b}"><figcaption>{_e(t)}'
                    f"</figcaption></figure>" for t, b in _plots(result))  # fmt: skip
    items = state.dataset.items
    titles = dict(zip(items["item_id"].to_list(), items["title"].to_list(), strict=True))
    cats = dict(zip(items["item_id"].to_list(), items["categories"].to_list(), strict=True))
    walks = "".join(_walk_one(state, u, titles, cats) for u in walk_users(state))
    stages = throughput(state, [s for s in state.folders if s != "report"])
    thr = _table(["stage", "seconds", "users/min"], [[_e(s["stage"]), f"{s['seconds']:.1f}", _rate(s["users_per_min"])]
                                                      for s in stages])  # fmt: skip
    led = _table(["stage", *next(iter(ledger["stages"].values()), {}).keys()],
                 [[_e(n), *(_e(json.dumps(v) if isinstance(v, dict) else v) for v in s.values())]
                  for n, s in ledger["stages"].items()])  # fmt: skip
    fb = _table(["LLM stage", "on fallback", "share", "limit", "reasons"],
                [[_e(n), f"{f['fallback']} / {f['asked']}", f"{f['fallback_share']:.1%}", f"{f['limit']:.0%}",
                  _e(", ".join(f"{k}={v}" for k, v in f["fallback_reasons"].items()) or "-")]
                 for n, f in (payload.get("llm_fallback") or {}).items()])  # fmt: skip
    b, hist = payload["bar"], payload["tag_hr"]["history_tags"]
    cfg = state.cfg
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>recgpt run {_e(payload['run'])}</title>
<style>{CSS} pre{{white-space:pre-wrap;background:#f7f7f7;padding:8px;font-size:12px}}
span.best{{font-weight:bold;background:#e3f1e3}}</style></head><body>
<h1>RecGPT chain: {_e(payload['dataset'])} (run {_e(payload['run'])})</h1>
<p>{_e(payload['users']['note'])} (seed {cfg.seed}); split <code>{_e(payload['split'])}</code>; full ranking over
{payload['n_items']:,} items, seen items masked. LLM <code>{_e(cfg.llm.shown_spec())}</code>; RecGPT share of the fused list
{cfg.share:.0%} next to <code>{_e(cfg.baseline)}</code>; β = {cfg.fusion.beta}.</p>
<h2>Metrics</h2>{_metrics_html(payload)}
<p>Tag HR = share of users whose held-out item's category is among φ(their tags) (top 10 / 30). Non-LLM history
baseline tags: @10 {hist.get('TagHR@10', 0):.4f}, @30 {hist.get('TagHR@30', 0):.4f}. Fused vs best baseline
(<code>{_e(b['best_baseline'])}</code>): NDCG@10 ratio {b['fused_over_best_ndcg']:.3f}; CatDiv up {b['catdiv_up']},
Coverage up {b['coverage_up']}, Gini down {b['gini_down']}: bar <b>{'met' if b['met'] else 'not met'}</b>.</p>
<div class="plots">{plots}</div>
{judge_html(state.run_dir)}
<h2>Throughput</h2>{thr}
<h2>LLM fallback</h2><p>Share of users (explanations: interest-item pairs) the LLM gave nothing usable, who
got the rule-based fallback; a stage above its limit (<code>llm.max_fallback_share</code>) fails the run.</p>{fb}
<h2>LLM ledger</h2>{led}
<h2>Walkthrough</h2>{walks}
</body></html>
"""


def write_run_report(state: RunState) -> Path:
    """Write `<run>/report.html` atomically."""
    from recgpt.pipeline.run import run_ledger
    from recgpt.pipeline.stages import fallback_summary

    payload = json.loads((state.run_dir / "results.json").read_text())
    payload["llm_fallback"] = fallback_summary(state)  # now with explanations (they run after eval)
    write_json_atomic(state.run_dir / "results.json", payload)

    ledger = run_ledger(state, state.run_dir.name).to_json()
    path = state.run_dir / "report.html"
    return write_text_atomic(path, render_run_html(state, payload, ledger))  # umask mode, cleanable temp


__all__ = ["judge_html", "print_results", "render_run_html", "results_table", "walk_users", "write_run_report"]
