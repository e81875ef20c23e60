"""The interest pool (RecGPT §1.3, I_m): a catalogue taxonomy matched to each user by embedding similarity.

The paper passes LLM_UI a "pre-configured matched candidate interest pool" but does not say how it is
built or matched [GAP]. Choice made here (all knobs in `PoolConfig`):

- **Entries** come from the catalogue only (never from a user), so the pool is the same for everyone:
  every category name (MovieLens genres, Amazon leaf paths) with at least `min_support` items, plus
  frequent **title phrases**: word n-grams (`ngram_min`..`ngram_max`) of the cleaned titles (years and
  parenthesised aliases removed) that occur in at least `min_support` titles, do not start or end with a
  stop word, and are not numbers. A phrase is dropped when a longer kept phrase containing it covers at
  least `closed_ratio` of its titles ("harry" goes when "harry potter" explains it). The most frequent
  `max_phrases` phrases are kept.
- **Matching**: the user's last `history_items` item events of the `AsOf` view (reliable ones by
  default, all when none is reliable) are embedded as item texts (title + categories) and compared with
  every entry; an entry's score is the cosine with the mean history vector (`aggregate="mean"`, the
  user's overall taste) or its best single history item (`"max"`), minus `centroid_weight` times its
  cosine with the centroid of a fixed, seeded sample of `centroid_sample` catalogue items. Without that
  correction generic entries ("Movie", "Film", "Thriller") are near every history and win for everyone
  (hubness); with full correction (1.0) rare proper nouns win instead. 0.75 gave the most sensible
  pools on MovieLens by eye. The `top_n` best entries form I_m.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from recgpt.behavior.filter import FilterConfig, filter_reliable
from recgpt.behavior.items import clean_title
from recgpt.data.split import AsOf

POOL_MATCH_SCHEMA = {
    "user_id": pl.String(),
    "rank": pl.Int64(),
    "interest": pl.String(),
    "source": pl.String(),
    "score": pl.Float64(),
}

_STOP_TEXT = """a an the and or but nor of in on at to for from by with without into onto over under about above
below after before between through during against among than then so as is are was were be been being
am do does did done have has had having it its it's this that these those there here he she they them
his her their our your my mine me we you i us who whom whose which what when where why how all any both
each few more most other some such no not only own same too very can will just should now up down out
off again once part vol volume edition ed set pack pcs pc x de la le les el los un une il der die das
und du des del di da while within want wants back first last one two three four five six seven eight
nine ten second third thing things good great best big new old get gets got go goes going gone make
makes made let lets like may might must shall would could also ever never every many much"""
STOP_WORDS: frozenset[str] = frozenset(_STOP_TEXT.split())

_PARENS = re.compile(r"\([^)]*(?:\)|$)|\[[^]]*(?:\]|$)")  # unclosed ones too: "Heat (1995"
_TOKEN = re.compile(r"[a-z0-9]+(?:['&.-][a-z0-9]+)*")


class TextEncoder(Protocol):
    """Anything that embeds texts into L2-normalised rows (e.g. `recgpt.retrieval.embeddings.Embedder`)."""

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) float32 unit rows."""
        ...


def item_embedding_text(row: dict[str, Any]) -> str:
    """What an item is embedded as (pool matching and φ): clean title plus its categories.

    Parenthesised parts (release years, "a.k.a." aliases, pack sizes) are removed: a year in every
    title made number-like phrases ("Thirteen", "Friday The 13th") look close to every history.
    """
    title = " ".join(_PARENS.sub(" ", clean_title(row.get("title") or "", row.get("brand"))).split())
    cats = [c for c in (row.get("categories") or []) if c and c.strip()]
    return f"{title} ({', '.join(cats)})" if cats else title


def phrase_tokens(title: str) -> list[str]:
    """Lower-case word tokens of a title with years / parenthesised parts removed."""
    text = _PARENS.sub(" ", clean_title(title).lower())
    return _TOKEN.findall(text)


