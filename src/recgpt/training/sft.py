"""Curriculum multi-task LoRA SFT (RecGPT §1.7) with TRL's `SFTTrainer` and PEFT.

`run_sft(config, samples, out_dir)` trains one LoRA adapter on an SFT sample table
(`recgpt.training.data`: one row per example, `messages` = the chain's own prompt as JSON,
`completion` = the target JSON, `level` = curriculum level).

**Curriculum schedule.** The paper orders tasks foundation -> intermediate -> advanced but does not
say how the stages are scheduled (papers.md §1.7 leaves it open). We use hard, sequential phases:
one `SFTTrainer` run per level, in `config.levels` order, each with a fresh AdamW state and its own
learning-rate schedule (linear decay), each continuing from the adapter the previous phase
wrote (the same LoRA weights keep training; nothing is merged between phases). Tasks of one level
are mixed and shuffled within the phase (multi-task). A level without samples is skipped. No replay
of earlier levels: the foundation tasks are there to warm the model up on the catalogue's
vocabulary, and forgetting them later costs the chain nothing.

**Loss.** Each sample becomes a conversational prompt-completion pair rendered by the model's own
chat template, with `completion_only_loss=True`: only the assistant's answer (and its end-of-turn
token, so the model learns to stop) is trained. Samples longer than `max_seq_len` tokens are
dropped, not truncated (truncation would cut the answer's end and teach the model never to stop);
how many were dropped is reported per level.

**Output folder.**

    out/checkpoints/<level>/checkpoint-N/   Trainer checkpoints (adapter + optimizer + RNG): resume
    out/checkpoints/<level>/adapter/        the adapter at the end of the phase (+ done.json)
    out/adapter/                            the final PEFT adapter (its base path is a local HF folder)
    out/merged/                             base + adapter merged, with the tokenizer: a plain HF model
    out/log.jsonl                           one row per logged step: level, step, loss, lr, epoch, ...
    out/train_config.json                   config, base model, sample counts, versions, result
    out/samples.parquet                     the exact samples trained on

Re-running with `resume=True` continues from the newest complete checkpoint of the unfinished
phase (a killed job loses at most `save_steps` steps; `max_minutes` stops before a step that would
overrun it, with a checkpoint); a finished run is not retrained. The folder remembers a fingerprint
of the config and samples, and refuses to resume a different run. Each phase runs through
`training.phase.run_phase`, the runner SerenGPT's IPO phase shares.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
from rich.console import Console

from recgpt.behavior.report import write_parquet_atomic
from recgpt.data.atomic import write_json_atomic
from recgpt.progress import make_progress
from recgpt.training.data import LEVELS, SAMPLE_SCHEMA, SampleError, to_chat, validate_samples
from recgpt.training.export import merge_adapter, replace_dir, resolve_base
from recgpt.training.phase import (
    LevelResult,
    finished,
    keep_fitting,
    latest_checkpoint,
    pick_device,
    run_phase,
    runtime_args,
)
from recgpt.training.report import write_report

# Fields that do not change what is learned: a resumed run may change them freely.
_RUNTIME_FIELDS = ("threads", "max_minutes", "save_steps", "save_total_limit", "device")


@dataclass
class SFTConfig:
    """LoRA SFT settings (TRL-style). `max_steps` (optimizer steps, per level) wins over `epochs`."""

    base: str | None = None  # HF folder or .gguf; None = the shipped SmolLM2 GGUF, converted once
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"  # PEFT: every linear projection except lm_head
    learning_rate: float = 2e-4
    lr_scheduler: str = "linear"
    warmup_ratio: float = 0.0  # HF warmup spends its first step at lr 0: costly in a 5-step CPU phase
    weight_decay: float = 0.0
    epochs: float = 1.0
    max_steps: int | dict[str, int] | None = None  # one number for every level, or per level
    batch_size: int = 1
    grad_accum: int = 4
    max_seq_len: int = 1536
    threads: int = 1  # torch.set_num_threads: oversubscribed torch is 10x slower on 2 shared cores
    seed: int = 0
    save_steps: int = 10
    save_total_limit: int = 2
    levels: tuple[str, ...] = LEVELS
    completion_only_loss: bool = True
    dtype: str = "float32"
    device: str = "auto"  # "auto" = cuda when available, else cpu
    max_minutes: float | None = None  # wall-clock budget of the whole run; stops cleanly (resumable)

    def __post_init__(self) -> None:
        self.levels = tuple(self.levels)
        if not self.levels or len(set(self.levels)) != len(self.levels):
            raise ValueError(f"levels must be a non-empty list of distinct names, got {self.levels}")
        for name in (
            "lora_r",
            "lora_alpha",
            "batch_size",
            "grad_accum",
            "max_seq_len",
            "threads",
            "save_steps",
        ):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"SFTConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not (
            0.0 <= self.lora_dropout < 1.0
            and 0.0 <= self.warmup_ratio < 1.0
            and self.learning_rate > 0
            and self.epochs > 0
        ):
            raise ValueError(
                "lora_dropout and warmup_ratio must lie in [0, 1), learning_rate and epochs be > 0"
            )
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be float32, bfloat16 or float16, got {self.dtype!r}")
        steps = self.max_steps.values() if isinstance(self.max_steps, dict) else [self.max_steps]
        if any(s is not None and int(s) < 1 for s in steps):
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if isinstance(self.max_steps, dict) and (unknown := set(self.max_steps) - set(self.levels)):
            raise ValueError(f"max_steps names levels not in {self.levels}: {sorted(unknown)}")

    def steps_for(self, level: str) -> int | None:
        if isinstance(self.max_steps, dict):
            return self.max_steps.get(level)
        return self.max_steps

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["levels"] = list(self.levels)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SFTConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        if unknown := set(d) - known:
            raise ValueError(f"unknown SFTConfig fields: {sorted(unknown)}")
        return cls(**d)


@dataclass
class SFTResult:
    """Where the trained model is and how training went."""

    out_dir: Path
    base_model: Path
    adapter_dir: Path
    merged_dir: Path | None
    levels: list[LevelResult] = field(default_factory=list)
    complete: bool = False
    wall_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "out_dir": str(self.out_dir),
            "base_model": str(self.base_model),
            "adapter_dir": str(self.adapter_dir),
            "merged_dir": str(self.merged_dir) if self.merged_dir else None,
            "complete": self.complete,
            "wall_s": round(self.wall_s, 1),
            "levels": [dataclasses.asdict(r) for r in self.levels],
        }


# ---------------------------------------------------------------------- samples


def check_samples(samples: pl.DataFrame, levels: Sequence[str]) -> pl.DataFrame:
    """The sample table, validated (`recgpt.training.data.validate_samples`, which names the bad row
    and field) and with every level one the curriculum trains."""
    samples = validate_samples(samples)
    if samples.height == 0:
        raise SampleError("no SFT samples to train on")
    bad = samples.filter(~pl.col("level").is_in(list(levels)))
    if bad.height:
        raise SampleError(
            f"sample {bad['sample_id'][0]!r}: level {bad['level'][0]!r} is not one of {list(levels)}"
        )
    return samples


def compact_answer(completion: str) -> str:
    """A JSON answer in compact form (no spaces after `,`/`:`), other text unchanged.

    The transformers backend decodes under a grammar that only admits compact JSON, so an answer
    trained as `{"genre": "Comedy"}` would teach the model a space the grammar then forbids, and
    constrained output turns to garbage. Key order and unicode are kept.
    """
    try:
        value = json.loads(completion)
    except ValueError:
        return completion
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def to_records(samples: pl.DataFrame) -> list[dict[str, Any]]:
    """TRL conversational prompt-completion records (`data.to_chat`), answers in compact JSON."""
    records = to_chat(samples)
    for r in records:
        r["completion"][0]["content"] = compact_answer(r["completion"][0]["content"])
    return records


def token_lengths(tokenizer: Any, records: Sequence[dict[str, Any]]) -> list[int]:
    """Prompt + answer tokens of each record, as the chat template renders them for training."""
    texts = [tokenizer.apply_chat_template(r["prompt"] + r["completion"], tokenize=False) for r in records]
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def samples_digest(samples: pl.DataFrame) -> str:
    h = hashlib.sha256()
    for row in samples.select(list(SAMPLE_SCHEMA)).sort("sample_id").iter_rows():
        h.update(json.dumps(row, ensure_ascii=False).encode())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------- training


def _trl_args(config: SFTConfig, phase_dir: Path, steps: int | None, device: str) -> Any:
    from trl import SFTConfig as TRLConfig

    return TRLConfig(
        output_dir=str(phase_dir),
        max_steps=steps if steps is not None else -1,
        num_train_epochs=config.epochs,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup_ratio,
        weight_decay=config.weight_decay,
        max_length=config.max_seq_len,
        completion_only_loss=config.completion_only_loss,
        bf16=config.dtype == "bfloat16" and device != "cpu",
        fp16=config.dtype == "float16" and device != "cpu",
        **runtime_args(config.save_steps, config.save_total_limit, config.seed, device),
    )


def _train_phase(
    config: SFTConfig,
    base: Path,
    prev_adapter: Path | None,
    records: list[dict[str, Any]],
    phase_dir: Path,
    res: LevelResult,
    *,
    resume: bool,
    deadline: float | None,
    progress: Any,
    extra_callbacks: Sequence[Any],
) -> Path:
    """One curriculum phase (`phase.run_phase`); returns the adapter folder it wrote (complete or not)."""
    from peft import LoraConfig
    from trl import SFTTrainer

    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.target_modules,
        task_type="CAUSAL_LM",
    )
    return run_phase(
        SFTTrainer,
        _trl_args(config, phase_dir, config.steps_for(res.level), pick_device(config.device)),
        records,
        res,
        base=base,
        dtype=config.dtype,
        adapter=prev_adapter,  # continue the same LoRA weights (see the module docstring)
        lora=lora,
        phase_dir=phase_dir,
        ckpt_dir=phase_dir,
        log_dir=phase_dir.parent.parent,
        resume=resume,
        deadline=deadline,
        progress=progress,
        callbacks=extra_callbacks,
    )


def _prepare_out(
    out_dir: Path, config: SFTConfig, samples: pl.DataFrame, base: Path, resume: bool
) -> dict[str, Any]:
    """Write (or check, when resuming) train_config.json and samples.parquet."""
    ident = {k: v for k, v in config.to_dict().items() if k not in _RUNTIME_FIELDS}
    fingerprint = hashlib.sha256(
        json.dumps(
            {"config": ident, "base": str(base), "samples": samples_digest(samples)}, sort_keys=True
        ).encode()
    ).hexdigest()[:16]
    meta_path = out_dir / "train_config.json"
    if resume and meta_path.is_file():
        old = json.loads(meta_path.read_text())
        if old.get("fingerprint") != fingerprint:
            raise ValueError(
                f"{out_dir} holds a training run with another config or other samples "
                f"(fingerprint {old.get('fingerprint')} != {fingerprint}): use --no-resume to start over, or another --out"
            )
    if not resume:
        for name in ("checkpoints", "adapter", "merged", "log.jsonl", "report.html"):
            p = out_dir / name
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_parquet_atomic(samples, out_dir / "samples.parquet")
    import peft
    import torch
    import transformers
    import trl

    meta = {
        "fingerprint": fingerprint,
        "config": config.to_dict(),
        "base_model": str(base),
        "samples": {str(k): int(v) for k, v in samples.group_by("level").len().iter_rows()},
        "tasks": {str(k): int(v) for k, v in samples.group_by("task").len().iter_rows()},
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "trl": trl.__version__,
        },
    }
    meta_path.write_text(json.dumps(meta, indent=2))
    return meta


def _level_records(
    tokenizer: Any, rows: pl.DataFrame, level: str, max_len: int
) -> tuple[list[Any], LevelResult]:
    """A level's training records without the ones longer than `max_len` tokens, and their stats."""
    records = to_records(rows)
    return keep_fitting(
        records, token_lengths(tokenizer, records), max_len, level, f"{level} sample", "max_seq_len"
    )


