"""Training report of one `recgpt train sft` folder: loss curves per curriculum level, config, samples.

Reads only what training wrote (`log.jsonl`, `train_config.json`, `samples.parquet`), so it can be
re-rendered at any time, also for a run that is still going or was stopped. One self-contained HTML
file: the plots are embedded PNGs (matplotlib, Agg).
"""

from __future__ import annotations

import html
import json
import os
import time
from pathlib import Path
from typing import Any

import polars as pl

from recgpt.data.atomic import write_text_atomic
from recgpt.eval.report import CSS, _png


def read_log(out_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The rows of `out_dir/log.jsonl` (step, level, loss, lr, epoch, ...), in order."""
    p = Path(out_dir) / "log.jsonl"
    if not p.is_file():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def loss_ends(log: list[dict[str, Any]], level: str) -> tuple[float | None, float | None]:
    """First and last logged training loss of a level."""
    losses = [r["loss"] for r in log if r["level"] == level]
    return (losses[0], losses[-1]) if losses else (None, None)


def truncate_log(out_dir: str | os.PathLike[str], level: str, step: int) -> None:
    """Drop a level's rows after `step` (a resumed phase redoes the steps after its checkpoint)."""
    rows = [r for r in read_log(out_dir) if r["level"] != level or r["step"] <= step]
    (Path(out_dir) / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _log_row(level: str, step: int, logs: dict[str, float]) -> dict[str, Any]:
    row = {
        "level": level,
        "step": step,
        "loss": float(logs["loss"]),
        "lr": float(logs.get("learning_rate", 0.0)),
        "epoch": float(logs.get("epoch", 0.0)),
        "time": round(time.time(), 1),
    }
    row.update({k: float(logs[k]) for k in ("grad_norm", "mean_token_accuracy", "num_tokens") if k in logs})
    return row


def log_callback(out_dir: str | os.PathLike[str], level: str, progress: Any = None) -> Any:
    """A `TrainerCallback` that appends each logged step to `out_dir/log.jsonl` and drives a rich
    progress bar (the trainer's own tqdm bar and log printer are off)."""
    from transformers import TrainerCallback

    class _Log(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if progress is not None:
                self.task = progress.add_task(level, total=state.max_steps, completed=state.global_step)

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if progress is not None:
                progress.update(self.task, completed=state.global_step)

        def on_log(
            self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kw: Any
        ) -> None:
            if not logs or "loss" not in logs:
                return
            row = _log_row(level, state.global_step, logs)
            with (Path(out_dir) / "log.jsonl").open("a") as f:
                f.write(json.dumps(row) + "\n")
            if progress is not None:
                progress.update(self.task, description=f"{level} loss {row['loss']:.3f}")

    return _Log()


def _smooth(ys: list[float], window: int) -> list[float]:
    out, acc = [], 0.0
    for i, y in enumerate(ys):
        acc += y - (ys[i - window] if i >= window else 0.0)
        out.append(acc / min(i + 1, window))
    return out


def loss_plots(log: list[dict[str, Any]], levels: list[str]) -> list[tuple[str, str]]:
    """(title, base64 PNG): the loss over the whole curriculum (levels side by side), and the LR."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not log:
        return []
    fig, (ax, ax_lr) = plt.subplots(1, 2, figsize=(11, 3.8))
    offset = 0
    for level in [lv for lv in levels if any(r["level"] == lv for r in log)]:
        rows = [r for r in log if r["level"] == level]
        xs = [offset + r["step"] for r in rows]
        ys = [r["loss"] for r in rows]
        (line,) = ax.plot(xs, ys, alpha=0.35, lw=1)
        ax.plot(xs, _smooth(ys, max(1, len(ys) // 10)), color=line.get_color(), lw=2, label=level)
        ax_lr.plot(xs, [r["lr"] for r in rows], color=line.get_color(), label=level)
        ax.axvline(offset, color="#bbb", lw=0.8, ls="--")
        offset = xs[-1]
    ax.set(xlabel="optimizer step (curriculum order)", ylabel="training loss (answer tokens)", title="loss")
    ax_lr.set(xlabel="optimizer step (curriculum order)", ylabel="learning rate", title="learning rate")
    for a in (ax, ax_lr):
        a.grid(alpha=0.3)
        a.legend()
    fig.tight_layout()
    png = _png(fig)
    plt.close(fig)
    return [("training loss per curriculum level (thin: every step, thick: moving average)", png)]


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(x: Any) -> str:
    return "" if x is None else f"{x:.4f}" if isinstance(x, float) else str(x)


def render_report(out_dir: str | os.PathLike[str]) -> str:
    """The report of a training folder as one HTML string."""
    out = Path(out_dir)
    meta = (
        json.loads((out / "train_config.json").read_text()) if (out / "train_config.json").is_file() else {}
    )
    config = meta.get("config", {})
    levels = list(config.get("levels", ["foundation", "intermediate", "advanced"]))
    log = read_log(out)
    result = meta.get("result") or {}
    by_level = {r["level"]: r for r in result.get("levels", [])}
    phase_rows = []
    for level in levels:
        first, last = loss_ends(log, level)
        r = by_level.get(level, {})
        if first is None and not r:
            continue
        phase_rows.append(
            [
                level,
                r.get("samples", ""),
                r.get("dropped_too_long", ""),
                r.get("tokens_mean", ""),
                f"{r.get('steps', '')}/{r.get('max_steps', '')}",
                _fmt(first),
                _fmt(last),
                r.get("runtime_s", ""),
                "yes" if r.get("complete") else "no",
            ]
        )
    counts, keys = [], ["level"]
    if (out / "samples.parquet").is_file():
        s = pl.read_parquet(out / "samples.parquet")
        keys = [c for c in ("level", "task", "source") if c in s.columns]
        counts = [[*row] for row in s.group_by(keys).len().sort(keys).iter_rows()]
    plots = "".join(
        f'<figure><img alt="{html.escape(t)}" src="data:image/png;base64,{b}">'
        f"<figcaption>{html.escape(t)}</figcaption></figure>"
        for t, b in loss_plots(log, levels)
    )
    status = "complete" if result.get("complete") else "not complete (re-run the same command to resume)"
    cfg_rows = [[k, json.dumps(v) if isinstance(v, (dict, list)) else v] for k, v in config.items()]
    versions = ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items())
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>recgpt SFT: {html.escape(out.name)}</title>
<style>{CSS}</style></head><body>
<h1>recgpt SFT: {html.escape(str(out))}</h1>
<p>Base model <code>{html.escape(str(meta.get("base_model", "?")))}</code>; training {status};
wall time {result.get("wall_s", "?")} s. Adapter: <code>{html.escape(str(out / "adapter"))}</code>,
merged model: <code>{html.escape(str(out / "merged"))}</code>.</p>
<h2>Curriculum phases</h2>
{_table(["level", "samples", "dropped (too long)", "mean tokens", "steps", "first loss", "last loss", "seconds", "complete"], phase_rows)}
<div class="plots">{plots}</div>
<h2>Samples</h2>
{_table([*keys, "samples"], counts)}
<h2>Config</h2>
{_table(["field", "value"], cfg_rows)}
<p><small>{html.escape(versions)}; fingerprint {html.escape(str(meta.get("fingerprint", "")))}</small></p>
</body></html>
"""


def write_report(out_dir: str | os.PathLike[str]) -> Path:
    """Write `out_dir/report.html` atomically."""
    path = Path(out_dir) / "report.html"
    return write_text_atomic(path, render_report(out_dir))
