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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import polars as pl
from rich.console import Console
from rich.table import Table

from recgpt.data.atomic import write_json_atomic, write_text_atomic
from recgpt.data.runstore import RunStore
from recgpt.eval.report import CSS, _plots
from recgpt.pipeline.core import StageContext
from recgpt.pipeline.evaluation import HEADLINE, LOWER_BETTER, fallback_ci, load_result, throughput
from recgpt.pipeline.resources import Resources
from recgpt.pipeline.runner import fallback_from_markers, fallback_table, ledger_from_markers
from recgpt.pipeline.verdicts import evidence_html, print_evidence

if TYPE_CHECKING:
    from recgpt.serving.models import UserView

WALK_ITEMS = 10


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)


def _rate(v: float | None) -> str:
    return "-" if v is None else f"{v:,.1f}"


def metrics_table(
    rows: list[dict[str, Any]], headline: Sequence[str], title: str, first: str = "model"
) -> Table:
    """One row per `rows` entry (named by its "model"), the `headline` metrics some row has."""
    cols = [c for c in headline if any(r.get(c) is not None for r in rows)]
    t = Table(title=title)
    t.add_column(first)
    for c in cols:
        t.add_column(c, justify="right")
    for r in rows:
        t.add_row(r["model"], *(_fmt(r.get(c)) for c in cols))
    return t


def results_table(payload: dict[str, Any]) -> Table:
    """The run's one table: accuracy, beyond-accuracy and tag HR per row."""
    return metrics_table(
        payload["table"],
        HEADLINE,
        f"{payload['dataset']} - run {payload['run']}: {payload['users']['note']}, "
        f"full ranking over {payload['n_items']:,} items, seen items masked",
    )


def print_results(
    payload: dict[str, Any],
    console: Console,
    stages: list[dict[str, Any]] | None = None,
    *,
    fallback: bool = True,
) -> None:
    """Table, the validation choices, intervals and verdicts, tag HR with its reference rows, the
    issue's bar, the LLM fallback per stage (unless
    `fallback=False`: `run_pipeline` prints it already) and throughput per stage."""
    console.print(results_table(payload))
    print_evidence(payload, console)
    b = payload["bar"]
    console.print(
        f"fused vs best baseline ({b['best_baseline']}): NDCG@10 ratio {b['fused_over_best_ndcg']:.3f}, "
        f"CatDiv up: {b['catdiv_up']}, Coverage up: {b['coverage_up']}, Gini down: {b['gini_down']} "
        f"-> bar [bold]{b.get('verdict', 'met' if b['met'] else 'missed')}[/bold] (judged by the intervals above)"
    )
    if fallback:
        console.print(fallback_table(payload.get("llm_fallback") or {}))
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
    rows = [
        [
            _e(r["model"]),
            *(f'<span class="{"best" if r.get(c) == best[c] else ""}">{_fmt(r.get(c))}</span>' for c in cols),
        ]
        for r in payload["table"]
    ]
    return _table(["model", *cols], rows)


@dataclass(frozen=True)
class RunTables:
    """What the report reads of a run, each table once: a reader, the markers, the config, the data."""

    read: Callable[[str, str], pl.DataFrame]
    markers: dict[str, dict[str, Any]]
    cfg: Any  # the run config (or a stage's declared view of it)
    res: Resources
    run_dir: Path


def walk_users(interests: pl.DataFrame, users: list[str], n: int) -> list[str]:
    """Users to walk through: those whose interests came from the LLM first, then the rest, by id."""
    llm_users = set(interests.filter(pl.col("template") != "pool-fallback")["user_id"].to_list())
    return sorted(users, key=lambda u: (u not in llm_users, u))[:n]


def _walks(run: RunTables, items: pl.DataFrame) -> str:
    """The walk-through of `report_users` users, through the recommendation service every front door
    uses (`recgpt recommend`, the HTTP server): the report shows the very list a user is served."""
    from recgpt.serving import TABLES, RecommendationService

    tables = {stage: run.read(stage, table) for stage, table in TABLES}
    config = {"dataset": run.res.cfg.dataset, "explain_top": run.res.cfg.explain_top}
    service = RecommendationService(run.run_dir, config, tables, items=items)
    users = walk_users(tables["interests"], run.res.users, run.cfg.report_users)
    return _share_html(tables["explanations"]) + "".join(
        _walk_one(service.view(user, k=WALK_ITEMS)) for user in users
    )