class PoolConfig(BaseModel):
    """How the pool is built and matched (see the module docstring)."""

    model_config = ConfigDict(frozen=True)

    categories: bool = True
    phrases: bool = True
    min_support: int = Field(default=5, ge=1)
    ngram_min: int = Field(default=1, ge=1)
    ngram_max: int = Field(default=3, ge=1)
    min_unigram_chars: int = Field(default=4, ge=1)
    closed_ratio: float = Field(default=0.8, gt=0.0, le=1.0)
    max_phrases: int = Field(default=1500, ge=0)
    extra_stop_words: tuple[str, ...] = ()
    top_n: int = Field(default=10, ge=1)
    history_items: int = Field(default=50, ge=1)
    reliable_only: bool = True
    aggregate: Literal["mean", "max"] = "mean"
    centroid_sample: int = Field(default=500, ge=0, description="0: no hubness correction")
    centroid_weight: float = Field(default=0.75, ge=0.0, le=1.0)
    seed: int = 0


@dataclass
class PoolEntry:
    """One interest of the pool: its display text, where it came from and how many items carry it."""

    interest: str
    source: Literal["category", "phrase"]
    support: int


def _category_entries(items: pl.DataFrame, min_support: int) -> list[PoolEntry]:
    counts: Counter[str] = Counter()
    for cats in items["categories"].to_list() if "categories" in items.columns else []:
        counts.update({c.strip() for c in (cats or []) if c and c.strip()})
    return [
        PoolEntry(c, "category", n)
        for c, n in sorted(counts.items(), key=lambda x: (-x[1], x[0]))
        if n >= min_support
    ]


def title_phrases(titles: Iterable[str], config: PoolConfig) -> list[tuple[str, int]]:
    """Frequent title n-grams as (phrase, number of titles), most frequent first (module docstring)."""
    if config.ngram_max < config.ngram_min:
        raise ValueError(f"ngram_max ({config.ngram_max}) < ngram_min ({config.ngram_min})")
    stop = STOP_WORDS | {w.lower() for w in config.extra_stop_words}
    df: Counter[tuple[str, ...]] = Counter()
    for title in titles:
        toks = phrase_tokens(title or "")
        grams = set()
        for n in range(config.ngram_min, config.ngram_max + 1):
            for i in range(len(toks) - n + 1):
                g = tuple(toks[i : i + n])
                if g[0] in stop or g[-1] in stop or any(t.isdigit() for t in g):
                    continue
                if n == 1 and len(g[0]) < config.min_unigram_chars:
                    continue
                grams.add(g)
        df.update(grams)
    kept = {g: n for g, n in df.items() if n >= config.min_support}
    # best support of a longer kept phrase containing each phrase (sub-grams enumerated, not pairs compared)
    covered: dict[tuple[str, ...], int] = {}
    for h, m in kept.items():
        for n in range(1, len(h)):
            for i in range(len(h) - n + 1):
                sub = h[i : i + n]
                if sub in kept and m > covered.get(sub, 0):
                    covered[sub] = m
    closed = [(" ".join(g), n) for g, n in kept.items() if covered.get(g, 0) < config.closed_ratio * n]
    closed.sort(key=lambda x: (-x[1], x[0]))
    return closed[: config.max_phrases]


