"""Log builders on the bundled ml-latest-small: contract, chain-identical prompts, balance, determinism,
and leakage (targets and held-out items never reach a prompt; evaluation users never sampled)."""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections import Counter
from typing import Any

import polars as pl
import pytest

from recgpt.data.dataset import Dataset, Manifest
from recgpt.data.split import LeakageError, make_split
from recgpt.intent.explanations import Explanation, ExplanationsConfig, check_explanation, explanation_request
from recgpt.intent.interests import interest_request, postprocess_interests
from recgpt.intent.pool import InterestPool, PoolConfig
from recgpt.intent.tags import Tag, postprocess_tags, tag_request
from recgpt.training.builders.contexts import tag_contexts
from recgpt.training.builders.guard import guard_samples
from recgpt.training.builders.logs import (
    build_explanation_samples,
    build_interest_samples,
    build_tag_samples,
)
from recgpt.training.builders.source import LogContext, LogSource, eval_users, matches
from recgpt.training.data import validate_samples
from tests.conftest import HashEncoder
from tests.training._builders import SMALL, Bundled, bundled

DAY = 86_400
BASE = 946_684_800  # 2000-01-01


@pytest.fixture(scope="module")
def env() -> Bundled:
    return bundled()


@pytest.fixture(scope="module")
def excluded(env: Bundled) -> list[str]:
    return eval_users(env.split, 60, seed=0)


@pytest.fixture(scope="module")
def contexts(env: Bundled, excluded: list[str]) -> list[LogContext]:
    return tag_contexts(env.dataset, env.split, SMALL, pool=env.pool, exclude_users=excluded, progress=False)


@pytest.fixture(scope="module")
def tags(env: Bundled, excluded: list[str], contexts: list[LogContext]) -> pl.DataFrame:
    return build_tag_samples(
        env.dataset,
        env.split,
        SMALL,
        pool=env.pool,
        contexts=contexts,
        exclude_users=excluded,
        progress=False,
    )


def _by_point(contexts: list[LogContext]) -> dict[tuple[str, int], LogContext]:
    return {(c.user_id, c.as_of): c for c in contexts}


def _text(row: dict[str, Any]) -> str:
    return "\n".join(m["content"] for m in json.loads(row["messages"])).lower()


def test_contexts_sample_users_and_points(
    env: Bundled, contexts: list[LogContext], excluded: list[str]
) -> None:
    users = Counter(c.user_id for c in contexts)
    assert len(users) == SMALL.users and max(users.values()) <= SMALL.points_per_user
    assert not set(users) & set(excluded)
    for c in contexts:
        assert all(ts < c.as_of for _, ts in c.ctx.items)  # the prompt's history is strictly before t
        assert all(c.as_of <= t.timestamp < c.window[1] for t in c.targets)
        assert not {t.item_id for t in c.targets} & c.seen  # targets are new to the user
        assert c.interests and all(t.interest_id in dict(c.interests) for t in c.targets)
    per_user: dict[str, list[tuple[int, int]]] = {}
    for c in contexts:
        per_user.setdefault(c.user_id, []).append(c.window)
    for wins in per_user.values():  # a user's windows do not overlap
        wins.sort()
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(wins))


def test_tag_samples_contract_and_chain_identity(tags: pl.DataFrame, contexts: list[LogContext]) -> None:
    validate_samples(tags)
    assert tags.height >= SMALL.users and set(tags["task"]) == {"tags"} and set(tags["source"]) == {"logs"}
    points = _by_point(contexts)
    for r in tags.iter_rows(named=True):
        lc = points[(r["user_id"], r["as_of"])]
        req = tag_request(SMALL.tags, lc.ctx, lc.interests)
        assert json.loads(r["messages"]) == [{"role": m.role, "content": m.content} for m in req.messages]
        answer = req.output_model.model_validate_json(r["completion"])  # the chain's own output model
        assert len(answer.tags) == SMALL.tags.count
        kept = postprocess_tags(SMALL.tags, lc.ctx, answer.tags, lc.interests)
        assert [k["tag"] for k in kept] == [t.tag for t in answer.tags]  # the chain keeps it as is
        assert all(2 <= len(t.tag.split()) <= 6 and len(t.rationale.split()) <= 12 for t in answer.tags)
        lineage = json.loads(r["lineage"])
        assert lineage["template"] == "recgpt_tags@1" and len(lineage["target_items"]) == SMALL.tags.count
        assert max(Counter(lineage["target_categories"]).values()) <= SMALL.max_per_category


