"""What every log builder reads and the rules they share: `LogsConfig`, the `LogSource` (dataset, split,
catalogue view, interest pool, compressor, built once), the `LogContext` of one (user, as-of) and
its `Target`s, and the tag and interest-match rules (`pick_tags`, `matches`) that both choosing
as-of points (`contexts`) and building samples (`logs`) apply.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from recgpt.behavior import BehaviorCompressor, CompressionConfig, make_counter
from recgpt.data.dataset import Dataset
from recgpt.data.split import Split
from recgpt.intent.context import UserContext, phrase_key
from recgpt.intent.explanations import ExplanationsConfig
from recgpt.intent.interests import InterestsConfig
from recgpt.intent.pool import InterestPool, PoolConfig, TextEncoder
from recgpt.intent.tags import EXAMPLE_TAGS, TagsConfig, names_item
from recgpt.judge.rules import VAGUE_WORDS  # the words the judge rejects: a training tag avoids them too
from recgpt.training.builders.items import Catalogue, TagStyle, core_word_for


class LogsConfig(BaseModel):
    """How samples are drawn from logs (`contexts`, `logs` docstrings); chain configs = the serving ones."""

    model_config = ConfigDict(frozen=True)

    users: int | None = Field(default=200, ge=1, description="training users sampled (None: all eligible)")
    points_per_user: int = Field(default=1, ge=1)
    min_history: int = Field(default=5, ge=1, description="reliable events before an as-of point")
    window_days: int = Field(default=14, ge=1, description="targets: next items within this many days")
    min_rating: float | None = Field(default=None, description="targets: only ratings >= this (None: all)")
    n_interests: int = Field(default=5, ge=1, description="interests shown in the tag prompt")
    interests_from: Literal["pool", "categories"] = "pool"
    tag_style: TagStyle = "auto"
    core_word: str | None = Field(default="auto", description='"auto": "film" for MovieLens, else none')
    max_per_category: int = Field(default=2, ge=1, description="tags per category in one sample (paper: 2)")
    interest_match: Literal["require", "prefer", "any"] = Field(
        default="prefer",
        description="targets an interest names (category/title): only them, them first, or time order",
    )
    category_cap: int | None = Field(default=None, ge=1, description="tags per category in the whole set")
    explanations_per_context: int = Field(default=2, ge=1)
    tag_min_words: int = Field(default=2, ge=1)
    tag_max_words: int = Field(default=6, ge=1)
    vague_words: tuple[str, ...] = VAGUE_WORDS
    long_term_support: int = Field(default=3, ge=1, description="history items making an interest long-term")
    tags: TagsConfig = Field(default_factory=TagsConfig)
    interests: InterestsConfig = Field(default_factory=InterestsConfig)
    explanations: ExplanationsConfig = Field(default_factory=ExplanationsConfig)
    pool: PoolConfig = Field(default_factory=PoolConfig)
    compression: CompressionConfig = Field(default_factory=CompressionConfig)
    tokenizer: str = Field(default="smollm2", description="token counter of the compression budget")
    seed: int = 0


@dataclass(frozen=True)
class Target:
    """One next item of a user after an as-of point, linked to one of the prompt's interests."""

    item_id: str
    timestamp: int
    event_id: int
    interest_id: int
    matched: bool = True  # the interest names the item (category / title); False: nearest by embedding


@dataclass(frozen=True)
class LogContext:
    """One (user, as-of) of the logs: the chain's context, the prompt's interests, the next items."""

    ctx: UserContext
    interests: tuple[tuple[int, str], ...]
    targets: tuple[Target, ...]
    seen: frozenset[str]  # items engaged before the point (any behaviour)
    window: tuple[int, int]  # [as_of, end) of the targets
    lineage: dict[str, Any] = field(default_factory=dict)

    @property
    def user_id(self) -> str:
        return self.ctx.user_id

    @property
    def as_of(self) -> int:
        return self.ctx.asof_ts


