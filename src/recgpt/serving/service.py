"""`RecommendationService`: a user's final list, with provenance and explanations, read from a finished run.

Every front door serves from here (the HTML report's walk-through, `recgpt recommend`, the HTTP
server), so they show the same list: the fused list of `08_fusion/fused`, with the explanations of
`10_explanations/served` joined by (user, rank, item). The service only reads the run folder
(through `RunStore`, never the pipeline that wrote it): each table is read once when the service
opens and split by user, and the catalogue (titles, categories) is loaded on first use, once. After
that nothing changes, so one service can be shared by any number of threads.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import polars as pl

from recgpt.data.errors import DataError
from recgpt.data.runstore import RunNotFinished, RunStore
from recgpt.serving.models import (
    CompressedHistory,
    Interest,
    Item,
    PoolMatch,
    Recommendation,
    Tag,
    UserView,
)

# (stage, table) the service reads; the stage must have finished (its done.json written)
TABLES: tuple[tuple[str, str], ...] = (
    ("split", "users"),
    ("compress", "compressed"),
    ("pool", "matches"),
    ("interests", "interests"),
    ("tags", "tags"),
    ("phi", "tag_categories"),
    ("fusion", "fused"),
    ("explanations", "served"),
)
CONFIG = "config.json"
DEFAULT_K = 10
PHI_TOP = 3  # φ categories shown per tag
EXAMPLE_USERS = 5  # user ids named in an unknown-user error
_EXPLAINED = ("explained_interest", "explanation", "item_only", "source")


class ServingError(DataError):
    """A request the service cannot answer from this run (exit code 2 on the command line)."""


class NotARun(ServingError):
    """The folder is not a finished run: names what is missing and the command that finishes it."""


class UnknownUser(ServingError):
    """The user is not among the run's users."""


def _finish_hint(run_dir: Path, config: dict[str, Any]) -> str:
    """The command that resumes this run in place (naming the folder when it was moved since it ran)."""
    cmd = f"recgpt run --config {run_dir / CONFIG}"
    written = Path(str(config.get("runs_dir", ""))) / str(config.get("name", ""))
    if written.resolve() != run_dir.resolve():
        cmd += f" --runs-dir {run_dir.parent} --name {run_dir.name}"
    return f"finish it with `{cmd}` (it resumes from the last finished stage)"


def _read_config(store: RunStore) -> dict[str, Any]:
    """The run's config.json, or `NotARun` when the folder is no run folder at all."""
    root = store.run_dir
    if not (root / CONFIG).is_file():
        raise NotARun(
            f"{root} is not a run folder (no {CONFIG}); runs are written by `recgpt run` and "
            "`recgpt quickstart` as runs/<name>/"
        )
    try:
        config = store.read_json(CONFIG)
    except ValueError as e:
        raise NotARun(f"{CONFIG} is not valid JSON: {e}", file=root) from e
    if not isinstance(config.get("dataset"), str):
        raise NotARun(f"{CONFIG} names no dataset", file=root)
    return config


def _read_tables(store: RunStore, config: dict[str, Any]) -> dict[str, pl.DataFrame]:
    """The tables of `TABLES` by stage name, or `NotARun` naming the first unfinished stage."""
    root = store.run_dir
    tables: dict[str, pl.DataFrame] = {}
    for stage, table in TABLES:
        folder = store.folders.get(stage)
        if folder is None or store.marker(stage) is None:
            where = f"{folder}/done.json" if folder else f"<NN>_{stage}/ folder"
            raise NotARun(
                f"the run has not finished: stage {stage!r} is not done (no {where}); "
                + _finish_hint(root, config),
                file=root,
            )
        try:
            tables[stage] = store.read(stage, table)
        except RunNotFinished:
            raise NotARun(
                f"table {folder}/{table}.parquet is missing although stage {stage!r} is marked done; "
                f"delete {folder}/done.json and {_finish_hint(root, config)}",
                file=root,
            ) from None
    return tables