def test_tag_samples_are_deterministic(env: Bundled, tags: pl.DataFrame, excluded: list[str]) -> None:
    again = build_tag_samples(
        env.dataset, env.split, SMALL, pool=env.pool, exclude_users=excluded, progress=False
    )
    assert again["sample_id"].to_list() == tags["sample_id"].to_list()
    other = build_tag_samples(
        env.dataset,
        env.split,
        SMALL.model_copy(update={"seed": 1, "users": 4}),
        pool=env.pool,
        exclude_users=excluded,
        progress=False,
    )
    assert set(other["sample_id"]) != set(tags["sample_id"][: other.height])


def test_no_target_or_held_out_item_reaches_a_prompt(env: Bundled, tags: pl.DataFrame) -> None:
    items = env.dataset.items
    titles = dict(zip(items["item_id"].to_list(), items["title"].to_list(), strict=True))
    src = LogSource(env.dataset, env.split, SMALL, pool=env.pool)
    checked = 0
    for r in tags.iter_rows(named=True):
        text = _text(r)
        for item in json.loads(r["lineage"])["target_items"]:
            assert titles[item].lower() not in text, f"target {titles[item]!r} leaked into {r['sample_id']}"
            assert src.catalogue.clean(item).lower() not in text
            checked += 1
        held_out = (
            env.split.heldout_item_ids(r["user_id"])
            if env.split.valid.asof.has_point(r["user_id"])
            else set()
        )
        for item in held_out:  # items of the evaluation split (at/after the validation point)
            names = {n for n in (titles[item].lower(), src.catalogue.clean(item).lower()) if len(n) >= 8}
            assert not any(n in text for n in names), (
                f"held-out {titles[item]!r} leaked into {r['sample_id']}"
            )
        valid_ts = env.split.valid.asof.point(r["user_id"])[0] if held_out else None
        assert valid_ts is None or r["as_of"] <= valid_ts
    assert checked == tags.height * SMALL.tags.count


def test_guard_catches_a_leaky_sample_and_excluded_users(
    env: Bundled, tags: pl.DataFrame, excluded: list[str]
) -> None:
    src = LogSource(env.dataset, env.split, SMALL, pool=env.pool)
    guard_samples(tags, env.split, src.catalogue, exclude_users=excluded)
    row = tags.row(0, named=True)
    target = json.loads(row["lineage"])["target_items"][0]
    msgs = json.loads(row["messages"])
    msgs[-1]["content"] += f"\n1 day ago (rated) | {src.catalogue.clean(target)}"
    leaky = pl.DataFrame([{**row, "messages": json.dumps(msgs)}], schema=tags.schema)
    with pytest.raises(LeakageError, match="target item"):
        guard_samples(leaky, env.split, src.catalogue)
    with pytest.raises(LeakageError, match="excluded"):
        guard_samples(tags, env.split, src.catalogue, exclude_users=[row["user_id"]])
    # a held-out (test) item of the user named in the prompt is caught too
    u = next(u for u in tags["user_id"] if env.split.test.asof.has_point(u))
    test_item = env.split.item_ids[env.split.test.targets[env.split.test.user_ids.index(u)][0]]
    row = tags.filter(pl.col("user_id") == u).row(0, named=True)
    msgs = json.loads(row["messages"])
    msgs[-1]["content"] += f"\n{env.dataset.items.filter(pl.col('item_id') == test_item)['title'][0]}"
    with pytest.raises(LeakageError):
        guard_samples(
            pl.DataFrame([{**row, "messages": json.dumps(msgs)}], schema=tags.schema),
            env.split,
            src.catalogue,
        )


def test_excluding_every_user_builds_nothing(env: Bundled) -> None:
    everyone = env.split.train_events["user_id"].unique().to_list()
    out = build_tag_samples(
        env.dataset, env.split, SMALL, pool=env.pool, exclude_users=everyone, progress=False
    )
    assert out.height == 0


