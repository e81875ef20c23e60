"""Self-supervised training samples from interaction logs (RecGPT §1.4 incremental learning).

The paper fine-tunes LLM_IT on recent interactions, "the clicked/purchased item title used directly as
the Tag", balanced to a fixed number of tags per user and at most N samples per category. Here the
same idea builds samples for all three chain tasks from leakage-safe (user, as-of) contexts
(`contexts.tag_contexts`: history strictly before t, targets = the next items at/after t).

Weak supervision choices (documented because they shape what the model learns):

- tags (`build_tag_samples`): each target item becomes one tag, its catalogue phrase
  (`items.Catalogue.tag`: "1990s action sci-fi thriller film" for MovieLens, the product title's head
  noun phrase for Amazon), exactly `TagsConfig.count` per sample, at most `max_per_category` per
  category (the item's most specific category) in a sample and optionally `category_cap` in the whole
  set; items one of the prompt's interests names (a category or a title phrase) come first
  (`interest_match="prefer"`; "require" drops the others: the paper's purification keeps only
  interactions consistent with the interests), tags that break the chain's rules (2-6 words, vague
  words, naming a recently engaged item, duplicates) or whose item the prompt names are skipped, and the answer passes
  `intent.tags.postprocess_tags` unchanged (same order). The rationale is a fact about the history
  ("follows 3 earlier thriller picks");
- interests (`build_interest_samples`): sustained interests: preset-pool entries and categories that
  both the history (before t) and the next items (after t) show, ranked by next-window support, then
  history support (principle 3 of the prompt: keep what lasts); "stage" is long-term when
  `long_term_support` history items show it; the reason counts those history items;
- explanations (`build_explanation_samples`): (interest, next item) pairs where the interest really
  matches the item (a category or a title phrase, as the chain's φ pairs do); the text states only
  the item's catalogue facts (decade, categories) and the interest, and passes `check_explanation`
  without truncation. User-written item tags are not used: the chain's prompt does not show them,
  so a target citing them would teach the model to invent facts.

Messages are rendered by the chain's own request builders (`tag_request`, `interest_request`,
`explanation_request`), so train and serve prompts are identical, and every user-specific table is
re-checked by `guard_samples` before it is returned.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Collection, Sequence
from typing import Any

import polars as pl

from recgpt.behavior import BehaviorCompressor
from recgpt.data.dataset import Dataset
from recgpt.data.split import Split
from recgpt.intent.context import phrase_key
from recgpt.intent.explanations import check_explanation, explanation_request
from recgpt.intent.interests import Interest, interest_request, postprocess_interests
from recgpt.intent.pool import InterestPool, TextEncoder
from recgpt.intent.tags import Tag, names_item, postprocess_tags, recent_titles, tag_request
from recgpt.training.builders.contexts import select_points, tag_contexts
from recgpt.training.builders.guard import guard_samples
from recgpt.training.builders.items import short_category
from recgpt.training.builders.source import (
    VAGUE_WORDS,
    LogContext,
    LogsConfig,
    LogSource,
    Target,
    eval_users,
    matches,
    pick_tags,
)
from recgpt.training.data import TrainPrompt, prompt_sample, samples_frame


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _prepare(
    dataset: Dataset,
    split: Split,
    config: LogsConfig | None,
    resources: dict[str, Any],
    contexts: Sequence[LogContext] | None,
    exclude_users: Collection[str],
    window: tuple[int, int] | None,
    progress: bool,
) -> tuple[LogSource, Sequence[LogContext]]:
    """The builders' shared resources, and the contexts unless the caller already built them.

    The three builders keep their own (repeated) keyword signatures: they are public and typed, and
    this is their shared body."""
    src = LogSource(dataset, split, config, **resources)
    if contexts is None:
        contexts = tag_contexts(
            dataset, split, source=src, exclude_users=exclude_users, window=window, progress=progress
        )
    return src, contexts


# ---------------------------------------------------------------- tags


def tag_prompts(contexts: Sequence[LogContext], config: LogsConfig | None = None) -> list[TrainPrompt]:
    """The chain's LLM_IT prompt of each context (what self-training and distillation ask a model)."""
    cfg = config or LogsConfig()
    return [
        TrainPrompt(
            tag_request(cfg.tags, lc.ctx, lc.interests),
            "tags",
            "advanced",
            lc.user_id,
            lc.as_of,
            dict(lc.lineage),
            {"context": lc.ctx, "interests": lc.interests, "tags_config": cfg.tags},
        )
        for lc in contexts
    ]


