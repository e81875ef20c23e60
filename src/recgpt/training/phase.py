"""One LoRA training phase with a TRL trainer: the runner the curriculum SFT (`sft`) and SerenGPT's
IPO phase (`seren`) share, so that resume, budget stop, logging and adapter output work alike.

A phase loads the base model (continuing a previous adapter, or starting a fresh LoRA), appends each
logged step to `log.jsonl` (`report.log_callback`), stops before a step that would overrun the
deadline (saving a checkpoint), resumes from the newest complete checkpoint (dropping the log rows
after it: those steps are redone), and writes its adapter to `<phase>/adapter` via a temp sibling
(`export.replace_dir`) plus `<phase>/done.json` once complete. What happened goes into a `LevelResult`.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recgpt.data.atomic import write_json_atomic
from recgpt.training.export import replace_dir
from recgpt.training.report import log_callback, loss_ends, read_log, truncate_log

DONE = "done.json"


@dataclass
class LevelResult:
    """What one phase (a curriculum level, or IPO) did."""

    level: str
    samples: int
    dropped_too_long: int
    tokens_mean: float
    tokens_max: int
    steps: int = 0
    max_steps: int = 0
    first_loss: float | None = None
    last_loss: float | None = None
    resumed_from: int | None = None
    runtime_s: float = 0.0
    complete: bool = False


def keep_fitting(
    records: Sequence[dict[str, Any]],
    lengths: Sequence[int],
    max_len: int,
    level: str,
    what: str,
    setting: str,
) -> tuple[list[dict[str, Any]], LevelResult]:
    """The records of at most `max_len` tokens and their stats: longer ones are dropped, not truncated
    (truncation would cut the answer's end and teach the model never to stop)."""
    kept = [r for r, n in zip(records, lengths, strict=True) if n <= max_len]
    if not kept:
        raise ValueError(
            f"every {what} is longer than {setting}={max_len} tokens (shortest {min(lengths)}): raise {setting}"
        )
    kept_len = [n for n in lengths if n <= max_len]
    res = LevelResult(
        level=level,
        samples=len(kept),
        dropped_too_long=len(records) - len(kept),
        tokens_mean=round(sum(kept_len) / len(kept_len), 1),
        tokens_max=max(kept_len),
    )
    return kept, res


def latest_checkpoint(folder: Path) -> Path | None:
    """Newest *complete* `checkpoint-N` (trainer_state.json is written last; a killed save has none)."""
    if not folder.is_dir():
        return None
    done = []
    for p in folder.glob("checkpoint-*"):
        if p.is_dir() and p.name.split("-")[-1].isdigit() and (p / "trainer_state.json").is_file():
            done.append((int(p.name.split("-")[-1]), p))
    return max(done)[1] if done else None


def deadline_stop(deadline: float) -> Any:
    """Stop before a step that would end past the deadline (steps last minutes on a busy CPU), saving
    a checkpoint so that the next run resumes exactly there."""
    from transformers import TrainerCallback

    class _Stop(TrainerCallback):
        longest = 0.0  # the slowest step so far predicts the next one (batches mix long and short samples)

        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.started = time.time()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.longest = max(self.longest, time.time() - self.started)
            if time.time() + self.longest >= deadline and state.global_step < state.max_steps:
                control.should_training_stop = control.should_save = True

    return _Stop()


def pick_device(device: str) -> str:
    """`device`, with "auto" = cuda when available, else cpu."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def runtime_args(save_steps: int, save_total_limit: int, seed: int, device: str) -> dict[str, Any]:
    """Trainer arguments of how a phase runs, not what it learns, alike in every phase: a log row per
    step (for log.jsonl), step checkpoints, a seeded data order, no tqdm or reporting, CPU or GPU loading."""
    return {
        "logging_steps": 1,
        "save_strategy": "steps",
        "save_steps": save_steps,
        "save_total_limit": save_total_limit,
        "seed": seed,
        "data_seed": seed,
        "report_to": [],
        "disable_tqdm": True,
        "gradient_checkpointing": False,
        "use_cpu": device == "cpu",
        "dataloader_num_workers": 0,
        "dataloader_pin_memory": device != "cpu",
    }


def finished(phase_dir: Path, res: LevelResult) -> bool:
    """Whether the phase completed in an earlier run (then `res` is filled from its done.json)."""
    if not ((phase_dir / DONE).is_file() and (phase_dir / "adapter" / "adapter_config.json").is_file()):
        return False
    res.__dict__.update(json.loads((phase_dir / DONE).read_text()))
    return True


def run_phase(
    trainer_cls: Any,
    args: Any,
    records: list[dict[str, Any]],
    res: LevelResult,
    *,
    base: Path,
    dtype: str,
    adapter: Path | None,
    lora: Any,
    phase_dir: Path,
    ckpt_dir: Path,
    log_dir: Path,
    resume: bool,
    deadline: float | None,
    progress: Any,
    callbacks: Sequence[Any] = (),
    on_resume: Callable[[int], None] | None = None,
) -> Path:
    """Train one phase (module docstring) and return the adapter folder it wrote (complete or not).

    `adapter` continues those LoRA weights (trainable); else `lora`, a fresh PEFT config, is trained.
    `on_resume(step)` trims the caller's own logs when the phase resumes from checkpoint `step`.
    """
    import torch
    from datasets import Dataset
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback

    tokenizer = AutoTokenizer.from_pretrained(str(base))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=getattr(torch, dtype))
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter), is_trainable=True)
    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(records),
        processing_class=tokenizer,
        callbacks=[
            log_callback(log_dir, res.level, progress),
            *callbacks,
            *([deadline_stop(deadline)] if deadline else []),
        ],
        **({"peft_config": lora} if adapter is None else {}),
    )
    trainer.remove_callback(
        PrinterCallback
    )  # it prints every log dict; the rich bar and log.jsonl replace it
    ckpt = latest_checkpoint(ckpt_dir) if resume else None
    if ckpt is not None:
        res.resumed_from = int(ckpt.name.split("-")[-1])
        truncate_log(log_dir, res.level, res.resumed_from)  # steps after it are redone
        if on_resume is not None:
            on_resume(res.resumed_from)
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)
    res.runtime_s = round(time.perf_counter() - started, 1)
    res.steps, res.max_steps = trainer.state.global_step, trainer.state.max_steps
    res.complete = res.steps >= res.max_steps
    res.first_loss, res.last_loss = loss_ends(read_log(log_dir), res.level)
    tmp = phase_dir / "adapter.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    trainer.model.save_pretrained(str(tmp), selected_adapters=["default"])  # not TRL's frozen "ref" copy
    out = replace_dir(tmp, phase_dir / "adapter")
    if res.complete:
        write_json_atomic(phase_dir / DONE, dataclasses.asdict(res))
    del trainer, model
    return out


__all__ = [
    "DONE",
    "LevelResult",
    "deadline_stop",
    "finished",
    "keep_fitting",
    "latest_checkpoint",
    "pick_device",
    "run_phase",
    "runtime_args",
]
