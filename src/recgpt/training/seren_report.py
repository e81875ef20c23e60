"""Training report of one SerenGPT folder (`training.seren`): both phases, IPO rewards, evaluation.

Reads only what training and evaluation wrote (`seren.json`, `sft/log.jsonl`, `ipo/log.jsonl`,
`ipo/rewards.jsonl`, `eval.json`), so it can be re-rendered at any time; `report.json` holds the same
figures for machines. The loss plot is `training.report.loss_plots` (SFT and IPO side by side).
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any

from recgpt.data.atomic import write_json_atomic, write_text_atomic
from recgpt.eval.report import CSS, _png
from recgpt.training.report import _fmt, _table, loss_plots, read_log

_REWARD_PLOTS = (
    ("rewards/margins", "reward margin (chosen - rejected)"),
    ("rewards/accuracies", "reward accuracy"),
)


def _rewards_plot(rows: list[dict[str, float]]) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
    for ax, (key, label) in zip(axes, _REWARD_PLOTS, strict=True):
        pts = [(r["step"], r[key]) for r in rows if key in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".")
        ax.set(xlabel="IPO optimizer step", ylabel=label, title=label)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    png = _png(fig)
    plt.close(fig)
    return png


def _phase_row(name: str, r: dict[str, Any] | None) -> list[Any]:
    if not r:
        return [name, "", "", "", "not started", "", "", "", "no"]
    return [
        name,
        r.get("samples", ""),
        r.get("dropped_too_long", ""),
        r.get("tokens_mean", ""),
        f"{r.get('steps', '')}/{r.get('max_steps', '')}",
        _fmt(r.get("first_loss")),
        _fmt(r.get("last_loss")),
        r.get("runtime_s", ""),
        "yes" if r.get("complete") else "no",
    ]


def seren_summary(out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The figures of a SerenGPT folder: config, both phases, last IPO rewards, evaluation."""
    from recgpt.training.seren import read_rewards

    out = Path(out_dir)
    meta = json.loads((out / "seren.json").read_text()) if (out / "seren.json").is_file() else {}
    result = meta.get("result", {})
    rewards = read_rewards(out / "ipo")
    acc = [r["rewards/accuracies"] for r in rewards if "rewards/accuracies" in r]
    return {
        "config": meta.get("config", {}),
        "complete": result.get("complete", False),
        "sft": (result.get("sft") or {}).get("levels", [None])[0],
        "ipo": result.get("ipo"),
        "ipo_rewards_last": result.get("rewards", {}),
        "ipo_reward_accuracy_mean": sum(acc) / len(acc) if acc else None,
        "evaluation": json.loads((out / "eval.json").read_text()) if (out / "eval.json").is_file() else None,
        "models": {
            "sft": (result.get("sft") or {}).get("merged_dir"),
            "sft+ipo": result.get("ipo_merged"),
        },
    }


def _ci(m: dict[str, Any], key: str) -> str:
    ci = (m.get("ci") or {}).get(key) or {}
    lo, hi = ci.get("lo"), ci.get("hi")
    return "" if lo is None or hi is None else f"[{lo:.3f}, {hi:.3f}]"


def _eval_html(ev: dict[str, Any] | None) -> str:
    if not ev:
        return "<p>Not evaluated yet (<code>evaluate_seren</code>).</p>"
    rows = []
    named = [(n, m, "model") for n, m in ev.get("models", {}).items()]
    named += [(n, m, "reference") for n, m in ev.get("references", {}).items()]
    for name, m, kind in named:
        rows.append(
            [
                f"{name} ({kind})",
                m.get("n_lists", ""),
                _fmt(m.get("Hit@1")),
                _ci(m, "Hit@1"),
                _fmt(m.get("NDCG@3")),
                _ci(m, "NDCG@3"),
                _fmt(m.get("fallback_share")),
            ]
        )
    head = ["ranker", "lists", "Hit@1", "95% CI", "NDCG@3", "95% CI", "fallback share"]
    return _table(head, rows) + f"<p><small>{html.escape(ev.get('note', ''))}</small></p>"


def render_seren_report(out_dir: str | os.PathLike[str]) -> str:
    """The report of a SerenGPT folder as one HTML string."""
    from recgpt.training.seren import read_rewards

    out = Path(out_dir)
    s = seren_summary(out)
    log = [{**r, "level": "sft"} for r in read_log(out / "sft")] + read_log(out / "ipo")
    plots = [*loss_plots(log, ["sft", "ipo"])]
    if (png := _rewards_plot(read_rewards(out / "ipo"))) is not None:
        plots.append(("IPO rewards per step: margin and accuracy (chosen ranked above rejected)", png))
    figs = "".join(
        f'<figure><img alt="{html.escape(t)}" src="data:image/png;base64,{b}">'
        f"<figcaption>{html.escape(t)}</figcaption></figure>"
        for t, b in plots
    )
    rew = s["ipo_rewards_last"] or {}
    cfg = s["config"]
    status = "complete" if s["complete"] else "not complete (re-run the same command to resume)"
    phases = [_phase_row("SFT", s["sft"]), _phase_row("IPO + α·SFT", s["ipo"])]
    head = [
        "phase",
        "samples",
        "dropped (too long)",
        "mean tokens",
        "steps",
        "first loss",
        "last loss",
        "seconds",
        "complete",
    ]
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>SerenGPT: {html.escape(out.name)}</title>
<style>{CSS}</style></head><body>
<h1>SerenGPT alignment: {html.escape(str(out))}</h1>
<p>SFT, then <code>L = L_IPO + α·L_SFT</code> (TRL DPOTrainer, loss_type ["ipo", "sft"], τ = {cfg.get("tau")},
α = {cfg.get("alpha")}; reference model = the SFT model). Training {status}.
Models: SFT <code>{html.escape(str(s["models"]["sft"]))}</code>, SFT+IPO
<code>{html.escape(str(s["models"]["sft+ipo"]))}</code> (serve with <code>transformers:PATH</code>).</p>
<h2>Phases</h2>
{_table(head, phases)}
<p>IPO, last logged step: reward margin {_fmt(rew.get("rewards/margins"))}, reward accuracy
{_fmt(rew.get("rewards/accuracies"))}; mean reward accuracy over all steps {_fmt(s["ipo_reward_accuracy_mean"])}.</p>
<div class="plots">{figs}</div>
<h2>Evaluation (held-out eval lists)</h2>
{_eval_html(s["evaluation"])}
<h2>Config</h2>
{_table(["field", "value"], [[k, v] for k, v in cfg.items()])}
</body></html>
"""


def write_seren_report(out_dir: str | os.PathLike[str]) -> Path:
    """Write `report.html` and `report.json` of a SerenGPT folder atomically."""
    out = Path(out_dir)
    write_json_atomic(out / "report.json", seren_summary(out))
    return write_text_atomic(out / "report.html", render_seren_report(out))


__all__ = ["render_seren_report", "seren_summary", "write_seren_report"]
