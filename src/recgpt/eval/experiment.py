"""An experiment = dataset x split x recommenders x metrics, printed as one table.

Hyper-parameters are chosen on the validation task only (by `select_metric`); the chosen model,
fitted on the training interactions, is then scored once on the test task, whose histories include
the validation item. Seeds, versions and every validation candidate are recorded with the results.
Category metrics (CatDiv, ILD) use the items' categories at one level (`category_level`, see
`recgpt.data.categories`); the level used is recorded as `ExperimentResult.category_level`.
"""

from __future__ import annotations

import platform
import resource
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp

from recgpt.data.atomic import write_json_atomic as write_json_atomic  # re-export: callers import it here
from recgpt.data.categories import CategoryLevel, categories_at_level, parse_level
from recgpt.data.dataset import Dataset
from recgpt.data.interactions import Recommender
from recgpt.data.ranking import mask_seen, topk
from recgpt.data.split import EvalTask, Split, SplitConfig, make_split
from recgpt.eval.metrics import evaluate_lists
from recgpt.settings import settings


@dataclass
class ExperimentConfig:
    """What to run. `model_params` overrides defaults per model name and disables its search."""

    models: list[str]
    split: SplitConfig = field(default_factory=SplitConfig)
    mask_seen: bool = True
    ks: tuple[int, ...] = (5, 10, 20, 50)
    seed: int = 0
    tune: bool = True
    select_metric: str = "NDCG@10"
    batch_size: int = 512
    model_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    category_level: CategoryLevel | str = "auto"

    def __post_init__(self) -> None:
        self.ks = tuple(self.ks)
        self.category_level = parse_level(self.category_level)
        if not self.models:
            raise ValueError("no models to evaluate")
        if not self.ks or any(not isinstance(k, int) or k < 1 for k in self.ks):
            raise ValueError(f"ks must be positive integer cut-offs, got {self.ks}")
        k_select = int(self.select_metric.rpartition("@")[2] or 0)
        if k_select not in self.ks:
            raise ValueError(
                f"ks must include {k_select}, the cut-off of the tuning metric {self.select_metric}"
            )


def check_model_params(models: list[str], params: dict[str, Any]) -> None:
    """`model_params` must name models being run and their known hyper-parameters: a typo would
    otherwise be ignored silently (every recommender accepts any keyword)."""
    from recgpt.baselines.registry import load_recommender_class

    if not isinstance(params, dict):
        raise ValueError(f"params must map model name -> {{param: value}}, got {type(params).__name__}")
    for name, given in params.items():
        if name not in models:
            raise ValueError(
                f"params name model {name!r}, which is not among the models run ({', '.join(models)})"
            )
        if not isinstance(given, dict):
            raise ValueError(f"params of {name!r} must be an object {{param: value}}, got {given!r}")
        cls = load_recommender_class(name)
        valid = set(cls.default_params()).union(*(set(c) for c in cls.search_space()))
        if unknown := sorted(set(given) - set(valid)):
            raise ValueError(
                f"unknown parameter(s) {unknown} for model {name!r}; valid: {', '.join(sorted(valid)) or 'none'}"
            )


def check_catalogue(ks: tuple[int, ...], n_items: int) -> None:
    """Every cut-off must fit in the catalogue: a top-K list of a 5-item catalogue has no 10th item."""
    if max(ks) > n_items:
        raise ValueError(
            f"cut-off K={max(ks)} is larger than the catalogue ({n_items} items); "
            f"use --ks with values <= {n_items}"
        )


@dataclass
class ModelRun:
    """One recommender's outcome: chosen params, validation search, test metrics, timings."""

    name: str
    params: dict[str, Any]
    validation: list[dict[str, Any]]
    test: dict[str, float]
    fit_s: float
    score_s: float
    recs: np.ndarray = field(repr=False)
    model: Recommender | None = field(default=None, repr=False, compare=False)  # the fitted model (not saved)


@dataclass
class ExperimentResult:
    """Everything needed for the table, results.json and the HTML report."""

    dataset: str
    config: ExperimentConfig
    runs: list[ModelRun]
    n_users_test: int
    n_items: int
    item_exposure_base: np.ndarray = field(repr=False)
    env: dict[str, Any] = field(default_factory=dict)
    category_level: str = ""  # the level CatDiv / ILD were computed at ("leaf", "depth 1", "set", ...)

    def to_json(self) -> dict[str, Any]:
        cfg = asdict(self.config)
        return {
            "dataset": self.dataset,
            "config": cfg,
            "category_level": self.category_level,
            "n_users_test": self.n_users_test,
            "n_items": self.n_items,
            "env": self.env,
            "models": [
                {
                    "name": r.name,
                    "params": r.params,
                    "validation": r.validation,
                    "test": r.test,
                    "fit_s": round(r.fit_s, 3),
                    "score_s": round(r.score_s, 3),
                }
                for r in self.runs
            ],
        }


def recommend(model: Recommender, task: EvalTask, k: int, *, mask: bool, batch_size: int = 512) -> np.ndarray:
    """Top-k lists for every user of a task, from histories as of the split point."""
    out = np.empty((len(task), k), dtype=np.int64)
    for lo in range(0, len(task), batch_size):
        hi = min(lo + batch_size, len(task))
        hist = task.histories[lo:hi]
        scores = np.array(model.score(task.user_idx[lo:hi], hist), dtype=np.float32, copy=True)
        if mask:
            mask_seen(scores, hist)
        out[lo:hi] = topk(scores, k)
    return out