def _share_html(served: pl.DataFrame) -> str:
    """Who wrote the served explanations: the LLM's share, with the count of each template."""
    from recgpt.intent.explanation_table import llm_share
    from recgpt.intent.explanations import SOURCE_ITEM, SOURCE_LLM, SOURCE_PAIR

    if "source" not in served.columns:
        return "<p>This run predates explanation sources: LLM and pair-template texts are not told apart.</p>"
    s = llm_share(served["source"].to_list())
    n = s["by_source"]
    return (
        f"<p>Explanations served: <b>{n[SOURCE_LLM]} of {s['served']} ({s['llm_share']:.0%}) written by the "
        f"LLM</b>; {n[SOURCE_PAIR]} pair templates (the LLM's text broke a rule), {n[SOURCE_ITEM]} item-only "
        "templates (no interest matched the item). Templates carry a <i>template</i> badge below.</p>"
    )


def _badge(source: str | None) -> str:
    """How the walk-through marks who wrote an explanation (every template is marked)."""
    if source == "llm":
        return "LLM"
    if source is None:
        return "source unknown"
    return "template: " + ("item only" if source.endswith(":item") else "pair")


def _walk_one(view: UserView) -> str:
    target = view.target
    hist = view.history
    parts = [
        f"<h3>User {_e(view.user_id)}</h3>",
        "<p>Held-out next item (never shown to any stage): "
        f"<b>{_e(target.title or target.item_id) if target else '-'}</b></p>",
        f"<h4>1. Compressed history B_u ({hist.tokens if hist else 0} tokens)</h4>",
        f"<pre>{_e(hist.text if hist else '')}</pre>",
        f"<p>Matched pool I_m: {_e(', '.join(p.interest for p in view.pool))}</p>",
        "<h4>2. Interests (LLM_UI)</h4>",
        _table(
            ["id", "interest", "stage", "kind", "reason", "template"],
            [
                [_e(c) for c in (i.interest_id, i.interest, i.stage, i.kind, i.reason, i.template)]
                for i in view.interests
            ],
        ),
        "<h4>3. Tags (LLM_IT) and φ(tag)</h4>",
        _table(
            ["rank", "tag", "interest", "rationale", "φ top categories"],
            [
                [_e(t.rank), _e(t.tag), _e(t.interest), _e(t.rationale), _e(", ".join(t.categories))]
                for t in view.tags
            ],
        ),
    ]
    rows = []
    for r in view.recommendations:
        hit = " <b>(held-out item)</b>" if target and r.item_id == target.item_id else ""
        why = "no interest matched" if r.item_only else _e(r.explained_interest)
        note = (
            ""
            if r.explanation is None
            else f"{_e(r.explanation)} <small>[{_e(_badge(r.explanation_source))}] ({why})</small>"
        )
        rows.append(
            [
                _e(r.rank),
                _e(r.title or r.item_id) + hit,
                _e(", ".join(r.categories)),
                _e(r.channel),
                _e(r.tag),
                _e(r.interest),
                note,
            ]
        )
    parts += [
        "<h4>4. Final list (fused) with provenance and 5. explanations (LLM_RE)</h4>",
        _table(["rank", "item", "categories", "channel", "tag", "interest", "explanation"], rows),
    ]
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
    rows = [
        [
            f"<b>{_e(task)}</b>",
            _e(r["n"]),
            _e(r.get("errors", 0)),
            f"<b>{r['overall']:.1%}</b>",
            ", ".join(f"{_e(k)} {v:.1%}" for k, v in r.items() if k not in ("overall", "n", "errors")),
        ]
        for task, r in rates.items()
    ]
    return (
        f"<h2>Judge</h2><p>LLM judge <code>{_e(meta.get('llm', '?'))}</code> plus deterministic rules "
        "(<code>rule:*</code>) over the LLM-written outputs; an output passes only if every criterion and "
        "rule passes, and a failed judge call counts as not passing.</p>"
        + _table(["task", "samples", "judge errors", "pass rate", "per criterion"], rows)
    )


