"""Curriculum tasks derived from the catalogue alone (RecGPT §1.7, CL-MFT, appendix C table 10).

The paper warms its models up on 16 e-commerce subtasks ordered by difficulty before the chain's own
tasks. Four of them can be derived, without any model, from what a catalogue says about its items
(`items.Catalogue`); each has its own prompt template (`llm/prompts/train_*.j2`) and output model, and a
request builder, so the same prompts work at inference:

| task | level | prompt -> answer |
| --- | --- | --- |
| `category` | foundation | an item title (+ the category list when short) -> its categories |
| `key_info` | foundation | a raw title -> name, year, brand, most specific category |
| `what_to_buy` | intermediate | an interest (a category or a frequent title phrase) -> its top categories and example item kinds, written as tags |
| `induction` | advanced | a few item titles -> the interest they share (their most specific common category, or the title phrase they share) and why |

Items are drawn at random (seeded) with at most `max_per_category` per most-specific category, so a
few big categories (Drama, Comedy) do not swamp the set. Nothing here is user-specific: rows have no
user and no as-of. Popularity (which example items `what_to_buy` names) comes from the events given,
e.g. `split.train_events`.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from functools import lru_cache
from typing import Any

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, create_model

from recgpt.data.dataset import Dataset
from recgpt.intent.context import phrase_key
from recgpt.intent.pool import PoolConfig, phrase_tokens, title_phrases
from recgpt.intent.tags import names_item
from recgpt.llm.prompts import make_request
from recgpt.llm.types import LLMRequest, SamplingParams
from recgpt.training.builders.items import Catalogue, TagStyle, core_word_for, short_category
from recgpt.training.data import TrainPrompt, cap_per_key, prompt_sample, samples_frame

TASK_LEVELS: dict[str, str] = {
    "category": "foundation",
    "key_info": "foundation",
    "what_to_buy": "intermediate",
    "induction": "advanced",
}
CATALOGUE_TASKS: tuple[str, ...] = tuple(TASK_LEVELS)


class CatalogueConfig(BaseModel):
    """How many samples of which catalogue tasks, and how they are balanced."""

    model_config = ConfigDict(frozen=True)

    tasks: tuple[str, ...] = CATALOGUE_TASKS
    per_task: int = Field(default=200, ge=1)
    max_per_category: int = Field(default=20, ge=1, description="items per most-specific category and task")
    max_choices: int = Field(
        default=40, ge=0, description="list the categories in the prompt up to this many"
    )
    what_to_buy_items: int = Field(default=3, ge=1, le=10)
    induction_items: int = Field(default=3, ge=2, le=8)
    min_support: int = Field(default=5, ge=2, description="items an interest phrase must cover")
    tag_style: TagStyle = "auto"
    core_word: str | None = "auto"
    seed: int = 0


# ---------------------------------------------------------------- output models and requests


class CategoryAnswer(BaseModel):
    """Categories of an item, most specific last."""

    categories: list[str] = Field(min_length=1, max_length=8)


class KeyInfo(BaseModel):
    """Key facts of an item title."""

    name: str
    year: int | None
    brand: str | None
    category: str


@lru_cache(maxsize=16)
def what_to_buy_model(count: int) -> type[BaseModel]:
    """`{categories: [1..3], items: [count]}`."""
    return create_model(
        f"WhatToBuy{count}",
        categories=(list[str], Field(min_length=1, max_length=3)),
        items=(list[str], Field(min_length=count, max_length=count)),
    )


class Induction(BaseModel):
    """The interest a few items share."""

    interest: str = Field(description="1 to 4 words")
    reason: str = Field(description="at most 15 words")


def _sampling(max_tokens: int) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens)


def category_request(title: str, choices: Sequence[str] = (), key: str | None = None) -> LLMRequest[Any]:
    """Foundation: the categories of an item from its title."""
    return make_request(
        "train_category",
        CategoryAnswer,
        sampling=_sampling(120),
        stage="category",
        key=key,
        title=title,
        choices=list(choices),
    )


def keyinfo_request(title: str, key: str | None = None) -> LLMRequest[Any]:
    """Foundation: name, year, brand and category from a raw title."""
    return make_request(
        "train_keyinfo", KeyInfo, sampling=_sampling(120), stage="key_info", key=key, title=title
    )


def what_to_buy_request(interest: str, count: int = 3) -> LLMRequest[Any]:
    """Intermediate: an interest -> categories and example item kinds."""
    return make_request(
        "train_what_to_buy",
        what_to_buy_model(count),
        sampling=_sampling(40 + 25 * count),
        stage="what_to_buy",
        key=interest,
        interest=interest,
        count=count,
    )


def induction_request(items: Sequence[str]) -> LLMRequest[Any]:
    """Advanced: a few items -> the interest they share."""
    return make_request(
        "train_induction",
        Induction,
        sampling=_sampling(80),
        stage="induction",
        key="|".join(items),
        items=list(items),
    )


# ---------------------------------------------------------------- targets


class _Builder:
    """One catalogue's tasks: (prompt, answer) pairs, deterministic given the config's seed."""

    def __init__(self, dataset: Dataset, config: CatalogueConfig, events: pl.DataFrame | None) -> None:
        unknown = set(config.tasks) - set(TASK_LEVELS)
        if unknown:
            raise ValueError(f"unknown catalogue task(s) {sorted(unknown)}; valid: {', '.join(TASK_LEVELS)}")
        self.dataset, self.config = dataset, config
        core = core_word_for(dataset.manifest.source) if config.core_word == "auto" else config.core_word
        self.cat = Catalogue(
            dataset.items, events if events is not None else dataset.events, config.tag_style, core
        )
        self.items = sorted(i for i in self.cat.rows if self.cat.categories(i) and self.cat.title(i).strip())
        if not self.items:
            raise ValueError("the catalogue has no item with both a title and a category")
        self.lineage = {"dataset": dataset.manifest.name, "builder": "catalogue", "seed": config.seed}

    def _rng(self, task: str) -> random.Random:
        return random.Random(f"{self.config.seed}|{task}")

    def _sample_items(self, task: str, pool: Sequence[str] | None = None) -> list[str]:
        ids = list(pool if pool is not None else self.items)
        self._rng(task).shuffle(ids)
        return cap_per_key(ids, lambda i: self.cat.specific_category(i), self.config.max_per_category)

    def _prompt(self, task: str, request: LLMRequest[Any], **lineage: Any) -> TrainPrompt:
        return TrainPrompt(request, task, TASK_LEVELS[task], lineage={**self.lineage, **lineage})

    def category(self) -> Iterator[tuple[TrainPrompt, dict[str, Any]]]:
        cats = sorted(self.cat.category_counts)
        choices = cats if len(cats) <= self.config.max_choices else []
        for i in self._sample_items("category")[: self.config.per_task]:
            req = category_request(self.cat.title(i), choices, key=i)
            yield self._prompt("category", req, target_items=[i]), {"categories": self.cat.by_specificity(i)}

    def key_info(self) -> Iterator[tuple[TrainPrompt, dict[str, Any]]]:
        for i in self._sample_items("key_info")[: self.config.per_task]:
            brand = (self.cat.row(i).get("brand") or "").strip() or None
            name = " ".join(_strip_parens(self.cat.clean(i)).split())
            specific = self.cat.specific_category(i) or ""
            answer = {
                "name": name or self.cat.title(i),
                "year": self.cat.year(i),
                "brand": brand,
                "category": short_category(specific),
            }
            yield (
                self._prompt("key_info", keyinfo_request(self.cat.title(i), key=i), target_items=[i]),
                answer,
            )

    def interests(self) -> list[tuple[str, list[str]]]:
        """(interest, member items): categories, then frequent title phrases, with enough items."""
        members: dict[str, list[str]] = {}
        for i in self.items:
            for c in self.cat.categories(i):
                members.setdefault(c, []).append(i)
        out = [(c, m) for c, m in sorted(members.items()) if len(m) >= self.config.min_support]
        taken = {phrase_key(c) for c, _ in out}
        phrases = title_phrases(
            [self.cat.title(i) for i in self.items], PoolConfig(min_support=self.config.min_support)
        )
        by_token: dict[str, list[str]] = {}
        for i in self.items:
            for tok in set(phrase_tokens(self.cat.title(i))):
                by_token.setdefault(tok, []).append(i)
        for phrase, _ in phrases:
            if phrase in taken:
                continue
            first = phrase.split()[0]
            m = [i for i in by_token.get(first, []) if names_item(self.cat.title(i), phrase, 1)]
            if len(m) >= self.config.min_support:
                out.append((" ".join(w.capitalize() for w in phrase.split()), m))
        return out

    def what_to_buy(self) -> Iterator[tuple[TrainPrompt, dict[str, Any]]]:
        n = self.config.what_to_buy_items
        entries = self.interests()
        self._rng("what_to_buy").shuffle(entries)
        made = 0
        for interest, members in entries:
            ranked = sorted(members, key=lambda i: (-self.cat.popularity[i], i))
            tags = list(
                dict.fromkeys(t for t in (self.cat.tag(i) for i in ranked) if 2 <= len(t.split()) <= 6)
            )
            if len(tags) < n:
                continue
            counts = Counter(c for i in members for c in self.cat.categories(i))
            top = [c for c, _ in sorted(counts.items(), key=lambda x: (-x[1], x[0]))]
            cats = list(dict.fromkeys([interest, *top] if interest in counts else top))[:3]
            answer = {"categories": cats, "items": tags[:n]}
            yield (
                self._prompt(
                    "what_to_buy",
                    what_to_buy_request(interest, n),
                    interest=interest,
                    target_items=ranked[:n],
                ),
                answer,
            )
            made += 1
            if made >= self.config.per_task:
                return

    def induction(self) -> Iterator[tuple[TrainPrompt, dict[str, Any]]]:
        """Two of three samples induce a category (real reasoning), one a shared title phrase."""
        n = self.config.induction_items
        rng = self._rng("induction")
        entries = self.interests()
        cats = [e for e in entries if e[0] in self.cat.category_counts]
        phrases = [e for e in entries if e[0] not in self.cat.category_counts]
        rng.shuffle(cats)
        rng.shuffle(phrases)
        made = 0
        for k in range(self.config.per_task * 3):
            group = phrases if (k % 3 == 2 and phrases) or not cats else cats
            if made >= self.config.per_task or not group:
                return
            interest, members = group[(k // 3) % len(group)] if group is phrases else group[k % len(group)]
            popular = sorted(members, key=lambda i: (-self.cat.popularity[i], i))[:200]
            chosen = rng.sample(popular, n) if len(popular) >= n else []
            answer = self._shared(interest, chosen) if chosen else None
            if answer is None:
                continue
            titles = [self.cat.clean(i) for i in chosen]
            yield self._prompt("induction", induction_request(titles), target_items=chosen), answer
            made += 1

    def _shared(self, interest: str, items: Sequence[str]) -> dict[str, Any] | None:
        """The most specific category all items share, else the entry's title phrase."""
        common = set(self.cat.categories(items[0])).intersection(*(self.cat.categories(i) for i in items[1:]))
        noun = f" {self.cat.core_word}s" if self.cat.core_word else ""
        if common:
            best = min(sorted(common), key=lambda c: self.cat.category_counts[c])
            short = short_category(best)
            return {"interest": short, "reason": f"all {len(items)} are {short.lower()}{noun}"}
        if all(names_item(self.cat.title(i), interest, 1) for i in items):
            return {"interest": interest, "reason": f"all {len(items)} titles mention {interest}"}
        return None


