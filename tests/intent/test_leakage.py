"""Leakage: every user-specific intent prompt is built from the AsOf view; a leaky context is caught."""

from __future__ import annotations

import dataclasses

import pytest

from recgpt.behavior import BehaviorCompressor, CompressionConfig, RegexTokenCounter
from recgpt.behavior.items import clean_title
from recgpt.data.split import LeakageError, Split, make_split
from recgpt.datasets import load_bundled
from recgpt.intent.context import UserContext, build_contexts, guard_requests
from recgpt.intent.interests import InterestsConfig, interest_request
from recgpt.intent.pool import InterestPool, PoolConfig
from recgpt.intent.tags import TagsConfig, tag_request
from tests.conftest import HashEncoder

INTERESTS = [(1, "Space opera"), (2, "Romantic comedy")]


def _requests(ctxs: list[UserContext]) -> list:
    return [
        r
        for c in ctxs
        for r in (interest_request(InterestsConfig(), c), tag_request(TagsConfig(), c, INTERESTS))
    ]


def _contexts(sp: Split, users: list[str]) -> list[UserContext]:
    ds = sp.dataset
    comp = BehaviorCompressor(ds.items, RegexTokenCounter(), CompressionConfig(budget=600))
    pool = InterestPool.build(ds.items, HashEncoder(), PoolConfig(min_support=2))
    return build_contexts(sp.test, ds, users, compressor=comp, pool=pool)


def test_toy_prompts_pass_and_leaky_contexts_are_caught(toy_split: Split) -> None:
    ctxs = _contexts(toy_split, toy_split.test.user_ids)
    guard_requests(toy_split, toy_split.test, _requests(ctxs))
    u1 = ctxs[0]
    target = "Space Wars: Final Frontier (2003)"  # u1's held-out test item
    leaky_history = dataclasses.replace(u1, history=u1.history + f"\n1 day ago (rated) | {target} [Sci-Fi]")
    leaky_recent = dataclasses.replace(u1, items=(*u1.items, (target, u1.asof_ts - 1)))
    for ctx, builder in ((leaky_history, interest_request), (leaky_recent, None)):
        req = (
            tag_request(TagsConfig(), ctx, INTERESTS) if builder is None else builder(InterestsConfig(), ctx)
        )
        with pytest.raises(LeakageError, match="s3"):
            guard_requests(toy_split, toy_split.test, [req])
    # the validation item is history for the test task, but held out for the validation task
    valid_ctx = dataclasses.replace(u1, history="1 day ago (rated) | Paris Love Letters (1990)")
    guard_requests(toy_split, toy_split.test, [interest_request(InterestsConfig(), valid_ctx)])
    with pytest.raises(LeakageError):
        guard_requests(toy_split, toy_split.valid, [interest_request(InterestsConfig(), valid_ctx)])


def test_request_without_user_key_is_refused(toy_split: Split) -> None:
    req = dataclasses.replace(interest_request(InterestsConfig(), _contexts(toy_split, ["u1"])[0]), key=None)
    with pytest.raises(ValueError, match="has no key"):
        guard_requests(toy_split, toy_split.test, [req])


@pytest.fixture(scope="module")
def bundled_split() -> Split:
    return make_split(load_bundled())


def test_bundled_prompts_pass_the_guard(bundled_split: Split) -> None:
    users = bundled_split.test.user_ids[:8]
    ctxs = _contexts(bundled_split, users)
    guard_requests(bundled_split, bundled_split.test, _requests(ctxs))
    for ctx in ctxs:  # and the history really is there
        assert ctx.history and ctx.pool and ctx.items


def test_cleaned_title_of_a_held_out_item_is_caught(bundled_split: Split) -> None:
    """The compressor writes "The Title (Year)" for "Title, The (Year)": the guard knows both forms."""
    sp = bundled_split
    titles = dict(
        zip(sp.dataset.items["item_id"].to_list(), sp.dataset.items["title"].to_list(), strict=True)
    )
    user, item = next(
        (u, sp.item_ids[t[0]])
        for u, t in zip(sp.test.user_ids, sp.test.targets, strict=True)
        if ", The (" in titles[sp.item_ids[t[0]]]
        and sp.item_ids[t[0]] not in set(sp.test.asof.history(u)["item_id"].to_list())
    )
    cleaned = clean_title(titles[item])
    assert cleaned.startswith("The ") and cleaned != titles[item]
    ctx = _contexts(sp, [user])[0]
    leaky = dataclasses.replace(ctx, history=ctx.history + f"\n1 day ago (rated) | {cleaned}")
    assert titles[item] not in leaky.history  # the raw title is not there, the cleaned one is
    with pytest.raises(LeakageError):
        guard_requests(sp, sp.test, [interest_request(InterestsConfig(), leaky)])
