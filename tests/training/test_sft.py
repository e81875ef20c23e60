"""Curriculum LoRA SFT on the real SmolLM2-135M (dequantized from the shipped GGUF), plus its plumbing.

The slow tests train a few real steps on a small genre-labelling task (bs 4 x ~55 tokens, 1 thread):
the loss must fall, the adapter must load through `transformers:<out>/adapter` and
`transformers:<out>/merged` and answer schema-valid JSON, and a stopped run must resume from its
checkpoint and continue the curriculum from the previous level's adapter.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from pydantic import BaseModel

from recgpt.training.sft import (
    SFTConfig,
    check_samples,
    compact_answer,
    latest_checkpoint,
    run_sft,
)

os.environ.setdefault("OMP_NUM_THREADS", "1")
GENRES = ("Comedy", "Drama", "Horror", "Western", "Animation", "Documentary", "Musical", "Thriller")
TITLES = (
    "Toy Story",
    "Heat",
    "Scream",
    "Tombstone",
    "Aladdin",
    "Hoop Dreams",
    "Evita",
    "Seven",
    "Babe",
    "Fargo",
    "Clerks",
    "Rob Roy",
    "Casino",
    "Sabrina",
    "Nixon",
    "Balto",
)
SYSTEM = "You label movies. Answer with JSON only."


class Genre(BaseModel):
    genre: str


def _prompt(title: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": f'Movie title: {title}\nReturn its genre as JSON: {{"genre": ...}}'},
    ]


def genre_samples(level: str = "foundation", n: int = 16) -> pl.DataFrame:
    """Hand-built rows of the SFT sample table contract (recgpt.training.data)."""
    rows = [
        {
            "sample_id": f"{level}-{i}",
            "task": "genre",
            "level": level,
            "messages": json.dumps(_prompt(t)),
            "completion": json.dumps({"genre": GENRES[i % len(GENRES)]}),
            "source": "catalogue",
            "user_id": None,
            "as_of": None,
            "lineage": json.dumps({"title": t}),
        }
        for i, t in enumerate(TITLES[:n])
    ]
    return pl.DataFrame(rows, schema_overrides={"user_id": pl.String(), "as_of": pl.Int64()})


# ---------------------------------------------------------------------- fast


def test_config_and_samples_are_checked() -> None:
    with pytest.raises(ValueError, match="grad_accum"):
        SFTConfig(grad_accum=0)
    with pytest.raises(ValueError, match="levels not in"):
        SFTConfig(max_steps={"expert": 3})
    assert SFTConfig(max_steps={"advanced": 3}).steps_for("advanced") == 3
    assert SFTConfig(max_steps={"advanced": 3}).steps_for("foundation") is None
    assert SFTConfig.from_dict(SFTConfig(lora_r=4).to_dict()) == SFTConfig(lora_r=4)
    good = genre_samples(n=2)
    check_samples(good, ("foundation",))
    with pytest.raises(ValueError, match="level 'foundation' is not one of"):
        check_samples(good, ("advanced",))
    bad = good.with_columns(pl.Series("messages", ["not json", good["messages"][1]]))
    with pytest.raises(ValueError, match=r"'foundation-0'.*not JSON"):
        check_samples(bad, ("foundation",))
    ends_with_answer = json.dumps([*_prompt("Heat"), {"role": "assistant", "content": "x"}])
    with pytest.raises(ValueError, match="must end with a user turn"):
        check_samples(good.with_columns(pl.lit(ends_with_answer).alias("messages")), ("foundation",))
    with pytest.raises(ValueError, match="lacks column"):
        check_samples(good.drop("completion"), ("foundation",))


def test_answers_are_trained_in_the_compact_json_the_grammar_allows() -> None:
    assert compact_answer('{"genre": "Comédie", "n": [1, 2]}') == '{"genre":"Comédie","n":[1,2]}'
    assert compact_answer("a plain explanation.") == "a plain explanation."


def test_latest_checkpoint_skips_half_written_ones(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path / "none") is None
    for step, complete in ((2, True), (4, True), (6, False)):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        if complete:
            (d / "trainer_state.json").write_text("{}")
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-4"


def test_deadline_stops_before_a_step_that_would_overrun_it() -> None:
    pytest.importorskip("transformers")
    from types import SimpleNamespace

    from recgpt.training.phase import deadline_stop

    state = SimpleNamespace(global_step=3, max_steps=10)
    far = deadline_stop(time.time() + 3600)
    far.on_step_begin(None, state, control := SimpleNamespace(should_training_stop=False, should_save=False))
    far.on_step_end(None, state, control)
    assert not control.should_training_stop
    near = deadline_stop(time.time() + 0.5)
    near.on_step_begin(None, state, control)
    time.sleep(0.3)  # a 0.3 s step: the next one would end past the deadline
    near.on_step_end(None, state, control)
    assert control.should_training_stop and control.should_save


def test_backend_reads_the_base_of_an_adapter_folder(tmp_path: Path) -> None:
    from recgpt.llm.backends.transformers_backend import adapter_base, is_adapter_folder

    base = tmp_path / "base"
    base.mkdir()
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base)}))
    assert is_adapter_folder(adapter) and not is_adapter_folder(base)
    assert adapter_base(adapter) == base
    (adapter / "adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": str(tmp_path / "gone")})
    )
    with pytest.raises(FileNotFoundError, match="base model of adapter"):
        adapter_base(adapter)


# ---------------------------------------------------------------------- real training


def _answers(spec: str) -> list[Genre]:
    from recgpt.llm.backends import make_backend
    from recgpt.llm.engine import LLMEngine
    from recgpt.llm.types import ChatMessage, LLMRequest, SamplingParams

    reqs = [
        LLMRequest(
            messages=tuple(ChatMessage(**m) for m in _prompt(t)),
            output_model=Genre,  # type: ignore[arg-type]
            sampling=SamplingParams(max_tokens=16),
        )
        for t in TITLES[:3]
    ]
    threads = {"n_threads": 1, "n_ctx": 512} if spec.startswith("llamacpp") else {"threads": 1}
    with LLMEngine(make_backend(spec, **threads), max_retries=0) as engine:
        results = engine.run(reqs)
    assert all(r.ok for r in results), [r.failure for r in results]
    return [r.value for r in results]


@pytest.fixture(scope="module")
def trained(base_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 real LoRA steps (bs 4, lr 2e-3) on the genre task: about 30 s on one busy core."""
    out = tmp_path_factory.mktemp("sft")
    cfg = SFTConfig(
        max_steps=8, batch_size=4, grad_accum=1, learning_rate=2e-3, max_seq_len=160, save_steps=4, threads=1
    )
    result = run_sft(cfg, genre_samples(), out, progress=False)
    assert result.complete and result.levels[0].steps == 8 and result.levels[0].dropped_too_long == 0
    return out


