"""Interest pool: catalogue phrases and categories, per-user matching from the AsOf view."""

from __future__ import annotations

import polars as pl
import pytest

from recgpt.data.dataset import Dataset
from recgpt.data.split import Split
from recgpt.intent.pool import InterestPool, PoolConfig, item_embedding_text, phrase_tokens, title_phrases
from tests.conftest import HashEncoder


def test_phrase_tokens_drop_years_and_aliases() -> None:
    assert phrase_tokens("Seven (a.k.a. Se7en) (1995)") == ["seven"]
    assert phrase_tokens("American President, The (1995)") == ["the", "american", "president"]
    assert phrase_tokens("Heat (1995") == ["heat"]


def test_title_phrases_support_stop_words_and_closed_filter() -> None:
    titles = [
        "Harry Potter and the Stone",
        "Harry Potter and the Chamber",
        "Harry Potter and the Prisoner",
        "Dirty Harry",
        "The Lost City",
        "Lost in the City",
        "City of the Lost",
        "Part 2 of 3",
    ]
    got = dict(title_phrases(titles, PoolConfig(min_support=3)))
    assert got["harry potter"] == 3
    assert "harry" in got  # 4 titles: "harry potter" explains only 3/4 < 0.8
    assert "potter" not in got  # every "potter" title is a "harry potter" title
    assert got["lost"] == 3 and got["city"] == 3
    assert not any(p.split()[0] in {"the", "of", "and"} or p.split()[-1] in {"the", "of"} for p in got)
    assert not any(any(t.isdigit() for t in p.split()) for p in got)
    strict = dict(title_phrases(titles, PoolConfig(min_support=3, closed_ratio=0.7)))
    assert "harry" not in strict  # 3/4 >= 0.7
    with pytest.raises(ValueError, match="ngram_max"):
        title_phrases(titles, PoolConfig(ngram_min=3, ngram_max=2))


def test_item_embedding_text_has_title_and_categories_without_years() -> None:
    row = {"title": "Robot Planet (1995)", "categories": ["Sci-Fi", "Action"]}
    assert item_embedding_text(row) == "Robot Planet (Sci-Fi, Action)"
    assert item_embedding_text({"title": "Plain"}) == "Plain"


def test_pool_entries_and_matching(toy: Dataset, toy_split: Split) -> None:
    enc = HashEncoder()
    pool = InterestPool.build(toy.items, enc, PoolConfig(min_support=2, top_n=3, centroid_sample=0))
    frame = pool.to_frame()
    assert {"Sci-Fi", "Romance", "Comedy"} <= set(frame.filter(pl.col("source") == "category")["interest"])
    assert {"Space Wars", "Office Party", "Love"} <= set(
        frame.filter(pl.col("source") == "phrase")["interest"]
    )
    m = pool.match(toy_split.test.asof, ["u1", "u2", "u3"])
    assert m.columns == ["user_id", "rank", "interest", "source", "score"]
    top = {u: g.sort("rank")["interest"].to_list() for (u,), g in m.group_by("user_id")}
    assert all(len(v) == 3 for v in top.values())
    assert top["u1"][0] in {"Sci-Fi", "Space Wars"}
    assert top["u3"][0] in {"Comedy", "Office Party"}
    again = pool.match(toy_split.test.asof, ["u1", "u2", "u3"])
    assert again.equals(m)  # deterministic


def test_matching_reads_only_the_asof_history(toy: Dataset, toy_split: Split) -> None:
    pool = InterestPool.build(toy.items, HashEncoder(), PoolConfig(min_support=2))
    for u in toy_split.test.user_ids:
        used = set(pool.history_items(toy_split.test.asof, u))
        assert used == set(toy_split.test.asof.history(u)["item_id"].to_list())
        target = {toy_split.item_ids[i] for i in toy_split.test.targets[toy_split.test.user_ids.index(u)]}
        assert not used & target
    assert "s3" not in pool.history_items(toy_split.test.asof, "u1")  # u1's test target
    assert pool.history_items(toy_split.valid.asof, "u1") == ["s2", "s4", "s1"]  # most recent first


def test_hubness_correction_and_max_aggregate(toy: Dataset, toy_split: Split) -> None:
    enc = HashEncoder()
    plain = InterestPool.build(toy.items, enc, PoolConfig(min_support=2, centroid_sample=0))
    corrected = InterestPool(plain.entries, toy.items, enc, PoolConfig(min_support=2, centroid_sample=10))
    ids = plain.history_items(toy_split.test.asof, "u1")
    diff = plain.scores(ids) - corrected.scores(ids)
    assert (diff > 0).any()  # some entries are pulled down by their closeness to the catalogue centroid
    maxed = InterestPool(
        plain.entries, toy.items, enc, PoolConfig(min_support=2, aggregate="max", centroid_sample=0)
    )
    assert (maxed.scores(ids) >= plain.scores(ids) - 1e-6).all()  # max of cosines >= cosine with the mean


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="'item_id' and 'title'"):
        InterestPool.build(pl.DataFrame({"x": [1]}), HashEncoder())
    items = pl.DataFrame({"item_id": ["a"], "title": ["Solo"], "categories": [["Rare"]]})
    with pytest.raises(ValueError, match="pool is empty"):
        InterestPool.build(items, HashEncoder(), PoolConfig(min_support=2))
