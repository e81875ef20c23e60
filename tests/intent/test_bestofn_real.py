"""Best-of-n on the real SmolLM2-135M (llama.cpp, 1 thread): distinct seeds give distinct samples,
the same seed the same one, and on a few bundled users n = 3 leaves at most as many users on the
interest-as-tag fallback as n = 1, with answers that keep at least as many tags."""

from __future__ import annotations

from collections.abc import Iterator

import polars as pl
import pytest

pytest.importorskip("llama_cpp")

from recgpt.behavior import BehaviorCompressor, CompressionConfig, RegexTokenCounter
from recgpt.data.split import make_split
from recgpt.datasets import load_bundled
from recgpt.intent.context import UserContext, build_contexts
from recgpt.intent.interests import INTERESTS_SCHEMA
from recgpt.intent.pool import InterestPool, PoolConfig
from recgpt.intent.tags import FALLBACK_RATIONALE, TagsConfig, predict_tags, tag_request
from recgpt.llm.cache import MemoryCache
from recgpt.llm.engine import LLMEngine
from recgpt.llm.task import reask_request
from tests.conftest import HashEncoder

pytestmark = [pytest.mark.llm, pytest.mark.slow]
TCFG = TagsConfig(count=4, history_tokens=100, max_recent_items=5, reasks=0)


@pytest.fixture(scope="module")
def engine(smollm2_gguf: object) -> Iterator[LLMEngine]:
    from recgpt.llm.backends import make_backend

    eng = LLMEngine(make_backend("llamacpp", n_threads=1, n_ctx=2048), max_retries=1, cache=MemoryCache())
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def users() -> tuple[list[UserContext], pl.DataFrame]:
    """3 bundled test users, their pool entries as interests (no LLM_UI call: this tests LLM_IT)."""
    sp = make_split(load_bundled())
    ds = sp.dataset
    comp = BehaviorCompressor(ds.items, RegexTokenCounter(), CompressionConfig(budget=150))
    pool = InterestPool.build(ds.items, HashEncoder(), PoolConfig(top_n=4))
    ctxs = build_contexts(sp.test, ds, sp.test.user_ids[:3], compressor=comp, pool=pool)
    rows = [
        {
            "user_id": c.user_id,
            "interest_id": i,
            "interest": p,
            "stage": "long-term",
            "reason": "",
            "kind": "listed",
        }
        for c in ctxs
        for i, p in enumerate(c.pool[:3], start=1)
    ]
    return ctxs, pl.DataFrame(rows, schema=INTERESTS_SCHEMA)


def test_distinct_seeds_give_distinct_samples(
    engine: LLMEngine, users: tuple[list[UserContext], pl.DataFrame]
) -> None:
    ctxs, _ = users
    first = tag_request(TCFG, ctxs[0], [(1, ctxs[0].pool[0]), (2, ctxs[0].pool[1])])
    fresh = LLMEngine(engine.backend, max_retries=1)  # no cache: the backend itself must vary with the seed
    a, b, a2 = fresh.run(
        [reask_request(first, 1, 0.7), reask_request(first, 2, 0.7), reask_request(first, 1, 0.7)]
    )
    assert a.ok and b.ok and a2.ok
    assert a.value.model_dump() != b.value.model_dump()  # type: ignore[union-attr]
    assert a.value.model_dump() == a2.value.model_dump()  # type: ignore[union-attr]


def test_best_of_three_falls_back_no_more_than_one_answer(
    engine: LLMEngine, users: tuple[list[UserContext], pl.DataFrame]
) -> None:
    ctxs, interests = users
    one, _ = predict_tags(TCFG, engine, ctxs, interests)
    three, _ = predict_tags(TCFG.model_copy(update={"n_samples": 3}), engine, ctxs, interests)

    def fallback_users(t: pl.DataFrame) -> int:
        return t.filter(pl.col("rationale") == FALLBACK_RATIONALE)["user_id"].n_unique()

    def llm_tags(t: pl.DataFrame) -> int:
        return t.filter(pl.col("rationale") != FALLBACK_RATIONALE).height

    assert fallback_users(three) <= fallback_users(one) and llm_tags(three) >= llm_tags(one)
    assert set(three["samples"]) == {3} and set(one["samples"]) == {1}
    assert engine.ledger.stage("tags").samples == 2 * len(ctxs)  # the n = 1 answers came from the cache