class InterestPool:
    """Pool entries, their embeddings, and per-user matching against `AsOf` histories."""

    def __init__(
        self, entries: Sequence[PoolEntry], items: pl.DataFrame, encoder: TextEncoder, config: PoolConfig
    ) -> None:
        if not entries:
            raise ValueError(
                "the interest pool is empty: the catalogue has no category or phrase with enough support"
            )
        self.entries = list(entries)
        self.config = config
        self.encoder = encoder
        self._items = {r["item_id"]: r for r in items.select(_item_cols(items)).iter_rows(named=True)}
        self.vectors = np.asarray(encoder.encode([e.interest for e in self.entries]), dtype=np.float32)
        self._item_vecs: dict[str, np.ndarray] = {}
        self._baseline: np.ndarray | None = None

    @classmethod
    def build(
        cls, items: pl.DataFrame, encoder: TextEncoder, config: PoolConfig | None = None
    ) -> InterestPool:
        """Pool of a catalogue (the dataset's items table)."""
        config = config or PoolConfig()
        if "item_id" not in items.columns or "title" not in items.columns:
            raise ValueError("items frame needs 'item_id' and 'title' columns (the dataset's items table)")
        entries = _category_entries(items, config.min_support) if config.categories else []
        if config.phrases:
            taken = {e.interest.lower() for e in entries}
            for phrase, n in title_phrases(items["title"].to_list(), config):
                if phrase not in taken:
                    entries.append(PoolEntry(string.capwords(phrase), "phrase", n))
        return cls(entries, items, encoder, config)

    @property
    def names(self) -> list[str]:
        return [e.interest for e in self.entries]

    def to_frame(self) -> pl.DataFrame:
        """The pool as a table: interest, source, support."""
        return pl.DataFrame(
            {
                "interest": self.names,
                "source": [e.source for e in self.entries],
                "support": [e.support for e in self.entries],
            },
            schema={"interest": pl.String(), "source": pl.String(), "support": pl.Int64()},
        )

    def item_vectors(self, item_ids: Sequence[str]) -> np.ndarray:
        """Embeddings of item texts, computed once per item and kept."""
        todo = list(dict.fromkeys(i for i in item_ids if i not in self._item_vecs))
        if todo:
            missing = [i for i in todo if i not in self._items]
            if missing:
                raise KeyError(f"items not in the catalogue: {missing[:5]}")
            vecs = self.encoder.encode([item_embedding_text(self._items[i]) for i in todo])
            self._item_vecs.update(zip(todo, np.asarray(vecs, dtype=np.float32), strict=True))
        if not item_ids:
            return np.zeros((0, self.vectors.shape[1]), dtype=np.float32)
        return np.stack([self._item_vecs[i] for i in item_ids])

    def history_items(self, view: AsOf, user_id: str) -> list[str]:
        """The user's last `history_items` item ids in the view (reliable ones unless there are none)."""
        hist = view.history(user_id)
        hist = hist.filter(pl.col("item_id").is_not_null())
        if self.config.reliable_only:
            reliable = filter_reliable(hist, FilterConfig())
            hist = reliable if reliable.height else hist
        ids = hist["item_id"].to_list()
        return list(dict.fromkeys(reversed(ids)))[: self.config.history_items]

    def baseline(self) -> np.ndarray:
        """Cosine of every entry with the centroid of a seeded catalogue sample (the hubness correction)."""
        if self._baseline is None:
            n = min(self.config.centroid_sample, len(self._items))
            if n == 0:
                self._baseline = np.zeros(len(self.entries), dtype=np.float32)
            else:
                ids = sorted(self._items)
                pick = np.random.default_rng(self.config.seed).choice(len(ids), size=n, replace=False)
                self._baseline = self._raw_scores(self.item_vectors([ids[i] for i in sorted(pick)]), "mean")
        return self._baseline

    def _raw_scores(self, h: np.ndarray, aggregate: str) -> np.ndarray:
        if aggregate == "max":
            return (h @ self.vectors.T).max(axis=0)
        mean = h.mean(axis=0)
        norm = float(np.linalg.norm(mean))
        return self.vectors @ (mean / norm) if norm > 0 else np.zeros(len(self.entries), dtype=np.float32)

    def scores(self, item_ids: Sequence[str]) -> np.ndarray:
        """Score of every pool entry against one history (zeros for an empty history)."""
        if not item_ids:
            return np.zeros(len(self.entries), dtype=np.float32)
        raw = self._raw_scores(self.item_vectors(item_ids), self.config.aggregate)
        return raw - self.config.centroid_weight * self.baseline()

    def match(self, view: AsOf, user_ids: Sequence[str], top_n: int | None = None) -> pl.DataFrame:
        """I_m per user: the `top_n` best entries (POOL_MATCH_SCHEMA; users without history get none)."""
        top_n = top_n or self.config.top_n
        histories = {u: self.history_items(view, u) for u in user_ids}
        self.item_vectors([i for ids in histories.values() for i in ids])  # one batch for all users
        rows: dict[str, list[Any]] = {k: [] for k in POOL_MATCH_SCHEMA}
        for u in user_ids:
            if not histories[u]:
                continue
            s = self.scores(histories[u])
            best = np.argsort(-s, kind="stable")[:top_n]
            for rank, j in enumerate(best, start=1):
                for k, v in zip(
                    rows,
                    (u, rank, self.entries[j].interest, self.entries[j].source, float(s[j])),
                    strict=True,
                ):
                    rows[k].append(v)
        return pl.DataFrame(rows, schema=POOL_MATCH_SCHEMA)


def _item_cols(items: pl.DataFrame) -> list[str]:
    return [c for c in ("item_id", "title", "brand", "categories") if c in items.columns]


__all__ = [
    "POOL_MATCH_SCHEMA",
    "STOP_WORDS",
    "InterestPool",
    "PoolConfig",
    "PoolEntry",
    "TextEncoder",
    "item_embedding_text",
    "phrase_tokens",
    "title_phrases",
]
