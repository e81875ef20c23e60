"""Cheap checks before stage 00: a run that cannot finish should fail in a second, not after three stages.

`preflight` checks what can be known from the config and the dataset alone: the `until` stage
exists, every LLM backend spec the run will use parses and points at something loadable (a model
file that exists, a well-formed base URL, an installed library), and the catalogue holds at least
as many items as the longest list the run ranks (`max(ks)`, `fusion.k`). Each failure is one
`PreflightError` line naming the option and the value.
"""

from __future__ import annotations

from collections.abc import Sequence

from recgpt.data.dataset import Dataset
from recgpt.llm.backends import BackendUnavailable, check_spec
from recgpt.llm.credentials import redact
from recgpt.pipeline.config import RunConfig
from recgpt.pipeline.core import Pipeline
from recgpt.pipeline.stages import RECGPT


class PreflightError(ValueError):
    """The run cannot start: one line naming the option and the value."""


def check_until(until: str | None, pipeline: Pipeline = RECGPT) -> None:
    if until is not None and until not in pipeline.names:
        raise PreflightError(f"--until {until!r}: not a stage; stages: {', '.join(pipeline.names)}")


def llm_specs(cfg: RunConfig, until: str | None = None, pipeline: Pipeline = RECGPT) -> dict[str, str]:
    """LLM stage -> backend spec, for the LLM stages this run reaches (none with `--until split`)."""
    return {stage.name: cfg.llm.spec_for(stage.name) for stage in pipeline.until(until) if stage.llm}


def check_llm_specs(cfg: RunConfig, until: str | None = None, pipeline: Pipeline = RECGPT) -> None:
    """Every LLM backend spec the run reaches parses and points at something loadable."""
    for stage, spec in llm_specs(cfg, until, pipeline).items():
        option = "--llm" if spec == cfg.llm.spec else f"--stage-llm {stage}"
        try:
            check_spec(spec)
        except (ValueError, BackendUnavailable) as e:
            raise PreflightError(redact(f"{option} {spec!r}: {e}")) from None


def check_catalogue(cfg: RunConfig, n_items: int, cutoffs: Sequence[tuple[str, int]] | None = None) -> None:
    """The lists the run ranks (default `ks`, `fusion.k`) must fit in the catalogue; a clear error
    names both."""
    if cutoffs is None:
        cutoffs = (("ks", max(cfg.ks)), ("fusion.k", cfg.fusion.k))
    for option, k in cutoffs:
        if k > n_items:
            raise PreflightError(
                f"{option}: cut-off K={k} is larger than the catalogue ({n_items} items); "
                f"use --set {option}=... with values <= {n_items}"
            )


def preflight(cfg: RunConfig, dataset: Dataset, *, until: str | None = None, check_llm: bool = True) -> None:
    """Everything that can fail before stage 00, checked before stage 00 (`PreflightError`)."""
    check_until(until)
    if check_llm:
        check_llm_specs(cfg, until)
    check_catalogue(cfg, dataset.items.height)
    if "phi" in reached(until) and not has_categories(dataset):
        raise PreflightError(
            f"dataset {cfg.dataset}: no item has a category; stage 'phi' (tag -> category) needs "
            f"them (map an items column to 'categories' at import, or stop with --until tags)"
        )


def reached(until: str | None) -> list[str]:
    """The stages a run with this `until` runs or skips, in order."""
    return [s.name for s in RECGPT.until(until)]


def has_categories(dataset: Dataset) -> bool:
    items = dataset.items
    if "categories" not in items.columns:
        return False
    return any(any(c and c.strip() for c in cats or []) for cats in items["categories"].to_list())


__all__ = [
    "PreflightError",
    "check_catalogue",
    "check_llm_specs",
    "check_until",
    "has_categories",
    "llm_specs",
    "preflight",
]