def test_global_category_cap(env: Bundled, contexts: list[LogContext]) -> None:
    cfg = SMALL.model_copy(update={"category_cap": 4})
    out = build_tag_samples(env.dataset, env.split, cfg, pool=env.pool, contexts=contexts, progress=False)
    assert out.height > 0
    cats = Counter(c for lin in out["lineage"] for c in json.loads(lin)["target_categories"])
    assert max(cats.values()) <= 4


def test_global_window_sets_targets_and_points(env: Bundled) -> None:
    ev = env.split.train_events
    start, end = int(ev["timestamp"].quantile(0.5)), int(ev["timestamp"].quantile(0.6))
    cfg = SMALL.model_copy(update={"users": 5, "points_per_user": 3})
    ctxs = tag_contexts(env.dataset, env.split, cfg, pool=env.pool, window=(start, end), progress=False)
    assert ctxs and len({c.user_id for c in ctxs}) == len(ctxs)  # one point per user
    for c in ctxs:
        assert start <= c.as_of == min(t.timestamp for t in c.targets) and c.window == (c.as_of, end)
        assert all(t.timestamp < end for t in c.targets)
    with pytest.raises(ValueError, match="window start"):
        tag_contexts(env.dataset, env.split, cfg, pool=env.pool, window=(end, start), progress=False)


def test_interest_samples(env: Bundled, contexts: list[LogContext]) -> None:
    out = build_interest_samples(
        env.dataset, env.split, SMALL, pool=env.pool, contexts=contexts, progress=False
    )
    validate_samples(out)
    assert out.height >= SMALL.users // 2
    src = LogSource(env.dataset, env.split, SMALL, pool=env.pool)
    points = _by_point(contexts)
    for r in out.iter_rows(named=True):
        lc = points[(r["user_id"], r["as_of"])]
        req = interest_request(SMALL.interests, lc.ctx)
        assert json.loads(r["messages"])[-1]["content"] == req.messages[-1].content
        answer = req.output_model.model_validate_json(r["completion"])
        assert len(postprocess_interests(SMALL.interests, lc.ctx, answer.interests)) == SMALL.interests.count
        for it in answer.interests:  # sustained: shown by the history and by the next items
            assert any(matches(src, it.interest, i) for i in lc.seen)
            assert any(matches(src, it.interest, t.item_id) for t in lc.targets)


