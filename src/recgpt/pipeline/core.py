"""The pipeline house: a `Stage` is a pure function over tables, a `Pipeline` is a value.

A stage declares everything its output depends on: the config fields it reads (dotted paths of
the run config, e.g. `"tags"`, `"fusion.k"`; `"llm:tags"` is the LLM identity that serves the key
`tags`, `cfg.llm.identity("tags")`), the tables it reads (`"compress/compressed"`; `"tritower/*"`
for a whole stage folder: models, markers, files) and its own `version`. Its cache key is derived
from those declarations — the config values at the declared paths, the version, the keys of the
stages it reads and, for a stage that reads none, the dataset fingerprint — never written by hand.

The declarations are enforced: a stage function gets a `StageContext` whose config view raises
`UndeclaredConfig` on a field the stage did not declare and whose reader raises `UndeclaredInput`
on a table it did not declare, so a forgotten declaration fails in the tests instead of silently
reusing a stale output.

Nothing here knows RecGPT: `recgpt.pipeline.stages` builds the RecGPT chain from these parts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

if TYPE_CHECKING:
    import polars as pl

    from recgpt.data.runstore import RunStore

ALL = "*"  # `"stage/*"`: the whole stage folder (models, the marker's stats, files it owns)


class DeclarationError(RuntimeError):
    """A stage touched something it did not declare (a bug in the stage's declaration)."""


class UndeclaredConfig(DeclarationError, AttributeError):
    """A stage read a config field missing from its `Stage.config`."""


class UndeclaredInput(DeclarationError):
    """A stage read a table (or folder) missing from its `Stage.reads`."""


@dataclass(frozen=True)
class Stage:
    """One step of a pipeline: `run(ctx) -> stats`, writing tables into its own folder.

    `reads`: `"stage/table"` or `"stage/*"` entries; `config`: dotted config paths or `"section:key"`
    for `cfg.<section>.identity(key)`; `version`: bump when the code changes what the stage writes.
    `llm`: the stage asks an LLM (its ledger bucket and fallback check carry the stage's name).
    """

    name: str
    folder: str
    run: Callable[[StageContext], dict[str, Any]]
    reads: tuple[str, ...] = ()
    config: tuple[str, ...] = ()
    version: int = 1
    llm: bool = False
    title: str = ""

    def __post_init__(self) -> None:
        for r in self.reads:
            stage, sep, table = r.partition("/")
            if not sep or not stage or not table:
                raise ValueError(f"stage {self.name!r}: input {r!r} must be 'stage/table' or 'stage/*'")

    @property
    def needs(self) -> tuple[str, ...]:
        """The stages whose output this one reads, in declaration order."""
        return tuple(dict.fromkeys(r.partition("/")[0] for r in self.reads))

    def reads_table(self, stage: str, table: str) -> bool:
        return f"{stage}/{table}" in self.reads or f"{stage}/{ALL}" in self.reads


@dataclass(frozen=True)
class Pipeline:
    """A named, ordered set of stages over one config model; checked to be a valid topological order."""

    name: str
    config_model: type
    stages: tuple[Stage, ...]

    def __post_init__(self) -> None:
        seen: set[str] = set()
        folders: set[str] = set()
        for st in self.stages:
            if st.name in seen or st.folder in folders:
                raise ValueError(
                    f"pipeline {self.name!r}: stage {st.name!r} / folder {st.folder!r} is not unique"
                )
            if missing := [n for n in st.needs if n not in seen]:
                raise ValueError(
                    f"pipeline {self.name!r}: stage {st.name!r} reads {missing}, which do not run before it"
                )
            seen.add(st.name)
            folders.add(st.folder)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.stages)

    @property
    def folders(self) -> dict[str, str]:
        return {s.name: s.folder for s in self.stages}

    def stage(self, name: str) -> Stage:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(f"pipeline {self.name!r} has no stage {name!r}; stages: {', '.join(self.names)}")

    def until(self, name: str | None) -> tuple[Stage, ...]:
        """The stages a run stopping after `name` reaches, in order (all of them for None)."""
        if name is None:
            return self.stages
        return self.stages[: self.names.index(self.stage(name).name) + 1]

    def keys(self, cfg: Any, fingerprint: str) -> dict[str, str]:
        """Every stage's cache key for this config and dataset."""
        out: dict[str, str] = {}
        for st in self.stages:
            out[st.name] = stage_key(st, cfg, out, fingerprint)
        return out


# ---------------------------------------------------------------- config declarations


def _dump(x: Any) -> Any:
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return dataclasses.asdict(x)
    if hasattr(x, "model_dump"):
        return x.model_dump(mode="json")
    return list(x) if isinstance(x, tuple) else x


def resolve(cfg: Any, path: str) -> Any:
    """The value at a declared config path (`"fusion.k"`; `"llm:tags"` -> `cfg.llm.identity("tags")`;
    `"llm:"` -> `cfg.llm.identity("")`, the run's main LLM)."""
    dotted, sep, key = path.partition(":")
    obj = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj.identity(key) if sep else obj