def render_run_html(run: RunTables, payload: dict[str, Any], ledger: dict[str, Any]) -> str:
    res = run.res
    result = load_result(run.read("eval", "lists"), res, payload)
    plots = "".join(
        f'<figure><img alt="{_e(t)}" src="data:image/png;base64,{b}"><figcaption>{_e(t)}'
        f"</figcaption></figure>"
        for t, b in _plots(result)
    )
    walks = _walks(run, res.dataset.items)
    stages = throughput({n: m for n, m in run.markers.items() if n != "report"}, len(res.users))
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
        ["LLM stage", "on fallback", "share", "limit", "reasons"],
        [
            [
                _e(n),
                f"{f['fallback']} / {f['asked']}",
                f"{f['fallback_share']:.1%}",
                f"{f['limit']:.0%}",
                _e(", ".join(f"{k}={v}" for k, v in f["fallback_reasons"].items()) or "-"),
            ]
            for n, f in (payload.get("llm_fallback") or {}).items()
        ],
    )
    b, fusion = payload["bar"], payload.get("fusion") or {}
    cfg = run.cfg
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>recgpt run {_e(payload["run"])}</title>
<style>{CSS} pre{{white-space:pre-wrap;background:#f7f7f7;padding:8px;font-size:12px}}
span.best{{font-weight:bold;background:#e3f1e3}}</style></head><body>
<h1>RecGPT chain: {_e(payload["dataset"])} (run {_e(payload["run"])})</h1>
<p>{_e(payload["users"]["note"])} (seed {cfg.seed}); split <code>{_e(payload["split"])}</code>; full ranking over
{payload["n_items"]:,} items, seen items masked. LLM <code>{_e(payload["llm"])}</code>; RecGPT share of the fused list
{float(fusion.get("share", 0)):.0%} next to <code>{_e(fusion.get("baseline"))}</code>; β = {cfg.fusion.beta}.</p>
<h2>Metrics</h2>{_metrics_html(payload)}
<p>Fused vs best baseline (<code>{_e(b["best_baseline"])}</code>): NDCG@10 ratio {b["fused_over_best_ndcg"]:.3f};
CatDiv up {b["catdiv_up"]}, Coverage up {b["coverage_up"]}, Gini down {b["gini_down"]}: bar
<b>{_e(b.get("verdict", "met" if b["met"] else "missed"))}</b> (judged by the intervals below).</p>
<div class="plots">{plots}</div>
{evidence_html(payload)}
{judge_html(run.run_dir)}
<h2>Throughput</h2>{thr}
<h2>LLM fallback</h2><p>Share of users (explanations: interest-item pairs) the LLM gave nothing usable, who
got the rule-based fallback; a stage above its limit (<code>llm.max_fallback_share</code>) fails the run.</p>{fb}
<h2>LLM ledger</h2>{led}
<h2>Walkthrough</h2>{walks}
</body></html>
"""


def _write(run: RunTables) -> Path:
    payload = json.loads((run.run_dir / "results.json").read_text())
    payload["llm_fallback"] = fallback_from_markers(run.markers, run.res.cfg)  # now with explanations
    payload["ci"] = {**payload.get("ci", {}), **fallback_ci(payload["llm_fallback"])}
    payload["bar"]["ci"] = payload["ci"]
    write_json_atomic(run.run_dir / "results.json", payload)
    ledger = ledger_from_markers(run.markers, run.run_dir.name).to_json()
    return write_text_atomic(run.run_dir / "report.html", render_run_html(run, payload, ledger))


def report_from_stage(ctx: StageContext) -> Path:
    """The report stage: `<run>/report.html` (atomic) from the stage's declared inputs."""
    res = cast(Resources, ctx.resources)
    return _write(RunTables(ctx.read, ctx.finished(), ctx.config, res, ctx.store.run_dir))


def write_run_report(run: str | Path | Any) -> Path:
    """Rewrite a finished run's `report.html` (e.g. after `recgpt judge run`); `run` is the run folder
    or anything with a `run_dir`."""
    from recgpt.datasets import load_dataset
    from recgpt.pipeline.config import RunConfig

    run_dir = Path(run if isinstance(run, str | Path) else run.run_dir)
    store = RunStore.open(run_dir)
    cfg = RunConfig.model_validate(store.read_json("config.json"))
    cfg = cfg.model_copy(update={"runs_dir": run_dir.parent, "name": run_dir.name})
    res = Resources(cfg, load_dataset(cfg.dataset), store)
    return _write(RunTables(store.read, store.markers(), cfg, res, run_dir))


__all__ = [
    "RunTables",
    "judge_html",
    "print_results",
    "render_run_html",
    "report_from_stage",
    "results_table",
    "walk_users",
    "write_run_report",
]
