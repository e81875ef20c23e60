"""The SFT sample table of one chain task, as `recgpt train sft` trains on it.

Why here and not in the CLI: the table is the training contract (what a model learns from, which users
are excluded), so benches, notebooks and the commands must build it the same way. The chain's evaluation
users (`sample_users(split.test, eval_users_n, eval_seed)`, the `recgpt run` defaults) are excluded, so
training never sees the users the chain is measured on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TASKS = ("interests", "tags", "explanations", "judge")
LOG_TASKS = ("interests", "tags", "explanations")  # built from the behaviour logs (the others: labels)


def dataset_split(dataset: str) -> tuple[Any, Any]:
    """The dataset (folder or `bundled:<name>`) and the chain's default split (what `recgpt run` evaluates)."""
    from recgpt.data.split import SplitConfig, make_split
    from recgpt.datasets import load_dataset

    ds = load_dataset(dataset)
    return ds, make_split(ds, SplitConfig())


def task_samples(
    task: str,
    dataset: str | None,
    *,
    users: int,
    buffer: Path | None = None,
    foundation: bool = True,
    catalogue_per_task: int = 16,
    eval_users_n: int = 200,
    eval_seed: int = 0,
    seed: int = 0,
    cache_dir: Path | None = None,
    progress: bool = True,
) -> tuple[Any, dict[str, Any]]:
    """The SFT sample table of one task (+ the catalogue curriculum) and what went into it.

    Raises ValueError / FileNotFoundError for inputs that cannot make a table (they name the option).
    """
    from recgpt.training.data import concat_samples

    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if task == "judge" and buffer is None:
        raise ValueError(
            "--task judge trains on a judge data buffer: pass --buffer DIR (recgpt label import)"
        )
    if dataset is None and (task in LOG_TASKS or foundation):
        also = " and the foundation tasks" if foundation else ""
        raise ValueError(f"--dataset is needed for task {task!r}{also}")
    info: dict[str, Any] = {"task": task, "dataset": dataset}
    parts = []
    if dataset is not None:
        from recgpt.training.builders import CatalogueConfig, build_catalogue_samples, eval_users

        ds, split = dataset_split(dataset)
        excluded = eval_users(split, eval_users_n, eval_seed)
        info.update(dataset_name=ds.manifest.name, excluded_eval_users=len(excluded))
        if foundation:
            cat = CatalogueConfig(per_task=catalogue_per_task, seed=seed)
            parts.append(build_catalogue_samples(ds, cat, events=split.train_events))
        if task in LOG_TASKS:
            parts.append(log_samples(task, ds, split, excluded, users, seed, cache_dir, progress))
    if task == "judge":
        from recgpt.judge.buffer import JudgeBuffer, judge_sft_samples

        assert buffer is not None  # checked above
        if not (Path(buffer) / "buffer.parquet").is_file():
            raise FileNotFoundError(
                f"no judge buffer at {buffer} (buffer.parquet): fill it with `recgpt label import`"
            )
        parts.append(judge_sft_samples(JudgeBuffer(buffer).training_set(max_size=users, seed=seed)))
    samples = concat_samples(*parts)
    info["task_samples"] = int(samples.filter(samples["task"] == task).height)
    if info["task_samples"] == 0:
        raise ValueError(f"the builders made no {task} sample (too few eligible users or labels?)")
    return samples, info


def log_samples(
    task: str,
    ds: Any,
    split: Any,
    excluded: list[str],
    users: int,
    seed: int,
    cache_dir: Path | None,
    progress: bool,
) -> Any:
    """Self-supervised samples of one chain task from the train split's logs (the sentence encoder loads)."""
    import transformers

    from recgpt.retrieval.embeddings import Embedder
    from recgpt.training import builders

    build = {
        "tags": builders.build_tag_samples,
        "interests": builders.build_interest_samples,
        "explanations": builders.build_explanation_samples,
    }[task]
    transformers.utils.logging.disable_progress_bar()  # MiniLM's "Loading weights" bar
    encoder = Embedder(cache_dir=cache_dir)
    logs = builders.LogsConfig(users=users, seed=seed)
    return build(ds, split, logs, encoder=encoder, exclude_users=excluded, progress=progress)


def trained_config(folder: Path, **override: Any) -> Any:
    """The SFTConfig a `train sft` folder was trained with (defaults when it has none), with overrides."""
    from recgpt.training.sft import SFTConfig

    meta = folder / "train_config.json"
    base = json.loads(meta.read_text())["config"] if meta.is_file() else {}
    return SFTConfig.from_dict({**base, **{k: v for k, v in override.items() if v is not None}})


__all__ = ["LOG_TASKS", "TASKS", "dataset_split", "log_samples", "task_samples", "trained_config"]
