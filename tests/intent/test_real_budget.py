"""The history budget and grounded tags on the real SmolLM2-135M (llama.cpp, 1 thread, 1,024-token context)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

from recgpt.datasets import load_bundled
from recgpt.intent.context import UserContext
from recgpt.intent.grounding import build_vocabulary
from recgpt.intent.interests import INTERESTS_SCHEMA, InterestsConfig, interest_prompt
from recgpt.intent.tags import FALLBACK_RATIONALE, TagsConfig, predict_tags
from recgpt.llm.engine import LLMEngine

N_CTX = 1024
LINES = [f"{d} days ago (rated) | Film number {d} (1990) [Drama|Comedy]" for d in range(300, 0, -1)]
CTX = UserContext(
    "u1",
    1_000_000_000,
    {"age": "30"},
    "\n".join(LINES),
    ("Drama", "Comedy"),
    (("Film number 1", 999_990_000),),
)


@pytest.fixture(scope="module")
def engine(smollm2_gguf: Path) -> Iterator[LLMEngine]:
    from recgpt.llm.backends.llamacpp_backend import LlamaCppBackend

    eng = LLMEngine(LlamaCppBackend(smollm2_gguf, n_threads=1, n_ctx=N_CTX), max_retries=1)
    yield eng
    eng.close()


def test_the_request_fits_the_real_context_and_the_count_is_the_models(engine: LLMEngine) -> None:
    window = engine.backend.token_window()
    assert window.exact and window.n_ctx == N_CTX
    req, fit = interest_prompt(InterestsConfig(count=3, tokens_per_interest=50), CTX, window)
    prompt_tokens = window.count_messages(req.messages)
    assert prompt_tokens + req.sampling.max_tokens <= N_CTX
    assert LINES[-1] in req.messages[-1].content and LINES[0] not in req.messages[-1].content
    assert fit.cut > 0 and fit.tokens > 0
    llm = engine.backend._vocab()  # the model's own tokenizer
    assert fit.tokens == len(llm.tokenize(fit.text.encode(), add_bos=False, special=False))
    result = engine.run_one(req)
    assert result.ok, result.failure
    assert result.usage.prompt_tokens == prompt_tokens  # what llama.cpp itself counted for the prompt


def test_a_grounded_tags_core_word_is_in_the_vocabulary(engine: LLMEngine) -> None:
    items = load_bundled().items
    vocab = build_vocabulary(items, 200)
    interests = pl.DataFrame(
        [
            {
                "user_id": "u1",
                "interest_id": 1,
                "interest": "Comedy films",
                "stage": "long-term",
                "reason": "",
                "kind": "listed",
                "template": "t",
                "history_tokens": 0,
                "history_cut": 0,
            }
        ],
        schema=INTERESTS_SCHEMA,
    )
    cfg = TagsConfig(count=3, grounding="core", vocabulary_size=200, tokens_per_tag=30)
    tags, _ = predict_tags(cfg, engine, [CTX], interests, catalogue=items)
    llm_rows = tags.filter(pl.col("rationale") != FALLBACK_RATIONALE)
    assert llm_rows.height >= 1, "every grounded answer was dropped"
    assert set(llm_rows["core"].str.to_lowercase()) <= set(vocab.cores)
    assert (llm_rows["history_tokens"] > 0).all()