def _strip_parens(text: str) -> str:
    return re.sub(r"\([^)]*\)|\[[^]]*\]", " ", text)


def catalogue_pairs(
    dataset: Dataset, config: CatalogueConfig | None = None, *, events: pl.DataFrame | None = None
) -> list[tuple[TrainPrompt, dict[str, Any]]]:
    """(prompt, answer) of every configured task, in curriculum order (foundation first)."""
    cfg = config or CatalogueConfig()
    b = _Builder(dataset, cfg, events)
    makers: dict[str, Callable[[], Iterator[tuple[TrainPrompt, dict[str, Any]]]]] = {
        "category": b.category,
        "key_info": b.key_info,
        "what_to_buy": b.what_to_buy,
        "induction": b.induction,
    }
    out: list[tuple[TrainPrompt, dict[str, Any]]] = []
    for task in sorted(cfg.tasks, key=CATALOGUE_TASKS.index):
        out.extend(makers[task]())
    return out


def catalogue_prompts(
    dataset: Dataset, config: CatalogueConfig | None = None, *, events: pl.DataFrame | None = None
) -> list[TrainPrompt]:
    """The catalogue tasks' prompts alone (for a teacher to answer: `distill`)."""
    return [p for p, _ in catalogue_pairs(dataset, config, events=events)]


def build_catalogue_samples(
    dataset: Dataset, config: CatalogueConfig | None = None, *, events: pl.DataFrame | None = None
) -> pl.DataFrame:
    """SFT sample table of the catalogue tasks (pass `events=split.train_events` for popularity)."""
    return samples_frame(
        prompt_sample(p, a, "catalogue") for p, a in catalogue_pairs(dataset, config, events=events)
    )


__all__ = [
    "CATALOGUE_TASKS",
    "TASK_LEVELS",
    "CatalogueConfig",
    "CategoryAnswer",
    "Induction",
    "KeyInfo",
    "build_catalogue_samples",
    "catalogue_pairs",
    "catalogue_prompts",
    "category_request",
    "induction_request",
    "keyinfo_request",
    "what_to_buy_model",
    "what_to_buy_request",
]
