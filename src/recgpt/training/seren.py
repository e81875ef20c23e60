"""SerenGPT alignment (SERAL §2): LoRA SFT, then IPO with an SFT term, `L = L_IPO + α·L_SFT`.

`run_seren_training(cfg, samples, out)` trains on a `seren_samples` table (`training.seren_data`):

1. **SFT** (`out/sft/`): `training.sft.run_sft` itself, one curriculum phase ('advanced', task
   'seren') on the (prompt, completion) rows — the same LoRA setup, answer-only loss, drop-not-truncate
   of long samples, checkpoints, deadline stop, merged export and report as `recgpt train sft`.
2. **IPO** (`out/ipo/`): TRL's `DPOTrainer` with `DPOConfig(loss_type=["ipo", "sft"],
   loss_weights=[1.0, alpha], beta=tau)` on the (prompt, chosen, rejected) pairs, continuing the SFT
   LoRA weights. For `loss_type="ipo"` TRL's `beta` is IPO's regularisation τ: the loss is
   `(Δ − 1/(2τ))²` where Δ is the chosen-minus-rejected log-ratio (policy vs reference) **averaged
   per completion token** (TRL's normalisation, confirmed with the IPO authors); the "sft" term is
   the mean token NLL of `chosen`, weighted by α.

**Reference model.** The SFT model. Handing TRL a `PeftModel` that already carries the SFT adapter
(and no `peft_config`) makes it copy that adapter into a frozen second adapter named "ref" and
compute reference log-probs through it; the default with a fresh `peft_config` — the adapter-disabled
base — would anchor IPO to the zero-shot model the SFT phase moved away from. Chosen and rejected
share every token but the two swapped entries, so Δ measures exactly the first-place decision.

**Resume and budget.** Each phase resumes from its newest complete checkpoint (`phase.latest_checkpoint`)
and stops before a step that would overrun `budget_s` (per phase; `phase.deadline_stop`), saving a
checkpoint; a finished phase is not retrained; IPO starts only once SFT is complete. Each folder
remembers a fingerprint of its config and samples and refuses to resume a different run.
Adapters and merged models are written to a temp sibling and renamed (`export.replace_dir`).

    out/samples.parquet             the sample table trained on
    out/sft/...                     run_sft's folder: adapter/, merged/, checkpoints/, log.jsonl, report.html
    out/ipo/checkpoints/checkpoint-N  DPOTrainer checkpoints (adapter + optimizer + RNG)
    out/ipo/adapter/, out/ipo/merged/ the SFT+IPO adapter and merged model (`transformers:PATH`)
    out/ipo/log.jsonl, rewards.jsonl  loss per step; IPO rewards (margins, accuracies) per step
    out/seren.json, out/report.html   result (+ evaluation when `evaluate_seren` ran) and the report
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from recgpt.behavior.report import write_parquet_atomic
from recgpt.data.atomic import write_json_atomic
from recgpt.training.export import merge_adapter, resolve_base
from recgpt.training.phase import LevelResult, finished, keep_fitting, pick_device, run_phase, runtime_args
from recgpt.training.seren_data import (
    SFT_LEVEL,
    check_seren_samples,
    ipo_records,
    records_digest,
    sft_table,
)
from recgpt.training.seren_report import write_seren_report
from recgpt.training.sft import SFTConfig, SFTResult, run_sft, token_lengths

REWARD_KEYS = (
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "logps/chosen",
    "logps/rejected",
)
_RUNTIME_FIELDS = ("threads", "budget_s", "save_steps", "save_total_limit", "device")


class SerenTrainConfig(BaseModel):
    """SerenGPT's training settings: LoRA, the SFT phase, the IPO phase (τ, α), budget."""

    model_config = ConfigDict(extra="forbid")

    base: str | None = None  # HF folder or .gguf; None = the packaged SmolLM2 (converted once)
    lora_r: int = Field(8, ge=1)
    lora_alpha: int = Field(16, ge=1)
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0)
    sft_epochs: float = Field(1.0, gt=0)
    sft_steps: int | None = Field(None, ge=1)  # optimizer steps; wins over sft_epochs
    sft_learning_rate: float = Field(5e-4, gt=0)
    ipo_epochs: float = Field(1.0, gt=0)
    ipo_steps: int | None = Field(None, ge=1)
    ipo_learning_rate: float = Field(1e-4, gt=0)
    tau: float = Field(0.1, gt=0)  # IPO's τ = TRL's beta: target log-ratio margin 1/(2τ) per token
    alpha: float = Field(1.0, ge=0)  # weight of the SFT term in the IPO phase
    pairs: int = Field(2, ge=1)  # IPO pairs per list (`seren_samples`)
    max_length: int = Field(1536, ge=16)  # prompt + answer tokens; longer samples are dropped
    batch_size: int = Field(1, ge=1)
    grad_accum: int = Field(4, ge=1)
    seed: int = 0
    budget_s: float | None = Field(None, gt=0)  # wall-clock budget per phase (resumable stop)
    save_steps: int = Field(10, ge=1)
    save_total_limit: int = Field(2, ge=1)
    threads: int = Field(1, ge=1)
    device: str = "auto"

    def sft_config(self) -> SFTConfig:
        """The SFT phase as `run_sft` settings (one 'advanced' level)."""
        return SFTConfig(
            base=self.base,
            lora_r=self.lora_r,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            learning_rate=self.sft_learning_rate,
            epochs=self.sft_epochs,
            max_steps=self.sft_steps,
            batch_size=self.batch_size,
            grad_accum=self.grad_accum,
            max_seq_len=self.max_length,
            threads=self.threads,
            seed=self.seed,
            save_steps=self.save_steps,
            save_total_limit=self.save_total_limit,
            levels=(SFT_LEVEL,),
            device=self.device,
            max_minutes=self.budget_s / 60 if self.budget_s else None,
        )