def run_sft(
    config: SFTConfig,
    samples: pl.DataFrame,
    out_dir: str | os.PathLike[str],
    resume: bool = True,
    *,
    progress: bool = True,
    console: Any = None,
    callbacks: Sequence[Any] = (),
    merge: bool = True,
) -> SFTResult:
    """Train the curriculum (see the module docstring); `callbacks` go to every phase's Trainer."""
    import datasets
    import torch
    import transformers

    t0 = time.perf_counter()
    deadline = time.time() + 60 * config.max_minutes if config.max_minutes else None
    check_samples(samples, config.levels)
    torch.set_num_threads(config.threads)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    out = Path(out_dir)
    base = resolve_base(config.base)
    meta = _prepare_out(out, config, samples, base, resume)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(base))
    result = SFTResult(out_dir=out, base_model=base, adapter_dir=out / "adapter", merged_dir=None)
    bar = make_progress(console or Console(), progress)
    adapter: Path | None = None
    with bar, warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)  # transformers 5 deprecation chatter
        for level in config.levels:
            rows = samples.filter(pl.col("level") == level)
            if rows.height == 0:
                continue
            kept, res = _level_records(tokenizer, rows, level, config.max_seq_len)
            result.levels.append(res)
            phase_dir = out / "checkpoints" / level
            if resume and finished(phase_dir, res):
                adapter = phase_dir / "adapter"
                continue
            adapter = _train_phase(
                config,
                base,
                adapter,
                kept,
                phase_dir,
                res,
                resume=resume,
                deadline=deadline,
                progress=bar if progress else None,
                extra_callbacks=callbacks,
            )
            if not res.complete:
                break  # stopped (budget or callback): later levels wait for the resumed run
        assert adapter is not None, "no level had samples"
        result.complete = all(r.complete for r in result.levels)
        shutil.rmtree(tmp := out / "adapter.tmp", ignore_errors=True)
        replace_dir(Path(shutil.copytree(adapter, tmp)), result.adapter_dir)
        if merge:
            result.merged_dir = merge_adapter(base, result.adapter_dir, out / "merged", config.dtype)
    result.wall_s = time.perf_counter() - t0
    meta["result"] = result.to_dict()
    write_json_atomic(out / "train_config.json", meta)
    write_report(out)
    return result


__all__ = [
    "LevelResult",
    "SFTConfig",
    "SFTResult",
    "check_samples",
    "compact_answer",
    "latest_checkpoint",
    "run_sft",
    "samples_digest",
    "to_records",
    "token_lengths",
]