def _prompt_text(prompt: TrainPrompt) -> str:
    return "\n".join(m.content for m in prompt.request.messages).lower()


def _rationale(src: LogSource, lc: LogContext, item: str) -> str:
    """A fact about the history that leads to the item (12 words at most)."""
    cat = src.catalogue
    hist = Counter(c for i in lc.seen for c in cat.categories(i))
    for c in reversed(cat.by_specificity(item)):
        if hist[c]:
            return f"follows {_count(hist[c], 'earlier ' + short_category(c).lower() + ' pick')}"
    specific = cat.specific_category(item)
    return (
        f"new {short_category(specific).lower()} direction beyond the history"
        if specific
        else "new direction"
    )


def _tag_answer(
    src: LogSource, lc: LogContext, prompt: TrainPrompt, cap_used: Counter[str]
) -> list[Target] | None:
    cfg = src.config
    recent = recent_titles(lc.ctx, cfg.tags.freshness_days)
    text = _prompt_text(prompt)
    by_item = {t.item_id: t for t in lc.targets}

    def ok(item: str, tag: str) -> bool:
        if any(n in text for n in src.catalogue.names(item)):
            return False  # the prompt names this item (a duplicate title of a seen item)
        return not any(names_item(tag, title, cfg.tags.min_title_chars) for title in recent)

    order = [t.item_id for t in lc.targets if t.matched or cfg.interest_match == "any"]
    if cfg.interest_match == "prefer":
        order += [t.item_id for t in lc.targets if not t.matched]
    picked = pick_tags(src, order, cfg.tags.count, cap_used, ok)
    return [by_item[i] for i in picked] if len(picked) == cfg.tags.count else None


def build_tag_samples(
    dataset: Dataset,
    split: Split,
    config: LogsConfig | None = None,
    *,
    encoder: TextEncoder | None = None,
    pool: InterestPool | None = None,
    compressor: BehaviorCompressor | None = None,
    exclude_users: Collection[str] = (),
    window: tuple[int, int] | None = None,
    contexts: Sequence[LogContext] | None = None,
    progress: bool = True,
    guard: bool = True,
) -> pl.DataFrame:
    """LLM_IT samples (SFT sample table): next items as tags, balanced (module docstring)."""
    src, contexts = _prepare(
        dataset,
        split,
        config,
        {"encoder": encoder, "pool": pool, "compressor": compressor},
        contexts,
        exclude_users,
        window,
        progress,
    )
    cfg = src.config
    cap_used: Counter[str] = Counter()
    rows = []
    for lc, prompt in zip(contexts, tag_prompts(contexts, cfg), strict=True):
        chosen = _tag_answer(src, lc, prompt, cap_used)
        if chosen is None:
            continue
        tags = [
            Tag(tag=src.tag(t.item_id), interest_id=t.interest_id, rationale=_rationale(src, lc, t.item_id))
            for t in chosen
        ]
        ranked = postprocess_tags(cfg.tags, lc.ctx, tags, lc.interests)  # the chain's order: round-robin
        if len(ranked) != len(tags):
            continue
        order = {phrase_key(src.tag(t.item_id)): t for t in chosen}
        answer = {
            "tags": [
                {"tag": r["tag"], "interest_id": r["interest_id"], "rationale": r["rationale"]}
                for r in ranked
            ]
        }
        targets = [order[phrase_key(r["tag"])] for r in ranked]
        cap_used.update(src.category(t.item_id) for t in targets)
        rows.append(
            prompt_sample(
                prompt,
                answer,
                "logs",
                builder="logs.tags",
                tag_style=src.catalogue.style,
                target_items=[t.item_id for t in targets],
                target_categories=[src.category(t.item_id) for t in targets],
            )
        )
    samples = samples_frame(rows)
    if guard:
        guard_samples(samples, split, src.catalogue, exclude_users=exclude_users)
    return samples