@dataclass
class SerenTrainResult:
    """Where the SFT and SFT+IPO models are and how each phase went."""

    out_dir: Path
    base_model: Path
    sft: SFTResult
    ipo: LevelResult | None = None  # None: IPO did not start (SFT incomplete)
    ipo_adapter: Path | None = None
    ipo_merged: Path | None = None
    ipo_dropped_too_long: int = 0
    rewards: dict[str, float | None] = dataclasses.field(default_factory=dict)  # last logged step
    wall_s: float = 0.0

    @property
    def complete(self) -> bool:
        return self.sft.complete and self.ipo is not None and self.ipo.complete

    def to_dict(self) -> dict[str, Any]:
        return {
            "out_dir": str(self.out_dir),
            "base_model": str(self.base_model),
            "complete": self.complete,
            "wall_s": round(self.wall_s, 1),
            "sft": self.sft.to_dict(),
            "ipo": dataclasses.asdict(self.ipo) if self.ipo else None,
            "ipo_adapter": str(self.ipo_adapter) if self.ipo_adapter else None,
            "ipo_merged": str(self.ipo_merged) if self.ipo_merged else None,
            "ipo_dropped_too_long": self.ipo_dropped_too_long,
            "rewards": self.rewards,
        }


# ---------------------------------------------------------------------- IPO phase


def _reward_log(ipo_dir: Path) -> Any:
    """A callback appending TRL's preference metrics of each logged step to `rewards.jsonl`."""
    from transformers import TrainerCallback

    class _Rewards(TrainerCallback):
        def on_log(
            self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kw: Any
        ) -> None:
            if logs and any(k in logs for k in REWARD_KEYS):
                row = {"step": state.global_step, **{k: float(logs[k]) for k in REWARD_KEYS if k in logs}}
                with (ipo_dir / "rewards.jsonl").open("a") as f:
                    f.write(json.dumps(row) + "\n")

    return _Rewards()


def read_rewards(ipo_dir: str | os.PathLike[str]) -> list[dict[str, float]]:
    """The rows of `rewards.jsonl` (step, rewards/margins, rewards/accuracies, ...)."""
    p = Path(ipo_dir) / "rewards.jsonl"
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()] if p.is_file() else []


