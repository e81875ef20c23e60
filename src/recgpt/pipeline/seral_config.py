"""`SeralConfig`: one run of the SERAL pipeline (`pipeline.seral`), in one validated object.

It *is* a `RunConfig` for everything the two pipelines share (dataset, name, runs_dir, users, seed,
split, llm, tokenizer, embedder, compression, category_level, ks, baseline / baselines,
report_users), so the RecGPT stage objects it reuses (split, compress), `Resources` and the runner
read it unchanged. It adds SERAL's sections: `profiles` (cognition profiles), `candidates` (the
serving / evaluation candidate generator), `labels` (log labels of the evaluation lists), `seren`
(SerenGPT) and `slot` (the serendipity slot of the final list and the cache size).

The RecGPT-only sections (pool, interests, tags, phi, tritower, fusion, explanations, share, tune,
compare, ...) are inherited but inert: setting one to anything but its default is an error, so
`--set tags.count=5` on a SERAL run fails loudly instead of being ignored.

`verdicts` is not a setting: `run_seral` fills it with the digest of `RUN_DIR/verdicts.parquet`
(people's verdicts, `recgpt label import`), so new verdicts re-run the labels stage and what
follows it, like any config change.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from recgpt.folders import slug
from recgpt.pipeline.config import RunConfig, merge
from recgpt.serendipity.candidates import CandidateConfig
from recgpt.serendipity.labels import LabelConfig
from recgpt.serendipity.profiles import ProfileConfig
from recgpt.serendipity.seren import SerenConfig
from recgpt.serendipity.slot import SlotConfig

RECGPT_ONLY = (
    "pool",
    "interests",
    "tags",
    "phi",
    "tritower",
    "fusion",
    "explanations",
    "explain_top",
    "share",
    "tune",
    "compare",
    "task",
    "exclude_users",
)
SERAL_SUFFIX = "-seral"
VERDICTS_FILE = "verdicts.parquet"


def _json(v: Any) -> Any:
    return json.loads(json.dumps(v, default=str))


class SeralConfig(RunConfig):
    """One SERAL run (module docstring)."""

    baselines: tuple[str, ...] = Field(
        default=("itemknn", "markov"),
        description="candidates of the classic channel (baseline=auto: the validation-best, as in RecGPT)",
    )
    profiles: ProfileConfig = Field(default_factory=ProfileConfig)
    candidates: CandidateConfig = Field(default_factory=CandidateConfig)
    labels: LabelConfig = Field(default_factory=LabelConfig)
    seren: SerenConfig = Field(default_factory=SerenConfig)
    slot: SlotConfig = Field(default_factory=SlotConfig)
    verdicts: str | None = Field(
        default=None,
        description="sha256[:16] of RUN_DIR/verdicts.parquet, filled by run_seral (not a setting)",
    )

    @model_validator(mode="before")
    @classmethod
    def _recgpt_only(cls, data: Any) -> Any:
        """RecGPT-only sections must stay at their defaults (a config.json dump holds them: equal, kept)."""
        if not isinstance(data, dict):
            return data
        defaults = _json(RunConfig().model_dump(mode="json"))
        for name in RECGPT_ONLY:
            if name in data and _json(data[name]) != defaults[name]:
                if (
                    isinstance(data[name], dict)
                    and _json(merge(defaults[name], data[name])) == defaults[name]
                ):
                    continue
                raise ValueError(
                    f"{name} is a RecGPT setting; the SERAL pipeline does not read it "
                    f"(SERAL sections: profiles, candidates, labels, seren, slot)"
                )
        return data

    def run_name(self, dataset_name: str) -> str:
        """`<name or dataset>-seral`: a SERAL run never shares a folder with a RecGPT run."""
        return slug(self.name or dataset_name) + SERAL_SUFFIX


def verdicts_digest(run_dir: Path) -> str | None:
    """sha256[:16] of the run's verdicts file (None without one): the labels stage's key input."""
    path = Path(run_dir) / VERDICTS_FILE
    if not path.exists():
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def load_seral_config(path: Path | None, overrides: dict[str, Any] | None = None) -> SeralConfig:
    """A SeralConfig from an optional JSON file plus overrides (CLI flags, `--set` assignments)."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"cannot read config {path}: {e}") from e
        if not isinstance(data, dict):
            raise ValueError(f"config {path} must hold a JSON object")
    return SeralConfig.model_validate(merge(data, overrides or {}))


__all__ = [
    "RECGPT_ONLY",
    "SERAL_SUFFIX",
    "VERDICTS_FILE",
    "SeralConfig",
    "load_seral_config",
    "verdicts_digest",
]