def sets_matrix(lists: list[np.ndarray], n_items: int) -> sp.csr_matrix:
    """Per-user item lists (held-out items, histories) as a boolean user x item matrix."""
    lens = [len(t) for t in lists]
    rows = np.repeat(np.arange(len(lists)), lens)
    cols = np.concatenate(lists).astype(np.int64) if lists and sum(lens) else np.empty(0, dtype=np.int64)
    m = sp.csr_matrix((np.ones(len(cols), dtype=bool), (rows, cols)), shape=(len(lists), n_items))
    m.sum_duplicates()
    return m


def category_matrix(dataset: Dataset, level: CategoryLevel | str = "auto") -> tuple[sp.csr_matrix, list[str]]:
    """Item x category incidence from the items' categories at `level` (`recgpt.data.categories`)."""
    cats = categories_at_level(dataset, level).categories
    vocab: dict[str, int] = {}
    rows, cols = [], []
    for i, path in enumerate(cats):
        for c in path:
            rows.append(i)
            cols.append(vocab.setdefault(c, len(vocab)))
    m = sp.csr_matrix(
        (np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(len(cats), max(len(vocab), 1))
    )
    m.sum_duplicates()
    m.data[:] = 1.0
    return m, list(vocab)


def topk_metrics(
    split: Split,
    task: EvalTask,
    recs: np.ndarray,
    ks: tuple[int, ...],
    category_level: CategoryLevel | str = "auto",
) -> dict[str, float]:
    """All metrics of top-K lists for a task (accuracy and beyond; categories at `category_level`)."""
    cats, _ = category_matrix(split.dataset, category_level)
    return evaluate_lists(
        recs,
        sets_matrix(task.targets, split.train.n_items),
        item_popularity=split.train.item_popularity,
        ks=ks,
        item_features=cats,
        item_categories=cats,
        histories=sets_matrix(task.histories, split.train.n_items),
    )


def _validate(model: Recommender, split: Split, cfg: ExperimentConfig) -> dict[str, float]:
    recs = recommend(model, split.valid, max(cfg.ks), mask=cfg.mask_seen, batch_size=cfg.batch_size)
    truth = sets_matrix(split.valid.targets, split.train.n_items)
    return evaluate_lists(recs, truth, item_popularity=split.train.item_popularity, ks=cfg.ks)


def environment(seed: int) -> dict[str, Any]:
    """Versions and settings that make a number reproducible."""
    import recgpt

    env: dict[str, Any] = {
        "recgpt": recgpt.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "numpy": np.__version__,
        "polars": pl.__version__,
        "seed": seed,
        "omp_num_threads": settings().omp_num_threads,
    }
    try:
        import torch

        env["torch"] = torch.__version__
    except ImportError:
        pass
    return env


def run_experiment(
    dataset: Dataset,
    cfg: ExperimentConfig,
    *,
    progress: Any | None = None,
    split: Split | None = None,
    fitted: Mapping[str, Recommender] | None = None,
) -> ExperimentResult:
    """Fit, tune on validation, and test every model of the config on one split of one dataset.

    `fitted`: models already fitted on this split's train part (e.g. by a pipeline's tune stage) are
    tested as they are, without fitting or validating again (their `validation` is empty, `fit_s` 0)."""
    from recgpt.baselines.registry import get_recommender, load_recommender_class

    check_model_params(cfg.models, cfg.model_params)
    split = split or make_split(dataset, cfg.split)
    check_catalogue(cfg.ks, split.train.n_items)
    if len(split.test) == 0:
        raise ValueError("the split has no test users; check the split configuration")
    runs = []
    for name in cfg.models:
        if fitted and name in fitted:
            model = fitted[name]
            t0 = time.perf_counter()
            recs = recommend(model, split.test, max(cfg.ks), mask=cfg.mask_seen, batch_size=cfg.batch_size)
            score_s = time.perf_counter() - t0
            test = topk_metrics(split, split.test, recs, cfg.ks, cfg.category_level)
            runs.append(ModelRun(name, model.params, [], test, 0.0, score_s, recs, model))
            continue
        cls = load_recommender_class(name)
        if name in cfg.model_params:
            candidates = [{**cls.default_params(), **cfg.model_params[name]}]
        else:
            candidates = cls.search_space() if cfg.tune else [cls.default_params()]
        task_id = progress.add_task(f"{name}: tuning", total=len(candidates) + 1) if progress else None
        best: tuple[float, Recommender, dict[str, Any], float] | None = None
        validation = []
        for params in candidates:
            t0 = time.perf_counter()
            model = get_recommender(name, **params).fit(split.train, seed=cfg.seed)
            fit_s = time.perf_counter() - t0
            metrics = _validate(model, split, cfg)
            score = metrics[cfg.select_metric]
            validation.append({"params": model.params, cfg.select_metric: score, "fit_s": round(fit_s, 3)})
            if best is None or score > best[0]:
                best = (score, model, model.params, fit_s)
            if progress:
                progress.advance(task_id)
        assert best is not None
        _, model, params, fit_s = best
        t0 = time.perf_counter()
        recs = recommend(model, split.test, max(cfg.ks), mask=cfg.mask_seen, batch_size=cfg.batch_size)
        score_s = time.perf_counter() - t0
        test = topk_metrics(split, split.test, recs, cfg.ks, cfg.category_level)
        runs.append(ModelRun(name, params, validation, test, fit_s, score_s, recs, model))
        if progress:
            progress.update(task_id, description=f"{name}: done", completed=len(candidates) + 1)
    env = environment(cfg.seed)
    env["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return ExperimentResult(
        dataset=dataset.manifest.name,
        config=cfg,
        runs=runs,
        n_users_test=len(split.test),
        n_items=split.train.n_items,
        item_exposure_base=split.train.item_popularity,
        env=env,
        category_level=categories_at_level(dataset, cfg.category_level).name,
    )
