"""The options several commands share: one name, one help text, one meaning each.

- `--llm SPEC` is an LLM backend spec everywhere (the old `--backend` of `llm check` and `--judge` of
  `train self-train` / `incremental` still work, hidden, with a deprecation warning);
- `--threads N` is always the CPU threads of the model the command itself runs (torch or llama.cpp),
  0 meaning the cores the load average leaves free; `--llm-threads` / `--llm-workers` size the
  llama.cpp worker processes of a chain run;
- `--dataset` / `-d` is a dataset folder or `bundled:<name>`; `--progress/--no-progress` is the same
  switch everywhere.

Choices are `enum.Enum`s so `--help` lists them and typer rejects a typo before any work starts.
"""

from __future__ import annotations

import math
import os
from enum import StrEnum
from typing import Any

import typer

LLM_SPECS = "llamacpp, llamacpp:/m.gguf, openai:MODEL@URL, transformers:PATH, vllm:MODEL, fake"
THREADS_HELP = "CPU threads of the model this command runs (torch or llama.cpp); 0: the cores the load average leaves free."
DATASET_HELP = "Dataset folder from `recgpt data import`, or bundled:ml-latest-small (the default)."
PROGRESS_HELP = "Progress bars on a terminal; with output redirected, a plain line every 30 s."
SEED_HELP = "Seed of every random choice the command makes (samples, initialisation)."


class SplitKind(StrEnum):
    """How test / validation events are held out (`recgpt.data.split.SplitConfig.kind`)."""

    loo = "loo"  # temporal leave-one-out per user
    cutoff = "cutoff"  # one global time cut-off


class SftTask(StrEnum):
    """The chain task a `train sft` run aligns (`recgpt.training.tables.TASKS`)."""

    interests = "interests"
    tags = "tags"
    explanations = "explanations"
    judge = "judge"


class GgufType(StrEnum):
    """GGUF weight types llama.cpp's converter writes."""

    q8_0 = "q8_0"
    f16 = "f16"
    bf16 = "bf16"
    f32 = "f32"


def llm_option(what: str) -> Any:
    """`--llm SPEC` with a help text that starts with what the backend is for in this command."""
    return typer.Option("--llm", help=f"{what} Spec: {LLM_SPECS}.", show_default=False)


def deprecated_option(name: str, new: str) -> Any:
    """A hidden old spelling of an option: still accepted, with a warning (see `renamed`)."""
    return typer.Option(name, hidden=True, help=f"Deprecated spelling of {new}.")


def renamed(new_value: Any, old_value: Any, *, old: str, new: str) -> Any:
    """The value of an option given either as `new` or as its deprecated spelling `old`."""
    if old_value is None:
        return new_value
    typer.echo(f"warning: {old} is deprecated, use {new}", err=True)
    if new_value is not None and new_value != old_value:
        raise typer.BadParameter(f"{old} (deprecated) and {new} disagree: give only {new}", param_hint=new)
    return old_value


def threads_option() -> Any:
    """`--threads N` with the one shared meaning and help text (the default shows beside it)."""
    return typer.Option("--threads", min=0, help=THREADS_HELP)


def auto_threads() -> int:
    """Cores left free by the 1-minute load average (at least 1): oversubscribed torch is 10x slower."""
    cores = os.cpu_count() or 1  # a core counts as free unless the load average holds 3/4 of it
    return max(1, min(cores, math.ceil(cores - os.getloadavg()[0] - 0.25)))


def resolve_threads(threads: int | None) -> int | None:
    """`--threads`: 0 becomes `auto_threads()`, None stays None (the backend's own default)."""
    return auto_threads() if threads == 0 else threads


def comma_list(text: str | None) -> list[str]:
    """`a, b,,c` -> ['a', 'b', 'c']."""
    return [t.strip() for t in (text or "").split(",") if t.strip()]


__all__ = [
    "DATASET_HELP",
    "LLM_SPECS",
    "PROGRESS_HELP",
    "SEED_HELP",
    "THREADS_HELP",
    "GgufType",
    "SftTask",
    "SplitKind",
    "auto_threads",
    "comma_list",
    "deprecated_option",
    "llm_option",
    "renamed",
    "resolve_threads",
    "threads_option",
]