def test_explanation_samples(env: Bundled, contexts: list[LogContext]) -> None:
    out = build_explanation_samples(
        env.dataset, env.split, SMALL, pool=env.pool, contexts=contexts, progress=False
    )
    validate_samples(out)
    assert out.height >= SMALL.users and out["user_id"].null_count() == out.height
    src = LogSource(env.dataset, env.split, SMALL, pool=env.pool)
    strict = ExplanationsConfig(on_too_long="fallback")
    for r in out.iter_rows(named=True):
        lin = json.loads(r["lineage"])
        item, interest = lin["target_items"][0], lin["interest"]
        req = explanation_request(ExplanationsConfig(), interest, src.catalogue.row(item))
        assert json.loads(r["messages"])[-1]["content"] == req.messages[-1].content
        ans = Explanation.model_validate_json(r["completion"])
        assert check_explanation(strict, ans.explanation, src.catalogue.title(item)) == (
            ans.explanation,
            None,
        )
        assert matches(src, interest, item)  # a real link, never a forced one
        year = src.catalogue.year(item)
        assert str(year // 10 * 10) in ans.analysis if year else True


def test_tag_rules_skip_what_the_chain_would_drop(
    env: Bundled, tags: pl.DataFrame, contexts: list[LogContext]
) -> None:
    """A target whose tag names a recently engaged item (freshness) is replaced by the next one: every
    built answer is one the chain keeps in full."""
    row = tags.row(0, named=True)
    lc = _by_point(contexts)[(row["user_id"], row["as_of"])]
    first = json.loads(row["completion"])["tags"][0]["tag"]
    stale = dataclasses.replace(lc.ctx, items=(*lc.ctx.items, (first, lc.as_of - DAY)))
    out = build_tag_samples(
        env.dataset,
        env.split,
        SMALL,
        pool=env.pool,
        contexts=[dataclasses.replace(lc, ctx=stale)],
        progress=False,
        guard=False,
    )
    assert out.height == 1
    again = [Tag.model_validate(t) for t in json.loads(out["completion"][0])["tags"]]
    assert first not in [t.tag for t in again] and len(again) == SMALL.tags.count
    assert len(postprocess_tags(SMALL.tags, stale, again, lc.interests)) == len(again)


def _twin_dataset() -> Dataset:
    """One user who saw one copy of a title twice listed in the catalogue, then rated the other copy."""
    titles = {
        "mv-a": ("Alpha Story (1990)", ["Drama"]),
        "mv-b": ("Beta Story (1991)", ["Comedy"]),
        "mv-c": ("Gamma Story (1992)", ["Drama"]),
        "mv-d1": ("Twin Title (1999)", ["Drama"]),
        "mv-d2": ("Twin Title (1999)", ["Drama"]),
        "mv-e": ("Epsilon Night (1995)", ["Horror"]),
        "mv-f": ("Zeta Laughs (1996)", ["Comedy"]),
        "mv-g": ("Eta Tale (1997)", ["Drama"]),
        "mv-h": ("Theta Tale (1998)", ["Drama"]),
    }
    items = pl.DataFrame(
        {
            "item_id": list(titles),
            "title": [t for t, _ in titles.values()],
            "categories": [c for _, c in titles.values()],
        }
    )
    days = [
        ("mv-a", 1),
        ("mv-b", 2),
        ("mv-c", 3),
        ("mv-d1", 4),
        ("mv-d2", 10),
        ("mv-e", 11),
        ("mv-f", 12),
        ("mv-g", 30),
        ("mv-h", 31),
    ]
    events = pl.DataFrame(
        {
            "event_id": list(range(len(days))),
            "user_id": ["u"] * len(days),
            "item_id": [i for i, _ in days],
            "behavior": ["rating"] * len(days),
            "timestamp": [BASE + d * DAY for _, d in days],
            "value": [5.0] * len(days),
        }
    )
    return Dataset.build(
        items, pl.DataFrame({"user_id": ["u"]}), events, Manifest(name="twins", source="test")
    )


def test_a_catalogue_duplicate_of_a_seen_item_is_never_a_target() -> None:
    ds = _twin_dataset()
    sp = make_split(ds)
    cfg = SMALL.model_copy(
        update={
            "users": 1,
            "min_history": 2,
            "tags": SMALL.tags.model_copy(update={"count": 2}),
            "pool": PoolConfig(min_support=1),
        }
    )
    pool = InterestPool.build(ds.items, HashEncoder(), cfg.pool)
    (lc,) = tag_contexts(ds, sp, cfg, pool=pool, window=(BASE + 10 * DAY, BASE + 20 * DAY), progress=False)
    assert "mv-d1" in lc.seen and [t.item_id for t in lc.targets] == [
        "mv-e",
        "mv-f",
    ]  # d2 is "Twin Title" again
    for build in (build_tag_samples, build_interest_samples):  # both guard their tables
        build(ds, sp, cfg, pool=pool, contexts=[lc], progress=False)


def test_interest_match_require_links_every_tag_to_an_interest_that_names_it(
    env: Bundled, contexts: list[LogContext]
) -> None:
    cfg = SMALL.model_copy(update={"interest_match": "require"})
    out = build_tag_samples(env.dataset, env.split, cfg, pool=env.pool, contexts=contexts, progress=False)
    assert out.height > 0
    src = LogSource(env.dataset, env.split, cfg, pool=env.pool)
    points = _by_point(contexts)
    for r in out.iter_rows(named=True):
        names = dict(points[(r["user_id"], r["as_of"])].interests)
        tags = json.loads(r["completion"])["tags"]
        by_tag = dict(
            zip(
                [src.tag(i) for i in json.loads(r["lineage"])["target_items"]],
                json.loads(r["lineage"])["target_items"],
                strict=True,
            )
        )
        for t in tags:
            assert matches(src, names[t["interest_id"]], by_tag[t["tag"]])