class LogSource:
    """What every log builder reads: dataset, split, catalogue view, pool, compressor (built once)."""

    def __init__(
        self,
        dataset: Dataset,
        split: Split,
        config: LogsConfig | None = None,
        *,
        encoder: TextEncoder | None = None,
        pool: InterestPool | None = None,
        compressor: BehaviorCompressor | None = None,
    ) -> None:
        if split.dataset is not dataset and split.dataset.manifest.name != dataset.manifest.name:
            raise ValueError("the split was made from another dataset")
        self.dataset, self.split = dataset, split
        self.config = config or LogsConfig()
        cfg = self.config
        if pool is None:
            if encoder is None:
                raise ValueError("pass an encoder (to build the interest pool) or a ready InterestPool")
            pool = InterestPool.build(dataset.items, encoder, cfg.pool)
        self.pool = pool
        self.compressor = compressor or BehaviorCompressor(
            dataset.items, make_counter(cfg.tokenizer), cfg.compression
        )
        core = core_word_for(dataset.manifest.source) if cfg.core_word == "auto" else cfg.core_word
        self.catalogue = Catalogue(dataset.items, split.train_events, cfg.tag_style, core)
        self._tags: dict[str, str] = {}
        self._fingerprint: str | None = None

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            from recgpt.data.dataset import fingerprint

            self._fingerprint = fingerprint(self.dataset)
        return self._fingerprint

    def tag(self, item_id: str) -> str:
        if item_id not in self._tags:
            self._tags[item_id] = self.catalogue.tag(item_id)
        return self._tags[item_id]

    def tag_ok(self, tag: str) -> bool:
        """The chain's and the judge's static tag rules: word count, vague words, example copies."""
        cfg = self.config
        words = tag.split()
        if not cfg.tag_min_words <= len(words) <= min(cfg.tag_max_words, cfg.tags.max_words):
            return False
        low = {w.lower() for w in words}
        return not (low & {v.lower() for v in cfg.vague_words}) and phrase_key(tag) not in _EXAMPLES

    def category(self, item_id: str) -> str:
        return self.catalogue.specific_category(item_id) or "(none)"


_EXAMPLES = frozenset(phrase_key(e) for e in EXAMPLE_TAGS)


def eval_users(split: Split, users: int | None = 200, seed: int = 0) -> list[str]:
    """The chain's evaluation users (its seeded test-user sample): pass them as `exclude_users`."""
    from recgpt.data.split import sample_users

    return sample_users(split.test, users, seed)


@contextmanager
def progress_bar(enabled: bool, what: str, total: int) -> Iterator[Any]:
    """A transient rich bar's `advance(n=1)` (a no-op when disabled): long scans show they move."""
    if not enabled:
        yield lambda n=1: None
        return
    from rich.console import Console

    from recgpt.progress import make_progress

    with make_progress(Console(), transient=True) as bar:
        task = bar.add_task(what, total=total)
        yield lambda n=1: bar.advance(task, n)


# ---------------------------------------------------------------- rules shared with the builders


def pick_tags(
    src: LogSource,
    targets: Sequence[str],
    count: int,
    cap_used: Counter[str] | None = None,
    ok: Callable[[str, str], bool] | None = None,
) -> list[str]:
    """Items whose tags make a balanced sample: distinct valid tags, <= max_per_category per category."""
    cfg = src.config
    picked: list[str] = []
    per_cat: Counter[str] = Counter()
    keys: set[str] = set()
    for item in targets:
        tag = src.tag(item)
        key, cat = phrase_key(tag), src.category(item)
        if not tag or key in keys or not src.tag_ok(tag) or per_cat[cat] >= cfg.max_per_category:
            continue
        if (
            cap_used is not None
            and cfg.category_cap is not None
            and cap_used[cat] + per_cat[cat] >= cfg.category_cap
        ):
            continue
        if ok is not None and not ok(item, tag):
            continue
        picked.append(item)
        keys.add(key)
        per_cat[cat] += 1
        if len(picked) == count:
            break
    return picked


def matches(src: LogSource, interest: str, item: str) -> bool:
    """Whether an interest names the item: one of its categories, or a phrase of its title."""
    key = phrase_key(interest)
    return any(phrase_key(c) == key for c in src.catalogue.categories(item)) or names_item(
        src.catalogue.title(item), interest, 1
    )


__all__ = [
    "VAGUE_WORDS",
    "LogContext",
    "LogSource",
    "LogsConfig",
    "Target",
    "eval_users",
    "matches",
    "pick_tags",
    "progress_bar",
]