@pytest.mark.slow
@pytest.mark.llm
def test_sft_loss_falls_and_the_adapter_serves_schema_valid_answers(base_folder: Path, trained: Path) -> None:
    out = trained
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 9))
    losses = [r["loss"] for r in log]
    assert sum(losses[-2:]) / 2 < 0.7 * sum(losses[:2]) / 2, losses
    adapter_cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert Path(adapter_cfg["base_model_name_or_path"]) == base_folder
    for name in ("merged/config.json", "merged/tokenizer.json", "samples.parquet", "train_config.json"):
        assert (out / name).is_file(), name
    assert "data:image/png;base64," in (out / "report.html").read_text()
    via_adapter = _answers(f"transformers:{out / 'adapter'}")
    via_merged = _answers(f"transformers:{out / 'merged'}")
    assert via_adapter == via_merged  # merging is exact up to float rounding: same greedy answers
    assert sum(a.genre in GENRES for a in via_adapter) >= 2, via_adapter  # it learned the label vocabulary


@pytest.mark.slow
@pytest.mark.llm
def test_merged_model_exports_to_gguf_for_llamacpp(trained: Path) -> None:
    """Only where llama.cpp's converter was fetched before (`recgpt train export-gguf` does it once:
    a 77 MB sdist download that a test should not trigger)."""
    from importlib.metadata import version

    from recgpt.llm.backends.transformers_backend import recgpt_cache_dir
    from recgpt.training.export import export_gguf

    tools = recgpt_cache_dir() / "llama-cpp-convert" / version("llama-cpp-python")
    if not (tools / "convert_hf_to_gguf.py").is_file() or importlib.util.find_spec("sentencepiece") is None:
        pytest.skip(
            "llama.cpp's converter is not cached: run `recgpt train export-gguf OUT` once (needs sentencepiece)"
        )
    path = export_gguf(trained / "merged", trained / "model-q8_0.gguf")
    assert path.stat().st_size > 50e6
    answers = _answers(f"llamacpp:{path}")
    assert sum(a.genre in GENRES for a in answers) >= 2, answers