def _by_user(df: pl.DataFrame, *order: str) -> dict[str, pl.DataFrame]:
    """One frame per user, each sorted by `order` (the split is done once, at open)."""
    df = df.sort("user_id", *order) if order else df
    return {str(k[0]): g for k, g in df.partition_by("user_id", as_dict=True, include_key=False).items()}


class RecommendationService:
    """Read-only answers over one finished RecGPT run folder (`runs/<name>/`)."""

    def __init__(
        self,
        run_dir: Path,
        config: dict[str, Any],
        tables: dict[str, pl.DataFrame],
        items: pl.DataFrame | None = None,
    ) -> None:
        """`tables` maps each stage of `TABLES` to its table; `items` (item_id, title, categories) is the
        catalogue when the caller has it loaded already (the report stage), else it is read on first use."""
        self.run_dir = run_dir
        self._config = config
        split = tables["split"]
        self._users: list[str] = [str(u) for u in split["user_id"].to_list()]
        self._targets: dict[str, str | None] = dict(
            zip(self._users, split["target_item_id"].to_list(), strict=True)
        )
        served = _with_source(tables["explanations"]).select("user_id", "rank", "item_id", *_EXPLAINED)
        lists = tables["fusion"].join(served, on=["user_id", "rank", "item_id"], how="left")
        self._lists = _by_user(lists, "rank")
        self._history = _by_user(tables["compress"])
        self._pool = _by_user(tables["pool"], "rank")
        self._interests = _by_user(tables["interests"], "interest_id")
        self._tags = _by_user(tables["tags"], "rank")
        phi = tables["phi"].filter(pl.col("rank") <= PHI_TOP).sort("tag", "rank")
        self._phi: dict[str, list[str]] = {
            str(t[0]): g["category"].to_list() for t, g in phi.partition_by("tag", as_dict=True).items()
        }
        self._items: dict[str, Item] | None = None
        self._lock = threading.Lock()
        if items is not None:
            self._items = self._pick(items)

    @classmethod
    def open(cls, run_dir: str | Path) -> RecommendationService:
        """The service over `run_dir`; `NotARun` names the missing stage or table and how to finish the run."""
        try:
            store = RunStore.open(run_dir)
        except RunNotFinished as e:
            raise NotARun(str(e)) from None
        config = _read_config(store)
        return cls(store.run_dir, config, _read_tables(store, config))

    # ------------------------------------------------------------ facts about the run

    @property
    def dataset(self) -> str:
        """The run's dataset spec (a folder, or `bundled:<name>`), from its config.json."""
        return str(self._config["dataset"])

    @property
    def explain_top(self) -> int | None:
        """How many top slots per user carry an explanation (the run's `explain_top`)."""
        top = self._config.get("explain_top")
        return int(top) if top is not None else None

    def users(self) -> list[str]:
        """The run's users (its sampled test users), in the order of its split table."""
        return list(self._users)

    def knows(self, user_id: str) -> bool:
        """Whether `user_id` is one of the run's users (others get a fallback list from the server)."""
        return str(user_id) in self._targets

    def catalogue(self) -> list[Item]:
        """The catalogue items this run shows (its lists and held-out targets), with titles and categories."""
        return list(self._catalogue().values())

    # ------------------------------------------------------------ answers

    def recommend(self, user_id: str, k: int = DEFAULT_K) -> list[Recommendation]:
        """The user's top `k` of the run's final list, with channel, tag, interest and explanation per item."""
        if k < 1:
            raise ServingError(f"k must be at least 1, got {k}")
        user = self._known(user_id)
        rows = self._lists.get(user)
        if rows is None:
            return []
        return [recommendation(r, self._item(r["item_id"])) for r in rows.head(k).iter_rows(named=True)]

    def view(self, user_id: str, k: int = DEFAULT_K) -> UserView:
        """Everything the report's walk-through shows for one user, the list cut at `k`."""
        recs = self.recommend(user_id, k)
        user = str(user_id)
        target, hist = self._targets[user], self._history.get(user)
        return UserView(
            user_id=user,
            target=None if target is None else self._item(target),
            history=None if hist is None else _models(CompressedHistory, hist)[0],
            pool=_models(PoolMatch, self._pool.get(user)),
            interests=_models(Interest, self._interests.get(user)),
            tags=[
                Tag(**r, categories=self._phi.get(r["tag"], []))
                for r in _rows(self._tags.get(user), ("rank", "tag", "interest_id", "interest", "rationale"))
            ],
            recommendations=recs,
        )

    # ------------------------------------------------------------ internals

    def _known(self, user_id: str) -> str:
        user = str(user_id)
        if user not in self._targets:
            few = ", ".join(self._users[:EXAMPLE_USERS])
            raise UnknownUser(
                f"user {user!r} is not in run {self.run_dir}: it holds {len(self._users)} users (e.g. {few})"
            )
        return user

    def _item(self, item_id: str) -> Item:
        return self._catalogue().get(item_id) or Item(item_id=item_id, title=None, categories=[])

    def _catalogue(self) -> dict[str, Item]:
        """Titles and categories of the items this run shows, from its dataset: loaded once, on first use."""
        if self._items is not None:
            return self._items
        with self._lock:
            if self._items is None:
                self._items = self._load_items()
        return self._items

    def _load_items(self) -> dict[str, Item]:
        """The catalogue as every stage saw it: instruction-like spans redacted (`recgpt.data.untrusted`)."""
        from recgpt.data.untrusted import UntrustedText, redact_dataset
        from recgpt.datasets import load_dataset

        try:
            source = load_dataset(self.dataset)
            items = redact_dataset(source, UntrustedText.of(source).report).items
        except (OSError, ValueError, KeyError) as e:
            raise ServingError(
                f"cannot load the run's catalogue {self.dataset!r} (config.json 'dataset') for titles "
                f"and categories: {e}",
                file=self.run_dir / CONFIG,
            ) from e
        return self._pick(items)

    def _pick(self, items: pl.DataFrame) -> dict[str, Item]:
        """Titles and categories of the items this run shows (its lists and held-out targets)."""
        wanted = {t for t in self._targets.values() if t is not None}
        for g in self._lists.values():
            wanted.update(g["item_id"].to_list())
        mine = items.filter(pl.col("item_id").is_in(sorted(wanted)))
        return {
            iid: Item(item_id=iid, title=title, categories=list(cats or []))
            for iid, title, cats in mine.select("item_id", "title", "categories").iter_rows()
        }