def config_values(cfg: Any, paths: Iterable[str]) -> dict[str, Any]:
    """{path: JSON-able value} of the declared paths: what enters a stage's key and its marker."""
    return {p: _dump(resolve(cfg, p)) for p in paths}


def stage_key(stage: Stage, cfg: Any, upstream: Mapping[str, str], fingerprint: str) -> str:
    """A stage's cache key, derived from its declarations (see the module docstring)."""
    payload: dict[str, Any] = {
        "stage": stage.name,
        "version": stage.version,
        "config": config_values(cfg, stage.config),
        "needs": {n: upstream[n] for n in stage.needs},
    }
    if not stage.needs:
        payload["dataset"] = fingerprint
    text = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class ConfigView:
    """Read-only view of a config that lets a stage read only what it declared."""

    __slots__ = ("_allowed", "_obj", "_prefix", "_stage")

    def __init__(self, obj: Any, allowed: Iterable[str], stage: str, prefix: str = "") -> None:
        object.__setattr__(self, "_obj", obj)
        object.__setattr__(self, "_allowed", frozenset(p.partition(":")[0] for p in allowed if ":" not in p))
        object.__setattr__(self, "_stage", stage)
        object.__setattr__(self, "_prefix", prefix)

    def __getattr__(self, name: str) -> Any:
        path = self._prefix + name
        if path in self._allowed:
            return getattr(self._obj, name)
        if any(a.startswith(path + ".") for a in self._allowed):
            return ConfigView(getattr(self._obj, name), self._allowed, self._stage, path + ".")
        raise UndeclaredConfig(
            f"stage {self._stage!r} reads config {path!r} without declaring it: add it to "
            f"the stage's `config` (it is part of the stage's cache key)"
        )

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("the config of a stage is read-only")


# ---------------------------------------------------------------- the context a stage runs in


class StageContext:
    """What one stage function sees: its config view, declared inputs, its own folder, resources."""

    def __init__(
        self,
        stage: Stage,
        cfg: Any,
        store: RunStore,
        resources: Any,
        *,
        console: Console | None = None,
        progress: bool = False,
    ) -> None:
        self.stage, self.store, self.resources = stage, store, resources
        self.config = ConfigView(cfg, stage.config, stage.name)
        self._cfg = cfg
        self.console = console or Console(quiet=True)
        self.progress = progress

    @property
    def out_dir(self) -> Path:
        """The stage's own folder (emptied by the runner before the stage runs)."""
        return self.store.dir(self.stage.name)

    def _check(self, stage: str, table: str) -> None:
        if stage != self.stage.name and not self.stage.reads_table(stage, table):
            raise UndeclaredInput(
                f"stage {self.stage.name!r} reads {stage}/{table} without declaring it: add "
                f"'{stage}/{table}' to the stage's `reads`"
            )

    def read(self, stage: str, table: str) -> pl.DataFrame:
        self._check(stage, table)
        return self.store.read(stage, table)

    def stats(self, stage: str) -> dict[str, Any]:
        """The `stats` of a finished upstream stage's marker (a whole-stage input: `"stage/*"`)."""
        self._check(stage, ALL)
        return self.store.read_stats(stage)

    def folder(self, stage: str) -> Path:
        """An upstream stage's folder (models, indexes): a whole-stage input (`"stage/*"`)."""
        self._check(stage, ALL)
        return self.store.dir(stage)

    def write(self, table: str, df: pl.DataFrame) -> Path:
        return self.store.write(self.stage.name, table, df)

    def engine(self, key: str | None = None) -> Any:
        """The LLM engine serving `key` (default: this stage); needs the `"llm:<key>"` declaration."""
        key = key or self.stage.name
        if f"llm:{key}" not in self.stage.config:
            raise UndeclaredConfig(
                f"stage {self.stage.name!r} asks the LLM of {key!r} without declaring "
                f"'llm:{key}' in its `config`"
            )
        return self.resources.engine(key)

    def declared(self, path: str) -> Any:
        """The value at a declared config path, including `"section:key"` identities (as in the key)."""
        if path not in self.stage.config:
            raise UndeclaredConfig(
                f"stage {self.stage.name!r} reads {path!r} without declaring it in its `config`"
            )
        return resolve(self._cfg, path)

    def finished(self) -> dict[str, dict[str, Any]]:
        """Markers of every finished stage of the run, for reporting only (timings, fallback shares):
        nothing read here may shape a table."""
        return self.store.markers()


__all__ = [
    "ALL",
    "ConfigView",
    "DeclarationError",
    "Pipeline",
    "Stage",
    "StageContext",
    "UndeclaredConfig",
    "UndeclaredInput",
    "config_values",
    "resolve",
    "stage_key",
]