# ---------------------------------------------------------------- interests


def _interest_answer(src: LogSource, lc: LogContext) -> list[dict[str, Any]] | None:
    cfg = src.config
    cat = src.catalogue
    nxt = [t.item_id for t in lc.targets]
    candidates = list(dict.fromkeys([*lc.ctx.pool, *(c for i in nxt for c in cat.by_specificity(i))]))
    scored = []
    for pos, name in enumerate(candidates):
        n_next = sum(matches(src, name, i) for i in nxt)
        if not n_next:
            continue
        n_hist = sum(matches(src, name, i) for i in lc.seen)
        if n_hist:
            scored.append((-n_next, -n_hist, pos, name, n_hist))
    scored.sort()
    rows = [
        Interest(
            id=k,
            interest=name,
            stage="long-term" if h >= cfg.long_term_support else "short-term",
            reason=f"{_count(h, name + ' pick')} in the history",
        )
        for k, (_, _, _, name, h) in enumerate(scored, start=1)
    ]
    kept = postprocess_interests(cfg.interests, lc.ctx, rows)
    if len(kept) < cfg.interests.count:
        return None
    return [
        {"id": j, "interest": k["interest"], "stage": k["stage"], "reason": k["reason"]}
        for j, k in enumerate(kept[: cfg.interests.count], start=1)
    ]


def interest_prompts(contexts: Sequence[LogContext], config: LogsConfig | None = None) -> list[TrainPrompt]:
    """The chain's LLM_UI prompt of each context."""
    cfg = config or LogsConfig()
    return [
        TrainPrompt(
            interest_request(cfg.interests, lc.ctx),
            "interests",
            "advanced",
            lc.user_id,
            lc.as_of,
            dict(lc.lineage),
            {"context": lc.ctx, "interests_config": cfg.interests},
        )
        for lc in contexts
    ]


def build_interest_samples(
    dataset: Dataset,
    split: Split,
    config: LogsConfig | None = None,
    *,
    encoder: TextEncoder | None = None,
    pool: InterestPool | None = None,
    compressor: BehaviorCompressor | None = None,
    exclude_users: Collection[str] = (),
    window: tuple[int, int] | None = None,
    contexts: Sequence[LogContext] | None = None,
    progress: bool = True,
    guard: bool = True,
) -> pl.DataFrame:
    """LLM_UI samples: interests both the history and the next items show (module docstring)."""
    src, contexts = _prepare(
        dataset,
        split,
        config,
        {"encoder": encoder, "pool": pool, "compressor": compressor},
        contexts,
        exclude_users,
        window,
        progress,
    )
    pool_size = src.config.interests.pool_size
    rows = []
    for lc, prompt in zip(contexts, interest_prompts(contexts, src.config), strict=True):
        answer = _interest_answer(src, lc)
        if answer is None:
            continue
        shown = {phrase_key(p) for p in lc.ctx.pool[:pool_size]}
        rows.append(
            prompt_sample(
                prompt,
                {"interests": answer},
                "logs",
                builder="logs.interests",
                target_items=[t.item_id for t in lc.targets],
                kinds=["listed" if phrase_key(a["interest"]) in shown else "extended" for a in answer],
            )
        )
    samples = samples_frame(rows)
    if guard:
        guard_samples(samples, split, src.catalogue, exclude_users=exclude_users)
    return samples


# ---------------------------------------------------------------- explanations


_EXPLANATIONS = (
    "{decade} {kind} for your {interest} side",
    "{A} {kind} pick that fits your love of {interest}",
    "{Kind} with some {other} for {interest} fans",
    "Fits your {interest} taste: {decade} {kind}",
)