def _with_source(served: pl.DataFrame) -> pl.DataFrame:
    """The served table with its `source` column; a run written before it existed knows only item-only
    templates apart (its other texts may be LLM-written or pair templates: None, "unknown")."""
    if "source" in served.columns:
        return served
    return served.with_columns(
        pl.when(pl.col("item_only")).then(pl.lit("template:item")).otherwise(None).alias("source")
    )


def _rows(df: pl.DataFrame | None, cols: tuple[str, ...]) -> list[dict[str, Any]]:
    return [] if df is None else df.select(*cols).to_dicts()


def _models(model: type[Any], df: pl.DataFrame | None) -> list[Any]:
    return [model(**r) for r in _rows(df, tuple(model.model_fields))]


def recommendation(row: dict[str, Any], item: Item) -> Recommendation:
    """One served slot from a list row joined with its explanation (the nearline refresher builds its
    rows the same way, so a refreshed list has the run's shape)."""
    return Recommendation(
        rank=row["rank"],
        item_id=row["item_id"],
        title=item.title,
        categories=item.categories,
        score=row["score"],
        channel=row["channel"],
        tag=row["tag"],
        interest=row["interest"],
        explained_interest=row["explained_interest"],
        explanation=row["explanation"],
        item_only=row["item_only"],
        explanation_source=row["source"],
    )


__all__ = [
    "DEFAULT_K",
    "TABLES",
    "NotARun",
    "RecommendationService",
    "ServingError",
    "UnknownUser",
    "recommendation",
]