def _truncate_rewards(ipo_dir: Path, step: int) -> None:
    rows = [r for r in read_rewards(ipo_dir) if r["step"] <= step]
    (ipo_dir / "rewards.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _ipo_args(cfg: SerenTrainConfig, ckpt_dir: Path, device: str) -> Any:
    from trl import DPOConfig

    return DPOConfig(
        output_dir=str(ckpt_dir),
        loss_type=["ipo", "sft"],
        loss_weights=[1.0, cfg.alpha],
        beta=cfg.tau,
        max_steps=cfg.ipo_steps if cfg.ipo_steps is not None else -1,
        num_train_epochs=cfg.ipo_epochs,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.ipo_learning_rate,
        lr_scheduler_type="linear",
        max_length=cfg.max_length,
        **runtime_args(cfg.save_steps, cfg.save_total_limit, cfg.seed, device),
    )


def _ipo_fingerprint(cfg: SerenTrainConfig, sft_dir: Path, records: Sequence[dict[str, Any]]) -> str:
    ident = {k: v for k, v in cfg.model_dump().items() if k not in _RUNTIME_FIELDS}
    sft_meta = json.loads((sft_dir / "train_config.json").read_text())
    payload = {"config": ident, "sft": sft_meta.get("fingerprint"), "records": records_digest(records)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _prepare_ipo_dir(ipo_dir: Path, fingerprint: str, resume: bool) -> None:
    meta = ipo_dir / "train_config.json"
    if resume and meta.is_file():
        old = json.loads(meta.read_text()).get("fingerprint")
        if old != fingerprint:
            raise ValueError(
                f"{ipo_dir} holds an IPO run with another config or other samples (fingerprint {old} != "
                f"{fingerprint}): use --no-resume to start over, or another --out"
            )
    if not resume:
        shutil.rmtree(ipo_dir, ignore_errors=True)
    ipo_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(meta, {"fingerprint": fingerprint})


def _train_ipo(
    cfg: SerenTrainConfig,
    base: Path,
    sft_adapter: Path,
    records: list[dict[str, Any]],
    ipo_dir: Path,
    res: LevelResult,
    *,
    resume: bool,
    progress: Any,
    callbacks: Sequence[Any],
) -> Path:
    """The IPO phase from the SFT adapter (reference = the SFT model); returns the adapter folder."""
    from trl import DPOTrainer

    ckpt_dir = ipo_dir / "checkpoints"
    return run_phase(
        DPOTrainer,
        _ipo_args(cfg, ckpt_dir, pick_device(cfg.device)),
        records,
        res,
        base=base,
        dtype="float32",
        adapter=sft_adapter,  # a PeftModel with the SFT adapter: TRL copies it to the frozen "ref"
        lora=None,
        phase_dir=ipo_dir,
        ckpt_dir=ckpt_dir,
        log_dir=ipo_dir,
        resume=resume,
        deadline=time.time() + cfg.budget_s if cfg.budget_s else None,
        progress=progress,
        callbacks=[_reward_log(ipo_dir), *callbacks],
        on_resume=lambda step: _truncate_rewards(ipo_dir, step),
    )


def _ipo_records(
    tokenizer: Any, samples: pl.DataFrame, max_len: int
) -> tuple[list[dict[str, Any]], LevelResult]:
    """The pairs whose longer side fits `max_len` tokens (TRL would truncate the answer's end)."""
    records = ipo_records(samples)
    chosen = token_lengths(tokenizer, [{"prompt": r["prompt"], "completion": r["chosen"]} for r in records])
    rejected = token_lengths(
        tokenizer, [{"prompt": r["prompt"], "completion": r["rejected"]} for r in records]
    )
    lengths = [max(a, b) for a, b in zip(chosen, rejected, strict=True)]
    return keep_fitting(records, lengths, max_len, "ipo", "IPO pair", "max_length")


# ---------------------------------------------------------------------- both phases


def run_seren_training(
    cfg: SerenTrainConfig,
    samples: pl.DataFrame,
    out: str | os.PathLike[str],
    *,
    resume: bool = True,
    progress: bool = True,
    console: Any = None,
    sft_callbacks: Sequence[Any] = (),
    ipo_callbacks: Sequence[Any] = (),
    merge: bool = True,
) -> SerenTrainResult:
    """SFT, then IPO from the SFT adapter (see the module docstring); re-run to resume."""
    import datasets
    import torch
    import transformers
    from rich.console import Console

    from recgpt.progress import make_progress

    t0 = time.perf_counter()
    samples = check_seren_samples(samples)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_parquet_atomic(samples, out / "samples.parquet")
    base = resolve_base(cfg.base)
    sft = run_sft(
        cfg.sft_config(),
        sft_table(samples),
        out / "sft",
        resume,
        progress=progress,
        console=console,
        callbacks=sft_callbacks,
        merge=merge,
    )
    result = SerenTrainResult(out_dir=out, base_model=base, sft=sft)
    if sft.complete:
        torch.set_num_threads(cfg.threads)
        transformers.utils.logging.set_verbosity_error()
        datasets.disable_progress_bars()
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(base))
        records, res = _ipo_records(tokenizer, samples, cfg.max_length)
        result.ipo, result.ipo_dropped_too_long = res, res.dropped_too_long
        ipo_dir = out / "ipo"
        _prepare_ipo_dir(ipo_dir, _ipo_fingerprint(cfg, out / "sft", records), resume)
        finished_earlier = resume and finished(ipo_dir, res)
        if finished_earlier:
            result.ipo_adapter = ipo_dir / "adapter"
        else:
            bar = make_progress(console or Console(), progress)
            with bar, warnings.catch_warnings():
                warnings.filterwarnings("ignore", category=FutureWarning)
                warnings.filterwarnings("ignore", category=UserWarning)
                result.ipo_adapter = _train_ipo(
                    cfg,
                    base,
                    sft.adapter_dir,
                    records,
                    ipo_dir,
                    res,
                    resume=resume,
                    progress=bar if progress else None,
                    callbacks=ipo_callbacks,
                )
        merged = ipo_dir / "merged"
        if merge and (not finished_earlier or not (merged / "config.json").is_file()):
            merge_adapter(base, result.ipo_adapter, merged)
        result.ipo_merged = merged if (merged / "config.json").is_file() else None
        rewards = read_rewards(ipo_dir)
        result.rewards = {k: rewards[-1].get(k) for k in REWARD_KEYS} if rewards else {}
    result.wall_s = time.perf_counter() - t0
    write_json_atomic(out / "seren.json", {"config": cfg.model_dump(), "result": result.to_dict()})
    write_seren_report(out)
    return result


__all__ = [
    "REWARD_KEYS",
    "SerenTrainConfig",
    "SerenTrainResult",
    "read_rewards",
    "run_seren_training",
]