@pytest.mark.slow
@pytest.mark.llm
def test_stopped_run_resumes_and_the_curriculum_continues_the_adapter(
    base_folder: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file
    from transformers import TrainerCallback

    class StopAt(TrainerCallback):  # stands in for a killed job: the checkpoint on disk is what survives
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.global_step == 2:
                control.should_training_stop = True

    out = tmp_path / "sft"
    samples = pl.concat([genre_samples("foundation", 8), genre_samples("advanced", 8)])
    cfg = SFTConfig(
        max_steps={"foundation": 4, "advanced": 2},
        batch_size=2,
        grad_accum=1,
        learning_rate=1e-3,
        max_seq_len=160,
        save_steps=2,
        threads=1,
    )
    first = run_sft(cfg, samples, out, progress=False, callbacks=[StopAt()], merge=False)
    assert not first.complete and [r.level for r in first.levels] == ["foundation"]
    assert (
        first.levels[0].steps == 2
        and latest_checkpoint(out / "checkpoints" / "foundation").name == "checkpoint-2"
    )
    assert (out / "adapter" / "adapter_config.json").is_file()  # a usable (partial) adapter all the same

    with pytest.raises(ValueError, match="another config"):
        run_sft(SFTConfig(**{**cfg.to_dict(), "lora_r": 4}), samples, out, progress=False, merge=False)

    class ProbeB(TrainerCallback):  # the LoRA B weights each phase starts from (fresh LoRA: B == 0)
        def __init__(self) -> None:
            self.norms: list[float] = []

        def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
            self.norms.append(
                sum(float(p.detach().norm()) for n, p in model.named_parameters() if "lora_B" in n)
            )

    probe = ProbeB()
    second = run_sft(cfg, samples, out, progress=False, merge=False, callbacks=[probe])
    found, adv = second.levels
    assert second.complete and found.resumed_from == 2 and found.steps == 4 and adv.steps == 2
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [(r["level"], r["step"]) for r in log] == [("foundation", s) for s in (1, 2, 3, 4)] + [
        ("advanced", 1),
        ("advanced", 2),
    ]
    w_found = load_file(str(out / "checkpoints" / "foundation" / "adapter" / "adapter_model.safetensors"))
    found_b = sum(float(w.norm()) for k, w in w_found.items() if "lora_B" in k)
    resumed_b, advanced_b = probe.norms
    assert resumed_b > 0  # foundation resumed from checkpoint-2's weights, not from a fresh LoRA
    assert advanced_b == pytest.approx(found_b, rel=1e-4)  # advanced starts where foundation ended

    third = run_sft(cfg, samples, out, progress=False, merge=False)  # finished: nothing is retrained
    assert third.complete and [r.steps for r in third.levels] == [4, 2]
    assert len((out / "log.jsonl").read_text().splitlines()) == 6


@pytest.mark.slow
def test_time_budget_stops_saves_and_resumes_on_a_tiny_model(tiny_base: Path, tmp_path: Path) -> None:
    """`max_minutes` ends training cleanly mid-phase: a checkpoint and a usable adapter are saved, the
    result says incomplete, and the same call without the budget resumes and finishes the epoch."""
    out = tmp_path / "sft"
    budget = SFTConfig(
        base=str(tiny_base),
        max_steps=6,
        batch_size=2,
        grad_accum=1,
        max_seq_len=160,
        save_steps=100,  # no periodic checkpoint: the one on disk is the budget stop's
        threads=1,
        max_minutes=0.001,  # 60 ms: over after the first step
    )
    first = run_sft(budget, genre_samples(), out, progress=False, merge=False)
    (level,) = first.levels
    assert not first.complete and 1 <= level.steps < 6
    assert latest_checkpoint(out / "checkpoints" / "foundation").name == f"checkpoint-{level.steps}"
    assert (out / "adapter" / "adapter_config.json").is_file()
    second = run_sft(
        SFTConfig(**{**budget.to_dict(), "max_minutes": None}),
        genre_samples(),
        out,
        progress=False,
        merge=False,
    )
    assert second.complete and second.levels[0].steps == 6 and second.levels[0].resumed_from == level.steps