def explanation_texts(src: LogSource, interest: str, item: str) -> list[tuple[str, str]]:
    """(analysis, explanation) candidates stating only catalogue facts, in a per-pair seeded order.

    The interest must match the item (one of its categories, or a phrase of its title)."""
    cat = src.catalogue
    cats = [short_category(c).lower() for c in reversed(cat.by_specificity(item))]
    if not cats:
        return []
    year = cat.year(item)
    dec = f"{year // 10 * 10}s" if year else ""
    key = phrase_key(interest)
    main = next((c for c in cats if phrase_key(c) != key), cats[0])
    other = next((c for c in cats if c != main and phrase_key(c) != key), "")
    kind = f"{main} {cat.core_word}" if cat.core_word else main
    shared = any(phrase_key(c) == key for c in cats)
    link = f"{interest} is one of its categories" if shared else f"its title names {interest}"
    analysis = f"{' '.join(filter(None, [dec, ', '.join(reversed(cats)), cat.core_word or 'item']))}; {link}"
    article = "An" if kind[:1].lower() in "aeiou" else "A"
    fields = {
        "decade": dec,
        "kind": kind,
        "Kind": kind[:1].upper() + kind[1:],
        "other": other,
        "interest": interest,
        "A": article,
    }
    texts = [
        f.format(**fields)
        for f in _EXPLANATIONS
        if (dec or "{decade}" not in f) and (other or "{other}" not in f)
    ]
    random.Random(f"{src.config.seed}|{item}|{interest}").shuffle(texts)
    return [(analysis, " ".join(t.split())) for t in texts]


def build_explanation_samples(
    dataset: Dataset,
    split: Split,
    config: LogsConfig | None = None,
    *,
    encoder: TextEncoder | None = None,
    pool: InterestPool | None = None,
    compressor: BehaviorCompressor | None = None,
    exclude_users: Collection[str] = (),
    window: tuple[int, int] | None = None,
    contexts: Sequence[LogContext] | None = None,
    progress: bool = True,
) -> pl.DataFrame:
    """LLM_RE samples from (linked interest, next item) pairs (module docstring). Not user-specific:
    the explanation prompt shows only the interest and the item, so `user_id`/`as_of` are null."""
    src, contexts = _prepare(
        dataset,
        split,
        config,
        {"encoder": encoder, "pool": pool, "compressor": compressor},
        contexts,
        exclude_users,
        window,
        progress,
    )
    cfg = src.config
    strict = cfg.explanations.model_copy(update={"on_too_long": "fallback"})
    done: set[tuple[str, str]] = set()
    cap_used: Counter[str] = Counter()
    rows = []
    for lc in contexts:
        names = dict(lc.interests)
        made = 0
        for t in lc.targets:
            fits = [n for _, n in lc.interests if matches(src, n, t.item_id)]
            if not fits:
                continue  # only real (category or title) matches: a forced link would teach a false claim
            pair = (names[t.interest_id] if names[t.interest_id] in fits else fits[0], t.item_id)
            cat_key = src.category(t.item_id)
            if made >= cfg.explanations_per_context or pair in done:
                continue
            if cfg.category_cap is not None and cap_used[cat_key] >= cfg.category_cap:
                continue
            title = src.catalogue.title(t.item_id)
            checked = (
                (a, *check_explanation(strict, e, title))
                for a, e in explanation_texts(src, pair[0], t.item_id)
            )
            good = next(((a, e) for a, e, broken in checked if broken is None), None)
            if good is None:
                continue
            row = src.catalogue.row(t.item_id)
            req = explanation_request(cfg.explanations, pair[0], row)
            prompt = TrainPrompt(
                req,
                "explanations",
                "advanced",
                lineage={
                    "dataset": lc.lineage["dataset"],
                    "fingerprint": lc.lineage["fingerprint"],
                    "seed": cfg.seed,
                    "from_user": lc.user_id,
                    "from_as_of": lc.as_of,
                },
                meta={"interest": pair[0], "item": row},
            )
            rows.append(
                prompt_sample(
                    prompt,
                    {"analysis": good[0], "explanation": good[1]},
                    "logs",
                    builder="logs.explanations",
                    target_items=[t.item_id],
                    interest=pair[0],
                )
            )
            done.add(pair)
            cap_used[cat_key] += 1
            made += 1
    return samples_frame(rows)


__all__ = [
    "VAGUE_WORDS",
    "LogContext",
    "LogSource",
    "LogsConfig",
    "Target",
    "build_explanation_samples",
    "build_interest_samples",
    "build_tag_samples",
    "eval_users",
    "explanation_texts",
    "guard_samples",
    "interest_prompts",
    "select_points",
    "tag_contexts",
    "tag_prompts",
]
