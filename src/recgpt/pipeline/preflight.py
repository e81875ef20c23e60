"""Cheap checks before stage 00: a run that cannot finish should fail in a second, not after three stages.

`preflight` checks what can be known from the config and the dataset alone: the `until` stage
exists, every LLM backend spec the run will use parses and points at something loadable (a model
file that exists, a well-formed base URL, an installed library), and the catalogue holds at least
as many items as the longest list the run ranks (`max(ks)`, `fusion.k`). Each failure is one
`PreflightError` line naming the option and the value.
"""

from __future__ import annotations

from recgpt.data.dataset import Dataset
from recgpt.llm.backends import BackendUnavailable, check_spec
from recgpt.llm.credentials import redact
from recgpt.pipeline.config import RunConfig
from recgpt.pipeline.stages import RECGPT


class PreflightError(ValueError):
    """The run cannot start: one line naming the option and the value."""


def check_until(until: str | None) -> None:
    if until is not None and until not in RECGPT.names:
        raise PreflightError(f"--until {until!r}: not a stage; stages: {', '.join(RECGPT.names)}")


def llm_specs(cfg: RunConfig, until: str | None = None) -> dict[str, str]:
    """LLM stage -> backend spec, for the LLM stages this run reaches (none with `--until split`)."""
    return {stage.name: cfg.llm.spec_for(stage.name) for stage in RECGPT.until(until) if stage.llm}


def check_catalogue(cfg: RunConfig, n_items: int) -> None:
    """The lists the run ranks (`ks`, `fusion.k`) must fit in the catalogue; a clear error names both."""
    for option, k in (("ks", max(cfg.ks)), ("fusion.k", cfg.fusion.k)):
        if k > n_items:
            raise PreflightError(
                f"{option}: cut-off K={k} is larger than the catalogue ({n_items} items); "
                f"use --set {option}=... with values <= {n_items}"
            )


def preflight(cfg: RunConfig, dataset: Dataset, *, until: str | None = None, check_llm: bool = True) -> None:
    """Everything that can fail before stage 00, checked before stage 00 (`PreflightError`)."""
    check_until(until)
    if check_llm:
        for stage, spec in llm_specs(cfg, until).items():
            option = "--llm" if spec == cfg.llm.spec else f"--stage-llm {stage}"
            try:
                check_spec(spec)
            except (ValueError, BackendUnavailable) as e:
                raise PreflightError(redact(f"{option} {spec!r}: {e}")) from None
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
    "check_until",
    "has_categories",
    "llm_specs",
    "preflight",
]
